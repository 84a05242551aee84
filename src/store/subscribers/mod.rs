//! Subscribers, table `subscribers` with their topics (`subscriber_topics`), one
//! file per thing a reader or an operator does to them:
//!
//! - `signup`: the one-transaction sign-up with its proof of consent and limits;
//! - `link`: "send me my link", the preferences link by mail to a confirmed
//!   reader, within the sign-up's limits;
//! - `confirm`: confirmation tokens, the confirmation, the purge of sign-ups never
//!   confirmed;
//! - `preferences`: the reader's settings and changing them;
//! - `unsubscribe`: leaving, and the status the unsubscribe page shows;
//! - `export` and `erase`: GDPR access and erasure;
//! - `import`: confirmed readers from a CSV, a batch per transaction.
//!
//! This file has what several of them share: the list for the admin API, finding
//! and locking a reader, and replacing a reader's topics.

mod confirm;
mod erase;
mod export;
mod import;
mod link;
mod preferences;
mod signup;
mod unsubscribe;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

pub use confirm::{ConfirmOutcome, TokenState};
pub use export::{ConfirmationProof, ConsentRecord, DeliveryRecord, Schedule, SubscriberExport};
pub use import::{ImportResult, ImportedSubscriber};
pub use link::LinkOutcome;
pub use preferences::{PreferenceChange, Preferences};
pub use signup::{ConsentProof, LimitScope, SignUp, SignUpKind, SignUpLimits, SignUpOutcome};

use super::decode::StoredRow;
use super::{Store, StoreError, StoreResult, Tx, on_pool, on_tx};
use crate::domain::{DeliveryTime, EmailAddress, Locale, SubscriberStatus, TimeZone, TopicSlug};

/// One row of the subscriber list.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberSummary {
    /// Cursor for `after=`.
    pub id: i64,
    /// Address.
    pub email: EmailAddress,
    /// Status.
    pub status: SubscriberStatus,
    /// Language.
    pub locale: Locale,
    /// Delivery time.
    pub delivery_time: DeliveryTime,
    /// Zone.
    pub timezone: TimeZone,
    /// First stored.
    pub created_at: DateTime<Utc>,
}

/// A [`SubscriberSummary`] as stored (also read by the console's search).
#[derive(FromRow)]
pub(super) struct SummaryRow {
    id: i64,
    email: String,
    status: String,
    locale: String,
    delivery_time: String,
    timezone: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<SummaryRow> for SubscriberSummary {
    type Error = StoreError;

    fn try_from(r: SummaryRow) -> Result<Self, StoreError> {
        let row = StoredRow::subscriber(r.id);
        Ok(Self {
            id: r.id,
            email: row.parse("email", r.email.as_str(), EmailAddress::parse)?,
            status: row.parse("status", r.status.as_str(), SubscriberStatus::parse)?,
            locale: row.parse("locale", r.locale.as_str(), Locale::parse)?,
            delivery_time: row.parse(
                "delivery_time",
                r.delivery_time.as_str(),
                DeliveryTime::parse,
            )?,
            timezone: row.parse("timezone", r.timezone.as_str(), TimeZone::parse)?,
            created_at: r.created_at,
        })
    }
}

/// A reader locked for a change (on PostgreSQL `FOR UPDATE`, so that the status
/// counted as left is the one changed).
pub(super) struct Locked {
    /// Subscriber id.
    pub(super) id: i64,
    /// Address, as stored.
    pub(super) email: String,
    /// Status before the change.
    pub(super) status: SubscriberStatus,
    /// Language.
    pub(super) locale: Locale,
}

type LockedRow = (i64, String, String, String);

impl TryFrom<LockedRow> for Locked {
    type Error = StoreError;

    fn try_from((id, email, status, locale): LockedRow) -> Result<Self, StoreError> {
        let row = StoredRow::subscriber(id);
        Ok(Self {
            id,
            email,
            status: row.parse("status", status.as_str(), SubscriberStatus::parse)?,
            locale: row.parse("locale", locale.as_str(), Locale::parse)?,
        })
    }
}

const LOCK_BY_ID_PG: &str =
    "SELECT id, email, status, locale FROM subscribers WHERE id = $1 FOR UPDATE";
const LOCK_BY_ID_SQLITE: &str = "SELECT id, email, status, locale FROM subscribers WHERE id = $1";
const LOCK_BY_EMAIL_PG: &str =
    "SELECT id, email, status, locale FROM subscribers WHERE email = $1 FOR UPDATE";
const LOCK_BY_EMAIL_SQLITE: &str =
    "SELECT id, email, status, locale FROM subscribers WHERE email = $1";

impl Store {
    /// The reader an address belongs to.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn subscriber_id(&self, email: &str) -> StoreResult<Option<i64>> {
        let sql = "SELECT id FROM subscribers WHERE email = $1";
        let id = on_pool!(self, pool => sqlx::query_scalar(sql).bind(email.to_lowercase()).fetch_optional(pool).await)?;
        Ok(id)
    }

    /// A page of subscribers in id order, optionally of one status or topic.
    ///
    /// # Errors
    /// When the database fails, or a listed row does not parse.
    pub async fn list_subscribers(
        &self,
        status: Option<&str>,
        topic: Option<&TopicSlug>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<SubscriberSummary>> {
        let sql = "SELECT s.id, s.email, s.status, s.locale, s.delivery_time, s.timezone, s.created_at \
                   FROM subscribers s WHERE s.id > $1 AND ($2 IS NULL OR s.status = $2) \
                   AND ($3 IS NULL OR EXISTS (SELECT 1 FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id \
                   WHERE st.subscriber_id = s.id AND t.slug = $3)) ORDER BY s.id LIMIT $4";
        let rows: Vec<SummaryRow> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(after)
            .bind(status)
            .bind(topic.map(TopicSlug::as_str))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(SubscriberSummary::try_from).collect()
    }

    /// A reader's topics, by slug.
    async fn topics_of(&self, subscriber_id: i64) -> StoreResult<Vec<TopicSlug>> {
        let slugs: Vec<(i64, String)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT t.id, t.slug FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id \
             WHERE st.subscriber_id = $1 ORDER BY t.slug",
        )
        .bind(subscriber_id)
        .fetch_all(pool)
        .await)?;
        slugs
            .into_iter()
            .map(|(id, slug)| {
                StoredRow::new("topics", id).parse("slug", slug.as_str(), TopicSlug::parse)
            })
            .collect()
    }
}

impl Tx {
    /// Finds and locks a reader by id.
    pub(super) async fn lock_by_id(&mut self, subscriber_id: i64) -> StoreResult<Option<Locked>> {
        let sql = if self.is_postgres() {
            LOCK_BY_ID_PG
        } else {
            LOCK_BY_ID_SQLITE
        };
        let row: Option<LockedRow> = on_tx!(self, tx => sqlx::query_as(sql)
            .bind(subscriber_id)
            .fetch_optional(&mut *tx)
            .await)?;
        row.map(Locked::try_from).transpose()
    }

    /// Finds and locks a reader by address.
    pub(super) async fn lock_by_email(
        &mut self,
        email: &EmailAddress,
    ) -> StoreResult<Option<Locked>> {
        let sql = if self.is_postgres() {
            LOCK_BY_EMAIL_PG
        } else {
            LOCK_BY_EMAIL_SQLITE
        };
        let row: Option<LockedRow> = on_tx!(self, tx => sqlx::query_as(sql)
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await)?;
        row.map(Locked::try_from).transpose()
    }

    /// Replaces a reader's topics by `topics` (slugs of topics that do not exist
    /// or are retired are skipped).
    pub(super) async fn replace_topics(
        &mut self,
        subscriber_id: i64,
        topics: &[TopicSlug],
    ) -> StoreResult<()> {
        on_tx!(self, tx => sqlx::query("DELETE FROM subscriber_topics WHERE subscriber_id = $1")
            .bind(subscriber_id)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected()))?;
        self.add_topics(subscriber_id, topics).await
    }

    /// Gives a reader the topics named `topics` (slugs that name no topic or a
    /// retired one are left out), in one statement.
    pub(super) async fn add_topics(
        &mut self,
        subscriber_id: i64,
        topics: &[TopicSlug],
    ) -> StoreResult<()> {
        if topics.is_empty() {
            return Ok(());
        }
        on_tx!(self, tx => {
            let mut q = sqlx::QueryBuilder::new("");
            push_add_topics!(q, subscriber_id, topics);
            q.build().execute(&mut *tx).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Deletes a reader's confirmation tokens: old links can no longer bring the
    /// subscription back, and no hash outlives an erased row.
    pub(super) async fn delete_tokens(&mut self, subscriber_id: i64) -> StoreResult<()> {
        on_tx!(self, tx => sqlx::query("DELETE FROM tokens WHERE subscriber_id = $1")
            .bind(subscriber_id)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }
}

/// Pushes the `INSERT` giving reader `$id` the topics named in `$topics` (a slice
/// of [`TopicSlug`]; slugs that name no topic or a retired one are left out) onto the query builder
/// `$q`. Expands in place for either backend, alone or as a `WITH` query.
macro_rules! push_add_topics {
    ($q:expr, $id:expr, $topics:expr) => {{
        $q.push("INSERT INTO subscriber_topics (subscriber_id, topic_id) SELECT ")
            .push_bind($id)
            .push(", id FROM topics WHERE slug IN (");
        $crate::store::push_list(&mut $q, $topics.iter().map(TopicSlug::as_str));
        $q.push(") AND retired_at IS NULL ON CONFLICT DO NOTHING");
    }};
}
use push_add_topics;
