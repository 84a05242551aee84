//! Feeds: where they are, when they are polled next, their HTTP validators and
//! their health.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::decode::StoredRow;
use super::{Store, StoreError, StoreResult, on_pool};
use crate::domain::{FeedSchedule, HttpUrl, TopicSlug};

/// A feed as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Feed {
    /// Id.
    pub id: i64,
    /// Unique name, used in logs, metrics and item sources.
    pub name: String,
    /// Where it is fetched.
    pub url: HttpUrl,
    /// The topic its items go to.
    pub topic: TopicSlug,
    /// When it is polled.
    pub schedule: FeedSchedule,
    /// `config` or `api`.
    pub origin: String,
    /// `ETag` of the last full answer.
    #[serde(skip)]
    pub etag: Option<String>,
    /// `Last-Modified` of the last full answer.
    #[serde(skip)]
    pub last_modified: Option<String>,
    /// When it is polled next.
    pub next_poll_at: DateTime<Utc>,
    /// When it was polled last.
    pub last_poll_at: Option<DateTime<Utc>>,
    /// When a poll last succeeded.
    pub last_ok_at: Option<DateTime<Utc>>,
    /// Failures in a row.
    pub failures: i32,
    /// Failures ever.
    pub failures_total: i64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// A `feeds` row (with its topic's slug) as stored.
#[derive(FromRow)]
struct FeedRow {
    id: i64,
    name: String,
    url: String,
    topic: String,
    schedule: String,
    origin: String,
    etag: Option<String>,
    last_modified: Option<String>,
    next_poll_at: DateTime<Utc>,
    last_poll_at: Option<DateTime<Utc>>,
    last_ok_at: Option<DateTime<Utc>>,
    failures: i32,
    failures_total: i64,
    last_error: Option<String>,
}

impl TryFrom<FeedRow> for Feed {
    type Error = StoreError;

    fn try_from(r: FeedRow) -> Result<Self, StoreError> {
        let row = StoredRow::new("feeds", r.id);
        Ok(Self {
            id: r.id,
            url: row.parse("url", r.url.as_str(), HttpUrl::parse)?,
            topic: row.parse("topic", r.topic.as_str(), TopicSlug::parse)?,
            schedule: row.parse("schedule", r.schedule.as_str(), FeedSchedule::parse)?,
            name: r.name,
            origin: r.origin,
            etag: r.etag,
            last_modified: r.last_modified,
            next_poll_at: r.next_poll_at,
            last_poll_at: r.last_poll_at,
            last_ok_at: r.last_ok_at,
            failures: r.failures,
            failures_total: r.failures_total,
            last_error: r.last_error,
        })
    }
}

/// A feed to create or bring in line with the configuration.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    /// Unique name.
    pub name: String,
    /// Where it is fetched.
    pub url: HttpUrl,
    /// Topic.
    pub topic: TopicSlug,
    /// When it is polled.
    pub schedule: FeedSchedule,
    /// First poll.
    pub next_poll_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT f.id, f.name, f.url, t.slug AS topic, f.schedule, f.origin, f.etag, f.last_modified, \
    f.next_poll_at, f.last_poll_at, f.last_ok_at, f.failures, f.failures_total, f.last_error \
    FROM feeds f JOIN topics t ON t.id = f.topic_id";

/// Due feeds, claimed on PostgreSQL; the search runs once, as the mail queue's
/// claim's does.
const DUE_PG: &str = "UPDATE feeds SET next_poll_at = $2 WHERE id = ANY(ARRAY(SELECT id FROM feeds WHERE next_poll_at <= $1 \
    ORDER BY next_poll_at LIMIT $3 FOR UPDATE SKIP LOCKED)) RETURNING id";
const DUE_SQLITE: &str = "UPDATE feeds SET next_poll_at = $2 WHERE id IN (SELECT id FROM feeds WHERE next_poll_at <= $1 \
    ORDER BY next_poll_at LIMIT $3) RETURNING id";

impl Store {
    /// Every feed, by name.
    ///
    /// # Errors
    /// When the database fails, or a feed's stored URL, topic or schedule does not
    /// parse ([`StoreError::Corrupt`] naming the row).
    pub async fn list_feeds(&self) -> StoreResult<Vec<Feed>> {
        let sql = sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY f.name"));
        let rows: Vec<FeedRow> = on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        rows.into_iter().map(Feed::try_from).collect()
    }

    /// Creates a feed (`origin` `api`), or for `origin` `config` creates or updates it.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when an API feed's name is taken.
    pub async fn put_feed(
        &self,
        spec: &FeedSpec,
        origin: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Feed> {
        let sql = if origin == "config" {
            "INSERT INTO feeds (name, url, topic_id, schedule, origin, next_poll_at, created_at) \
             SELECT $1, $2, id, $4, $5, $6, $7 FROM topics WHERE slug = $3 \
             ON CONFLICT (name) DO UPDATE SET url = excluded.url, topic_id = excluded.topic_id, \
             schedule = excluded.schedule, origin = excluded.origin RETURNING id"
        } else {
            "INSERT INTO feeds (name, url, topic_id, schedule, origin, next_poll_at, created_at) \
             SELECT $1, $2, id, $4, $5, $6, $7 FROM topics WHERE slug = $3 \
             ON CONFLICT (name) DO NOTHING RETURNING id"
        };
        let id: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(sql)
            .bind(&spec.name)
            .bind(spec.url.as_str())
            .bind(spec.topic.as_str())
            .bind(spec.schedule.as_str())
            .bind(origin)
            .bind(spec.next_poll_at)
            .bind(now)
            .fetch_optional(pool)
            .await)?;
        let id = id.ok_or(StoreError::Conflict("feed"))?;
        Ok(self.feed(id).await?.expect("just stored"))
    }

    /// One feed.
    ///
    /// # Errors
    /// When the database fails, or the feed's stored URL, topic or schedule does
    /// not parse ([`StoreError::Corrupt`] naming the row).
    pub async fn feed(&self, id: i64) -> StoreResult<Option<Feed>> {
        let sql = sqlx::AssertSqlSafe(format!("{SELECT} WHERE f.id = $1"));
        let row: Option<FeedRow> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await)?;
        row.map(Feed::try_from).transpose()
    }

    /// Deletes a feed by name; its items stay.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_feed(&self, name: &str) -> StoreResult<bool> {
        let n = on_pool!(self, pool => sqlx::query("DELETE FROM feeds WHERE name = $1").bind(name).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Claims up to `limit` feeds due at `now`: their next poll moves to `hold_until`
    /// so no other instance polls them meanwhile. Each claimed feed comes with its
    /// own result: a feed whose stored URL, topic or schedule does not parse is
    /// [`StoreError::Corrupt`] naming the row, and keeps no other feed from being
    /// polled.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn claim_due_feeds(
        &self,
        now: DateTime<Utc>,
        hold_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<StoreResult<Feed>>> {
        let sql = if self.is_postgres() {
            DUE_PG
        } else {
            DUE_SQLITE
        };
        let ids: Vec<i64> = on_pool!(self, pool => sqlx::query_scalar(sql).bind(now).bind(hold_until).bind(i64::from(limit)).fetch_all(pool).await)?;
        let mut feeds = Vec::with_capacity(ids.len());
        for id in ids {
            match self.feed(id).await {
                Ok(Some(f)) => feeds.push(Ok(f)),
                Ok(None) => {}
                Err(e @ StoreError::Corrupt(_)) => feeds.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(feeds)
    }

    /// Records a successful poll and the validators for the next one.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn feed_polled(
        &self,
        id: i64,
        now: DateTime<Utc>,
        next: DateTime<Utc>,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> StoreResult<()> {
        let sql = "UPDATE feeds SET last_poll_at = $2, last_ok_at = $2, next_poll_at = $3, failures = 0, \
                   last_error = NULL, etag = COALESCE($4, etag), last_modified = COALESCE($5, last_modified) WHERE id = $1";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(now).bind(next).bind(etag).bind(last_modified).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Records a failed poll and when to try again.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn feed_failed(
        &self,
        id: i64,
        now: DateTime<Utc>,
        next: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        let sql = "UPDATE feeds SET last_poll_at = $2, next_poll_at = $3, failures = failures + 1, \
                   failures_total = failures_total + 1, last_error = $4 WHERE id = $1";
        on_pool!(self, pool => sqlx::query(sql).bind(id).bind(now).bind(next).bind(error).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
