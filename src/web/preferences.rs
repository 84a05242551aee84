//! `GET /preferences/{token}` shows a reader's settings; `POST` changes them or
//! unsubscribes from everything. The link token says who; a form token (an HMAC
//! over the reader and the time the form was shown) stops other sites from
//! submitting the form on the reader's behalf.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use super::AppState;
use super::error::{InLocale, PageError, Problem};
use super::pages::{PageLang, after_unsubscribe, render, unsubscribed};
use super::tokens::ManageLink;
use super::weekdays;
use crate::domain::{
    DeliverySchedule, DeliveryTime, Locale, ManageToken, TimeZone, TopicSlug, Weekdays,
};
use crate::store::{Preferences, Topic};

/// How far ahead a pause may reach, in days.
const PAUSE_MAX_DAYS: i64 = 365;

/// How long a shown form can be submitted.
const FORM_LIFETIME_SECS: i64 = 24 * 3600;

/// Per-field problems, keyed by form field name.
type FieldErrors = BTreeMap<&'static str, String>;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/preferences/{token}", get(show).post(change))
}

fn form_token(state: &AppState, subscriber_id: i64) -> String {
    let ts = state.clock.now().timestamp();
    format!(
        "{ts}.{}",
        state
            .links
            .key()
            .sign("preferences-form", &format!("{subscriber_id}:{ts}"))
    )
}

fn form_token_ok(state: &AppState, subscriber_id: i64, token: &str) -> bool {
    let Some((ts, mac)) = token.split_once('.') else {
        return false;
    };
    let Ok(issued) = ts.parse::<i64>() else {
        return false;
    };
    let age = state.clock.now().timestamp() - issued;
    (-60..FORM_LIFETIME_SECS).contains(&age)
        && state.links.key().check(
            "preferences-form",
            &format!("{subscriber_id}:{issued}"),
            mac,
        )
}

/// The settings of the reader the link names.
async fn reader(state: &AppState, token: &ManageToken) -> Result<Preferences, PageError> {
    let prefs = state.store.preferences(token.subscriber_id).await?;
    Ok(prefs.ok_or(Problem::UnknownLink)?)
}

async fn show(
    State(state): State<AppState>,
    lang: PageLang,
    ManageLink(token): ManageLink,
) -> Result<Response, PageError> {
    let prefs = reader(&state, &token).await?;
    let locale = lang.or_theirs(prefs.locale);
    if prefs.status.has_left() {
        return Ok(unsubscribed(&state, locale));
    }
    page(
        &state,
        StatusCode::OK,
        locale,
        &token,
        &FormValues::new(&prefs, state.clock.now()),
        &FieldErrors::new(),
        false,
    )
    .await
}

/// What the settings form shows: the stored settings, or what the reader just
/// submitted when it did not parse.
struct FormValues {
    email: String,
    topics: Vec<String>,
    delivery_time: String,
    timezone: String,
    weekdays: i64,
    locale: Locale,
    /// `YYYY-MM-DD`, or empty when not paused.
    paused_until: String,
}

impl FormValues {
    /// The stored settings as of `now`: a pause that is over shows as none, so
    /// saving the form again does not trip over a date now in the past.
    fn new(p: &Preferences, now: DateTime<Utc>) -> Self {
        let schedule = DeliverySchedule {
            time: p.delivery_time,
            timezone: p.timezone,
            weekdays: p.weekdays,
        };
        let today = schedule.local_date(now);
        Self {
            email: p.email.to_string(),
            topics: p.topics.iter().map(ToString::to_string).collect(),
            delivery_time: p.delivery_time.to_string(),
            timezone: p.timezone.to_string(),
            weekdays: p.weekdays.bits(),
            locale: p.locale,
            paused_until: p
                .paused_until
                .filter(|until| *until >= today)
                .map(|until| until.to_string())
                .unwrap_or_default(),
        }
    }
}

async fn page(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    token: &ManageToken,
    prefs: &FormValues,
    errors: &FieldErrors,
    saved: bool,
) -> Result<Response, PageError> {
    let topics = state.store.list_topics(false).await.in_locale(locale)?;
    let t = state.templates.strings(locale);
    let weekdays = weekdays::checkboxes(t, prefs.weekdays);
    let topics: Vec<Value> = topics
        .iter()
        .map(|tp| json!({"slug": tp.slug, "name": tp.name, "checked": prefs.topics.contains(&tp.slug)}))
        .collect();
    let timezones: Vec<Value> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| json!({"name": tz.name(), "selected": tz.name() == prefs.timezone}))
        .collect();
    let path = format!("/preferences/{}", token.as_str());
    let data = json!({
        "action": path,
        "csrf": form_token(state, token.subscriber_id),
        "email": prefs.email,
        "topics": topics,
        "delivery_time": prefs.delivery_time,
        "timezones": timezones,
        "weekdays": weekdays,
        "locale": prefs.locale,
        "paused_until": prefs.paused_until,
        "errors": errors,
        "saved": saved,
    });
    let mut response = render(
        state,
        status,
        locale,
        "preferences",
        "preferences_heading",
        data,
        &path,
    );
    // A page with a form token is nobody else's business.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

async fn change(
    State(state): State<AppState>,
    lang: PageLang,
    ManageLink(token): ManageLink,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let prefs = reader(&state, &token).await?;
    let form = Form::parse(&body);
    check_form_token(&state, &headers, token.subscriber_id, form.one("csrf"))?;
    let now = state.clock.now();
    if form.one("action") == "unsubscribe" {
        let theirs = state.store.unsubscribe(token.subscriber_id, now).await?;
        return after_unsubscribe(&state, token.subscriber_id, theirs);
    }
    let locale = Locale::parse(form.one("locale")).unwrap_or(lang.locale);
    let offered = state.store.list_topics(false).await.in_locale(locale)?;
    let (topics, schedule, paused_until) = match read_change(&state, locale, &form, &offered) {
        Ok(change) => change,
        Err(errors) => {
            // Show the form again with what the reader chose.
            let mut shown = FormValues::new(&prefs, now);
            form.fill(&mut shown);
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            return page(&state, status, locale, &token, &shown, &errors, false).await;
        }
    };
    let id = token.subscriber_id;
    let store = &state.store;
    let found = store
        .update_preferences(id, &topics, schedule, locale, paused_until, now)
        .await;
    if !found.in_locale(locale)? {
        return Err(Problem::UnknownLink.in_locale(locale));
    }
    tracing::info!(subscriber.id = id, "preferences changed");
    let saved = store.preferences(id).await.in_locale(locale)?;
    let saved = saved.ok_or(Problem::UnknownLink).in_locale(locale)?;
    page(
        &state,
        StatusCode::OK,
        locale,
        &token,
        &FormValues::new(&saved, now),
        &FieldErrors::new(),
        true,
    )
    .await
}

/// Refuses a post without this reader's valid form token, and any post a browser
/// says comes from another site.
fn check_form_token(
    state: &AppState,
    headers: &HeaderMap,
    subscriber_id: i64,
    token: &str,
) -> Result<(), PageError> {
    let cross_site =
        headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site");
    if cross_site || !form_token_ok(state, subscriber_id, token) {
        tracing::warn!(
            subscriber.id = subscriber_id,
            "preferences form refused: missing or invalid form token"
        );
        return Err(Problem::Forbidden.into());
    }
    Ok(())
}

/// The posted form: every field with all its values, in order.
struct Form(BTreeMap<String, Vec<String>>);

impl Form {
    fn parse(body: &[u8]) -> Self {
        let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            fields
                .entry(k.into_owned())
                .or_default()
                .push(v.into_owned());
        }
        Self(fields)
    }

    /// A field's first value, or `""`.
    fn one(&self, key: &str) -> &str {
        self.0
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// A field's values.
    fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// The ticked weekdays as bits (see [`weekdays::bits`]).
    fn weekday_bits(&self) -> i64 {
        weekdays::bits(self.all("weekdays").iter().map(String::as_str))
    }

    /// Puts what the reader chose into `prefs`, for showing the form again.
    fn fill(&self, prefs: &mut FormValues) {
        prefs.topics = self.all("topics").to_vec();
        prefs.delivery_time = self.one("delivery_time").to_owned();
        prefs.timezone = self.one("timezone").to_owned();
        prefs.weekdays = self.weekday_bits();
        prefs.paused_until = self.one("paused_until").to_owned();
    }
}

/// The new topics, schedule and pause, or every field's problem in the reader's
/// language.
fn read_change(
    state: &AppState,
    locale: Locale,
    form: &Form,
    offered: &[Topic],
) -> Result<(Vec<TopicSlug>, DeliverySchedule, Option<NaiveDate>), FieldErrors> {
    let t = |key: &str| state.templates.string(locale, key);
    let mut errors = FieldErrors::new();
    let chosen = form.all("topics");
    let mut topics = Vec::new();
    for slug in chosen {
        match TopicSlug::parse(slug) {
            Ok(s) if offered.iter().any(|o| o.slug == *slug) => topics.push(s),
            _ => {
                errors.insert("topics", format!("{} {slug}", t("err_topics_unknown")));
            }
        }
    }
    if chosen.is_empty() {
        errors.insert("topics", t("err_topics_missing"));
    }
    let time = DeliveryTime::parse(form.one("delivery_time"));
    if time.is_err() {
        errors.insert("delivery_time", t("err_delivery_time"));
    }
    let zone = TimeZone::parse(form.one("timezone"));
    if zone.is_err() {
        errors.insert("timezone", t("err_timezone"));
    }
    let weekdays = Weekdays::from_bits(form.weekday_bits());
    if weekdays.is_none() {
        errors.insert("weekdays", t("err_weekdays"));
    }
    // "Today" is the reader's, in the zone they chose (UTC when that is no zone:
    // the form is refused then anyway).
    let tz = zone.as_ref().map_or(chrono_tz::UTC, |z| z.tz());
    let today = state.clock.now().with_timezone(&tz).date_naive();
    let pause = read_pause(form.one("paused_until"), today);
    if let Err(key) = pause {
        errors.insert("paused_until", t(key));
    }
    match (time, zone, weekdays, pause) {
        (Ok(time), Ok(timezone), Some(weekdays), Ok(pause)) if errors.is_empty() => Ok((
            topics,
            DeliverySchedule {
                time,
                timezone,
                weekdays,
            },
            pause,
        )),
        _ => Err(errors),
    }
}

/// The "pause until" field: empty for no pause, else a date from `today` to
/// [`PAUSE_MAX_DAYS`] ahead; the error is the locale key of the problem.
fn read_pause(field: &str, today: NaiveDate) -> Result<Option<NaiveDate>, &'static str> {
    let field = field.trim();
    if field.is_empty() {
        return Ok(None);
    }
    let until =
        NaiveDate::parse_from_str(field, "%Y-%m-%d").map_err(|_| "err_paused_until_invalid")?;
    if until < today {
        return Err("err_paused_until_past");
    }
    if (until - today).num_days() > PAUSE_MAX_DAYS {
        return Err("err_paused_until_far");
    }
    Ok(Some(until))
}
