//! Readers in control and a clean list: preferences, erasure with the suppression
//! list, and what bounces and complaints do to a reader.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::FromRow;

use super::counters::{Tally, flush_tally};
use super::{BeginWrite, Store, StoreResult, on_pool};
use crate::domain::{DeliverySchedule, EmailAddress, Locale, TopicSlug};

/// A reader's current settings, for the preferences page.
#[derive(Debug, Clone, FromRow)]
pub struct Preferences {
    /// Subscriber id.
    pub id: i64,
    /// Address.
    pub email: String,
    /// `pending`, `confirmed`, `unsubscribed` or `bounced`.
    pub status: String,
    /// Local delivery time.
    pub delivery_time: String,
    /// Zone.
    pub timezone: String,
    /// Weekday bits.
    pub weekdays: i64,
    /// Language.
    pub locale: String,
    /// Chosen topic slugs.
    #[sqlx(skip)]
    pub topics: Vec<String>,
}

/// One change of settings, kept with its time.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct PreferenceChange {
    /// When.
    pub changed_at: DateTime<Utc>,
    /// Topic slugs, comma separated.
    pub topics: String,
    /// Delivery time.
    pub delivery_time: String,
    /// Zone.
    pub timezone: String,
    /// Weekday bits (bit 0 = Monday).
    pub weekdays: i64,
    /// Language.
    pub locale: String,
}

/// A bounce, complaint or unsubscribe reply recorded for a reader.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct MailEvent {
    /// When it was processed.
    pub at: DateTime<Utc>,
    /// `hard_bounce`, `soft_bounce`, `policy_bounce`, `complaint`, `unsubscribe_reply`.
    pub kind: String,
    /// Status code and diagnostic, or the report type.
    pub detail: String,
}

/// What an inbound message does to a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEffect {
    /// Only recorded.
    Record,
    /// Recorded and counted; at `threshold` events since `since` the reader is
    /// marked bounced.
    Count {
        /// Soft bounces that condemn an address.
        threshold: u32,
        /// Start of the counting window.
        since: DateTime<Utc>,
    },
    /// The reader is marked bounced (no more mail).
    Bounce,
    /// The reader is unsubscribed.
    Unsubscribe,
    /// The reader is unsubscribed and the address suppressed.
    UnsubscribeAndSuppress,
}

/// The suppression list's key for an address.
pub fn address_hash(email: &str) -> Vec<u8> {
    Sha256::digest(email.to_lowercase().as_bytes()).to_vec()
}

impl Store {
    /// A reader's settings.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn preferences(&self, subscriber_id: i64) -> StoreResult<Option<Preferences>> {
        on_pool!(self, pool => {
            let p: Option<Preferences> = sqlx::query_as(
                "SELECT id, email, status, delivery_time, timezone, weekdays, locale FROM subscribers WHERE id = $1",
            )
            .bind(subscriber_id)
            .fetch_optional(pool)
            .await?;
            let Some(mut p) = p else { return Ok(None) };
            p.topics = sqlx::query_scalar(
                "SELECT t.slug FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id WHERE st.subscriber_id = $1",
            )
            .bind(subscriber_id)
            .fetch_all(pool)
            .await?;
            Ok(Some(p))
        })
    }

    /// Changes a reader's topics, schedule and language, keeps the change with its
    /// time, and moves a confirmed reader's next digest to the new schedule.
    /// Returns false when there is no such reader.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn update_preferences(
        &self,
        subscriber_id: i64,
        topics: &[TopicSlug],
        schedule: DeliverySchedule,
        locale: Locale,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let slugs = topics
            .iter()
            .map(TopicSlug::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let postgres = self.is_postgres();
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if postgres {
                // A pass serving this reader right now finishes first, so its digest
                // is seen below.
                sqlx::query("SELECT id FROM subscribers WHERE id = $1 FOR UPDATE")
                    .bind(subscriber_id)
                    .execute(&mut *tx)
                    .await?;
            }
            // One digest a day: if the reader had today's already, a later time
            // today waits for tomorrow.
            let last: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT MAX(slot_at) FROM digests WHERE subscriber_id = $1")
                .bind(subscriber_id)
                .fetch_one(&mut *tx)
                .await?;
            let mut next = schedule.next_after(now);
            let tz = schedule.timezone.tz();
            if last.is_some_and(|l| l.with_timezone(&tz).date_naive() == next.with_timezone(&tz).date_naive()) {
                next = schedule.next_after(next);
            }
            let updated = sqlx::query(
                "UPDATE subscribers SET delivery_time = $2, timezone = $3, weekdays = $4, locale = $5, \
                 updated_at = $6, next_slot_at = CASE WHEN status = 'confirmed' THEN $7 ELSE next_slot_at END \
                 WHERE id = $1",
            )
            .bind(subscriber_id)
            .bind(schedule.time.to_string())
            .bind(schedule.timezone.to_string())
            .bind(schedule.weekdays.bits())
            .bind(locale.as_str())
            .bind(now)
            .bind(next)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("DELETE FROM subscriber_topics WHERE subscriber_id = $1")
                .bind(subscriber_id)
                .execute(&mut *tx)
                .await?;
            for slug in topics {
                sqlx::query(
                    "INSERT INTO subscriber_topics (subscriber_id, topic_id) \
                     SELECT $1, id FROM topics WHERE slug = $2 ON CONFLICT DO NOTHING",
                )
                .bind(subscriber_id)
                .bind(slug.as_str())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO preference_changes (subscriber_id, changed_at, topics, delivery_time, timezone, weekdays, locale) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(subscriber_id)
            .bind(now)
            .bind(&slugs)
            .bind(schedule.time.to_string())
            .bind(schedule.timezone.to_string())
            .bind(schedule.weekdays.bits())
            .bind(locale.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Erases everything about an address (GDPR Art. 17) and puts a hash of it on
    /// the suppression list. Returns false when nothing was stored.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn erase(&self, email: &EmailAddress, now: DateTime<Utc>) -> StoreResult<bool> {
        let find = if self.is_postgres() {
            "SELECT id, status FROM subscribers WHERE email = $1 FOR UPDATE"
        } else {
            "SELECT id, status FROM subscribers WHERE email = $1"
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<(i64, String)> = sqlx::query_as(find)
                .bind(email.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some((id, status)) = row else {
                tx.rollback().await?;
                return Ok(false);
            };
            let mut tally = Tally::default();
            tally.subscribers(Some(&status), None, 1);
            // Token hashes would otherwise outlive the row (see purge_pending).
            sqlx::query("DELETE FROM tokens WHERE subscriber_id = $1").bind(id).execute(&mut *tx).await?;
            // Queued and past mails hold the address; they go with everything else.
            let mails: Vec<(String, String)> =
                sqlx::query_as("DELETE FROM mail_jobs WHERE subscriber_id = $1 OR recipient = $2 RETURNING kind, status")
                    .bind(id)
                    .bind(email.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
            for (kind, status) in &mails {
                tally.mails(kind, Some(status), None, 1);
            }
            sqlx::query("DELETE FROM subscribers WHERE id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, 'erased', $2) \
                 ON CONFLICT (email_hash) DO NOTHING",
            )
            .bind(address_hash(email.as_str()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Whether an address is on the suppression list.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn is_suppressed(&self, email: &str) -> StoreResult<bool> {
        let sql = "SELECT COUNT(*) FROM suppressions WHERE email_hash = $1";
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(sql).bind(address_hash(email)).fetch_one(pool).await)?;
        Ok(n > 0)
    }

    /// Records what an inbound message said about a reader and applies its effect.
    /// Returns the reader's status afterwards, or `None` when there is no such reader.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn record_mail_event(
        &self,
        subscriber_id: i64,
        kind: &str,
        detail: &str,
        message_ref: Option<&str>,
        effect: EventEffect,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        // Locked, so that the status counted as left is the one changed.
        let find = if self.is_postgres() {
            "SELECT email, status FROM subscribers WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT email, status FROM subscribers WHERE id = $1"
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<(String, String)> = sqlx::query_as(find)
                .bind(subscriber_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((email, before)) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            let mut tally = Tally::default();
            tally.event(kind);
            sqlx::query("INSERT INTO mail_events (subscriber_id, at, kind, detail, message_ref) VALUES ($1, $2, $3, $4, $5)")
                .bind(subscriber_id)
                .bind(now)
                .bind(kind)
                .bind(detail.replace('\0', "").chars().take(1000).collect::<String>())
                .bind(message_ref.map(|r| r.replace('\0', "").chars().take(500).collect::<String>()))
                .execute(&mut *tx)
                .await?;
            let mark_bounced = match effect {
                EventEffect::Record => false,
                EventEffect::Bounce => true,
                EventEffect::Count { threshold, since } => {
                    let n: i64 = sqlx::query_scalar(
                        // Several delay warnings for one message are one soft bounce.
                        "SELECT COUNT(DISTINCT COALESCE(message_ref, CAST(id AS TEXT))) FROM mail_events \
                         WHERE subscriber_id = $1 AND kind = $2 AND at > $3",
                    )
                    .bind(subscriber_id)
                    .bind(kind)
                    .bind(since)
                    .fetch_one(&mut *tx)
                    .await?;
                    n >= i64::from(threshold)
                }
                EventEffect::Unsubscribe | EventEffect::UnsubscribeAndSuppress => {
                    sqlx::query(
                        "UPDATE subscribers SET status = 'unsubscribed', unsubscribed_at = COALESCE(unsubscribed_at, $2), \
                         updated_at = $2, next_slot_at = NULL WHERE id = $1 AND status <> 'unsubscribed'",
                    )
                    .bind(subscriber_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    false
                }
            };
            if mark_bounced {
                sqlx::query("UPDATE subscribers SET status = 'bounced', updated_at = $2, next_slot_at = NULL WHERE id = $1")
                    .bind(subscriber_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            if mark_bounced || effect == EventEffect::UnsubscribeAndSuppress {
                let reason = if mark_bounced { "bounced" } else { "complaint" };
                sqlx::query(
                    "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (email_hash) DO NOTHING",
                )
                .bind(address_hash(&email))
                .bind(reason)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if effect != EventEffect::Record {
                // Mail still waiting for this reader is withdrawn.
                let withdrawn = sqlx::query(
                    "UPDATE mail_jobs SET status = 'failed', message = NULL, last_error = $3, finished_at = $2 \
                     WHERE subscriber_id = $1 AND status = 'queued' AND kind = 'digest' \
                     AND EXISTS (SELECT 1 FROM subscribers WHERE id = $1 AND status <> 'confirmed')",
                )
                .bind(subscriber_id)
                .bind(now)
                .bind(format!("withdrawn after {kind}"))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tally.mails("digest", Some("queued"), Some("failed"), withdrawn as i64);
            }
            let status: String = sqlx::query_scalar("SELECT status FROM subscribers WHERE id = $1")
                .bind(subscriber_id)
                .fetch_one(&mut *tx)
                .await?;
            tally.subscribers(Some(&before), Some(&status), 1);
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(Some(status))
        })
    }

    /// The reader an address belongs to.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn subscriber_id(&self, email: &str) -> StoreResult<Option<i64>> {
        let sql = "SELECT id FROM subscribers WHERE email = $1";
        let id = on_pool!(self, pool => sqlx::query_scalar(sql).bind(email.to_lowercase()).fetch_optional(pool).await)?;
        Ok(id)
    }
}

/// One row of the subscriber list.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct SubscriberSummary {
    /// Cursor for `after=`.
    pub id: i64,
    /// Address.
    pub email: String,
    /// Status.
    pub status: String,
    /// Language.
    pub locale: String,
    /// Delivery time.
    pub delivery_time: String,
    /// Zone.
    pub timezone: String,
    /// First stored.
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// A page of subscribers in id order, optionally of one status or topic.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_subscribers(
        &self,
        status: Option<&str>,
        topic: Option<&TopicSlug>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<SubscriberSummary>> {
        let sql = "SELECT s.id, s.email, s.status, s.locale, s.delivery_time, s.timezone, s.created_at \
                   FROM subscribers s WHERE s.id > $1 AND ($2 IS NULL OR s.status = $2) \
                   AND ($3 IS NULL OR EXISTS (SELECT 1 FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id \
                   WHERE st.subscriber_id = s.id AND t.slug = $3)) ORDER BY s.id LIMIT $4";
        let rows = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(after)
            .bind(status)
            .bind(topic.map(TopicSlug::as_str))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }
}
