//! The confirmation (double opt-in): what a token is worth, confirming, and the
//! purge of sign-ups never confirmed.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::super::counters::{Tally, flush_tally};
use super::super::decode::StoredRow;
use super::super::mail_queue::MAIL_TABLES;
use super::super::webhooks::ReaderEvent;
use super::super::{BeginWrite, Store, StoreError, StoreResult, WebhookEvent, on_pool, on_tx};
use crate::domain::{DeliverySchedule, EmailAddress, Locale, SubscriberStatus, TokenHash};

/// What a confirmation token is worth right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// No such token (never issued, or purged).
    Unknown,
    /// Issued, but its lifetime is over and the reader never confirmed.
    Expired,
    /// Usable.
    Valid,
}

/// The result of [`Store::confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// No such token.
    Unknown,
    /// The token's lifetime is over.
    Expired,
    /// Confirmed now.
    Confirmed,
    /// Was confirmed before: nothing changed.
    AlreadyConfirmed,
}

#[derive(FromRow)]
struct TokenRow {
    /// `None` once the sign-up was purged: the token is then expired for good.
    subscriber_id: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    status: Option<String>,
    locale: Option<String>,
    delivery_time: Option<String>,
    timezone: Option<String>,
    weekdays: Option<i64>,
    email: Option<String>,
}

/// A stored confirmation token with the reader it belongs to.
struct ConfirmToken {
    expires_at: Option<DateTime<Utc>>,
    /// `None` once the sign-up was purged.
    reader: Option<TokenReader>,
}

/// The reader a token belongs to.
struct TokenReader {
    id: i64,
    status: SubscriberStatus,
    locale: Locale,
    schedule: DeliverySchedule,
    email: EmailAddress,
}

impl TryFrom<TokenRow> for ConfirmToken {
    type Error = StoreError;

    fn try_from(t: TokenRow) -> Result<Self, StoreError> {
        let reader = match t.subscriber_id {
            None => None,
            Some(id) => {
                // The reader's columns are NOT NULL: one missing does not parse.
                let row = StoredRow::subscriber(id);
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                Some(TokenReader {
                    id,
                    status: row.parse(
                        "status",
                        text(&t.status).as_str(),
                        SubscriberStatus::parse,
                    )?,
                    locale: row.parse("locale", text(&t.locale).as_str(), Locale::parse)?,
                    schedule: row.schedule(
                        &text(&t.delivery_time),
                        &text(&t.timezone),
                        t.weekdays.unwrap_or_default(),
                    )?,
                    email: row.parse("email", text(&t.email).as_str(), EmailAddress::parse)?,
                })
            }
        };
        Ok(Self {
            expires_at: t.expires_at,
            reader,
        })
    }
}

impl ConfirmToken {
    fn locale(&self) -> Option<Locale> {
        self.reader.as_ref().map(|r| r.locale)
    }

    /// Whether the token's lifetime is over (a confirmed reader's never is).
    fn expired(&self, now: DateTime<Utc>) -> bool {
        match &self.reader {
            None => true,
            Some(r) => {
                r.status != SubscriberStatus::Confirmed && self.expires_at.is_some_and(|e| e <= now)
            }
        }
    }
}

impl Store {
    /// Looks at a confirmation token without changing anything (for the GET page).
    /// Also returns the reader's language, when the token is known.
    ///
    /// # Errors
    /// When the database fails, or the reader's row does not parse.
    pub async fn confirm_token_state(
        &self,
        hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> StoreResult<(TokenState, Option<Locale>)> {
        let Some(token) = self.find_confirm_token(hash).await? else {
            return Ok((TokenState::Unknown, None));
        };
        let state = if token.expired(now) {
            TokenState::Expired
        } else {
            TokenState::Valid
        };
        Ok((state, token.locale()))
    }

    async fn find_confirm_token(&self, hash: &TokenHash) -> StoreResult<Option<ConfirmToken>> {
        let sql = "SELECT t.subscriber_id, t.expires_at, s.status, s.locale, s.delivery_time, \
                   s.timezone, s.weekdays, s.email FROM tokens t \
                   LEFT JOIN subscribers s ON s.id = t.subscriber_id \
                   WHERE t.hash = $1 AND t.purpose = 'confirm'";
        let row: Option<TokenRow> = on_pool!(self, pool => sqlx::query_as(sql).bind(&hash.0[..]).fetch_optional(pool).await)?;
        row.map(ConfirmToken::try_from).transpose()
    }

    /// Confirms the subscription a token belongs to. Idempotent: a second call
    /// reports [`ConfirmOutcome::AlreadyConfirmed`] and changes nothing. Also returns
    /// the reader's language, when the token is known. The first digest is due at the
    /// reader's next slot and reaches back to items that arrived `lookback` before
    /// the confirmation.
    ///
    /// # Errors
    /// When the database fails, or the reader's row does not parse.
    pub async fn confirm(
        &self,
        hash: &TokenHash,
        now: DateTime<Utc>,
        ip: Option<&str>,
        lookback: chrono::Duration,
    ) -> StoreResult<(ConfirmOutcome, Option<Locale>)> {
        let Some(token) = self.find_confirm_token(hash).await? else {
            return Ok((ConfirmOutcome::Unknown, None));
        };
        let locale = token.locale();
        let Some(reader) = token.reader.as_ref() else {
            return Ok((ConfirmOutcome::Expired, locale));
        };
        if reader.status == SubscriberStatus::Confirmed {
            return Ok((ConfirmOutcome::AlreadyConfirmed, locale));
        }
        if token.expired(now) {
            return Ok((ConfirmOutcome::Expired, locale));
        }
        let next_slot = reader.schedule.next_after(now);
        let sql = "UPDATE subscribers SET status = 'confirmed', confirmed_at = $2, confirmed_ip = $3, \
                   updated_at = $2, unsubscribed_at = NULL, next_slot_at = $4, \
                   last_item_id = COALESCE((SELECT MAX(id) FROM items WHERE created_at < $5), 0) \
                   WHERE id = $1 AND status = 'pending'";
        let mut tx = self.begin().await?;
        let done = on_tx!(&mut tx, tx => sqlx::query(sql)
            .bind(reader.id)
            .bind(now)
            .bind(ip)
            .bind(next_slot)
            .bind(now - lookback)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected()))?;
        let mut tally = Tally::default();
        tally.subscribers(
            Some(SubscriberStatus::Pending),
            Some(SubscriberStatus::Confirmed),
            done as i64,
        );
        if done == 1 {
            let event = ReaderEvent {
                event: WebhookEvent::Confirmed,
                subscriber_id: reader.id,
                email: reader.email.as_str(),
                mail_event: None,
            };
            tx.enqueue_webhook(event, now).await?;
        }
        tx.commit_with(tally).await?;
        if done == 1 {
            self.unsuppress(reader.email.as_str()).await?;
        }
        // Zero rows: a concurrent confirmation won the race; the result is the same.
        let outcome = if done == 1 {
            ConfirmOutcome::Confirmed
        } else {
            ConfirmOutcome::AlreadyConfirmed
        };
        Ok((outcome, locale))
    }

    /// Deletes pending sign-ups not confirmed since `cutoff`, with everything
    /// attached to them except their token hashes, which answer "expired" for
    /// another 30 days, and the sign-up limits' counts older than `cutoff`.
    /// Returns how many sign-ups were deleted.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purge_pending(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let postgres = self.is_postgres();
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut tally = Tally::default();
            const PURGED: &str = "FROM subscribers \
                WHERE status = 'pending' AND confirmed_at IS NULL AND updated_at < $1";
            // All their mail goes: queued mail counted out of the queue, the
            // confirmation already sent or failed (in the mail log) with it. On
            // PostgreSQL, where no foreign key takes it along (migration 0018),
            // the readers go first, their rows locked as an erasure or a resent
            // confirmation locks them, and then the mail of exactly those readers,
            // read after any such transaction committed. On SQLite (one writer, and the key's cascade
            // would take the mail uncounted) the mail goes first.
            let (purged, dropped): (u64, Vec<(String, String)>) = if postgres {
                let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "DELETE {PURGED} RETURNING id"
                )))
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?;
                let mut dropped = Vec::new();
                for chunk in ids.chunks(1000) {
                    for table in MAIL_TABLES {
                        let mut q = sqlx::QueryBuilder::new(format!(
                            "DELETE FROM {table} WHERE subscriber_id IN ("
                        ));
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(*id);
                        }
                        list.push_unseparated(") RETURNING kind, status");
                        dropped.extend(
                            q.build_query_as::<(String, String)>()
                                .fetch_all(&mut *tx)
                                .await?,
                        );
                    }
                }
                (ids.len() as u64, dropped)
            } else {
                let mut dropped = Vec::new();
                for table in MAIL_TABLES {
                    dropped.extend(
                        sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(format!(
                            "DELETE FROM {table} WHERE subscriber_id IN (SELECT id {PURGED}) RETURNING kind, status"
                        )))
                        .bind(cutoff)
                        .fetch_all(&mut *tx)
                        .await?,
                    );
                }
                let purged = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE {PURGED}")))
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                (purged, dropped)
            };
            for (kind, _) in dropped.iter().filter(|(_, status)| status == "queued") {
                tally.mails(kind, Some("queued"), None, 1);
            }
            tally.subscribers(Some(SubscriberStatus::Pending), None, purged as i64);
            // A former reader who signed up again and never confirmed goes back to
            // unsubscribed: an unconfirmed form must not erase their history.
            let returned = sqlx::query(
                "UPDATE subscribers SET status = 'unsubscribed' WHERE status = 'pending' \
                 AND confirmed_at IS NOT NULL AND updated_at < $1",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tally.subscribers(
                Some(SubscriberStatus::Pending),
                Some(SubscriberStatus::Unsubscribed),
                returned as i64,
            );
            sqlx::query("DELETE FROM tokens WHERE subscriber_id IS NULL AND expires_at < $1")
                .bind(cutoff - chrono::Duration::days(30))
                .execute(&mut *tx)
                .await?;
            // The sign-up limits count the last hour; the lifetime is at least one.
            sqlx::query("DELETE FROM signup_mails WHERE created_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(purged)
        })
    }
}
