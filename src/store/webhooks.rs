//! The durable webhook queue: tables `webhook_endpoints` (the configured URLs,
//! synced at each start of `serve`) and `webhook_deliveries` (one row per event and
//! endpoint). An event is written by [`Tx::enqueue_webhook`] inside the transaction
//! of the change it reports (a confirmation, an unsubscribe, a bounce, a complaint,
//! an erasure), one row per *active* endpoint, so nothing is written while no
//! webhook is configured and nothing is sent for a change that rolled back. The
//! deliverer (`crate::webhooks`) claims due rows with a lease, as the mail workers
//! do, and records each attempt; a finished row keeps its history and loses its
//! payload.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sqlx::FromRow;

use super::{BeginWrite, Store, StoreResult, Tx, on_pool, on_tx};
use crate::domain::hex;

/// What happened to a reader, as the webhook's `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    /// The reader confirmed their subscription.
    Confirmed,
    /// The reader left (link, preferences, console, API, or a reply).
    Unsubscribed,
    /// The address was marked bounced (a hard bounce, or too many soft ones).
    Bounced,
    /// A spam complaint came back (the reader is unsubscribed and suppressed).
    Complained,
    /// Everything about the reader was erased (GDPR Art. 17).
    Erased,
}

impl WebhookEvent {
    /// The `type` of the payload: `subscriber.confirmed`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "subscriber.confirmed",
            Self::Unsubscribed => "subscriber.unsubscribed",
            Self::Bounced => "subscriber.bounced",
            Self::Complained => "subscriber.complained",
            Self::Erased => "subscriber.erased",
        }
    }
}

/// One event about one reader, on its way into the queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReaderEvent<'a> {
    /// What happened.
    pub(super) event: WebhookEvent,
    /// The reader.
    pub(super) subscriber_id: i64,
    /// Their address: the one thing a receiver can match its own records by.
    pub(super) email: &'a str,
    /// The mail event behind a bounce or complaint (`hard_bounce`, `complaint`, …).
    pub(super) mail_event: Option<&'a str>,
}

/// A delivery the deliverer has claimed.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedWebhook {
    /// Queue id.
    pub id: i64,
    /// The endpoint it goes to.
    pub endpoint_id: i64,
    /// The `webhook-id` header: the same on every attempt.
    pub message_id: String,
    /// The JSON body, signed as it is.
    pub payload: String,
    /// Attempts including this one.
    pub attempts: i32,
}

/// A delivery as the console lists it (no payload: it may hold an address).
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct WebhookDelivery {
    /// Queue id.
    pub id: i64,
    /// The endpoint's URL.
    pub url: String,
    /// `subscriber.confirmed`, ….
    pub event_type: String,
    /// The `webhook-id`.
    pub message_id: String,
    /// The reader (gone after an erasure).
    pub subscriber_id: Option<i64>,
    /// `queued`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The HTTP status of the last answer, if there was one.
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
    /// When a queued delivery is tried next.
    pub next_attempt_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One queued row per active endpoint; bind message id, type, subscriber, payload, now.
const ENQUEUE: &str = "INSERT INTO webhook_deliveries (endpoint_id, message_id, event_type, subscriber_id, \
    payload, status, attempts, next_attempt_at, created_at) \
    SELECT id, $1, $2, $3, $4, 'queued', 0, $5, $5 FROM webhook_endpoints WHERE active = 1 ORDER BY id";

/// The claim of due deliveries, around its search ([`CLAIM_SEARCH`]): on PostgreSQL
/// `id = ANY(ARRAY(…))`, which runs the search once whatever the table's
/// statistics say (see the mail queue's claim), on SQLite `id IN (…)`.
const CLAIM_HEAD: &str = "UPDATE webhook_deliveries SET locked_until = $2, lease_owner = $5, attempts = attempts + 1 \
    WHERE id ";
const CLAIM_SEARCH: &str = "(SELECT id FROM webhook_deliveries WHERE status = 'queued' AND next_attempt_at <= $1 \
    AND (locked_until IS NULL OR locked_until <= $4) ORDER BY next_attempt_at, id LIMIT $3";
const CLAIM_TAIL: &str =
    " RETURNING id, endpoint_id, message_id, COALESCE(payload, '') AS payload, attempts";

const RECENT: &str = "SELECT d.id, e.url, d.event_type, d.message_id, d.subscriber_id, d.status, d.attempts, \
    d.last_status, d.last_error, d.created_at, d.next_attempt_at, d.finished_at \
    FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id ORDER BY d.id DESC LIMIT $1";

impl Store {
    /// Makes `urls` the active endpoints: new ones are added, known ones made
    /// active again, the others made inactive and their queued deliveries given
    /// up. Returns the active endpoints as `(id, url)`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn sync_webhook_endpoints(
        &self,
        urls: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<(i64, String)>> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE webhook_endpoints SET active = 0").execute(&mut *tx).await?;
            for url in urls {
                sqlx::query(
                    "INSERT INTO webhook_endpoints (url, active) VALUES ($1, 1) \
                     ON CONFLICT (url) DO UPDATE SET active = 1",
                )
                .bind(url)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'failed', payload = NULL, locked_until = NULL, \
                 lease_owner = NULL, finished_at = $1, last_error = 'endpoint no longer configured' \
                 WHERE status = 'queued' AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE active = 0)",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let active: Vec<(i64, String)> =
                sqlx::query_as("SELECT id, url FROM webhook_endpoints WHERE active = 1 ORDER BY id")
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(active)
        })
    }

    /// Claims up to `limit` deliveries due at `due_at` for `owner` until
    /// `lease_until` (leases on the system clock, `lease_now`, as for mail).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn claim_webhooks(
        &self,
        due_at: DateTime<Utc>,
        lease_now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedWebhook>> {
        let sql = if self.is_postgres() {
            format!("{CLAIM_HEAD}= ANY(ARRAY{CLAIM_SEARCH} FOR UPDATE SKIP LOCKED)){CLAIM_TAIL}")
        } else {
            format!("{CLAIM_HEAD}IN {CLAIM_SEARCH}){CLAIM_TAIL}")
        };
        let mut claimed: Vec<ClaimedWebhook> = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let claimed = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(due_at)
                .bind(lease_until)
                .bind(i64::from(limit))
                .bind(lease_now)
                .bind(owner)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            claimed
        });
        claimed.sort_by_key(|w| w.id);
        Ok(claimed)
    }

    /// Records the outcome of an attempt `owner` made: delivered (`next_at` is
    /// `None` and `error` is `None`), to be tried again at `next_at`, or given up
    /// (`next_at` is `None`, with an `error`). A finished delivery drops its
    /// payload.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn webhook_attempted(
        &self,
        id: i64,
        owner: i64,
        attempt: &WebhookAttempt<'_>,
    ) -> StoreResult<()> {
        let (status, finished) = match (attempt.next_at, attempt.error) {
            (Some(_), _) => ("queued", None),
            (None, None) => ("delivered", Some(attempt.now)),
            (None, Some(_)) => ("failed", Some(attempt.now)),
        };
        let sql = "UPDATE webhook_deliveries SET status = $3, locked_until = NULL, lease_owner = NULL, \
                   next_attempt_at = COALESCE($4, next_attempt_at), last_status = $5, last_error = $6, \
                   finished_at = $7, payload = CASE WHEN $3 = 'queued' THEN payload END \
                   WHERE id = $1 AND lease_owner = $2 AND status = 'queued'";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(id)
            .bind(owner)
            .bind(status)
            .bind(attempt.next_at)
            .bind(attempt.http_status)
            .bind(attempt.error)
            .bind(finished)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The newest `limit` deliveries, newest first, with their endpoint's URL.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn recent_webhook_deliveries(&self, limit: u32) -> StoreResult<Vec<WebhookDelivery>> {
        let rows = on_pool!(self, pool => sqlx::query_as(RECENT)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows)
    }

    /// Deletes finished deliveries that finished before `cutoff`; returns how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purge_finished_webhooks(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let sql = "DELETE FROM webhook_deliveries WHERE status <> 'queued' AND finished_at < $1";
        let n = on_pool!(self, pool => sqlx::query(sql)
            .bind(cutoff)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n)
    }
}

/// What one delivery attempt came to (see [`Store::webhook_attempted`]).
#[derive(Debug, Clone, Copy)]
pub struct WebhookAttempt<'a> {
    /// When it ended.
    pub now: DateTime<Utc>,
    /// The receiver's HTTP status, if it answered.
    pub http_status: Option<i32>,
    /// Why it failed; `None` when delivered.
    pub error: Option<&'a str>,
    /// When to try again; `None` when done or given up.
    pub next_at: Option<DateTime<Utc>>,
}

impl super::subscribers::Locked {
    /// `event` about this reader, with the mail event behind it if any.
    pub(super) fn event<'a>(
        &'a self,
        event: WebhookEvent,
        mail_event: Option<&'a str>,
    ) -> ReaderEvent<'a> {
        ReaderEvent {
            event,
            subscriber_id: self.id,
            email: &self.email,
            mail_event,
        }
    }
}

impl Tx {
    /// Queues `event` for every active endpoint, in the caller's transaction. The
    /// body follows the Standard Webhooks shape: `{"type", "timestamp", "data"}`.
    pub(super) async fn enqueue_webhook(
        &mut self,
        event: ReaderEvent<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let message_id = format!("msg_{}", hex(&id));
        let mut data = serde_json::json!({
            "subscriber_id": event.subscriber_id,
            "email": event.email,
        });
        if let Some(kind) = event.mail_event {
            data["mail_event"] = kind.into();
        }
        let payload = serde_json::json!({
            "type": event.event.as_str(),
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string();
        on_tx!(self, tx => sqlx::query(ENQUEUE)
            .bind(&message_id)
            .bind(event.event.as_str())
            .bind(event.subscriber_id)
            .bind(&payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
