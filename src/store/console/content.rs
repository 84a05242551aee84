//! What the console's content pages read beyond the other aggregates' own
//! functions: topics with their reader counts, items newest first by topic and by
//! source, the sources there are, each feed's item count, and "poll now".

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::super::{Item, Store, StoreResult, Topic, on_pool};
use crate::domain::TopicSlug;

/// A topic with how many readers chose it.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct TopicReaders {
    /// The topic.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub topic: Topic,
    /// Confirmed readers of it (the ones its digests go to).
    pub confirmed: i64,
    /// Readers of it who have not confirmed yet.
    pub pending: i64,
}

/// Which items the console lists; every part is optional.
#[derive(Debug, Clone, Default)]
pub struct ItemQuery {
    /// Only items of this topic.
    pub topic: Option<TopicSlug>,
    /// Only items from this source (`api`, `console`, `feed:<name>`, `mail:…`).
    pub source: Option<String>,
}

/// The topics offered first, then the retired; each by name.
const TOPIC_READERS: &str = "SELECT t.id, t.slug, t.name, t.description, t.created_at, t.retired_at, \
    COALESCE(SUM(CASE WHEN s.status = 'confirmed' THEN 1 ELSE 0 END), 0) AS confirmed, \
    COALESCE(SUM(CASE WHEN s.status = 'pending' THEN 1 ELSE 0 END), 0) AS pending \
    FROM topics t LEFT JOIN subscriber_topics st ON st.topic_id = t.id \
    LEFT JOIN subscribers s ON s.id = st.subscriber_id \
    GROUP BY t.id, t.slug, t.name, t.description, t.created_at, t.retired_at \
    ORDER BY CASE WHEN t.retired_at IS NULL THEN 0 ELSE 1 END, t.name, t.slug";

/// Item ids newest first: bind topic slug, source, limit, offset.
const ITEM_IDS: &str = "SELECT i.id FROM items i WHERE ($1 IS NULL OR EXISTS (SELECT 1 FROM item_topics it \
    JOIN topics t ON t.id = it.topic_id WHERE it.item_id = i.id AND t.slug = $1)) \
    AND ($2 IS NULL OR i.source = $2) ORDER BY i.id DESC LIMIT $3 OFFSET $4";

/// Most sources the filter offers.
const MAX_SOURCES: i64 = 500;

impl Store {
    /// Every topic, retired ones last, with its confirmed and pending readers.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn topics_with_readers(&self) -> StoreResult<Vec<TopicReaders>> {
        let rows = on_pool!(self, pool => sqlx::query_as(TOPIC_READERS).fetch_all(pool).await)?;
        Ok(rows)
    }

    /// A page of the items `query` finds, newest first: `limit` after skipping
    /// `offset`, each with its topics and whether it is hidden.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn find_items(
        &self,
        query: &ItemQuery,
        offset: u32,
        limit: u32,
    ) -> StoreResult<Vec<Item>> {
        let ids: Vec<i64> = on_pool!(self, pool => sqlx::query_scalar(ITEM_IDS)
            .bind(query.topic.as_ref().map(TopicSlug::as_str))
            .bind(query.source.as_deref())
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(pool)
            .await)?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            items.extend(self.item(id).await?);
        }
        Ok(items)
    }

    /// The sources items came from, in order (at most 500).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn item_sources(&self) -> StoreResult<Vec<String>> {
        let sources = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT DISTINCT source FROM items ORDER BY source LIMIT $1",
        )
        .bind(MAX_SOURCES)
        .fetch_all(pool)
        .await)?;
        Ok(sources)
    }

    /// How many items each feed brought, by feed name (an item is counted for the
    /// feed that brought it first).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn feed_item_counts(&self) -> StoreResult<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT source, COUNT(*) FROM items WHERE source LIKE 'feed:%' GROUP BY source",
        )
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(source, n)| source.strip_prefix("feed:").map(|f| (f.to_owned(), n)))
            .collect())
    }

    /// Makes feed `id` due at `now`, so the poller fetches it on its next tick
    /// ("poll now"). `false` when there is no such feed.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn poll_feed_now(&self, id: i64, now: DateTime<Utc>) -> StoreResult<bool> {
        let n = on_pool!(self, pool => sqlx::query("UPDATE feeds SET next_poll_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }
}
