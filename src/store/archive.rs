//! The public archive's reads: a topic's items newest first by arrival, and the
//! items one digest listed (its "view in browser" page). Hidden items never appear;
//! held submissions are not items until an operator approves them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::{Store, StoreResult, on_pool};

/// An item as the archive shows it, with the arrival that orders it.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ArchiveEntry {
    /// The item's id.
    pub id: i64,
    /// Headline.
    pub title: String,
    /// Link, if it has one.
    pub url: Option<String>,
    /// Teaser.
    pub summary: Option<String>,
    /// Publication time claimed by the source.
    pub published_at: Option<DateTime<Utc>>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Its arrival in the topic (or, for a digest's view, its first arrival among
    /// the digest's topics): the archive's order and paging cursor.
    pub arrival: i64,
}

/// A topic's visible items below an arrival cursor, newest first: bind topic id,
/// cursor (arrivals below it; `i64::MAX` for the newest), how many.
const TOPIC_PAGE: &str = "SELECT i.id, i.title, i.url, i.summary, i.published_at, i.created_at, it.arrival \
    FROM item_topics it JOIN items i ON i.id = it.item_id \
    WHERE it.topic_id = $1 AND it.arrival < $2 AND i.hidden_at IS NULL \
    ORDER BY it.arrival DESC LIMIT $3";

impl Store {
    /// Up to `limit` visible items of topic `topic_id` that arrived before
    /// `before` (an arrival number; `None` for the newest), newest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn archive_page(
        &self,
        topic_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<ArchiveEntry>> {
        let entries = on_pool!(self, pool => sqlx::query_as(TOPIC_PAGE)
            .bind(topic_id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(entries)
    }

    /// The visible items whose first arrival in `topic_ids` lies in
    /// `(since, upto]`, newest first: what a digest for those topics covering that
    /// window lists (up to `limit`), and how many there are in all.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn archive_window(
        &self,
        topic_ids: &[i64],
        since: i64,
        upto: i64,
        limit: u32,
    ) -> StoreResult<(Vec<ArchiveEntry>, usize)> {
        if topic_ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let all: Vec<ArchiveEntry> = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT i.id, i.title, i.url, i.summary, i.published_at, i.created_at, w.arrival FROM \
                 (SELECT it.item_id, MIN(it.arrival) AS arrival FROM item_topics it WHERE it.topic_id IN (",
            );
            let mut list = q.separated(", ");
            for id in topic_ids {
                list.push_bind(*id);
            }
            q.push(") GROUP BY it.item_id) w JOIN items i ON i.id = w.item_id WHERE i.hidden_at IS NULL AND w.arrival > ")
                .push_bind(since)
                .push(" AND w.arrival <= ")
                .push_bind(upto)
                .push(" ORDER BY w.arrival DESC, i.id DESC");
            q.build_query_as().fetch_all(pool).await
        })?;
        let total = all.len();
        let shown = all.into_iter().take(limit as usize).collect();
        Ok((shown, total))
    }

    /// The topics each of `items` was in by arrival `upto`, as `(item, topic)`
    /// pairs: what places an item under its first topic on a digest's page.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn archive_topics_of(
        &self,
        items: &[i64],
        upto: i64,
    ) -> StoreResult<Vec<(i64, i64)>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let pairs = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new("SELECT item_id, topic_id FROM item_topics WHERE arrival <= ");
            q.push_bind(upto).push(" AND item_id IN (");
            let mut list = q.separated(", ");
            for id in items {
                list.push_bind(*id);
            }
            q.push(")");
            q.build_query_as().fetch_all(pool).await
        })?;
        Ok(pairs)
    }
}
