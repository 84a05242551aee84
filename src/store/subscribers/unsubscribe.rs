//! Leaving: unsubscribing a reader, and the status the unsubscribe page shows.

use chrono::{DateTime, Utc};

use super::super::counters::Tally;
use super::super::decode::StoredRow;
use super::super::{Store, StoreResult, WebhookEvent, on_pool, on_tx};
use crate::domain::{Locale, SubscriberStatus};

impl Store {
    /// Unsubscribes a reader: no further digest, queued ones are withdrawn, and old
    /// confirmation links can no longer bring the subscription back. Idempotent.
    /// Returns the reader's language, or `None` when there is no such reader.
    ///
    /// # Errors
    /// When the database fails, or the reader's row does not parse.
    pub async fn unsubscribe(
        &self,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Locale>> {
        let mut tx = self.begin().await?;
        let Some(reader) = tx.lock_by_id(subscriber_id).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let mut tally = Tally::default();
        tally.subscribers(Some(reader.status), Some(SubscriberStatus::Unsubscribed), 1);
        let left = on_tx!(&mut tx, tx => sqlx::query(
            "UPDATE subscribers SET status = 'unsubscribed', unsubscribed_at = $2, updated_at = $2, \
             next_slot_at = NULL WHERE id = $1 AND status <> 'unsubscribed'",
        )
        .bind(subscriber_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected()))?;
        if left == 1 {
            tx.enqueue_webhook(reader.event(WebhookEvent::Unsubscribed, None), now)
                .await?;
        }
        tx.delete_tokens(subscriber_id).await?;
        tx.withdraw_digests(
            subscriber_id,
            now,
            "unsubscribed before delivery",
            &mut tally,
        )
        .await?;
        tx.commit_with(tally).await?;
        Ok(Some(reader.locale))
    }

    /// A reader's status and language, for the unsubscribe page.
    ///
    /// # Errors
    /// When the database fails, or the reader's row does not parse.
    pub async fn subscriber_status(
        &self,
        subscriber_id: i64,
    ) -> StoreResult<Option<(SubscriberStatus, Locale)>> {
        let row: Option<(String, String)> = on_pool!(self, pool => sqlx::query_as("SELECT status, locale FROM subscribers WHERE id = $1")
            .bind(subscriber_id)
            .fetch_optional(pool)
            .await)?;
        let Some((status, locale)) = row else {
            return Ok(None);
        };
        let row = StoredRow::subscriber(subscriber_id);
        Ok(Some((
            row.parse("status", status.as_str(), SubscriberStatus::parse)?,
            row.parse("locale", locale.as_str(), Locale::parse)?,
        )))
    }
}
