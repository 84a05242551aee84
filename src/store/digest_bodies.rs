//! Digest bodies, table `digest_bodies`: a digest's content, stored once for every
//! reader who gets the same one (same language, topics, news and local date), and
//! named by a key the planner derives from what it was rendered from. A digest's
//! mail job refers to its body; the reader's own part is added when the mail is
//! sent. Bodies hold no reader's data, so erasure never needs to look at them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::decode::StoredRow;
use super::{Store, StoreError, StoreResult, Tx, on_pool, on_tx};
use crate::domain::Locale;

/// A body to store: the content a planner rendered for `key`.
#[derive(Debug, Clone)]
pub struct NewBody {
    /// Names the content: equal keys mean equal content.
    pub key: String,
    /// The language it is written in (the reader's part follows it).
    pub locale: Locale,
    /// The subject line.
    pub subject: String,
    /// The `text/plain` part up to the reader's part.
    pub text: String,
    /// The `text/html` part up to the reader's part.
    pub html: String,
    /// The topics it covers, as the reader's part names them.
    pub topics: String,
    /// The new items it counts (listed or "… and N more").
    pub item_count: i32,
}

/// A stored body, as a delivery worker reads it.
#[derive(Debug, Clone)]
pub struct StoredBody {
    /// Id, as mail jobs refer to it.
    pub id: i64,
    /// Language.
    pub locale: Locale,
    /// Subject line.
    pub subject: String,
    /// `text/plain` content.
    pub text: String,
    /// `text/html` content.
    pub html: String,
    /// The topics it covers.
    pub topics: String,
}

#[derive(FromRow)]
struct BodyRow {
    id: i64,
    locale: String,
    subject: String,
    text_part: String,
    html_part: String,
    topics: String,
}

impl TryFrom<BodyRow> for StoredBody {
    type Error = StoreError;

    fn try_from(r: BodyRow) -> Result<Self, StoreError> {
        let row = StoredRow::new("digest_bodies", r.id);
        Ok(Self {
            id: r.id,
            locale: row.parse("locale", r.locale.as_str(), Locale::parse)?,
            subject: r.subject,
            text: r.text_part,
            html: r.html_part,
            topics: r.topics,
        })
    }
}

/// A stored body's id, by key.
pub type BodyIds = HashMap<String, i64>;

/// Keys per `IN (…)` list and rows per multi-row insert.
const CHUNK: usize = 200;

impl Store {
    /// The bodies with these ids (those that exist).
    ///
    /// # Errors
    /// When the database fails, or a stored body's language does not parse.
    pub async fn digest_bodies(&self, ids: &[i64]) -> StoreResult<Vec<StoredBody>> {
        let mut bodies = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<BodyRow> = on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, locale, subject, text_part, html_part, topics FROM digest_bodies WHERE id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                list.push_unseparated(")");
                q.build_query_as().fetch_all(pool).await?
            });
            for row in rows {
                bodies.push(StoredBody::try_from(row)?);
            }
        }
        Ok(bodies)
    }

    /// Deletes bodies created before `cutoff` that no queued mail refers to any
    /// more (a finished mail lets go of its body); returns how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purge_unused_bodies(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let deleted = on_pool!(self, pool => sqlx::query(
            "DELETE FROM digest_bodies WHERE created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM mail_jobs WHERE mail_jobs.body_id = digest_bodies.id)",
        )
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(deleted)
    }
}

impl Tx {
    /// The ids of those of `keys` that are stored.
    pub(super) async fn find_bodies(&mut self, keys: &[&str]) -> StoreResult<BodyIds> {
        let mut found = BodyIds::new();
        for chunk in keys.chunks(CHUNK) {
            let rows: Vec<(i64, String)> = on_tx!(self, tx => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, body_key FROM digest_bodies WHERE body_key IN (",
                );
                let mut list = q.separated(", ");
                for key in chunk {
                    list.push_bind(*key);
                }
                list.push_unseparated(")");
                q.build_query_as().fetch_all(&mut *tx).await?
            });
            found.extend(rows.into_iter().map(|(id, key)| (key, id)));
        }
        Ok(found)
    }

    /// Stores `bodies` and returns the ids of all of them. A body another
    /// transaction stored first (the same content, needed by another batch or
    /// instance) is left as it is and its id returned: PostgreSQL makes this
    /// insert wait for that transaction, and bodies are inserted in key order, so
    /// two batches waiting for each other's bodies cannot deadlock.
    pub(super) async fn store_bodies(
        &mut self,
        mut bodies: Vec<NewBody>,
        now: DateTime<Utc>,
    ) -> StoreResult<BodyIds> {
        bodies.sort_by(|a, b| a.key.cmp(&b.key));
        let mut ids = BodyIds::new();
        for chunk in bodies.chunks(CHUNK) {
            let inserted: Vec<(i64, String)> = on_tx!(self, tx => {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO digest_bodies (body_key, locale, subject, text_part, html_part, topics, item_count, created_at) ",
                );
                q.push_values(chunk, |mut row, b| {
                    row.push_bind(&b.key)
                        .push_bind(b.locale.as_str())
                        .push_bind(&b.subject)
                        .push_bind(&b.text)
                        .push_bind(&b.html)
                        .push_bind(&b.topics)
                        .push_bind(b.item_count)
                        .push_bind(now);
                });
                q.push(" ON CONFLICT (body_key) DO NOTHING RETURNING id, body_key");
                q.build_query_as().fetch_all(&mut *tx).await?
            });
            ids.extend(inserted.into_iter().map(|(id, key)| (key, id)));
        }
        let stored_before: Vec<&str> = bodies
            .iter()
            .map(|b| b.key.as_str())
            .filter(|key| !ids.contains_key(*key))
            .collect();
        if !stored_before.is_empty() {
            let found = self.find_bodies(&stored_before).await?;
            ids.extend(found);
        }
        Ok(ids)
    }
}
