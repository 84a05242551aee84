//! Mailed-in press releases an operator decides on: held ones (from an allowed
//! sender whose domain was not authenticated) and refused ones (several or no
//! `From` headers), kept so the operator can see what was turned away.
//!
//! Approving stores the submission as an item at that moment: it arrives then, so
//! its id is above every reader's watermark and the next digests list it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::decode::StoredRow;
use super::{ItemOutcome, NewItem, Store, StoreError, StoreResult, on_pool};
pub use crate::domain::SubmissionStatus;
use crate::domain::TopicSlug;

/// A submission to store.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    /// `held` or `refused`.
    pub status: SubmissionStatus,
    /// The topic its address named.
    pub topic: String,
    /// The sender as the message gave it.
    pub sender: String,
    /// Subject.
    pub title: String,
    /// Teaser.
    pub summary: Option<String>,
    /// Full text.
    pub body: Option<String>,
    /// `mail:<Message-ID>`: the same message twice is one submission.
    pub guid: Option<String>,
    /// Why it was not published.
    pub reason: String,
}

/// A stored submission.
#[derive(Debug, Clone, Serialize)]
pub struct Submission {
    /// Its id.
    pub id: i64,
    /// Where it stands.
    pub status: SubmissionStatus,
    /// The topic its address named.
    pub topic: String,
    /// The sender as the message gave it.
    pub sender: String,
    /// Subject.
    pub title: String,
    /// Teaser.
    pub summary: Option<String>,
    /// Full text.
    pub body: Option<String>,
    /// Why it was not published on arrival.
    pub reason: String,
    /// The item it became, once approved.
    pub item_id: Option<i64>,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// When an operator decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Kept for approval: the item's guid.
    #[serde(skip)]
    pub guid: Option<String>,
}

/// A `submissions` row as stored.
#[derive(FromRow)]
struct SubmissionRow {
    id: i64,
    status: String,
    topic: String,
    sender: String,
    title: String,
    summary: Option<String>,
    body: Option<String>,
    reason: String,
    item_id: Option<i64>,
    received_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
    guid: Option<String>,
}

impl TryFrom<SubmissionRow> for Submission {
    type Error = StoreError;

    fn try_from(r: SubmissionRow) -> Result<Self, StoreError> {
        let row = StoredRow::new("submissions", r.id);
        Ok(Self {
            id: r.id,
            status: row.parse("status", r.status.as_str(), SubmissionStatus::parse)?,
            topic: r.topic,
            sender: r.sender,
            title: r.title,
            summary: r.summary,
            body: r.body,
            reason: r.reason,
            item_id: r.item_id,
            received_at: r.received_at,
            decided_at: r.decided_at,
            guid: r.guid,
        })
    }
}

/// What an operator's decision did.
#[derive(Debug, Clone)]
pub enum Decided {
    /// Done: the submission afterwards.
    Done(Submission),
    /// The submission was not held (decided before, or refused).
    NotHeld(Submission),
    /// No such submission.
    NotFound,
}

const LIST: &str = "SELECT id, status, topic, sender, title, summary, body, reason, item_id, received_at, \
    decided_at, guid FROM submissions WHERE id > $1 AND ($2 IS NULL OR status = $2) ORDER BY id LIMIT $3";
const ONE: &str = "SELECT id, status, topic, sender, title, summary, body, reason, item_id, received_at, \
    decided_at, guid FROM submissions WHERE id = $1";

impl Store {
    /// Stores a held or refused submission; the same message again (same guid)
    /// is recognised. Returns the id and whether it is new.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn add_submission(
        &self,
        s: &NewSubmission,
        now: DateTime<Utc>,
    ) -> StoreResult<(i64, bool)> {
        let clean = |v: &str| v.replace('\0', "");
        let inserted: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "INSERT INTO submissions (status, topic, sender, title, summary, body, guid, reason, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (guid) DO NOTHING RETURNING id",
        )
        .bind(s.status.as_str())
        .bind(clean(&s.topic))
        .bind(clean(&s.sender))
        .bind(clean(&s.title))
        .bind(s.summary.as_deref().map(clean))
        .bind(s.body.as_deref().map(clean))
        .bind(s.guid.as_deref().map(clean))
        .bind(clean(&s.reason))
        .bind(now)
        .fetch_optional(pool)
        .await)?;
        if let Some(id) = inserted {
            return Ok((id, true));
        }
        let existing: i64 = on_pool!(self, pool => sqlx::query_scalar("SELECT id FROM submissions WHERE guid = $1")
            .bind(s.guid.as_deref().map(clean))
            .fetch_one(pool)
            .await)?;
        Ok((existing, false))
    }

    /// Submissions of one status (all when `None`), oldest first, after `after`.
    ///
    /// # Errors
    /// When the database fails, or a stored status is none of the four
    /// ([`StoreError::Corrupt`] naming the row).
    pub async fn list_submissions(
        &self,
        status: Option<SubmissionStatus>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Submission>> {
        let rows: Vec<SubmissionRow> = on_pool!(self, pool => sqlx::query_as(LIST)
            .bind(after)
            .bind(status.map(SubmissionStatus::as_str))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(Submission::try_from).collect()
    }

    async fn submission(&self, id: i64) -> StoreResult<Option<Submission>> {
        let row: Option<SubmissionRow> =
            on_pool!(self, pool => sqlx::query_as(ONE).bind(id).fetch_optional(pool).await)?;
        row.map(Submission::try_from).transpose()
    }

    /// Publishes a held submission as an item arriving now.
    ///
    /// # Errors
    /// When the database fails, or the stored status does not parse
    /// ([`StoreError::Corrupt`] naming the row).
    pub async fn approve_submission(&self, id: i64, now: DateTime<Utc>) -> StoreResult<Decided> {
        let Some(held) = self.submission(id).await? else {
            return Ok(Decided::NotFound);
        };
        if held.status != SubmissionStatus::Held {
            return Ok(Decided::NotHeld(held));
        }
        let Ok(topic) = TopicSlug::parse(&held.topic) else {
            return Ok(Decided::NotHeld(held));
        };
        // The guid makes a repeated approval (after a crash between the two
        // steps) find the same item instead of making a second one.
        let item = NewItem {
            topics: vec![topic],
            title: held.title.clone(),
            url: None,
            summary: held.summary.clone(),
            body: held.body.clone(),
            published_at: Some(held.received_at),
            guid: Some(
                held.guid
                    .clone()
                    .unwrap_or_else(|| format!("submission:{id}")),
            ),
            source: format!("mail:{} (approved)", held.sender),
        };
        let item_id = match self.add_item(&item, now).await? {
            ItemOutcome::Created(i) | ItemOutcome::Existing(i) => i.id,
        };
        self.decide(id, SubmissionStatus::Approved, Some(item_id), now)
            .await
    }

    /// Drops a held submission.
    ///
    /// # Errors
    /// When the database fails, or the stored status does not parse
    /// ([`StoreError::Corrupt`] naming the row).
    pub async fn reject_submission(&self, id: i64, now: DateTime<Utc>) -> StoreResult<Decided> {
        self.decide(id, SubmissionStatus::Rejected, None, now).await
    }

    async fn decide(
        &self,
        id: i64,
        status: SubmissionStatus,
        item_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Decided> {
        let changed = on_pool!(self, pool => sqlx::query(
            "UPDATE submissions SET status = $2, item_id = $3, decided_at = $4 WHERE id = $1 AND status = 'held'",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(item_id)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(match self.submission(id).await? {
            None => Decided::NotFound,
            Some(s) if changed == 1 => Decided::Done(s),
            Some(s) => Decided::NotHeld(s),
        })
    }
}
