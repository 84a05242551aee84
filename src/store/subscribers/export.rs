//! GDPR access (Art. 15/20): everything stored about an address, in one value.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::super::decode::StoredRow;
use super::super::mail_events::{MailEvent, MailEventRow};
use super::super::{DeliveryDay, Store, StoreError, StoreResult, on_pool};
use super::PreferenceChange;
use crate::domain::{DeliveryTime, EmailAddress, Locale, SubscriberStatus, TimeZone, TopicSlug};

/// Everything stored about one address (GDPR Art. 15/20).
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberExport {
    /// The address.
    pub email: EmailAddress,
    /// Where the reader stands.
    pub status: SubscriberStatus,
    /// Chosen topic slugs.
    pub topics: Vec<TopicSlug>,
    /// Delivery schedule and language.
    pub schedule: Schedule,
    /// When the address was first stored.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The confirmation proof, once confirmed.
    pub confirmation: Option<ConfirmationProof>,
    /// When the reader unsubscribed, if they did.
    pub unsubscribed_at: Option<DateTime<Utc>>,
    /// Every sign-up request's consent proof, oldest first.
    pub consents: Vec<ConsentRecord>,
    /// Every mail queued for the address, oldest first, while its row is kept.
    pub deliveries: Vec<DeliveryRecord>,
    /// Older mail whose rows the retention purge deleted (`delivery.keep_days`),
    /// counted per day and kind, oldest first.
    pub delivery_days: Vec<DeliveryDay>,
    /// Every change of settings, oldest first.
    pub preference_changes: Vec<PreferenceChange>,
    /// Bounces, complaints and unsubscribe replies, oldest first.
    pub mail_events: Vec<MailEvent>,
}

/// When and how a reader wants their mail.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Local `HH:MM`.
    pub delivery_time: DeliveryTime,
    /// IANA zone.
    pub timezone: TimeZone,
    /// Day names, e.g. `["Mon", "Tue"]`.
    pub weekdays: Vec<&'static str>,
    /// Language.
    pub locale: Locale,
}

/// When and from where the reader confirmed.
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmationProof {
    /// Time of the confirming POST.
    pub at: DateTime<Utc>,
    /// Its client IP.
    pub ip: Option<String>,
}

/// One stored consent proof: history, shown as it was stored.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ConsentRecord {
    /// When the sign-up arrived.
    pub given_at: DateTime<Utc>,
    /// Client IP.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Consent text version.
    pub consent_version: String,
    /// The exact consent text.
    pub consent_text: String,
    /// Topic slugs asked for, comma separated.
    pub topics: String,
    /// Delivery time asked for.
    pub delivery_time: String,
    /// Time zone asked for.
    pub timezone: String,
    /// Language asked for.
    pub locale: String,
}

/// One mail's delivery record.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct DeliveryRecord {
    /// `confirm`, `already-subscribed`, …
    pub kind: String,
    /// `queued`, `sent` or `failed`.
    pub status: String,
    /// SMTP attempts made.
    pub attempts: i32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct SubscriberRow {
    id: i64,
    email: String,
    status: String,
    locale: String,
    delivery_time: String,
    timezone: String,
    weekdays: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    confirmed_at: Option<DateTime<Utc>>,
    confirmed_ip: Option<String>,
    unsubscribed_at: Option<DateTime<Utc>>,
}

impl TryFrom<SubscriberRow> for SubscriberExport {
    type Error = StoreError;

    /// The reader's own columns; the history is filled in by the caller.
    fn try_from(s: SubscriberRow) -> Result<Self, StoreError> {
        let row = StoredRow::subscriber(s.id);
        let schedule = row.schedule(&s.delivery_time, &s.timezone, s.weekdays)?;
        Ok(Self {
            email: row.parse("email", s.email.as_str(), EmailAddress::parse)?,
            status: row.parse("status", s.status.as_str(), SubscriberStatus::parse)?,
            topics: Vec::new(),
            schedule: Schedule {
                delivery_time: schedule.time,
                timezone: schedule.timezone,
                weekdays: schedule.weekdays.names(),
                locale: row.parse("locale", s.locale.as_str(), Locale::parse)?,
            },
            created_at: s.created_at,
            updated_at: s.updated_at,
            confirmation: s.confirmed_at.map(|at| ConfirmationProof {
                at,
                ip: s.confirmed_ip,
            }),
            unsubscribed_at: s.unsubscribed_at,
            consents: Vec::new(),
            deliveries: Vec::new(),
            delivery_days: Vec::new(),
            preference_changes: Vec::new(),
            mail_events: Vec::new(),
        })
    }
}

impl Store {
    /// Everything stored about an address; `None` when nothing is.
    ///
    /// # Errors
    /// When the database fails, or the reader's row does not parse.
    pub async fn export_subscriber(
        &self,
        email: &EmailAddress,
    ) -> StoreResult<Option<SubscriberExport>> {
        let row: Option<SubscriberRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, email, status, locale, delivery_time, timezone, weekdays, created_at, \
             updated_at, confirmed_at, confirmed_ip, unsubscribed_at FROM subscribers WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(pool)
        .await)?;
        let Some(row) = row else { return Ok(None) };
        let id = row.id;
        let mut export = SubscriberExport::try_from(row)?;
        export.topics = self.topics_of(id).await?;
        export.consents = self.history(
            "SELECT given_at, ip, user_agent, consent_version, consent_text, topics, delivery_time, \
             timezone, locale FROM consents WHERE subscriber_id = $1 ORDER BY id",
            id,
        ).await?;
        export.deliveries = self
            .history(
                "SELECT kind, status, attempts, last_error, created_at, finished_at FROM ( \
             SELECT id, kind, status, attempts, last_error, created_at, finished_at FROM mail_log \
             WHERE subscriber_id = $1 UNION ALL \
             SELECT id, kind, status, attempts, last_error, created_at, finished_at FROM mail_jobs \
             WHERE subscriber_id = $1) AS mail ORDER BY id",
                id,
            )
            .await?;
        export.delivery_days = self.history(
            "SELECT day, kind, sent, failed, last_error FROM delivery_days WHERE subscriber_id = $1 \
             ORDER BY day, kind",
            id,
        ).await?;
        export.preference_changes = self.history(
            "SELECT changed_at, topics, delivery_time, timezone, weekdays, locale, paused_until FROM preference_changes \
             WHERE subscriber_id = $1 ORDER BY id",
            id,
        ).await?;
        let events: Vec<MailEventRow> = self
            .history(
                "SELECT id, at, kind, detail FROM mail_events WHERE subscriber_id = $1 ORDER BY id",
                id,
            )
            .await?;
        export.mail_events = events
            .into_iter()
            .map(MailEvent::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Some(export))
    }

    /// The rows `sql` selects for one reader (bound as `$1`), in its order.
    async fn history<T>(&self, sql: &'static str, subscriber_id: i64) -> StoreResult<Vec<T>>
    where
        T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
    {
        let rows =
            on_pool!(self, pool => sqlx::query_as(sql).bind(subscriber_id).fetch_all(pool).await)?;
        Ok(rows)
    }
}
