//! A reader's settings: reading them for the preferences page and changing them,
//! with each change kept with its time.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::super::decode::StoredRow;
use super::super::{Store, StoreError, StoreResult, Tx, on_pool, on_tx};
use crate::domain::{
    DeliverySchedule, DeliveryTime, EmailAddress, Locale, SubscriberStatus, TimeZone, TopicSlug,
    Weekdays,
};

/// A reader's current settings, for the preferences page.
#[derive(Debug, Clone)]
pub struct Preferences {
    /// Subscriber id.
    pub id: i64,
    /// Address.
    pub email: EmailAddress,
    /// Where the reader stands.
    pub status: SubscriberStatus,
    /// Local delivery time.
    pub delivery_time: DeliveryTime,
    /// Zone.
    pub timezone: TimeZone,
    /// Days of the week.
    pub weekdays: Weekdays,
    /// Language.
    pub locale: Locale,
    /// Chosen topics, by slug.
    pub topics: Vec<TopicSlug>,
    /// No digest on the reader's local dates up to and including this one.
    pub paused_until: Option<NaiveDate>,
}

#[derive(FromRow)]
struct PreferencesRow {
    id: i64,
    email: String,
    status: String,
    delivery_time: String,
    timezone: String,
    weekdays: i64,
    locale: String,
    paused_until: Option<NaiveDate>,
}

impl TryFrom<PreferencesRow> for Preferences {
    type Error = StoreError;

    fn try_from(r: PreferencesRow) -> Result<Self, StoreError> {
        let row = StoredRow::subscriber(r.id);
        let schedule = row.schedule(&r.delivery_time, &r.timezone, r.weekdays)?;
        Ok(Self {
            id: r.id,
            email: row.parse("email", r.email.as_str(), EmailAddress::parse)?,
            status: row.parse("status", r.status.as_str(), SubscriberStatus::parse)?,
            delivery_time: schedule.time,
            timezone: schedule.timezone,
            weekdays: schedule.weekdays,
            locale: row.parse("locale", r.locale.as_str(), Locale::parse)?,
            topics: Vec::new(),
            paused_until: r.paused_until,
        })
    }
}

/// One change of settings, kept with its time: history, shown as it was stored.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct PreferenceChange {
    /// When.
    pub changed_at: DateTime<Utc>,
    /// Topic slugs, comma separated.
    pub topics: String,
    /// Delivery time.
    pub delivery_time: String,
    /// Zone.
    pub timezone: String,
    /// Weekday bits (bit 0 = Monday).
    pub weekdays: i64,
    /// Language.
    pub locale: String,
    /// The pause set (`YYYY-MM-DD`), if any.
    pub paused_until: Option<NaiveDate>,
}

/// What a preference change sets besides the topics: schedule, language, pause.
type Settings<'a> = (&'a DeliverySchedule, Locale, Option<NaiveDate>);

impl Store {
    /// A reader's settings.
    ///
    /// # Errors
    /// When the database fails, or the reader's row does not parse.
    pub async fn preferences(&self, subscriber_id: i64) -> StoreResult<Option<Preferences>> {
        let row: Option<PreferencesRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, email, status, delivery_time, timezone, weekdays, locale, paused_until FROM subscribers WHERE id = $1",
        )
        .bind(subscriber_id)
        .fetch_optional(pool)
        .await)?;
        let Some(row) = row else { return Ok(None) };
        let mut p = Preferences::try_from(row)?;
        p.topics = self.topics_of(subscriber_id).await?;
        Ok(Some(p))
    }

    /// Changes a reader's topics, schedule, language and pause, keeps the change
    /// with its time, and moves a confirmed reader's next digest to the new
    /// schedule (past the pause, if any).
    /// Returns false when there is no such reader.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn update_preferences(
        &self,
        subscriber_id: i64,
        topics: &[TopicSlug],
        schedule: DeliverySchedule,
        locale: Locale,
        paused_until: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let next = tx
            .next_slot_for(subscriber_id, &schedule, paused_until, now)
            .await?;
        let settings = (&schedule, locale, paused_until);
        if !tx
            .update_settings(subscriber_id, settings, now, next)
            .await?
        {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.replace_topics(subscriber_id, topics).await?;
        tx.record_preference_change(subscriber_id, topics, settings, now)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

impl Tx {
    /// The reader's next slot on a new schedule and pause: one digest a day, so if
    /// the reader had today's already, a later time today waits for tomorrow. On
    /// PostgreSQL the reader is locked first: a pass serving them right now
    /// finishes first, so its digest is seen here.
    async fn next_slot_for(
        &mut self,
        subscriber_id: i64,
        schedule: &DeliverySchedule,
        paused_until: Option<NaiveDate>,
        now: DateTime<Utc>,
    ) -> StoreResult<DateTime<Utc>> {
        let postgres = self.is_postgres();
        let sql = if postgres {
            "SELECT last_slot_at FROM subscribers WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT last_slot_at FROM subscribers WHERE id = $1"
        };
        let last: Option<DateTime<Utc>> = on_tx!(self, tx => sqlx::query_scalar(sql)
            .bind(subscriber_id)
            .fetch_optional(&mut *tx)
            .await?)
        .flatten();
        let next = schedule.next_after_pause(now, paused_until);
        let day = |at: DateTime<Utc>| schedule.local_date(at);
        Ok(if last.is_some_and(|l| day(l) == day(next)) {
            schedule.next_after_pause(next, paused_until)
        } else {
            next
        })
    }

    /// Stores the new schedule, language and pause; a confirmed reader's next
    /// slot becomes `next`. False when there is no such reader.
    async fn update_settings(
        &mut self,
        subscriber_id: i64,
        (schedule, locale, paused_until): Settings<'_>,
        now: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let updated = on_tx!(self, tx => sqlx::query(
            "UPDATE subscribers SET delivery_time = $2, timezone = $3, weekdays = $4, locale = $5, \
             updated_at = $6, next_slot_at = CASE WHEN status = 'confirmed' THEN $7 ELSE next_slot_at END, \
             paused_until = $8 WHERE id = $1",
        )
        .bind(subscriber_id)
        .bind(schedule.time.to_string())
        .bind(schedule.timezone.to_string())
        .bind(schedule.weekdays.bits())
        .bind(locale.as_str())
        .bind(now)
        .bind(next)
        .bind(paused_until)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(updated > 0)
    }

    /// Keeps a change of settings with its time.
    async fn record_preference_change(
        &mut self,
        subscriber_id: i64,
        topics: &[TopicSlug],
        (schedule, locale, paused_until): Settings<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let slugs = topics
            .iter()
            .map(TopicSlug::as_str)
            .collect::<Vec<_>>()
            .join(",");
        on_tx!(self, tx => sqlx::query(
            "INSERT INTO preference_changes (subscriber_id, changed_at, topics, delivery_time, timezone, weekdays, locale, paused_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(subscriber_id)
        .bind(now)
        .bind(&slugs)
        .bind(schedule.time.to_string())
        .bind(schedule.timezone.to_string())
        .bind(schedule.weekdays.bits())
        .bind(locale.as_str())
        .bind(paused_until)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
