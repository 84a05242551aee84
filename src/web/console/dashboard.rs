//! `GET /admin`: the dashboard. Readers by status; per day of the last 30 the
//! sign-ups, confirmations, unsubscribes, bounces, complaints and digests (charts
//! and a table); the confirmation rate; the complaint and hard-bounce rates of 7
//! and 30 days against the bulk-sender limits of the big mailbox providers; the
//! queue; digests due per hour of the next 24; the feeds.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::charts::{AMBER, BLUE, GREEN, RED, Series, line_chart};
use super::{Session, page};
use crate::domain::Locale;
use crate::store::{Dashboard, DayCounts, Rate};
use crate::web::AppState;
use crate::web::error::PageError;
use crate::web::pages::PageLang;

/// Spam complaints per delivered mail above which Gmail and Yahoo start to
/// filter a bulk sender (percent): "keep it under 0.1 %".
pub const COMPLAINTS_WARN: f64 = 0.1;
/// The complaint rate a bulk sender must never reach (percent).
pub const COMPLAINTS_BAD: f64 = 0.3;
/// Hard bounces per delivered mail that point to a stale list (percent; the
/// providers publish no figure, this is the usual ESP threshold).
pub const HARD_BOUNCES_WARN: f64 = 2.0;
/// Hard bounces per delivered mail at which providers throttle (percent).
pub const HARD_BOUNCES_BAD: f64 = 5.0;

pub(super) async fn show(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
) -> Result<Response, PageError> {
    let dashboard = state.store.dashboard(state.clock.now()).await?;
    let data = view(&state, lang.locale, &dashboard);
    Ok(page(
        &state,
        StatusCode::OK,
        lang.locale,
        "dashboard",
        data,
        "/admin",
        Some(&session),
    ))
}

/// A percentage for the page, or a dash without a base.
fn percent(rate: Rate) -> String {
    rate.percent()
        .map_or_else(|| "–".to_owned(), |p| format!("{p:.2} %"))
}

/// One rate row with its level against `warn` and `bad`.
fn rate_row(label: String, rate: Rate, warn: f64, bad: f64) -> Value {
    let level = match rate.percent() {
        Some(p) if p >= bad => "bad",
        Some(p) if p >= warn => "warn",
        _ => "ok",
    };
    json!({
        "label": label,
        "events": rate.events,
        "base": rate.base,
        "value": percent(rate),
        "level": level,
        "marked": level != "ok",
    })
}

fn view(state: &AppState, locale: Locale, d: &Dashboard) -> Value {
    let t = state.templates.strings(locale);
    let s = |key: &str| t[key].as_str().unwrap_or_default().to_owned();
    let readers: Vec<Value> = d
        .readers
        .iter()
        .map(|(status, n)| json!({"status": status, "count": n}))
        .collect();
    let days: Vec<Value> = d.days.iter().map(day_row).collect();
    let complaints = |c: &DayCounts| c.complaints;
    let hard = |c: &DayCounts| c.hard_bounces;
    let rates = vec![
        rate_row(
            s("console_complaints_7"),
            d.rate(7, complaints),
            COMPLAINTS_WARN,
            COMPLAINTS_BAD,
        ),
        rate_row(
            s("console_complaints_30"),
            d.rate(30, complaints),
            COMPLAINTS_WARN,
            COMPLAINTS_BAD,
        ),
        rate_row(
            s("console_hard_bounces_7"),
            d.rate(7, hard),
            HARD_BOUNCES_WARN,
            HARD_BOUNCES_BAD,
        ),
        rate_row(
            s("console_hard_bounces_30"),
            d.rate(30, hard),
            HARD_BOUNCES_WARN,
            HARD_BOUNCES_BAD,
        ),
    ];
    let due: Vec<Value> = d
        .due_hours
        .iter()
        .map(|h| json!({"hour": h.hour.format("%Y-%m-%d %H:00").to_string(), "due": h.due}))
        .collect();
    let feeds: Vec<Value> = d
        .feeds
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "last_poll": f.last_poll_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()),
                "last_ok": f.last_ok_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()),
                "failures": f.failures,
                "last_error": f.last_error,
                "failing": f.failures > 0,
            })
        })
        .collect();
    json!({
        "readers": readers,
        "days": days,
        "confirmation_rate": percent(d.confirmation),
        "confirmation": {"events": d.confirmation.events, "base": d.confirmation.base},
        "rates": rates,
        "queue": {
            "depth": d.queue.depth,
            "oldest_due": d.queue.oldest_due.map(|t| t.format("%Y-%m-%d %H:%M").to_string()),
            "failed_last_day": d.queue.failed_last_day,
        },
        "due_hours": due,
        "feeds": feeds,
        "charts": charts(&s, d),
    })
}

fn day_row(c: &DayCounts) -> Value {
    json!({
        "day": c.day.to_string(),
        "sign_ups": c.sign_ups,
        "confirmations": c.confirmations,
        "unsubscribes": c.unsubscribes,
        "hard_bounces": c.hard_bounces,
        "soft_bounces": c.soft_bounces,
        "complaints": c.complaints,
        "digests_sent": c.digests_sent,
        "digests_failed": c.digests_failed,
    })
}

/// The three charts: readers' activity and mail trouble per day, digests per
/// day, digests due per hour.
fn charts(s: &dyn Fn(&str) -> String, d: &Dashboard) -> Value {
    let days: Vec<String> = d
        .days
        .iter()
        .map(|c| c.day.format("%m-%d").to_string())
        .collect();
    let per_day = |f: fn(&DayCounts) -> i64| d.days.iter().map(f).collect::<Vec<_>>();
    let (
        l_signups,
        l_confirmations,
        l_unsubscribes,
        l_bounces,
        l_complaints,
        l_sent,
        l_failed,
        l_due,
    ) = (
        s("console_sign_ups"),
        s("console_confirmations"),
        s("console_unsubscribes"),
        s("console_hard_bounces"),
        s("console_complaints"),
        s("console_digests_sent"),
        s("console_digests_failed"),
        s("console_due"),
    );
    let readers = line_chart(
        &days,
        &[
            Series {
                label: &l_signups,
                values: per_day(|c| c.sign_ups),
                color: BLUE,
            },
            Series {
                label: &l_confirmations,
                values: per_day(|c| c.confirmations),
                color: GREEN,
            },
            Series {
                label: &l_unsubscribes,
                values: per_day(|c| c.unsubscribes),
                color: AMBER,
            },
            Series {
                label: &l_bounces,
                values: per_day(|c| c.hard_bounces),
                color: RED,
            },
        ],
    );
    let digests = line_chart(
        &days,
        &[
            Series {
                label: &l_sent,
                values: per_day(|c| c.digests_sent),
                color: BLUE,
            },
            Series {
                label: &l_failed,
                values: per_day(|c| c.digests_failed),
                color: RED,
            },
            Series {
                label: &l_complaints,
                values: per_day(|c| c.complaints),
                color: AMBER,
            },
        ],
    );
    let due = due_chart(&l_due, d);
    json!({"readers": readers, "digests": digests, "due": due})
}

/// Digests due per hour of the next 24.
fn due_chart(label: &str, d: &Dashboard) -> String {
    let hours: Vec<String> = d
        .due_hours
        .iter()
        .map(|h| h.hour.format("%H:00").to_string())
        .collect();
    line_chart(
        &hours,
        &[Series {
            label,
            values: d.due_hours.iter().map(|h| h.due).collect(),
            color: GREEN,
        }],
    )
}
