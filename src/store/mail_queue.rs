//! The durable mail queue. A mail is a row written in the same transaction as the
//! change that causes it; workers claim due rows with a lease, deliver them and
//! record the outcome. A worker that dies leaves its lease to expire, and the mail
//! is claimed again: at most the mails in flight at a crash can be sent twice.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Store, StoreResult, on_pool};

/// A rendered mail to queue.
#[derive(Debug, Clone)]
pub struct NewMail {
    /// What it is, for history and limits: `confirm`, `already-subscribed`, …
    pub kind: &'static str,
    /// Envelope recipient.
    pub recipient: String,
    /// Envelope sender (bounces go there).
    pub envelope_from: String,
    /// The complete RFC 5322 message.
    pub message: Vec<u8>,
}

/// A mail a worker has claimed.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedMail {
    /// Queue id.
    pub id: i64,
    /// The reader it is for, if any: a relay refusing their address bounces them.
    pub subscriber_id: Option<i64>,
    /// Envelope recipient.
    pub recipient: String,
    /// Envelope sender.
    pub envelope_from: String,
    /// The message.
    pub message: Vec<u8>,
    /// Attempts including this one.
    pub attempts: i32,
}

/// Queues one mail; bind subscriber id, kind, recipient, envelope sender, message, now.
pub(super) const INSERT_MAIL: &str = "INSERT INTO mail_jobs (subscriber_id, kind, recipient, \
    envelope_from, message, status, next_attempt_at, created_at) \
    VALUES ($1, $2, $3, $4, $5, 'queued', $6, $6)";

const CLAIM_PG: &str = "UPDATE mail_jobs SET locked_until = $2, attempts = attempts + 1 \
    WHERE id IN (SELECT id FROM mail_jobs WHERE status = 'queued' AND next_attempt_at <= $1 \
    AND (locked_until IS NULL OR locked_until <= $4) ORDER BY next_attempt_at, id LIMIT $3 \
    FOR UPDATE SKIP LOCKED) \
    RETURNING id, subscriber_id, recipient, envelope_from, message, attempts";
const CLAIM_SQLITE: &str = "UPDATE mail_jobs SET locked_until = $2, attempts = attempts + 1 \
    WHERE id IN (SELECT id FROM mail_jobs WHERE status = 'queued' AND next_attempt_at <= $1 \
    AND (locked_until IS NULL OR locked_until <= $4) ORDER BY next_attempt_at, id LIMIT $3) \
    RETURNING id, subscriber_id, recipient, envelope_from, message, attempts";

impl Store {
    /// Claims up to `limit` mails due at `due_at` until `lease_until`; nobody else
    /// gets them before the lease runs out. Leases are measured on the system clock
    /// (`lease_now`): they are about how long a worker may take, not about the
    /// schedule, which may follow another clock.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn claim_mail(
        &self,
        due_at: DateTime<Utc>,
        lease_now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMail>> {
        let sql = if self.is_postgres() {
            CLAIM_PG
        } else {
            CLAIM_SQLITE
        };
        let mut mails: Vec<ClaimedMail> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(due_at)
            .bind(lease_until)
            .bind(i64::from(limit))
            .bind(lease_now)
            .fetch_all(pool)
            .await)?;
        mails.sort_by_key(|m| m.id);
        Ok(mails)
    }

    /// Records the delivery of mails in one statement and drops their bodies: they
    /// may hold a link token, and only the history is needed from now on.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mails_sent(&self, ids: &[i64], now: DateTime<Utc>) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "UPDATE mail_jobs SET status = 'sent', message = NULL, locked_until = NULL, last_error = NULL, finished_at = ",
            );
            // A mail withdrawn meanwhile (unsubscribe, bounce) keeps that status.
            q.push_bind(now).push(" WHERE status = 'queued' AND id IN (");
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            list.push_unseparated(")");
            q.build().execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    /// Puts a mail back for another attempt at `next_at`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_retry(
        &self,
        id: i64,
        next_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        let sql = "UPDATE mail_jobs SET next_attempt_at = $2, locked_until = NULL, last_error = $3 \
                   WHERE id = $1";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(next_at).bind(error).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Gives a mail up for good (a 5xx, or too many attempts).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_failed(&self, id: i64, now: DateTime<Utc>, error: &str) -> StoreResult<()> {
        let sql = "UPDATE mail_jobs SET status = 'failed', message = NULL, locked_until = NULL, \
                   last_error = $3, finished_at = $2 WHERE id = $1";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(now).bind(error).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Hands a claimed mail back without counting the attempt (at shutdown, or
    /// when the relay is unavailable), noting why if there is a reason.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_release(&self, id: i64, reason: Option<&str>) -> StoreResult<()> {
        let sql = "UPDATE mail_jobs SET locked_until = NULL, attempts = attempts - 1, \
                   last_error = COALESCE($2, last_error) WHERE id = $1 AND status = 'queued'";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(reason).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Mails waiting to be delivered (queued, including those being sent).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_queue_depth(&self) -> StoreResult<i64> {
        let sql = "SELECT COUNT(*) FROM mail_jobs WHERE status = 'queued'";
        let n = on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await)?;
        Ok(n)
    }
}
