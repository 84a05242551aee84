//! Items: what digests are made of.
//!
//! Every source (the admin API, feeds, mailed-in press releases) stores through
//! [`Store::add_item`], which refuses what [`NewItem::validate`] refuses: a URL
//! longer than [`MAX_URL`] characters or not `http(s)`, and titles, summaries and
//! bodies over their caps. The API answers such an item with 422 naming the field;
//! feeds and mail, whose content nobody can send back, pass through
//! [`NewItem::fitted`] first (texts cut, a bad link dropped).
//!
//! Arrival order is what digests follow. An item arrives in each of its topics: with
//! the topics it comes with, at its id; a topic added later (the same press release
//! from a feed of another topic) at a fresh number from the same sequence, so the
//! readers of that topic get it as news then (see [`Store::add_item`] and
//! [`DigestItems`]).
//!
//! An operator may hide an item ([`Store::hide_item`], the console's "hide"): from
//! then on no digest batch loads or counts it; its page stays.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::Digest;
use sqlx::FromRow;

use super::{BeginWrite, DueReader, Store, StoreError, StoreResult, Tx, on_pool, on_tx};
use crate::domain::{HttpUrl, TopicSlug};

/// Key of the PostgreSQL advisory lock that orders item inserts against the
/// digest watermark (see [`Store::item_watermark`]).
const ARRIVAL_LOCK: i64 = 0x706f_7374_626f_7465; // "postbote"
/// First key of the two-key advisory locks that serialise items with the same URL.
const URL_LOCK_CLASS: i32 = 0x7075_726c; // "purl"

/// Longest link an item may carry, in characters.
pub const MAX_URL: usize = HttpUrl::MAX_LEN;
/// Longest title, in characters.
pub const MAX_TITLE: usize = 500;
/// Longest summary, in characters.
pub const MAX_SUMMARY: usize = 2_000;
/// Longest body, in characters.
pub const MAX_BODY: usize = 100_000;
/// Longest guid, in characters.
pub const MAX_GUID: usize = 1_000;
/// Longest source description, in characters.
pub const MAX_SOURCE: usize = 500;

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

/// Why an item cannot be stored: the field and what is wrong with it, fit for a 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ItemError {
    /// The field, as the admin API names it (`url`, `title`, …).
    pub field: &'static str,
    /// What is wrong, e.g. "must be at most 2048 characters".
    pub problem: String,
}

impl ItemError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// What is wrong with a text field, if anything: NUL (PostgreSQL text cannot hold
/// it) or more than `max` characters.
fn text_problem(value: &str, max: usize) -> Option<String> {
    if value.contains('\0') {
        return Some("must not contain NUL characters".into());
    }
    // A character is at most 4 bytes: only a long string needs counting.
    if value.len() > max && value.chars().count() > max {
        return Some(format!("must be at most {max} characters"));
    }
    None
}

/// What is wrong with a link, if anything: what [`HttpUrl::parse`] refuses (too
/// long, not `http(s)` with a host, spaces or control characters). The item keeps
/// the link's text as given.
fn url_problem(url: &str) -> Option<String> {
    HttpUrl::parse(url).err().map(|e| e.to_string())
}

/// `s` cut to at most `max` characters, on a character boundary.
fn cut_chars(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(at, _)| &s[..at])
}

impl NewItem {
    /// Checks the item against the limits every source shares: at least one topic;
    /// a title that is not blank and at most [`MAX_TITLE`] characters; a URL of at
    /// most [`MAX_URL`] characters, `http` or `https` with a host; a summary of at
    /// most [`MAX_SUMMARY`], a body of at most [`MAX_BODY`], a guid of at most
    /// [`MAX_GUID`] characters; no NUL anywhere. [`Store::add_item`] stores nothing
    /// else.
    ///
    /// # Errors
    /// The first field that is wrong, and why.
    pub fn validate(&self) -> Result<(), ItemError> {
        if self.topics.is_empty() {
            return Err(ItemError::new("topics", "must name at least one topic"));
        }
        if self.title.trim().is_empty() {
            return Err(ItemError::new("title", "must not be empty"));
        }
        let texts = [
            ("title", Some(&self.title), MAX_TITLE),
            ("summary", self.summary.as_ref(), MAX_SUMMARY),
            ("body", self.body.as_ref(), MAX_BODY),
            ("guid", self.guid.as_ref(), MAX_GUID),
            ("source", Some(&self.source), MAX_SOURCE),
        ];
        for (field, value, max) in texts {
            if let Some(problem) = value.and_then(|v| text_problem(v, max)) {
                return Err(ItemError::new(field, problem));
            }
        }
        if let Some(problem) = self.url.as_deref().and_then(url_problem) {
            return Err(ItemError::new("url", problem));
        }
        Ok(())
    }

    /// The item made valid the way sources that cannot be asked again need it
    /// (feeds, mail): NUL characters removed; title, summary, body and source cut to
    /// their caps on a character boundary; a link that [`NewItem::validate`] would
    /// refuse dropped (the digest then links to the item's own page); a guid too long
    /// to keep replaced by its SHA-256 (it still recognises the same entry). Returns
    /// the names of the fields that were changed, for the log. A blank title stays
    /// blank: such an entry cannot be stored.
    pub fn fitted(self) -> (Self, Vec<&'static str>) {
        let mut changed = Vec::new();
        let mut fit = |field: &'static str, value: String, max: usize| -> String {
            let had_nul = value.contains('\0');
            let clean = if had_nul {
                value.replace('\0', "")
            } else {
                value
            };
            let cut = cut_chars(&clean, max);
            if had_nul || cut.len() != clean.len() {
                changed.push(field);
            }
            cut.to_owned()
        };
        let title = fit("title", self.title, MAX_TITLE);
        let summary = self.summary.map(|s| fit("summary", s, MAX_SUMMARY));
        let body = self.body.map(|b| fit("body", b, MAX_BODY));
        let source = fit("source", self.source, MAX_SOURCE);
        let url = match self.url {
            Some(u) if url_problem(&u).is_some() => {
                changed.push("url");
                None
            }
            other => other,
        };
        let guid = match self.guid {
            Some(g) if text_problem(&g, MAX_GUID).is_some() => {
                changed.push("guid");
                Some(format!(
                    "sha256:{}",
                    crate::domain::hex(&sha2::Sha256::digest(g.as_bytes()))
                ))
            }
            other => other,
        };
        let item = Self {
            topics: self.topics,
            title,
            url,
            summary,
            body,
            published_at: self.published_at,
            guid,
            source,
        };
        (item, changed)
    }
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
    /// When an operator hid it from future digests ([`Store::hide_item`]).
    pub hidden_at: Option<DateTime<Utc>>,
    /// Topic slugs.
    #[sqlx(skip)]
    pub topics: Vec<String>,
}

/// Whether [`Store::add_item`] stored something new.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    /// Stored now.
    Created(Item),
    /// The same item (guid, or URL, see [`Store::add_item`]) was stored before; topics
    /// it did not have yet were added to it.
    Existing(Item),
}

const ITEM_COLUMNS: &str =
    "SELECT id, title, url, summary, body, published_at, source, created_at, hidden_at FROM items";

/// The key that recognises an item posted again: its guid, else its url; long keys
/// hashed, because a unique index entry has a size limit in PostgreSQL.
fn dedup_key(item: &NewItem) -> Option<String> {
    let key = match (&item.guid, &item.url) {
        (Some(guid), _) => format!("guid:{guid}"),
        (None, Some(url)) => format!("url:{url}"),
        (None, None) => return None,
    };
    Some(if key.len() > 500 {
        format!(
            "sha256:{}",
            crate::domain::hex(&sha2::Sha256::digest(key.as_bytes()))
        )
    } else {
        key
    })
}

/// Finds a stored item with the same URL: any, when the new item has no guid of its
/// own (its URL is its identity); with the same title too, when it has one. Two
/// entries with different guids are one press release only when link and title
/// agree: a feed that points every entry at its home page keeps its entries apart.
const SAME_URL: &str = "SELECT id FROM items WHERE substr(url, 1, 500) = substr($1, 1, 500) \
    AND url = $1 AND ($2 OR title = $3) ORDER BY id LIMIT 1";

/// The topic of this slug, if the item is not in it yet.
const MISSING_TOPIC: &str = "SELECT t.id FROM topics t WHERE t.slug = $2 \
    AND NOT EXISTS (SELECT 1 FROM item_topics it WHERE it.item_id = $1 AND it.topic_id = t.id)";

/// A fresh arrival number from the sequence of item ids.
const NEXT_ARRIVAL_PG: &str = "SELECT nextval(pg_get_serial_sequence('items', 'id'))";
/// The same on SQLite: `AUTOINCREMENT` never hands out a number at or below
/// `sqlite_sequence.seq`, so raising it reserves one.
const NEXT_ARRIVAL_SQLITE: &str =
    "UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'items' RETURNING seq";

/// A two-key advisory lock id for a URL.
fn url_lock(url: &str) -> i32 {
    let digest = sha2::Sha256::digest(url.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl Store {
    /// Stores an item, or adds its topics to the same item stored before.
    ///
    /// The same item is the one with the same guid; else, without a guid, the one
    /// with the same URL; else, with a guid nobody has, the one with the same URL and
    /// title (the same press release in two feeds under two guids). A topic the item
    /// did not have yet arrives now: the link gets a fresh arrival number from the
    /// sequence of item ids, above every watermark handed out so far, so the readers
    /// of that topic get the item in their next digest while a reader who already had
    /// it through another of their topics does not get it twice (a digest lists an
    /// item at its first arrival among the reader's topics, see [`DigestItems`]).
    ///
    /// # Errors
    /// [`StoreError::InvalidItem`] when [`NewItem::validate`] refuses the item;
    /// otherwise when the database fails.
    pub async fn add_item(&self, item: &NewItem, now: DateTime<Utc>) -> StoreResult<ItemOutcome> {
        item.validate().map_err(StoreError::InvalidItem)?;
        let dedup_key = dedup_key(item);
        // On SQLite, another process (`postbote inbound`) may write between this
        // transaction's first read and its first write, which a deferred transaction
        // could then not commit: `begin` takes the write lock at the start instead.
        let mut tx = self.begin().await?;
        tx.lock_arrivals(item.url.as_deref()).await?;
        let found = tx.find_same_item(item, dedup_key.as_deref()).await?;
        let created = match found {
            Some(_) => None,
            None => tx.insert_item(item, dedup_key.as_deref(), now).await?,
        };
        let id = match (created, found) {
            (Some(id), _) | (None, Some(id)) => id,
            // Stored by a concurrent insert after our look-up.
            (None, None) => tx
                .item_by_key(dedup_key.as_deref())
                .await?
                .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?,
        };
        tx.add_item_topics(id, created, &item.topics).await?;
        tx.commit().await?;
        let stored = self.item(id).await?.expect("stored in this transaction");
        Ok(if created.is_some() {
            ItemOutcome::Created(stored)
        } else {
            ItemOutcome::Existing(stored)
        })
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

    /// Items of a topic (or all) in arrival order, after an id cursor.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_items(
        &self,
        topic: Option<&TopicSlug>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Item>> {
        let sql = "SELECT i.id FROM items i WHERE i.id > $1 AND ($2 IS NULL OR EXISTS (SELECT 1 FROM item_topics it \
                   JOIN topics t ON t.id = it.topic_id WHERE it.item_id = i.id AND t.slug = $2)) ORDER BY i.id LIMIT $3";
        let ids: Vec<i64> = on_pool!(self, pool => sqlx::query_scalar(sql)
            .bind(after)
            .bind(topic.map(TopicSlug::as_str))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(item) = self.item(id).await? {
                items.push(item);
            }
        }
        Ok(items)
    }

    /// Hides item `id` from every digest planned from now on: it stays stored (its
    /// page keeps working for digests that listed it already), but digest batches
    /// neither list nor count it. Hiding it again keeps the first time. `false`
    /// when there is no such item.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn hide_item(&self, id: i64, now: DateTime<Utc>) -> StoreResult<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE items SET hidden_at = COALESCE(hidden_at, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// The newest arrival that is safe to cover: every item or topic link with a
    /// smaller or equal arrival number is committed, and everything stored from now
    /// on gets a larger one. Digests cover the arrivals between a reader's previous
    /// watermark and this one, so an item arriving during a pass is in this digest or
    /// the next, never in neither, and no clock is involved.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn item_watermark(&self) -> StoreResult<i64> {
        let watermark = match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(ARRIVAL_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let w: i64 = sqlx::query_scalar(
                    "SELECT GREATEST((SELECT COALESCE(MAX(id), 0) FROM items), \
                     (SELECT COALESCE(MAX(arrival), 0) FROM item_topics))",
                )
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                w
            }
            // One connection: every insert is committed before this runs.
            Store::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM items), \
                     (SELECT COALESCE(MAX(arrival), 0) FROM item_topics))",
                )
                .fetch_one(pool)
                .await?
            }
        };
        Ok(watermark)
    }
}

impl Tx {
    /// On PostgreSQL: a shared lock against the watermark (an item or a topic link
    /// gets its arrival only while no watermark is being read, see
    /// [`Store::item_watermark`]), and a lock on the URL, so that two sources
    /// storing one release under two guids at the same moment do not both insert
    /// it: the second waits, then finds the first by its URL.
    async fn lock_arrivals(&mut self, url: Option<&str>) -> StoreResult<()> {
        if let Tx::Postgres(tx) = self {
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
                .bind(ARRIVAL_LOCK)
                .execute(&mut **tx)
                .await?;
            if let Some(url) = url {
                sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                    .bind(URL_LOCK_CLASS)
                    .bind(url_lock(url))
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// The stored item that is the same as `item`: by its key, else by its URL
    /// (see [`Store::add_item`]).
    async fn find_same_item(
        &mut self,
        item: &NewItem,
        key: Option<&str>,
    ) -> StoreResult<Option<i64>> {
        if let Some(id) = self.item_by_key(key).await? {
            return Ok(Some(id));
        }
        let Some(url) = &item.url else {
            return Ok(None);
        };
        let found = on_tx!(self, tx => sqlx::query_scalar(SAME_URL)
            .bind(url)
            .bind(item.guid.is_none())
            .bind(&item.title)
            .fetch_optional(&mut *tx)
            .await)?;
        Ok(found)
    }

    /// The id of the item stored under `key`, if any.
    async fn item_by_key(&mut self, key: Option<&str>) -> StoreResult<Option<i64>> {
        let Some(key) = key else { return Ok(None) };
        let id = on_tx!(self, tx => sqlx::query_scalar("SELECT id FROM items WHERE dedup_key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await)?;
        Ok(id)
    }

    /// Inserts the item; `None` when a concurrent insert stored its key first.
    async fn insert_item(
        &mut self,
        item: &NewItem,
        key: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>> {
        let id = on_tx!(self, tx => sqlx::query_scalar(
            "INSERT INTO items (dedup_key, title, url, summary, body, published_at, source, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
        )
        .bind(key)
        .bind(&item.title)
        .bind(&item.url)
        .bind(&item.summary)
        .bind(&item.body)
        .bind(item.published_at)
        .bind(&item.source)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await)?;
        Ok(id)
    }

    /// Links item `id` to those of `topics` it is not in yet. A new item (`created`)
    /// arrives in its topics at its id; a topic added to a stored item arrives now,
    /// with a number of its own.
    async fn add_item_topics(
        &mut self,
        id: i64,
        created: Option<i64>,
        topics: &[TopicSlug],
    ) -> StoreResult<()> {
        let next_arrival = if self.is_postgres() {
            NEXT_ARRIVAL_PG
        } else {
            NEXT_ARRIVAL_SQLITE
        };
        on_tx!(self, tx => {
            for slug in topics {
                let topic: Option<i64> = sqlx::query_scalar(MISSING_TOPIC)
                    .bind(id)
                    .bind(slug.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(topic) = topic else { continue };
                let arrival: i64 = match created {
                    Some(id) => id,
                    None => sqlx::query_scalar(next_arrival).fetch_one(&mut *tx).await?,
                };
                sqlx::query("INSERT INTO item_topics (item_id, topic_id, arrival) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(id)
                    .bind(topic)
                    .bind(arrival)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }
}

/// An item a digest batch may list.
#[derive(Debug, Clone)]
pub struct PoolItem {
    /// Its id (for its page).
    pub id: i64,
    /// Headline.
    pub title: String,
    /// Link, if it has one.
    pub url: Option<String>,
    /// Teaser.
    pub summary: Option<String>,
    /// `(topic id, arrival)` for each of its topics, up to the pass's watermark.
    pub arrivals: Vec<(i64, i64)>,
}

impl PoolItem {
    /// When the item arrived for a reader of `topics`: its first arrival in any of
    /// them; `None` if it is in none.
    pub fn arrival_for(&self, topics: &[i64]) -> Option<i64> {
        self.arrivals
            .iter()
            .filter(|(topic, _)| topics.contains(topic))
            .map(|(_, arrival)| *arrival)
            .min()
    }

    /// Whether the item is in `topic`.
    pub fn in_topic(&self, topic: i64) -> bool {
        self.arrivals.iter().any(|(t, _)| *t == topic)
    }
}

/// What one digest batch may list, bounded whatever arrived: for each topic of the
/// batch's readers, the newest `max_items + 1` arrivals above the lowest watermark
/// among that topic's readers (with all topics of those items, so a reader who had
/// an item through another topic is recognised), and, for a reader whose news go
/// further back than that, the exact number of their new items (an SQL count), so
/// "… and N more" stays true.
#[derive(Debug, Clone, Default)]
pub struct DigestItems {
    /// The items, by descending id.
    pub items: Vec<PoolItem>,
    /// Exact numbers of new items by (sorted topic ids, watermark), for the readers
    /// whose news reach below what was loaded.
    counts: HashMap<(Vec<i64>, i64), usize>,
}

/// A topic's newest arrivals in a window: bind topic id, lowest watermark, the
/// pass's watermark, how many.
/// Items an operator hid ([`Store::hide_item`]) are left out.
pub(super) const TOPIC_NEWEST: &str = "SELECT it.item_id, it.arrival FROM item_topics it \
    WHERE it.topic_id = $1 AND it.arrival > $2 AND it.arrival <= $3 \
    AND NOT EXISTS (SELECT 1 FROM items h WHERE h.id = it.item_id AND h.hidden_at IS NOT NULL) \
    ORDER BY it.arrival DESC LIMIT $4";

impl DigestItems {
    /// The items that are news to a reader of `topics` (sorted) whose previous digest
    /// covered arrivals up to `last`: those whose first arrival in these topics lies
    /// above `last`, newest first, and how many there are in all (more than listed
    /// when the batch did not load them all).
    pub fn fresh(&self, topics: &[i64], last: i64) -> (Vec<&PoolItem>, usize) {
        let mut fresh: Vec<(i64, &PoolItem)> = self
            .items
            .iter()
            .filter_map(|i| i.arrival_for(topics).filter(|a| *a > last).map(|a| (a, i)))
            .collect();
        fresh.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.id.cmp(&a.1.id)));
        let total = self
            .counts
            .get(&(topics.to_vec(), last))
            .copied()
            .unwrap_or(fresh.len())
            .max(fresh.len());
        (fresh.into_iter().map(|(_, i)| i).collect(), total)
    }

    /// Each topic of `readers` with the lowest watermark among its readers: the
    /// window a batch loads for it.
    pub(super) fn windows(readers: &[DueReader]) -> BTreeMap<i64, i64> {
        let mut lowest = BTreeMap::new();
        for r in readers {
            for topic in &r.topic_ids {
                lowest
                    .entry(*topic)
                    .and_modify(|l: &mut i64| *l = (*l).min(r.last_item_id))
                    .or_insert(r.last_item_id);
            }
        }
        lowest
    }

    /// The `(sorted topics, watermark)` of each reader whose news may reach below
    /// what was loaded: one of their topics had more arrivals than `per_topic` in
    /// its window, and the oldest one loaded lies above the reader's watermark + 1.
    pub(super) fn to_count(
        readers: &[DueReader],
        oldest_loaded: &HashMap<i64, i64>,
    ) -> Vec<(Vec<i64>, i64)> {
        let mut keys: Vec<(Vec<i64>, i64)> = readers
            .iter()
            .filter(|r| {
                r.topic_ids.iter().any(|t| {
                    oldest_loaded
                        .get(t)
                        .is_some_and(|oldest| *oldest > r.last_item_id.saturating_add(1))
                })
            })
            .map(|r| {
                let mut topics = r.topic_ids.clone();
                topics.sort_unstable();
                topics.dedup();
                (topics, r.last_item_id)
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Assembles the pool from `(id, title, url, summary, topic id, arrival)` rows
    /// ordered by descending id, and the counts.
    pub(super) fn assemble(
        rows: Vec<DigestItemRow>,
        counts: HashMap<(Vec<i64>, i64), usize>,
    ) -> Self {
        let mut items: Vec<PoolItem> = Vec::new();
        for (id, title, url, summary, topic, arrival) in rows {
            match items.last_mut() {
                Some(last) if last.id == id => last.arrivals.push((topic, arrival)),
                _ => items.push(PoolItem {
                    id,
                    title,
                    url,
                    summary,
                    arrivals: vec![(topic, arrival)],
                }),
            }
        }
        Self { items, counts }
    }
}

/// An item with one of its topics: id, title, url, summary, topic id, arrival.
pub(super) type DigestItemRow = (i64, String, Option<String>, Option<String>, i64, i64);

/// Loads a digest batch's [`DigestItems`] inside the batch's transaction `$tx`
/// (`&mut` a PostgreSQL or SQLite transaction): for each topic of `$readers`, its
/// newest `$per_topic` arrivals in (lowest watermark of its readers, `$watermark`]
/// by one indexed query; the items among them with every topic link up to the
/// watermark; and for the readers whose news reach further back, one count each per
/// distinct (topics, watermark). A macro, like `on_pool!`, because the same
/// statements run on either backend's connection type. Evaluates to
/// `Result<DigestItems, sqlx::Error>`.
macro_rules! load_digest_items {
    ($tx:ident, $readers:expr, $watermark:expr, $per_topic:expr) => {
        async {
            use $crate::store::items::{DigestItemRow, DigestItems, TOPIC_NEWEST};
            let readers: &[$crate::store::DueReader] = $readers;
            let watermark: i64 = $watermark;
            let per_topic: i64 = i64::try_from($per_topic).unwrap_or(i64::MAX);
            let mut ids = std::collections::BTreeSet::new();
            let mut oldest_loaded = std::collections::HashMap::new();
            for (topic, lowest) in DigestItems::windows(readers) {
                let rows: Vec<(i64, i64)> = sqlx::query_as(TOPIC_NEWEST)
                    .bind(topic)
                    .bind(lowest)
                    .bind(watermark)
                    .bind(per_topic)
                    .fetch_all(&mut *$tx)
                    .await?;
                if i64::try_from(rows.len()).is_ok_and(|n| n >= per_topic)
                    && let Some((_, oldest)) = rows.last()
                {
                    oldest_loaded.insert(topic, *oldest);
                }
                ids.extend(rows.into_iter().map(|(id, _)| id));
            }
            let ids: Vec<i64> = ids.into_iter().rev().collect();
            let mut rows: Vec<DigestItemRow> = Vec::new();
            for chunk in ids.chunks(500) {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT i.id, i.title, i.url, i.summary, it.topic_id, it.arrival FROM items i \
                     JOIN item_topics it ON it.item_id = i.id WHERE it.arrival <= ",
                );
                q.push_bind(watermark).push(" AND i.id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                list.push_unseparated(") ORDER BY i.id DESC");
                rows.extend(q.build_query_as::<DigestItemRow>().fetch_all(&mut *$tx).await?);
            }
            let mut counts = std::collections::HashMap::new();
            for (topics, last) in DigestItems::to_count(readers, &oldest_loaded) {
                // New to the reader: a link in their topics within (last, watermark],
                // and none at or below `last` (they had it then).
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT COUNT(DISTINCT it.item_id) FROM item_topics it WHERE it.arrival > ",
                );
                q.push_bind(last).push(" AND it.arrival <= ").push_bind(watermark).push(" AND it.topic_id IN (");
                let mut list = q.separated(", ");
                for t in &topics {
                    list.push_bind(*t);
                }
                list.push_unseparated(
                    ") AND NOT EXISTS (SELECT 1 FROM items h WHERE h.id = it.item_id AND h.hidden_at IS NOT NULL) \
                     AND NOT EXISTS (SELECT 1 FROM item_topics e WHERE e.item_id = it.item_id AND e.arrival <= ",
                );
                q.push_bind(last).push(" AND e.topic_id IN (");
                let mut list = q.separated(", ");
                for t in &topics {
                    list.push_bind(*t);
                }
                list.push_unseparated("))");
                let n: i64 = q.build_query_scalar().fetch_one(&mut *$tx).await?;
                counts.insert((topics, last), usize::try_from(n).unwrap_or(0));
            }
            Ok::<_, sqlx::Error>(DigestItems::assemble(rows, counts))
        }
        .await
    };
}
pub(super) use load_digest_items;

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> NewItem {
        NewItem {
            topics: vec![TopicSlug::parse("wirtschaft").unwrap()],
            title: "Meldung".into(),
            url: Some("https://presse.example/1".into()),
            summary: None,
            body: None,
            published_at: None,
            guid: None,
            source: "api".into(),
        }
    }

    #[test]
    fn links_must_be_short_http_urls() {
        assert_eq!(item().validate(), Ok(()));
        for (url, problem) in [
            ("javascript:alert(1)", "http"),
            ("data:text/html,x", "http"),
            ("file:///etc/passwd", "http"),
            ("https://a.example/ x", "spaces"),
            ("https://a.example/\nx", "spaces"),
            ("nicht einmal eine URL", "spaces"),
            ("/relativ", "not a URL"),
        ] {
            let mut i = item();
            i.url = Some(url.into());
            let e = i.validate().unwrap_err();
            assert_eq!(e.field, "url", "{url}");
            assert!(e.problem.contains(problem), "{url}: {e}");
        }
        let mut long = item();
        long.url = Some(format!("https://a.example/{}", "a".repeat(MAX_URL)));
        assert!(long.validate().unwrap_err().problem.contains("2048"));
        let mut just = item();
        let prefix = "https://a.example/";
        just.url = Some(format!("{prefix}{}", "ä".repeat(MAX_URL - prefix.len())));
        assert_eq!(just.validate(), Ok(()), "characters, not bytes");
    }

    #[test]
    fn texts_are_capped_and_blank_titles_refused() {
        let mut i = item();
        i.title = " \t".into();
        assert_eq!(i.validate().unwrap_err().field, "title");
        let mut i = item();
        i.summary = Some("x".repeat(MAX_SUMMARY + 1));
        assert_eq!(i.validate().unwrap_err().field, "summary");
        let mut i = item();
        i.body = Some("a\0b".into());
        assert_eq!(i.validate().unwrap_err().field, "body");
        let mut i = item();
        i.topics.clear();
        assert_eq!(i.validate().unwrap_err().field, "topics");
    }

    #[test]
    fn fitting_cuts_on_character_boundaries_and_drops_bad_links() {
        let mut i = item();
        i.title = "ü".repeat(MAX_TITLE + 10);
        i.summary = Some("a\0b".into());
        i.body = Some("€".repeat(MAX_BODY + 1));
        i.url = Some(format!("https://a.example/{}", "x".repeat(2 * 1024 * 1024)));
        i.guid = Some("g".repeat(MAX_GUID + 1));
        let (fitted, changed) = i.fitted();
        assert_eq!(fitted.validate(), Ok(()));
        assert_eq!(fitted.title.chars().count(), MAX_TITLE);
        assert_eq!(fitted.summary.as_deref(), Some("ab"));
        assert_eq!(fitted.body.unwrap().chars().count(), MAX_BODY);
        assert_eq!(fitted.url, None);
        assert!(fitted.guid.unwrap().starts_with("sha256:"));
        for field in ["title", "summary", "body", "url", "guid"] {
            assert!(changed.contains(&field), "{field} in {changed:?}");
        }
        let (same, changed) = item().fitted();
        assert_eq!(same.url, item().url);
        assert!(changed.is_empty(), "{changed:?}");
    }

    fn pool_item(id: i64, arrivals: &[(i64, i64)]) -> PoolItem {
        PoolItem {
            id,
            title: format!("item {id}"),
            url: None,
            summary: None,
            arrivals: arrivals.to_vec(),
        }
    }

    #[test]
    fn an_item_is_news_at_its_first_arrival_among_the_readers_topics() {
        // Item 5 arrived in topic 1 at 5 and in topic 2 (a second feed) at 9.
        let items = DigestItems::assemble(Vec::new(), HashMap::new());
        assert!(items.items.is_empty());
        let items = DigestItems {
            items: vec![pool_item(7, &[(1, 7)]), pool_item(5, &[(1, 5), (2, 9)])],
            counts: HashMap::new(),
        };
        let ids = |(fresh, total): (Vec<&PoolItem>, usize)| {
            (fresh.iter().map(|i| i.id).collect::<Vec<_>>(), total)
        };
        // A reader of topic 2 only, served up to 6: item 5 is news to them now.
        assert_eq!(ids(items.fresh(&[2], 6)), (vec![5], 1));
        // A reader of both, served up to 6: they had item 5 through topic 1.
        assert_eq!(ids(items.fresh(&[1, 2], 6)), (vec![7], 1));
        // A reader of both, never served: both, item 5 once, newest arrival first.
        assert_eq!(ids(items.fresh(&[1, 2], 0)), (vec![7, 5], 2));
    }
}
