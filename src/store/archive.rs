//! The public archive's reads: a topic's items newest first by arrival, and the
//! items one digest listed (its "view in browser" page). Hidden items never appear;
//! held submissions are not items until an operator approves them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::{Store, StoreResult, on_pool, push_list};

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

/// The visible items of one topic as [`ArchiveEntry`] rows with the topic's id,
/// read through the topic's links (`it`); ends where the topic's id goes.
macro_rules! topic_entries {
    () => {
        "SELECT it.topic_id, i.id, i.title, i.url, i.summary, i.published_at, i.created_at, it.arrival \
         FROM item_topics it JOIN items i ON i.id = it.item_id \
         WHERE i.hidden_at IS NULL AND it.topic_id = "
    };
}

/// A topic's visible items below an arrival cursor, newest first: bind topic id,
/// cursor (arrivals below it; `i64::MAX` for the newest), how many.
const TOPIC_PAGE: &str = concat!(
    topic_entries!(),
    "$1 AND it.arrival < $2 ORDER BY it.arrival DESC LIMIT $3"
);

/// Topics per statement of [`Store::archive_fronts`]: one `SELECT` of a compound
/// each (SQLite allows 500) and two values each (SQLite allows 32,766).
const FRONTS_PER_STATEMENT: usize = 200;

/// A row of [`Store::archive_fronts`]: the topic and one of its entries.
#[derive(FromRow)]
struct FrontRow {
    topic_id: i64,
    #[sqlx(flatten)]
    entry: ArchiveEntry,
}

/// At most this many topic links of a digest window are looked at for its
/// browser view (see [`Store::archive_window`]).
pub const WINDOW_CAP: i64 = 1_000;

/// A digest window's items as its browser view shows them.
#[derive(Debug, Default)]
pub struct Window {
    /// The newest visible items, at most the limit asked for.
    pub shown: Vec<ArchiveEntry>,
    /// How many visible items the window holds (a lower bound when `capped`).
    pub total: usize,
    /// The window held more than [`WINDOW_CAP`] topic links; only the newest
    /// were counted.
    pub capped: bool,
}

#[derive(FromRow)]
struct WindowRow {
    #[sqlx(flatten)]
    entry: ArchiveEntry,
    total: i64,
    looked_at: i64,
}

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

    /// The newest `limit` visible items of each of `topic_ids` (the archive's
    /// front page), newest first, by topic; a topic without any has no entry.
    /// One statement for all the topics (each topic's items read through its
    /// arrival index, as [`Store::archive_page`] reads them), so a request for
    /// the public front page costs one round trip, not one per topic.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn archive_fronts(
        &self,
        topic_ids: &[i64],
        limit: u32,
    ) -> StoreResult<std::collections::HashMap<i64, Vec<ArchiveEntry>>> {
        let mut fronts: std::collections::HashMap<i64, Vec<ArchiveEntry>> =
            std::collections::HashMap::new();
        // A topic named twice would list its items twice.
        let mut ids = topic_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(FRONTS_PER_STATEMENT) {
            let rows: Vec<FrontRow> = on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new("");
                for (n, topic_id) in chunk.iter().enumerate() {
                    if n > 0 {
                        q.push(" UNION ALL ");
                    }
                    q.push(concat!("SELECT * FROM (", topic_entries!()))
                    .push_bind(*topic_id)
                    .push(" ORDER BY it.arrival DESC LIMIT ")
                    .push_bind(i64::from(limit))
                    .push(format!(") AS front{n}"));
                }
                q.build_query_as().fetch_all(pool).await
            })?;
            for row in rows {
                fronts.entry(row.topic_id).or_default().push(row.entry);
            }
        }
        // UNION ALL keeps no order across its parts: each topic's, newest first.
        for entries in fronts.values_mut() {
            entries.sort_by_key(|e| std::cmp::Reverse(e.arrival));
        }
        Ok(fronts)
    }

    /// The visible items whose first arrival in `topic_ids` lies in
    /// `(since, upto]`, newest first: what a digest for those topics covering that
    /// window lists (up to `limit`), and how many there are in all.
    ///
    /// The window comes from a public URL, so the work is bounded whatever it
    /// says: only the newest [`WINDOW_CAP`] topic links of the window are looked
    /// at, and [`Window::capped`] says when there were more (the count is then a
    /// lower bound). No more than `limit` rows leave the database.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn archive_window(
        &self,
        topic_ids: &[i64],
        since: i64,
        upto: i64,
        limit: u32,
    ) -> StoreResult<Window> {
        if topic_ids.is_empty() || upto <= since {
            return Ok(Window::default());
        }
        let rows: Vec<WindowRow> = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "WITH cand AS (SELECT c.item_id FROM item_topics c WHERE c.topic_id IN (",
            );
            push_list(&mut q, topic_ids.iter().copied());
            q.push(") AND c.arrival > ")
                .push_bind(since)
                .push(" AND c.arrival <= ")
                .push_bind(upto)
                .push(" ORDER BY c.arrival DESC LIMIT ")
                .push_bind(WINDOW_CAP)
                .push("), w AS (SELECT it.item_id, MIN(it.arrival) AS arrival FROM item_topics it \
                       WHERE it.item_id IN (SELECT item_id FROM cand) AND it.topic_id IN (");
            push_list(&mut q, topic_ids.iter().copied());
            q.push(") GROUP BY it.item_id) \
                    SELECT i.id, i.title, i.url, i.summary, i.published_at, i.created_at, w.arrival, \
                    COUNT(*) OVER () AS total, (SELECT COUNT(*) FROM cand) AS looked_at \
                    FROM w JOIN items i ON i.id = w.item_id \
                    WHERE i.hidden_at IS NULL AND w.arrival > ")
                .push_bind(since)
                .push(" ORDER BY w.arrival DESC, i.id DESC LIMIT ")
                .push_bind(i64::from(limit));
            q.build_query_as().fetch_all(pool).await
        })?;
        let (total, looked_at) = rows.first().map_or((0, 0), |r| (r.total, r.looked_at));
        Ok(Window {
            shown: rows.into_iter().map(|r| r.entry).collect(),
            total: usize::try_from(total).unwrap_or(0),
            capped: looked_at >= WINDOW_CAP,
        })
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
            push_list(&mut q, items.iter().copied());
            q.push(")");
            q.build_query_as().fetch_all(pool).await
        })?;
        Ok(pairs)
    }
}
