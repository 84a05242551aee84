//! The digest pass's side of the store: claiming due readers, recording their
//! digests and next slots, unsubscribing, statistics, and the link key.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::counters::{Tally, flush_tally};
use super::items::load_digest_items;
use super::mail_queue::NewMail;
use super::{BeginWrite, BoxError, DigestItems, Store, StoreError, StoreResult, on_pool};
use crate::domain::{DeliverySchedule, DeliveryTime, LinkKey, Locale, TimeZone, Weekdays, hex};

/// A reader whose slot has come, claimed for this pass.
#[derive(Debug, Clone, FromRow)]
pub struct DueReader {
    /// Subscriber id.
    pub id: i64,
    /// Address.
    pub email: String,
    /// Language, as stored.
    pub locale: String,
    /// Local delivery time, as stored.
    pub delivery_time: String,
    /// Zone, as stored.
    pub timezone: String,
    /// Weekday bits.
    pub weekdays: i64,
    /// The newest item their digests have covered.
    pub last_item_id: i64,
    /// The slot being served.
    pub next_slot_at: DateTime<Utc>,
    /// Chosen topic ids.
    #[sqlx(skip)]
    pub topic_ids: Vec<i64>,
}

impl DueReader {
    /// The reader's language (German if the stored value is unknown).
    pub fn locale(&self) -> Locale {
        Locale::parse(&self.locale).unwrap_or_default()
    }

    /// The reader's schedule; `None` if what is stored no longer parses.
    pub fn schedule(&self) -> Option<DeliverySchedule> {
        Some(DeliverySchedule {
            time: DeliveryTime::parse(&self.delivery_time).ok()?,
            timezone: TimeZone::parse(&self.timezone).ok()?,
            weekdays: Weekdays::from_bits(self.weekdays).unwrap_or_default(),
        })
    }
}

/// A topic's display data.
#[derive(Debug, Clone, FromRow)]
pub struct TopicName {
    /// Id.
    pub id: i64,
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// What one batch of due readers looks like.
#[derive(Debug, Clone)]
pub struct DigestBatch {
    /// The readers, oldest slot first.
    pub readers: Vec<DueReader>,
    /// What the readers' digests may list: per topic of theirs at most
    /// `per_topic` of the newest arrivals up to the pass's watermark (see
    /// [`DigestItems`]).
    pub items: DigestItems,
    /// The readers' topics by id.
    pub topics: HashMap<i64, TopicName>,
    /// The pass's watermark.
    pub watermark: i64,
}

/// What to record for one reader.
#[derive(Debug, Clone)]
pub struct DigestPlan {
    /// The reader.
    pub subscriber_id: i64,
    /// The slot served.
    pub slot_at: DateTime<Utc>,
    /// Their next slot.
    pub next_slot_at: DateTime<Utc>,
    /// The newest item now covered.
    pub last_item_id: i64,
    /// The digest, when there is anything new.
    pub mail: Option<(NewMail, i32)>,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Readers whose slot had come.
    pub due: usize,
    /// Digests queued.
    pub enqueued: usize,
}

/// Counters for `/api/v1/stats` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Subscribers by status.
    pub subscribers: BTreeMap<String, i64>,
    /// Mails waiting for delivery.
    pub queue_depth: i64,
    /// Mails by kind and final status: `{"digest": {"sent": 3, "failed": 1}}`.
    pub mails: BTreeMap<String, BTreeMap<String, i64>>,
    /// Mails that needed more than one attempt.
    pub retried: i64,
    /// Digests sent.
    pub digests_sent: i64,
    /// Digests given up.
    pub digests_failed: i64,
    /// Feeds, and how they are doing.
    pub feeds: FeedStats,
    /// Bounces, complaints and unsubscribe replies, by kind.
    pub mail_events: BTreeMap<String, i64>,
    /// Sign-ups refused by each limit: `client`, `mailbox`, `domain`, `global`.
    pub rate_limited: BTreeMap<String, i64>,
}

/// Feed health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedStats {
    /// Feeds configured.
    pub total: i64,
    /// Feeds whose last poll failed.
    pub failing: i64,
    /// Failed polls ever, by feed name.
    pub failures: BTreeMap<String, i64>,
}

const DUE_PG: &str = "SELECT id, email, locale, delivery_time, timezone, weekdays, last_item_id, next_slot_at \
    FROM subscribers WHERE status = 'confirmed' AND next_slot_at <= $1 ORDER BY next_slot_at, id LIMIT $2 \
    FOR UPDATE SKIP LOCKED";
const DUE_SQLITE: &str = "SELECT id, email, locale, delivery_time, timezone, weekdays, last_item_id, next_slot_at \
    FROM subscribers WHERE status = 'confirmed' AND next_slot_at <= $1 ORDER BY next_slot_at, id LIMIT $2";

impl Store {
    /// Claims up to `limit` readers due at `at`, loads at most `per_topic` items per
    /// topic of theirs (the newest arrivals up to `watermark`), lets `plan` decide their digests,
    /// and records everything in the same transaction: next slots, watermarks,
    /// digest log rows and queued mails. Two instances never claim the same reader
    /// (`FOR UPDATE SKIP LOCKED`); once committed, a reader is not due again before
    /// their next slot. `(subscriber, slot)` is unique in the digest log, so a slot
    /// can never produce a second digest.
    ///
    /// # Errors
    /// When the database or `plan` fails; nothing is recorded then.
    pub async fn digest_batch(
        &self,
        at: DateTime<Utc>,
        watermark: i64,
        limit: u32,
        per_topic: usize,
        now: DateTime<Utc>,
        plan: impl FnOnce(&DigestBatch) -> Result<Vec<DigestPlan>, BoxError>,
    ) -> StoreResult<BatchOutcome> {
        let postgres = self.is_postgres();
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut readers: Vec<DueReader> = sqlx::query_as(if postgres { DUE_PG } else { DUE_SQLITE })
                .bind(at)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            if readers.is_empty() {
                tx.commit().await?;
                return Ok(BatchOutcome::default());
            }
            let mut ids = sqlx::QueryBuilder::new("SELECT subscriber_id, topic_id FROM subscriber_topics WHERE subscriber_id IN (");
            let mut list = ids.separated(", ");
            for r in &readers {
                list.push_bind(r.id);
            }
            list.push_unseparated(")");
            let pairs: Vec<(i64, i64)> = ids.build_query_as().fetch_all(&mut *tx).await?;
            let mut topics_of: HashMap<i64, Vec<i64>> = HashMap::new();
            for (subscriber, topic) in pairs {
                topics_of.entry(subscriber).or_default().push(topic);
            }
            for r in &mut readers {
                r.topic_ids = topics_of.remove(&r.id).unwrap_or_default();
            }

            let items = load_digest_items!(tx, &readers, watermark, per_topic)?;
            let mut names = sqlx::QueryBuilder::new("SELECT id, slug, name FROM topics WHERE id IN (");
            let mut list = names.separated(", ");
            for topic in DigestItems::windows(&readers).into_keys() {
                list.push_bind(topic);
            }
            // No topics at all: `IN (NULL)` matches nothing and is valid SQL.
            list.push("NULL");
            list.push_unseparated(")");
            let topics: Vec<TopicName> = names.build_query_as().fetch_all(&mut *tx).await?;
            let batch = DigestBatch {
                readers,
                items,
                topics: topics.into_iter().map(|t| (t.id, t)).collect(),
                watermark,
            };
            let due = batch.readers.len();
            let plans = plan(&batch).map_err(StoreError::Callback)?;

            let with_mail: Vec<&DigestPlan> = plans.iter().filter(|p| p.mail.is_some()).collect();
            let mut enqueued = 0;
            let mut refused: std::collections::HashSet<i64> = std::collections::HashSet::new();
            for chunk in with_mail.chunks(500) {
                // The digest log first: only the slots it accepts get a mail.
                let mut log = sqlx::QueryBuilder::new("INSERT INTO digests (subscriber_id, slot_at, item_count, created_at) ");
                log.push_values(chunk.iter(), |mut row, p| {
                    row.push_bind(p.subscriber_id)
                        .push_bind(p.slot_at)
                        .push_bind(p.mail.as_ref().map_or(0, |m| m.1))
                        .push_bind(now);
                });
                log.push(" ON CONFLICT (subscriber_id, slot_at) DO NOTHING RETURNING subscriber_id");
                let accepted: Vec<i64> = log.build_query_scalar().fetch_all(&mut *tx).await?;
                let accepted: std::collections::HashSet<i64> = accepted.into_iter().collect();
                refused.extend(chunk.iter().map(|p| p.subscriber_id).filter(|id| !accepted.contains(id)));
                let mails: Vec<(&i64, &NewMail)> = chunk
                    .iter()
                    .filter(|p| accepted.contains(&p.subscriber_id))
                    .filter_map(|p| p.mail.as_ref().map(|m| (&p.subscriber_id, &m.0)))
                    .collect();
                if mails.is_empty() {
                    continue;
                }
                enqueued += mails.len();
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO mail_jobs (subscriber_id, kind, recipient, envelope_from, message, status, next_attempt_at, created_at) ",
                );
                insert.push_values(mails, |mut row, (id, mail)| {
                    row.push_bind(*id)
                        .push_bind(mail.kind)
                        .push_bind(mail.recipient.clone())
                        .push_bind(mail.envelope_from.clone())
                        .push_bind(mail.message.clone())
                        .push_bind("queued")
                        .push_bind(now)
                        .push_bind(now);
                });
                insert.build().execute(&mut *tx).await?;
            }

            // A slot the log refused (served before) sends nothing, so the reader's
            // watermark stays where it was: those items go into the next digest.
            let previous: HashMap<i64, i64> = batch.readers.iter().map(|r| (r.id, r.last_item_id)).collect();
            for chunk in plans.chunks(500) {
                // One statement per chunk; `VALUES` columns are column1… in both dialects.
                let mut update = sqlx::QueryBuilder::new(
                    "UPDATE subscribers SET next_slot_at = v.column2, last_item_id = v.column3 FROM (",
                );
                update.push_values(chunk, |mut row, p| {
                    let last = if refused.contains(&p.subscriber_id) { previous[&p.subscriber_id] } else { p.last_item_id };
                    row.push_bind(p.subscriber_id).push_bind(p.next_slot_at).push_bind(last);
                });
                update.push(") AS v WHERE subscribers.id = v.column1");
                update.build().execute(&mut *tx).await?;
            }
            let mut tally = Tally::default();
            tally.mails("digest", None, Some("queued"), enqueued as i64);
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(BatchOutcome { due, enqueued })
        })
    }

    /// Unsubscribes a reader: no further digest, queued ones are withdrawn, and old
    /// confirmation links can no longer bring the subscription back. Idempotent.
    /// Returns the reader's language, or `None` when there is no such reader.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn unsubscribe(
        &self,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Locale>> {
        let lock_sql = if self.is_postgres() {
            "SELECT locale, status FROM subscribers WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT locale, status FROM subscribers WHERE id = $1"
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Locked, so that the status counted as left is the one changed.
            let row: Option<(String, String)> = sqlx::query_as(lock_sql)
                .bind(subscriber_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((locale, status)) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            let mut tally = Tally::default();
            tally.subscribers(Some(&status), Some("unsubscribed"), 1);
            sqlx::query(
                "UPDATE subscribers SET status = 'unsubscribed', unsubscribed_at = $2, updated_at = $2, \
                 next_slot_at = NULL WHERE id = $1 AND status <> 'unsubscribed'",
            )
            .bind(subscriber_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM tokens WHERE subscriber_id = $1")
                .bind(subscriber_id)
                .execute(&mut *tx)
                .await?;
            let withdrawn = sqlx::query(
                "UPDATE mail_jobs SET status = 'failed', message = NULL, last_error = 'unsubscribed before delivery', \
                 finished_at = $2 WHERE subscriber_id = $1 AND status = 'queued' AND kind = 'digest'",
            )
            .bind(subscriber_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tally.mails("digest", Some("queued"), Some("failed"), withdrawn as i64);
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(Some(Locale::parse(&locale).unwrap_or_default()))
        })
    }

    /// A reader's status and language, for the unsubscribe page.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn subscriber_status(
        &self,
        subscriber_id: i64,
    ) -> StoreResult<Option<(String, Locale)>> {
        let row: Option<(String, String)> = on_pool!(self, pool => sqlx::query_as("SELECT status, locale FROM subscribers WHERE id = $1")
            .bind(subscriber_id)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(|(status, locale)| (status, Locale::parse(&locale).unwrap_or_default())))
    }

    /// Counters for monitoring: read from table `counters` (a few rows per counter)
    /// and the feeds, so the cost does not grow with readers or mail history.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn stats(&self) -> StoreResult<Stats> {
        on_pool!(self, pool => {
            let mut stats = Stats::default();
            for status in ["pending", "confirmed", "unsubscribed", "bounced"] {
                stats.subscribers.insert(status.to_owned(), 0);
            }
            for limit in super::LimitScope::ALL {
                stats.rate_limited.insert(limit.as_str().to_owned(), 0);
            }
            let counters: Vec<(String, i64)> = sqlx::query_as(
                "SELECT name, CAST(SUM(value) AS BIGINT) FROM counters GROUP BY name",
            )
            .fetch_all(pool)
            .await?;
            // Per kind: enqueued, sent, failed, dropped (see `store::counters`).
            let mut mail_totals: BTreeMap<String, [i64; 4]> = BTreeMap::new();
            for (name, value) in counters {
                let mut parts = name.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("subscribers"), Some(status), None) => {
                        stats.subscribers.insert(status.to_owned(), value);
                    }
                    (Some("mails_retried"), None, None) => stats.retried = value,
                    (Some("mails"), Some(kind), Some(status)) => {
                        let totals = mail_totals.entry(kind.to_owned()).or_insert([0; 4]);
                        match status {
                            "enqueued" => totals[0] = value,
                            "sent" => totals[1] = value,
                            "failed" => totals[2] = value,
                            "dropped" => totals[3] = value,
                            _ => {}
                        }
                    }
                    (Some("mail_events"), Some(kind), None) if value != 0 => {
                        stats.mail_events.insert(kind.to_owned(), value);
                    }
                    (Some("rate_limited"), Some(limit), None) => {
                        stats.rate_limited.insert(limit.to_owned(), value);
                    }
                    _ => {}
                }
            }
            for (kind, [enqueued, sent, failed, dropped]) in mail_totals {
                let queued = enqueued - sent - failed - dropped;
                stats.queue_depth += queued;
                if kind == "digest" {
                    (stats.digests_sent, stats.digests_failed) = (sent, failed);
                }
                // As before the counters: statuses without mail are left out.
                let by_status: BTreeMap<String, i64> = [("queued", queued), ("sent", sent), ("failed", failed)]
                    .into_iter()
                    .filter(|(_, n)| *n != 0)
                    .map(|(status, n)| (status.to_owned(), n))
                    .collect();
                if !by_status.is_empty() {
                    stats.mails.insert(kind, by_status);
                }
            }
            let feeds: Vec<(String, i32, i64)> = sqlx::query_as("SELECT name, failures, failures_total FROM feeds")
                .fetch_all(pool)
                .await?;
            for (name, in_a_row, total) in feeds {
                stats.feeds.total += 1;
                stats.feeds.failing += i64::from(in_a_row > 0);
                stats.feeds.failures.insert(name, total);
            }
            Ok(stats)
        })
    }

    /// The key that signs unsubscribe and preferences links: made once, on first
    /// use, and shared by every instance on the same database.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn link_key(&self) -> StoreResult<LinkKey> {
        use rand::RngCore;
        let mut fresh = [0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        let value: String = on_pool!(self, pool => {
            sqlx::query("INSERT INTO settings (key, value) VALUES ('link_key', $1) ON CONFLICT (key) DO NOTHING")
                .bind(hex(&fresh))
                .execute(pool)
                .await?;
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'link_key'").fetch_one(pool).await
        })?;
        Ok(LinkKey::new(value.into_bytes()))
    }
}
