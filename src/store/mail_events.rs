//! Mail events, table `mail_events`: what bounces, complaints and unsubscribe
//! replies (from `postbote inbound`) and refused deliveries (from the workers) said
//! about a reader, and what each does to them (see "A bounce, step by step" in
//! docs/ARCHITECTURE.md).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::counters::Tally;
use super::decode::StoredRow;
use super::subscribers::Locked;
use super::suppressions::Reason;
use super::{Store, StoreError, StoreResult, Tx, WebhookEvent, on_tx};
use crate::domain::{MailEventKind, SubscriberStatus};

/// A bounce, complaint or unsubscribe reply recorded for a reader.
#[derive(Debug, Clone, Serialize)]
pub struct MailEvent {
    /// When it was processed.
    pub at: DateTime<Utc>,
    /// What it was.
    pub kind: MailEventKind,
    /// Status code and diagnostic, or the report type.
    pub detail: String,
}

/// A `mail_events` row as stored.
#[derive(FromRow)]
pub(super) struct MailEventRow {
    id: i64,
    at: DateTime<Utc>,
    kind: String,
    detail: String,
}

impl TryFrom<MailEventRow> for MailEvent {
    type Error = StoreError;

    fn try_from(r: MailEventRow) -> Result<Self, StoreError> {
        let row = StoredRow::new("mail_events", r.id);
        Ok(Self {
            at: r.at,
            kind: row.parse("kind", r.kind.as_str(), MailEventKind::parse)?,
            detail: r.detail,
        })
    }
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

/// One event about to be recorded.
struct NewEvent<'a> {
    kind: MailEventKind,
    detail: &'a str,
    message_ref: Option<&'a str>,
    now: DateTime<Utc>,
}

impl Store {
    /// Records what an inbound message said about a reader and applies its effect.
    /// Returns the reader's status afterwards, or `None` when there is no such reader.
    ///
    /// # Errors
    /// When the database fails, or the reader's row does not parse.
    pub async fn record_mail_event(
        &self,
        subscriber_id: i64,
        kind: MailEventKind,
        detail: &str,
        message_ref: Option<&str>,
        effect: EventEffect,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<SubscriberStatus>> {
        let event = NewEvent {
            kind,
            detail,
            message_ref,
            now,
        };
        let mut tx = self.begin().await?;
        let Some(reader) = tx.lock_by_id(subscriber_id).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let mut tally = Tally::default();
        tally.event(kind);
        tx.insert_event(subscriber_id, &event).await?;
        tx.apply_effect(&reader, &event, effect).await?;
        if effect != EventEffect::Record {
            let reason = format!("withdrawn after {kind}");
            tx.withdraw_digests(subscriber_id, now, &reason, &mut tally)
                .await?;
        }
        let status = tx.status_of(subscriber_id).await?;
        if let Some(event) = webhook_event(reader.status, status, effect) {
            tx.enqueue_webhook(reader.event(event, Some(kind.as_str())), now)
                .await?;
        }
        tally.subscribers(Some(reader.status), Some(status), 1);
        tx.commit_with(tally).await?;
        Ok(Some(status))
    }
}

/// The webhook an event's effect calls for: a complaint always (it is news even
/// about a reader who had left), a bounce or an unsubscribe reply when it changed
/// the reader's status.
fn webhook_event(
    before: SubscriberStatus,
    after: SubscriberStatus,
    effect: EventEffect,
) -> Option<WebhookEvent> {
    let changed = before != after;
    match effect {
        EventEffect::UnsubscribeAndSuppress => Some(WebhookEvent::Complained),
        _ if changed && after == SubscriberStatus::Bounced => Some(WebhookEvent::Bounced),
        EventEffect::Unsubscribe if changed => Some(WebhookEvent::Unsubscribed),
        _ => None,
    }
}

impl Tx {
    /// Keeps the event; texts without NUL, cut to 1,000 and 500 characters.
    async fn insert_event(&mut self, subscriber_id: i64, e: &NewEvent<'_>) -> StoreResult<()> {
        let cut = |s: &str, max: usize| s.replace('\0', "").chars().take(max).collect::<String>();
        on_tx!(self, tx => sqlx::query(
            "INSERT INTO mail_events (subscriber_id, at, kind, detail, message_ref) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(subscriber_id)
        .bind(e.now)
        .bind(e.kind.as_str())
        .bind(cut(e.detail, 1000))
        .bind(e.message_ref.map(|r| cut(r, 500)))
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// What the event does to the reader: nothing, unsubscribe, or mark bounced
    /// (at once, or when the soft bounces in the window reach the threshold); a
    /// bounced or complaining address goes on the suppression list.
    async fn apply_effect(
        &mut self,
        reader: &Locked,
        e: &NewEvent<'_>,
        effect: EventEffect,
    ) -> StoreResult<()> {
        let mark_bounced = match effect {
            EventEffect::Record => false,
            EventEffect::Bounce => true,
            EventEffect::Count { threshold, since } => {
                self.events_since(reader.id, e.kind, since).await? >= i64::from(threshold)
            }
            EventEffect::Unsubscribe | EventEffect::UnsubscribeAndSuppress => {
                self.unsubscribe_by_event(reader.id, e.now).await?;
                false
            }
        };
        if mark_bounced {
            self.mark_bounced(reader.id, e.now).await?;
            self.suppress(&reader.email, Reason::Bounced, e.now).await?;
        } else if effect == EventEffect::UnsubscribeAndSuppress {
            self.suppress(&reader.email, Reason::Complaint, e.now)
                .await?;
        }
        Ok(())
    }

    /// Events of `kind` for the reader since `since`; several delay warnings for
    /// one message are one soft bounce.
    async fn events_since(
        &mut self,
        subscriber_id: i64,
        kind: MailEventKind,
        since: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let n = on_tx!(self, tx => sqlx::query_scalar(
            "SELECT COUNT(DISTINCT COALESCE(message_ref, CAST(id AS TEXT))) FROM mail_events \
             WHERE subscriber_id = $1 AND kind = $2 AND at > $3",
        )
        .bind(subscriber_id)
        .bind(kind.as_str())
        .bind(since)
        .fetch_one(&mut *tx)
        .await)?;
        Ok(n)
    }

    /// Unsubscribes the reader (a reply or complaint); a reader who had left
    /// before keeps the time they left.
    async fn unsubscribe_by_event(
        &mut self,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.set_reader(
            "UPDATE subscribers SET status = 'unsubscribed', unsubscribed_at = COALESCE(unsubscribed_at, $2), \
             updated_at = $2, next_slot_at = NULL WHERE id = $1 AND status <> 'unsubscribed'",
            subscriber_id,
            now,
        )
        .await
    }

    /// Marks the reader bounced: no more mail.
    async fn mark_bounced(&mut self, subscriber_id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        self.set_reader(
            "UPDATE subscribers SET status = 'bounced', updated_at = $2, next_slot_at = NULL WHERE id = $1",
            subscriber_id,
            now,
        )
        .await
    }

    /// Runs one `UPDATE subscribers` of the reader `$1` at `$2`.
    async fn set_reader(
        &mut self,
        sql: &'static str,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_tx!(self, tx => sqlx::query(sql)
            .bind(subscriber_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The reader's status as the transaction sees it now.
    async fn status_of(&mut self, subscriber_id: i64) -> StoreResult<SubscriberStatus> {
        let status: String = on_tx!(self, tx => sqlx::query_scalar("SELECT status FROM subscribers WHERE id = $1")
            .bind(subscriber_id)
            .fetch_one(&mut *tx)
            .await)?;
        StoredRow::subscriber(subscriber_id).parse(
            "status",
            status.as_str(),
            SubscriberStatus::parse,
        )
    }
}
