//! Imports: readers whose consent was given elsewhere (a CSV), stored as
//! confirmed, a batch of rows per transaction with a handful of statements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::super::counters::Tally;
use super::super::suppressions::address_hash;
use super::super::{Store, StoreResult, Tx, on_tx};
use crate::domain::{DeliverySchedule, EmailAddress, Locale, SubscriberStatus, TopicSlug};

/// A subscriber whose consent was given elsewhere (a CSV import).
#[derive(Debug, Clone)]
pub struct ImportedSubscriber {
    /// Address.
    pub email: EmailAddress,
    /// Topics (all offered).
    pub topics: Vec<TopicSlug>,
    /// Delivery schedule.
    pub schedule: DeliverySchedule,
    /// Language.
    pub locale: Locale,
    /// When consent was given, per the source.
    pub consent_at: DateTime<Utc>,
    /// From where, per the source.
    pub consent_ip: Option<String>,
    /// Where the record came from, e.g. `import:subscribers.csv`.
    pub source: String,
}

impl Store {
    /// Stores one subscriber as confirmed, with the consent proof the source gives
    /// (see [`Store::import_batch`]). An address already stored or suppressed is
    /// left alone: `None` then, else the new id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn import_confirmed(
        &self,
        s: &ImportedSubscriber,
        now: DateTime<Utc>,
        lookback: chrono::Duration,
    ) -> StoreResult<Option<i64>> {
        match self
            .import_batch(std::slice::from_ref(s), now, lookback)
            .await?
            .first()
        {
            Some(ImportResult::Imported) => self.subscriber_id(s.email.as_str()).await,
            _ => Ok(None),
        }
    }

    /// Has the database gather its planner statistics afresh (`ANALYZE`), as after
    /// any bulk load. Until autovacuum got round to it, the first digest pass after
    /// an import of 20,000 readers into PostgreSQL spent a third more time in the
    /// database: without statistics it chose worse plans for the due readers.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn refresh_statistics(&self) -> StoreResult<()> {
        match self {
            Self::Postgres(pool) => sqlx::query("ANALYZE").execute(pool).await.map(|_| ())?,
            Self::Sqlite(pool) => sqlx::query("ANALYZE").execute(pool).await.map(|_| ())?,
        }
        Ok(())
    }
}

/// What [`Store::import_batch`] did with each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportResult {
    /// Stored as a new confirmed reader.
    Imported,
    /// The address is stored already: nothing changed.
    Exists,
    /// The address is on the suppression list: skipped.
    Suppressed,
}

impl Store {
    /// Imports rows as confirmed readers in one transaction: a few statements per
    /// batch, not per row. Suppressed and already stored addresses are left alone.
    ///
    /// # Errors
    /// When the database fails; nothing of the batch is stored then.
    pub async fn import_batch(
        &self,
        rows: &[ImportedSubscriber],
        now: DateTime<Utc>,
        lookback: chrono::Duration,
    ) -> StoreResult<Vec<ImportResult>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let topic_ids = tx.topic_ids().await?;
        let suppressed = tx
            .suppressed_among(rows.iter().map(|r| r.email.as_str()))
            .await?;
        let is_suppressed =
            |r: &ImportedSubscriber| suppressed.contains(&address_hash(r.email.as_str()));
        let last_item = tx.last_item_before(now - lookback).await?;
        let candidates: Vec<&ImportedSubscriber> =
            rows.iter().filter(|r| !is_suppressed(r)).collect();
        let inserted = tx.insert_confirmed(&candidates, now, last_item).await?;
        let new_rows: Vec<(&ImportedSubscriber, i64)> = candidates
            .iter()
            .filter_map(|r| inserted.get(r.email.as_str()).map(|id| (*r, *id)))
            .collect();
        let pairs: Vec<(i64, i64)> = new_rows
            .iter()
            .flat_map(|(r, id)| {
                r.topics
                    .iter()
                    .filter_map(|t| topic_ids.get(t.as_str()).map(|tid| (*id, *tid)))
            })
            .collect();
        tx.link_topics(&pairs).await?;
        tx.insert_import_consents(&new_rows).await?;
        let mut tally = Tally::default();
        tally.subscribers(
            None,
            Some(SubscriberStatus::Confirmed),
            inserted.len() as i64,
        );
        tx.commit_with(tally).await?;
        Ok(rows
            .iter()
            .map(|r| {
                if is_suppressed(r) {
                    ImportResult::Suppressed
                } else if inserted.contains_key(r.email.as_str()) {
                    ImportResult::Imported
                } else {
                    ImportResult::Exists
                }
            })
            .collect())
    }
}

impl Tx {
    /// Every topic's id by slug.
    async fn topic_ids(&mut self) -> StoreResult<HashMap<String, i64>> {
        let ids: Vec<(String, i64)> = on_tx!(self, tx => sqlx::query_as("SELECT slug, id FROM topics")
            .fetch_all(&mut *tx)
            .await)?;
        Ok(ids.into_iter().collect())
    }

    /// The newest item that arrived before `cutoff` (0: none): where a reader's
    /// first digest starts, as at a confirmation.
    async fn last_item_before(&mut self, cutoff: DateTime<Utc>) -> StoreResult<i64> {
        let id = on_tx!(self, tx => sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM items WHERE created_at < $1")
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await)?;
        Ok(id)
    }

    /// Inserts the rows as confirmed readers, first slot and look-back as at a
    /// confirmation; addresses stored already are left alone. Returns the new
    /// readers' ids by address.
    async fn insert_confirmed(
        &mut self,
        rows: &[&ImportedSubscriber],
        now: DateTime<Utc>,
        last_item: i64,
    ) -> StoreResult<HashMap<String, i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let inserted: Vec<(i64, String)> = on_tx!(self, tx => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO subscribers (email, status, locale, delivery_time, timezone, weekdays, created_at, \
                 updated_at, confirmed_at, confirmed_ip, next_slot_at, last_item_id) ",
            );
            q.push_values(rows, |mut b, r| {
                b.push_bind(r.email.as_str())
                    .push_bind(SubscriberStatus::Confirmed.as_str())
                    .push_bind(r.locale.as_str())
                    .push_bind(r.schedule.time.to_string())
                    .push_bind(r.schedule.timezone.to_string())
                    .push_bind(r.schedule.weekdays.bits())
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(r.consent_at)
                    .push_bind(r.consent_ip.clone())
                    .push_bind(r.schedule.next_after(now))
                    .push_bind(last_item);
            });
            q.push(" ON CONFLICT (email) DO NOTHING RETURNING id, email");
            q.build_query_as().fetch_all(&mut *tx).await?
        });
        Ok(inserted
            .into_iter()
            .map(|(id, email)| (email, id))
            .collect())
    }

    /// Links readers to topics: `(subscriber id, topic id)` pairs.
    async fn link_topics(&mut self, pairs: &[(i64, i64)]) -> StoreResult<()> {
        for chunk in pairs.chunks(5000) {
            on_tx!(self, tx => {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO subscriber_topics (subscriber_id, topic_id) ");
                q.push_values(chunk, |mut b, (s, t)| {
                    b.push_bind(*s).push_bind(*t);
                });
                q.push(" ON CONFLICT DO NOTHING");
                q.build().execute(&mut *tx).await?;
            });
        }
        Ok(())
    }

    /// A consent row for each new reader: version `import`, the text naming the
    /// source.
    async fn insert_import_consents(
        &mut self,
        rows: &[(&ImportedSubscriber, i64)],
    ) -> StoreResult<()> {
        for chunk in rows.chunks(2000) {
            on_tx!(self, tx => {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO consents (subscriber_id, given_at, ip, user_agent, consent_version, consent_text, \
                     topics, delivery_time, timezone, locale) ",
                );
                q.push_values(chunk, |mut b, (r, id)| {
                    b.push_bind(*id)
                        .push_bind(r.consent_at)
                        .push_bind(r.consent_ip.clone())
                        .push_bind(None::<String>)
                        .push_bind("import")
                        .push_bind(format!("consent given before import ({})", r.source))
                        .push_bind(r.topics.iter().map(TopicSlug::as_str).collect::<Vec<_>>().join(","))
                        .push_bind(r.schedule.time.to_string())
                        .push_bind(r.schedule.timezone.to_string())
                        .push_bind(r.locale.as_str());
                });
                q.build().execute(&mut *tx).await?;
            });
        }
        Ok(())
    }
}
