//! Erasure (GDPR Art. 17): everything about an address goes, and a hash of it
//! stays on the suppression list.

use chrono::{DateTime, Utc};

use super::super::counters::Tally;
use super::super::mail_queue::MAIL_TABLES;
use super::super::suppressions::Reason;
use super::super::{Store, StoreResult, Tx, WebhookEvent, on_tx};
use crate::domain::EmailAddress;

impl Store {
    /// Erases everything about an address (GDPR Art. 17) and puts a hash of it on
    /// the suppression list. An address without a reader loses only the mails
    /// sent to it (the console's test digests). Returns false when nothing was
    /// stored.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn erase(&self, email: &EmailAddress, now: DateTime<Utc>) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let mut tally = Tally::default();
        let Some(reader) = tx.lock_by_email(email).await? else {
            let deleted = tx.delete_mails_to(None, email, &mut tally).await?;
            tx.commit_with(tally).await?;
            return Ok(deleted > 0);
        };
        tally.subscribers(Some(reader.status), None, 1);
        // Token hashes would otherwise outlive the row (see purge_pending).
        tx.delete_tokens(reader.id).await?;
        tx.delete_mails_to(Some(reader.id), email, &mut tally)
            .await?;
        on_tx!(&mut tx, tx => {
            sqlx::query("DELETE FROM subscribers WHERE id = $1")
                .bind(reader.id)
                .execute(&mut *tx)
                .await?;
        });
        tx.suppress(email.as_str(), Reason::Erased, now).await?;
        tx.enqueue_webhook(reader.event(WebhookEvent::Erased, None), now)
            .await?;
        tx.commit_with(tally).await?;
        Ok(true)
    }
}

impl Tx {
    /// Deletes the mails, queued and past, that hold the address: the reader's
    /// (if any) and those sent to it without a reader; counts them out of
    /// `tally` and returns how many. (A mail with a reader was sent to that
    /// reader's address, which never changes: found by reader, it needs no index
    /// on its recipient.)
    async fn delete_mails_to(
        &mut self,
        reader: Option<i64>,
        email: &EmailAddress,
        tally: &mut Tally,
    ) -> StoreResult<usize> {
        let mut mails: Vec<(String, String)> = Vec::new();
        for table in MAIL_TABLES {
            let sql = format!(
                "DELETE FROM {table} WHERE subscriber_id = $1 OR (subscriber_id IS NULL AND recipient = $2) \
                 RETURNING kind, status"
            );
            mails.extend(
                on_tx!(self, tx => sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql))
                .bind(reader)
                .bind(email.as_str())
                .fetch_all(&mut *tx)
                .await)?,
            );
        }
        for (kind, status) in &mails {
            tally.mails(kind, Some(status), None, 1);
        }
        Ok(mails.len())
    }
}
