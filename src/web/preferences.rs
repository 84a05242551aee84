//! `GET /preferences/{token}` shows a reader's settings; `POST` changes them or
//! unsubscribes from everything. The link token says who; a form token (an HMAC
//! over the reader and the time the form was shown) stops other sites from
//! submitting the form on the reader's behalf.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::pages::{LangQuery, internal_error, message, negotiate, render};
use crate::domain::{
    DeliverySchedule, DeliveryTime, Locale, ManageToken, TimeZone, TopicSlug, Weekdays,
};
use crate::store::Preferences;

/// How long a shown form can be submitted.
const FORM_LIFETIME_SECS: i64 = 24 * 3600;
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/preferences/{token}", get(show).post(change))
}

fn form_token(state: &AppState, subscriber_id: i64) -> String {
    let ts = state.clock.now().timestamp();
    format!(
        "{ts}.{}",
        state
            .composer
            .link_key()
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
        && state.composer.link_key().check(
            "preferences-form",
            &format!("{subscriber_id}:{issued}"),
            mac,
        )
}

async fn reader(
    state: &AppState,
    token: &str,
    page_locale: Locale,
) -> Result<(ManageToken, Preferences), Response> {
    let Some(token) = state.composer.link_key().verify(token) else {
        return Err(message(
            state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        ));
    };
    match state.store.preferences(token.subscriber_id).await {
        Ok(Some(p)) => Ok((token, p)),
        Ok(None) => Err(message(
            state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        )),
        Err(e) => {
            tracing::error!(error = %e, "loading preferences failed");
            Err(internal_error(state, page_locale))
        }
    }
}

async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let page_locale = negotiate(&state, q.lang.as_deref(), &headers);
    let (token, prefs) = match reader(&state, &token, page_locale).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let locale = if q.lang.is_some() {
        page_locale
    } else {
        prefs.locale
    };
    if prefs.status.has_left() {
        return message(&state, StatusCode::OK, locale, "unsubscribed", true);
    }
    page(
        &state,
        StatusCode::OK,
        locale,
        &token,
        &FormValues::from(&prefs),
        &BTreeMap::new(),
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
}

impl From<&Preferences> for FormValues {
    fn from(p: &Preferences) -> Self {
        Self {
            email: p.email.to_string(),
            topics: p.topics.iter().map(ToString::to_string).collect(),
            delivery_time: p.delivery_time.to_string(),
            timezone: p.timezone.to_string(),
            weekdays: p.weekdays.bits(),
            locale: p.locale,
        }
    }
}

async fn page(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    token: &ManageToken,
    prefs: &FormValues,
    errors: &BTreeMap<&'static str, String>,
    saved: bool,
) -> Response {
    let topics = match state.store.list_topics(false).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "listing topics failed");
            return internal_error(state, locale);
        }
    };
    let t = state.templates.strings(locale);
    let days = Weekdays::from_bits(prefs.weekdays)
        .unwrap_or_default()
        .names();
    let weekdays: Vec<Value> = WEEKDAYS
        .iter()
        .zip(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
        .map(|(v, name)| json!({"value": v, "label": t[format!("weekday_{v}")], "checked": days.contains(&name)}))
        .collect();
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
    response
}

async fn change(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let page_locale = negotiate(&state, q.lang.as_deref(), &headers);
    let (token, prefs) = match reader(&state, &token, page_locale).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(&body) {
        fields
            .entry(k.into_owned())
            .or_default()
            .push(v.into_owned());
    }
    let one = |k: &str| {
        fields
            .get(k)
            .and_then(|v| v.first())
            .map(String::as_str)
            .unwrap_or_default()
    };
    let cross_site =
        headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site");
    if cross_site || !form_token_ok(&state, token.subscriber_id, one("csrf")) {
        tracing::warn!(
            subscriber.id = token.subscriber_id,
            "preferences form refused: missing or invalid form token"
        );
        return message(
            &state,
            StatusCode::FORBIDDEN,
            page_locale,
            "forbidden",
            false,
        );
    }
    let now = state.clock.now();
    if one("action") == "unsubscribe" {
        return super::unsubscribe::unsubscribe_now(&state, token.subscriber_id, page_locale).await;
    }

    let locale = Locale::parse(one("locale")).unwrap_or(page_locale);
    let t = |key: &str| state.templates.string(locale, key);
    let mut errors: BTreeMap<&'static str, String> = BTreeMap::new();
    let offered = match state.store.list_topics(false).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "listing topics failed");
            return internal_error(&state, locale);
        }
    };
    let chosen: Vec<String> = fields.get("topics").cloned().unwrap_or_default();
    let mut topics = Vec::new();
    for slug in &chosen {
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
    let time = DeliveryTime::parse(one("delivery_time"));
    if time.is_err() {
        errors.insert("delivery_time", t("err_delivery_time"));
    }
    let zone = TimeZone::parse(one("timezone"));
    if zone.is_err() {
        errors.insert("timezone", t("err_timezone"));
    }
    let bits = fields
        .get("weekdays")
        .map(|days| {
            days.iter()
                .filter_map(|d| WEEKDAYS.iter().position(|w| w == d))
                .fold(0i64, |b, i| b | (1 << i))
        })
        .unwrap_or(0);
    let weekdays = Weekdays::from_bits(bits);
    if weekdays.is_none() {
        errors.insert("weekdays", t("err_weekdays"));
    }
    let (Ok(time), Ok(timezone), Some(weekdays), true) = (time, zone, weekdays, errors.is_empty())
    else {
        // Show the form again with what the reader chose.
        let mut prefs = FormValues::from(&prefs);
        prefs.topics = chosen;
        prefs.delivery_time = one("delivery_time").to_owned();
        prefs.timezone = one("timezone").to_owned();
        prefs.weekdays = bits;
        return page(
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            locale,
            &token,
            &prefs,
            &errors,
            false,
        )
        .await;
    };
    let schedule = DeliverySchedule {
        time,
        timezone,
        weekdays,
    };
    match state
        .store
        .update_preferences(token.subscriber_id, &topics, schedule, locale, now)
        .await
    {
        Ok(true) => {
            tracing::info!(subscriber.id = token.subscriber_id, "preferences changed");
            match state.store.preferences(token.subscriber_id).await {
                Ok(Some(p)) => {
                    page(
                        &state,
                        StatusCode::OK,
                        locale,
                        &token,
                        &FormValues::from(&p),
                        &BTreeMap::new(),
                        true,
                    )
                    .await
                }
                _ => message(&state, StatusCode::NOT_FOUND, locale, "unknown_link", true),
            }
        }
        Ok(false) => message(&state, StatusCode::NOT_FOUND, locale, "unknown_link", true),
        Err(e) => {
            tracing::error!(error = %e, "saving preferences failed");
            internal_error(&state, locale)
        }
    }
}
