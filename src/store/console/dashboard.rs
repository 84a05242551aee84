//! The console dashboard's figures: readers by status (from the counters), per UTC
//! day of the last 30 sign-ups, confirmations, unsubscribes, bounces, complaints
//! and digests (from the tables themselves, grouped in SQL), the queue, the digests
//! due in each of the next 24 hours and the feeds. A few grouped queries, so the
//! cost grows with the window's rows, not with the history.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};
use serde::Serialize;

use super::super::{Feed, Store, StoreResult, on_pool};

/// Days the dashboard looks back, today included.
pub const DAYS: i64 = 30;

/// One UTC day's events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DayCounts {
    /// The day (UTC).
    pub day: NaiveDate,
    /// Readers first stored that day.
    pub sign_ups: i64,
    /// Readers who confirmed that day.
    pub confirmations: i64,
    /// Readers who unsubscribed that day.
    pub unsubscribes: i64,
    /// Hard bounces received.
    pub hard_bounces: i64,
    /// Soft bounces received.
    pub soft_bounces: i64,
    /// Spam complaints received.
    pub complaints: i64,
    /// Digests delivered.
    pub digests_sent: i64,
    /// Digests given up.
    pub digests_failed: i64,
}

/// A share: `events` out of `base`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rate {
    /// What is counted (e.g. complaints).
    pub events: i64,
    /// What it is counted against (e.g. digests delivered).
    pub base: i64,
}

impl Rate {
    /// The share in percent; `None` without a base.
    pub fn percent(self) -> Option<f64> {
        (self.base > 0).then(|| self.events as f64 * 100.0 / self.base as f64)
    }
}

/// The mail queue now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueHealth {
    /// Mails waiting.
    pub depth: i64,
    /// When the mail that has waited longest was (or is) due.
    pub oldest_due: Option<DateTime<Utc>>,
    /// Mails given up in the last 24 hours.
    pub failed_last_day: i64,
}

/// Digests due in one hour.
#[derive(Debug, Clone, Serialize)]
pub struct HourCount {
    /// The hour's start (UTC); the first hour also counts readers already overdue.
    pub hour: DateTime<Utc>,
    /// Readers due.
    pub due: i64,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    /// Readers by status.
    pub readers: BTreeMap<String, i64>,
    /// The last [`DAYS`] days, oldest first.
    pub days: Vec<DayCounts>,
    /// Of the readers who signed up in the window, how many confirmed.
    pub confirmation: Rate,
    /// The queue.
    pub queue: QueueHealth,
    /// The next 24 hours, from the current one.
    pub due_hours: Vec<HourCount>,
    /// Every feed with its last poll and error.
    pub feeds: Vec<Feed>,
}

/// A feed as the dashboard shows it.
pub type FeedHealth = Feed;

impl Dashboard {
    /// Sums `events` and `base` of the last `days` days.
    pub fn rate(&self, days: usize, events: fn(&DayCounts) -> i64) -> Rate {
        let recent = &self.days[self.days.len().saturating_sub(days)..];
        Rate {
            events: recent.iter().map(events).sum(),
            base: recent.iter().map(|d| d.digests_sent).sum(),
        }
    }
}

/// A timestamp column as its UTC day, `YYYY-MM-DD`, on each backend (SQLite keeps
/// RFC 3339 text in UTC).
fn day_of(postgres: bool, column: &str) -> String {
    if postgres {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
    } else {
        format!("substr({column}, 1, 10)")
    }
}

/// The events of each day since `$1` (an instant; `$2` the same as a date), as
/// `(day, what, count)` rows.
fn per_day_sql(postgres: bool) -> String {
    let d = |c: &str| day_of(postgres, c);
    let stored_day = if postgres {
        "to_char(day, 'YYYY-MM-DD')"
    } else {
        "day"
    };
    format!(
        "SELECT {created}, 'sign_ups', COUNT(*) FROM subscribers WHERE created_at >= $1 GROUP BY 1 \
         UNION ALL SELECT {confirmed}, 'confirmations', COUNT(*) FROM subscribers WHERE confirmed_at >= $1 GROUP BY 1 \
         UNION ALL SELECT {left}, 'unsubscribes', COUNT(*) FROM subscribers WHERE unsubscribed_at >= $1 GROUP BY 1 \
         UNION ALL SELECT {event}, kind, COUNT(*) FROM mail_events WHERE at >= $1 GROUP BY 1, 2 \
         UNION ALL SELECT {finished}, 'digests_' || status, COUNT(*) FROM mail_log \
           WHERE kind = 'digest' AND finished_at >= $1 GROUP BY 1, 2 \
         UNION ALL SELECT {stored_day}, 'digests_sent', CAST(SUM(sent) AS BIGINT) FROM delivery_days \
           WHERE kind = 'digest' AND day >= $2 GROUP BY 1 \
         UNION ALL SELECT {stored_day}, 'digests_failed', CAST(SUM(failed) AS BIGINT) FROM delivery_days \
           WHERE kind = 'digest' AND day >= $2 GROUP BY 1",
        created = d("created_at"),
        confirmed = d("confirmed_at"),
        left = d("unsubscribed_at"),
        event = d("at"),
        finished = d("finished_at"),
    )
}

/// Confirmed readers due before `$1`, per UTC hour `YYYY-MM-DDTHH`.
fn due_sql(postgres: bool) -> &'static str {
    if postgres {
        "SELECT to_char(next_slot_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24'), COUNT(*) FROM subscribers \
         WHERE status = 'confirmed' AND next_slot_at < $1 GROUP BY 1"
    } else {
        "SELECT substr(next_slot_at, 1, 13), COUNT(*) FROM subscribers \
         WHERE status = 'confirmed' AND next_slot_at < $1 GROUP BY 1"
    }
}

impl Store {
    /// The dashboard as of `now`.
    ///
    /// # Errors
    /// When the database fails.
    #[tracing::instrument(skip_all)]
    pub async fn dashboard(&self, now: DateTime<Utc>) -> StoreResult<Dashboard> {
        let first_day = now.date_naive() - Duration::days(DAYS - 1);
        let since = first_day.and_time(chrono::NaiveTime::MIN).and_utc();
        let per_day = per_day_sql(self.is_postgres());
        let rows: Vec<(String, String, i64)> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(per_day.clone()))
            .bind(since)
            .bind(first_day)
            .fetch_all(pool)
            .await)?;
        let days = fold_days(first_day, &rows);
        let (signed_up, confirmed): (i64, i64) = on_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(*), COUNT(confirmed_at) FROM subscribers WHERE created_at >= $1",
        )
        .bind(since)
        .fetch_one(pool)
        .await)?;
        Ok(Dashboard {
            readers: self.stats().await?.subscribers,
            days,
            confirmation: Rate {
                events: confirmed,
                base: signed_up,
            },
            queue: self.queue_health(now).await?,
            due_hours: self.due_hours(now).await?,
            feeds: self.list_feeds().await?,
        })
    }

    async fn queue_health(&self, now: DateTime<Utc>) -> StoreResult<QueueHealth> {
        let oldest_due: Option<DateTime<Utc>> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM mail_jobs WHERE status = 'queued'",
        )
        .fetch_one(pool)
        .await)?;
        let failed_last_day: i64 = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM mail_log WHERE status = 'failed' AND finished_at >= $1",
        )
        .bind(now - Duration::hours(24))
        .fetch_one(pool)
        .await)?;
        Ok(QueueHealth {
            depth: self.mail_queue_depth().await?,
            oldest_due,
            failed_last_day,
        })
    }

    async fn due_hours(&self, now: DateTime<Utc>) -> StoreResult<Vec<HourCount>> {
        let this_hour = now
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(now);
        let until = this_hour + Duration::hours(24);
        let rows: Vec<(String, i64)> = on_pool!(self, pool => sqlx::query_as(due_sql(self.is_postgres()))
            .bind(until)
            .fetch_all(pool)
            .await)?;
        let mut hours: Vec<HourCount> = (0..24)
            .map(|h| HourCount {
                hour: this_hour + Duration::hours(h),
                due: 0,
            })
            .collect();
        for (hour, due) in rows {
            let Ok(at) = NaiveDateTime::parse_from_str(&format!("{hour}:00"), "%Y-%m-%dT%H:%M")
            else {
                continue;
            };
            let index = ((at.and_utc() - this_hour).num_hours()).clamp(0, 23) as usize;
            hours[index].due += due;
        }
        Ok(hours)
    }
}

/// The `(day, what, count)` rows as one [`DayCounts`] per day from `first_day`.
fn fold_days(first_day: NaiveDate, rows: &[(String, String, i64)]) -> Vec<DayCounts> {
    let mut days: Vec<DayCounts> = (0..DAYS)
        .map(|i| DayCounts {
            day: first_day + Duration::days(i),
            ..DayCounts::default()
        })
        .collect();
    for (day, what, n) in rows {
        let Ok(day) = day.parse::<NaiveDate>() else {
            continue;
        };
        let Some(counts) = usize::try_from((day - first_day).num_days())
            .ok()
            .and_then(|i| days.get_mut(i))
        else {
            continue;
        };
        let field = match what.as_str() {
            "sign_ups" => &mut counts.sign_ups,
            "confirmations" => &mut counts.confirmations,
            "unsubscribes" => &mut counts.unsubscribes,
            "hard_bounce" => &mut counts.hard_bounces,
            "soft_bounce" => &mut counts.soft_bounces,
            "complaint" => &mut counts.complaints,
            "digests_sent" => &mut counts.digests_sent,
            "digests_failed" => &mut counts.digests_failed,
            _ => continue,
        };
        *field += n;
    }
    days
}
