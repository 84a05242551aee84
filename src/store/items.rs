//! Items: what digests are made of. Their ids are the arrival order digests follow.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use sha2::Digest;

use super::{Store, StoreResult, on_pool};
use crate::domain::TopicSlug;

/// Key of the PostgreSQL advisory lock that orders item inserts against the
/// digest watermark (see [`Store::item_watermark`]).
const ARRIVAL_LOCK: i64 = 0x706f_7374_626f_7465; // "postbote"

/// An item to store.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// Topics it belongs to (all offered).
    pub topics: Vec<TopicSlug>,
    /// Headline.
    pub title: String,
    /// Link to the full text.
    pub url: Option<String>,
    /// Teaser.
    pub summary: Option<String>,
    /// Full text.
    pub body: Option<String>,
    /// Publication time claimed by the source.
    pub published_at: Option<DateTime<Utc>>,
    /// The source's identifier; with `url`, what makes a repeat recognisable.
    pub guid: Option<String>,
    /// Where it came from: `api`, a feed's name, a mail sender.
    pub source: String,
}

/// A stored item.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Item {
    /// Arrival order.
    pub id: i64,
    /// Headline.
    pub title: String,
    /// Link.
    pub url: Option<String>,
    /// Teaser.
    pub summary: Option<String>,
    /// Full text.
    pub body: Option<String>,
    /// Publication time claimed by the source.
    pub published_at: Option<DateTime<Utc>>,
    /// Where it came from.
    pub source: String,
    /// When it arrived.
    pub created_at: DateTime<Utc>,
    /// Topic slugs.
    #[sqlx(skip)]
    pub topics: Vec<String>,
}

/// Whether [`Store::add_item`] stored something new.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    /// Stored now.
    Created(Item),
    /// The same guid (or url) was stored before: nothing changed.
    Existing(Item),
}

const ITEM_COLUMNS: &str =
    "SELECT id, title, url, summary, body, published_at, source, created_at FROM items";

impl Store {
    /// Stores an item unless its guid (or, without one, its url) is known already.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn add_item(&self, item: &NewItem, now: DateTime<Utc>) -> StoreResult<ItemOutcome> {
        let dedup_key = match (&item.guid, &item.url) {
            (Some(guid), _) => Some(format!("guid:{guid}")),
            (None, Some(url)) => Some(format!("url:{url}")),
            (None, None) => None,
        }
        // A unique index entry has a size limit in PostgreSQL: long keys are hashed.
        .map(|k| {
            if k.len() > 500 {
                format!(
                    "sha256:{}",
                    crate::domain::hex(&sha2::Sha256::digest(k.as_bytes()))
                )
            } else {
                k
            }
        });
        // PostgreSQL text cannot hold NUL; no source is allowed to smuggle one in.
        let clean = |s: &str| s.replace('\0', "");
        let item = &NewItem {
            topics: item.topics.clone(),
            title: clean(&item.title),
            url: item.url.as_deref().map(clean),
            summary: item.summary.as_deref().map(clean),
            body: item.body.as_deref().map(clean),
            published_at: item.published_at,
            guid: item.guid.clone(),
            source: clean(&item.source),
        };
        let dedup_key = dedup_key.map(|k| clean(&k));
        let postgres = self.is_postgres();
        let id = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                // Shared with other inserts, exclusive against the watermark: an item
                // gets its id only while no watermark is being read.
                sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(ARRIVAL_LOCK).execute(&mut *tx).await?;
            }
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO items (dedup_key, title, url, summary, body, published_at, source, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
            )
            .bind(&dedup_key)
            .bind(&item.title)
            .bind(&item.url)
            .bind(&item.summary)
            .bind(&item.body)
            .bind(item.published_at)
            .bind(&item.source)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            match inserted {
                Some(id) => {
                    for slug in &item.topics {
                        sqlx::query("INSERT INTO item_topics (item_id, topic_id) SELECT $1, id FROM topics WHERE slug = $2 ON CONFLICT DO NOTHING")
                            .bind(id)
                            .bind(slug.as_str())
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(Ok(id))
                }
                None => {
                    tx.rollback().await?;
                    let existing: i64 = sqlx::query_scalar("SELECT id FROM items WHERE dedup_key = $1")
                        .bind(&dedup_key)
                        .fetch_one(pool)
                        .await?;
                    Ok(Err(existing))
                }
            }
        })?;
        match id {
            Ok(id) => Ok(ItemOutcome::Created(
                self.item(id).await?.expect("just stored"),
            )),
            Err(id) => Ok(ItemOutcome::Existing(
                self.item(id).await?.expect("found by its key"),
            )),
        }
    }

    /// One item with its topics.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn item(&self, id: i64) -> StoreResult<Option<Item>> {
        on_pool!(self, pool => {
            let item: Option<Item> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{ITEM_COLUMNS} WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            let Some(mut item) = item else { return Ok(None) };
            item.topics = sqlx::query_scalar(
                "SELECT t.slug FROM item_topics it JOIN topics t ON t.id = it.topic_id WHERE it.item_id = $1 ORDER BY t.slug",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            Ok(Some(item))
        })
    }

    /// The newest item id that is safe to cover: every item with a smaller or equal
    /// id is committed, and every item stored from now on gets a larger one. Digests
    /// cover the items between a reader's previous watermark and this one, so an item
    /// arriving during a pass is in this digest or the next, never in neither, and
    /// no clock is involved.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn item_watermark(&self) -> StoreResult<i64> {
        let watermark = match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(ARRIVAL_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let w: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM items")
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                w
            }
            // One connection: every insert is committed before this runs.
            Store::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM items")
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(watermark)
    }
}
