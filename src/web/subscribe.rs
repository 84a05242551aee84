//! `GET /` (the sign-up page) and `POST /subscribe` (form or JSON).
//!
//! The response to an accepted sign-up is the same, byte for byte, whether the
//! address is new, pending, confirmed or suppressed after a bounce or complaint:
//! nobody can learn from it who subscribes.
//!
//! The form is no mail cannon: a post another site makes a visitor's browser send
//! is refused (403), and the limits per client, per mailbox, per domain and in total
//! answer 429 (see [`crate::store::SignUpLimits`]).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::error::{InLocale, PageError, Problem};
use super::pages::{PageLang, page_response, render, render_html};
use super::weekdays;
use super::{AppState, BODY_LIMIT, client_ip};
use crate::domain::{
    DeliveryTime, EmailAddress, EmailError, Locale, TimeZone, Token, TopicSlug, Weekdays,
};
use crate::mail::delivery::{LEASE, release_handed};
use crate::store::{
    ConsentProof, LimitScope, SignUp, SignUpKind, SignUpLimits, SignUpOutcome, Store, StoreError,
    Topic,
};

/// Longest value kept of a text field (email, time, zone, language): longer than any
/// valid value, so a cut value is still refused, and short enough to show again.
const MAX_FIELD_CHARS: usize = 1024;
/// Longest `topics` value kept (a valid slug has at most 64 characters).
const MAX_TOPIC_CHARS: usize = 128;
/// Most `topics` values kept; more is a field error.
const MAX_TOPICS: usize = 256;
/// Most unknown topics named in the error message.
const MAX_UNKNOWN_SHOWN: usize = 10;
/// How long refused requests are summed in memory before they are added to the
/// database's counters.
const TALLY_FLUSH: Duration = Duration::from_millis(500);

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/subscribe", post(subscribe))
}

/// What the reader submitted, as text, so a re-rendered form keeps every value.
#[derive(Debug, Default, Clone)]
struct Submitted {
    email: String,
    topics: Vec<String>,
    delivery_time: String,
    timezone: Option<String>,
    locale: String,
    /// The language of the page the form was on: the consent text the reader saw.
    page_locale: Option<String>,
    /// The ticked weekdays as bits (see [`weekdays::bits`]); `None` when the
    /// request has no `weekdays` field: every day, as before the field existed.
    weekdays: Option<i64>,
    consent: bool,
    /// More than [`MAX_TOPICS`] topics were sent; only the first are kept.
    too_many_topics: bool,
}

/// A submission whose every field parsed.
#[derive(Debug)]
struct Valid {
    email: EmailAddress,
    topics: Vec<TopicSlug>,
    delivery_time: DeliveryTime,
    timezone: TimeZone,
    weekdays: Weekdays,
    locale: Locale,
}

/// Per-field problems, keyed by form field name.
type FieldErrors = BTreeMap<&'static str, String>;

/// The request format, which decides the response format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
}

/// Why `POST /subscribe` said no, answered in the request's format.
#[derive(Debug)]
enum SignUpError {
    /// The request itself is unusable (415, 413, 400): JSON
    /// `{"errors": {field: msg}}`, or `field: msg` as text.
    Request {
        /// The answer's format.
        format: Format,
        /// 415, 413 or 400.
        status: StatusCode,
        /// What is wrong: `content-type` or `body`.
        field: &'static str,
        /// Why.
        msg: String,
    },
    /// Cross-site, over a limit, or the database failed: the page, or JSON
    /// `{"error": …}` with the same status and `Retry-After`.
    Page {
        /// The answer's format.
        format: Format,
        /// The problem.
        error: PageError,
    },
}

impl SignUpError {
    /// A page problem answered in `format`; use as `.map_err(SignUpError::page(format))`.
    fn page(format: Format) -> impl Fn(PageError) -> Self + Copy {
        move |error| Self::Page { format, error }
    }
}

impl IntoResponse for SignUpError {
    fn into_response(self) -> Response {
        match self {
            Self::Request {
                format,
                status,
                field,
                msg,
            } => match format {
                Format::Json => (status, Json(json!({"errors": {field: msg}}))).into_response(),
                Format::Html => (status, format!("{field}: {msg}\n")).into_response(),
            },
            Self::Page {
                format: Format::Html,
                error,
            } => error.into_response(),
            Self::Page {
                format: Format::Json,
                error,
            } => {
                let msg = match &error.problem {
                    Problem::CrossSite { home } => {
                        format!("cross-site sign-up refused: send the form from {home}")
                    }
                    Problem::TooMany { .. } => "too many requests; try again later".into(),
                    _ => "internal error; please try again later".into(),
                };
                error.into_json(json!({ "error": msg }))
            }
        }
    }
}

async fn page(State(state): State<AppState>, lang: PageLang) -> Result<Response, PageError> {
    let locale = lang.locale;
    let form = Submitted {
        delivery_time: state.config.defaults.delivery_time.to_string(),
        locale: locale.as_str().to_owned(),
        ..Submitted::default()
    };
    let topics = state.store.list_topics(false).await?;
    let no_errors = FieldErrors::new();
    Ok(form_page(
        &state,
        StatusCode::OK,
        locale,
        &topics,
        &form,
        &no_errors,
    ))
}

fn form_page(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    topics: &[Topic],
    form: &Submitted,
    errors: &FieldErrors,
) -> Response {
    let chosen: HashSet<&str> = form.topics.iter().map(String::as_str).collect();
    let topics: Vec<Value> = topics
        .iter()
        .map(|t| json!({"slug": t.slug, "name": t.name, "description": t.description, "checked": chosen.contains(t.slug.as_str())}))
        .collect();
    let selected_tz = form
        .timezone
        .clone()
        .unwrap_or_else(|| state.config.defaults.timezone.to_string());
    let timezones: Vec<Value> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| json!({"name": tz.name(), "selected": tz.name() == selected_tz}))
        .collect();
    let ticked = form.weekdays.unwrap_or(Weekdays::EVERY_DAY.bits());
    let weekdays = weekdays::checkboxes(state.templates.strings(locale), ticked);
    let data = json!({
        "form": {
            "email": form.email,
            "delivery_time": form.delivery_time,
            "timezone_explicit": form.timezone.is_some(),
            "locale": form.locale,
            "consent": form.consent,
        },
        "topics": topics,
        "timezones": timezones,
        "weekdays": weekdays,
        "errors": errors,
    });
    render(
        state,
        status,
        locale,
        "subscribe",
        "subscribe_heading",
        data,
        "/",
    )
}

async fn subscribe(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    lang: PageLang,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, SignUpError> {
    let format = request_format(&headers)?;
    let refuse = SignUpError::page(format);
    refuse_cross_site(&state, &headers).map_err(refuse)?;
    let ip = client_ip(&state, &headers, &peer);
    limit_client(&state, ip).map_err(refuse)?;
    let (submitted, mut errors) = read_submission(body, format).await?;
    let locale = Locale::parse(&submitted.locale).unwrap_or(lang.locale);
    let topics = state
        .offered_topics
        .get(&state.store, state.clock.now(), &submitted.topics);
    let topics = topics.await.in_locale(locale).map_err(refuse)?;
    let valid = validate(&state, locale, &submitted, &topics, &mut errors);
    let Some(valid) = valid.filter(|_| errors.is_empty()) else {
        return Ok(match format {
            Format::Json => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "errors": errors })),
            )
                .into_response(),
            Format::Html => {
                let status = StatusCode::UNPROCESSABLE_ENTITY;
                form_page(&state, status, locale, &topics, &submitted, &errors)
            }
        });
    };

    // The consent text the reader saw: the one of the page the form was on.
    let consent_locale = submitted
        .page_locale
        .as_deref()
        .and_then(|l| Locale::parse(l).ok())
        .unwrap_or(lang.locale);
    let now = state.clock.now();
    let confirm_token = Token::generate();
    let signup = SignUp {
        email: valid.email,
        topics: valid.topics,
        delivery_time: valid.delivery_time,
        timezone: valid.timezone,
        weekdays: valid.weekdays,
        locale: valid.locale,
        proof: consent_proof(&state, &headers, ip, consent_locale, now),
        confirm_token: confirm_token.hash(),
        confirm_expires_at: now + state.config.confirmation_lifetime,
        mail_limit: None,
    };
    // Stored and handed over on a task of its own (`detached`).
    let outcome = {
        let (state, signup, token) = (state.clone(), signup.clone(), confirm_token.clone());
        super::detached(async move { sign_up(&state, &signup, &token, now).await }).await
    };
    let outcome = outcome.in_locale(signup.locale).map_err(refuse)?;
    accepted(&state, format, &signup, outcome, now).map_err(refuse)
}

/// The request's format from its `Content-Type`, which decides the answer's.
fn request_format(headers: &HeaderMap) -> Result<Format, SignUpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-www-form-urlencoded" => Ok(Format::Html),
        _ => Err(SignUpError::Request {
            format: Format::Json,
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            field: "content-type",
            msg: "must be application/x-www-form-urlencoded or application/json".into(),
        }),
    }
}

/// Refuses a post a browser says another site made it send (see [`cross_site`]);
/// also the "send me my link" form's guard.
pub(super) fn refuse_cross_site(state: &AppState, headers: &HeaderMap) -> Result<(), PageError> {
    let Some(why) = cross_site(headers, state.links.public_url()) else {
        return Ok(());
    };
    tracing::warn!(why = %why, "sign-up refused: the browser says it comes from another site");
    Err(Problem::CrossSite {
        home: state.links.home(),
    }
    .into())
}

/// Refuses a client over its sign-up requests per minute, and counts it; "send
/// me my link" requests draw on the same allowance.
pub(super) fn limit_client(state: &AppState, ip: IpAddr) -> Result<(), PageError> {
    let Err(wait) = state.client_limiter.check(ip) else {
        return Ok(());
    };
    tracing::info!("sign-up refused: client over its limit");
    state.limit_tally.count(LimitScope::Client, &state.store);
    let wait_secs = wait.as_secs().max(1);
    Err(Problem::TooMany { wait_secs }.into())
}

/// The submitted fields as text, and the fields of the wrong JSON type.
async fn read_submission(
    body: Body,
    format: Format,
) -> Result<(Submitted, FieldErrors), SignUpError> {
    let request_error = |status, msg| SignUpError::Request {
        format,
        status,
        field: "body",
        msg,
    };
    let Ok(bytes) = super::read_body(body).await else {
        let msg = format!("the request body is larger than {} KiB", BODY_LIMIT / 1024);
        return Err(request_error(StatusCode::PAYLOAD_TOO_LARGE, msg));
    };
    match format {
        Format::Html => Ok((parse_form(&bytes), FieldErrors::new())),
        Format::Json => {
            parse_json(&bytes).map_err(|msg| request_error(StatusCode::BAD_REQUEST, msg))
        }
    }
}

/// What proves the reader's consent: when, from where, with which browser, and the
/// consent text in the language they read it in.
fn consent_proof(
    state: &AppState,
    headers: &HeaderMap,
    ip: IpAddr,
    consent_locale: Locale,
    now: DateTime<Utc>,
) -> ConsentProof {
    ConsentProof {
        at: now,
        ip: Some(ip.to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
        consent_version: state.config.consent_version.clone(),
        consent_text: state.templates.string(consent_locale, "consent_text"),
    }
}

/// The configured limits on mails the public forms cause, for a request at `now`
/// (`[rate_limit]`: per mailbox, per domain, in total, and the quiet period).
pub(super) fn mail_limits(state: &AppState, now: DateTime<Utc>) -> SignUpLimits {
    let rl = state.config.rate_limit;
    SignUpLimits {
        since: now - chrono::Duration::hours(1),
        per_mailbox: rl.per_address_per_hour,
        per_domain: rl.per_domain_per_hour,
        global: rl.global_per_hour,
        quiet_since: (rl.suppressed_quiet_days > 0)
            .then(|| now - chrono::Duration::days(i64::from(rl.suppressed_quiet_days))),
    }
}

/// Stores the sign-up with its mail, within the configured limits. The mail is
/// rendered inside the transaction, once it is known what the address is (new,
/// pending, confirmed) and which id it has.
///
/// The mail goes straight to a worker of this process when there is room
/// (`mail::handoff`): queued already leased, it needs no claim.
async fn sign_up(
    state: &AppState,
    signup: &SignUp,
    confirm_token: &Token,
    now: DateTime<Utc>,
) -> Result<SignUpOutcome, StoreError> {
    let limits = mail_limits(state, now);
    let composer = &state.composer;
    let locale = signup.locale;
    let handoff = state.digester.handoff.as_deref();
    let lease = handoff.and_then(|h| h.terms(LEASE));
    let (outcome, leased) = state
        .store
        .sign_up_limited(
            signup,
            &limits,
            lease.map(|(terms, _)| terms),
            |kind, id| {
                let mail = if kind == SignUpKind::Confirmed {
                    composer.already_subscribed(&signup.email, locale, id, now)
                } else {
                    composer.confirmation(&signup.email, locale, confirm_token, id, now)
                };
                mail.map_err(Into::into)
            },
        )
        .await?;
    if let (Some(handoff), Some((_, until)), Some(leased)) = (handoff, lease, leased) {
        release_handed(&state.store, handoff.give(vec![leased], until)).await;
    }
    Ok(outcome)
}

/// The answer to a stored sign-up: thanks (the same for every address), or 429
/// when the mailbox, its domain or everyone had their share of mails this hour.
fn accepted(
    state: &AppState,
    format: Format,
    signup: &SignUp,
    outcome: SignUpOutcome,
    now: DateTime<Utc>,
) -> Result<Response, PageError> {
    let locale = signup.locale;
    let (scope, retry_at) = match outcome {
        SignUpOutcome::Accepted(kind) => {
            tracing::info!(?kind, "sign-up accepted");
            state.mail_wake.notify_one();
            return Ok(match format {
                Format::Json => {
                    (StatusCode::ACCEPTED, Json(json!({"status": "accepted"}))).into_response()
                }
                Format::Html => {
                    // The same for every sign-up: rendered once per language.
                    let html = state.thanks_pages.get(locale, || {
                        let data = thanks(state, locale);
                        render_html(state, locale, "message", "thanks_heading", data, "/")
                    });
                    page_response(state, StatusCode::OK, html)
                }
            });
        }
        SignUpOutcome::Limited { retry_at } => {
            tracing::info!("sign-up refused: the mailbox had its share of mails this hour");
            (LimitScope::Mailbox, retry_at)
        }
        SignUpOutcome::Capped { limit, retry_at } => {
            if limit == LimitScope::Domain {
                tracing::warn!(
                    domain = %signup.email.domain(),
                    "sign-up refused: the domain had its share of confirmation mails this hour"
                );
            } else {
                tracing::warn!(
                    "sign-up refused: the global cap of confirmation mails per hour is reached"
                );
            }
            (limit, retry_at)
        }
    };
    state.limit_tally.count(scope, &state.store);
    let wait_secs = (retry_at - now).num_seconds().max(1) as u64;
    Err(Problem::TooMany { wait_secs }.in_locale(locale))
}

fn thanks(state: &AppState, locale: Locale) -> Value {
    let t = state.templates.strings(locale);
    json!({"heading": t["thanks_heading"], "text": t["thanks_text"]})
}

/// At most `max` characters of `value`.
fn capped(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        Some((end, _)) => value[..end].to_owned(),
        None => value.to_owned(),
    }
}

impl Submitted {
    /// Keeps one more `topics` value, up to [`MAX_TOPICS`].
    fn push_topic(&mut self, slug: &str) {
        if self.topics.len() < MAX_TOPICS {
            self.topics.push(capped(slug, MAX_TOPIC_CHARS));
        } else {
            self.too_many_topics = true;
        }
    }
}

/// Parses `application/x-www-form-urlencoded`, keeping repeated `topics` fields.
/// Linear in the input; values are cut to [`MAX_FIELD_CHARS`] and
/// [`MAX_TOPIC_CHARS`], topics to [`MAX_TOPICS`].
fn parse_form(bytes: &[u8]) -> Submitted {
    let mut s = Submitted::default();
    for (key, value) in form_urlencoded::parse(bytes) {
        let text = || capped(&value, MAX_FIELD_CHARS);
        match key.as_ref() {
            "email" => s.email = text(),
            "topics" => s.push_topic(&value),
            "delivery_time" => s.delivery_time = text(),
            "timezone" => s.timezone = Some(text()),
            "locale" => s.locale = text(),
            "form_locale" => s.page_locale = Some(text()),
            "weekdays" => {
                let day = weekdays::bits([value.as_ref()]);
                s.weekdays = Some(s.weekdays.unwrap_or(0) | day);
            }
            "consent" => s.consent = matches!(value.as_ref(), "on" | "true" | "1" | "yes"),
            _ => {}
        }
    }
    if s.locale.is_empty() {
        s.locale = s.page_locale.clone().unwrap_or_default();
    }
    s
}

/// Parses the JSON body; wrong field types are field errors, broken JSON is `Err`.
/// Linear in the input (serde_json also refuses nesting deeper than 128); values
/// are cut as in [`parse_form`].
fn parse_json(bytes: &[u8]) -> Result<(Submitted, FieldErrors), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("must be a JSON object".into());
    };
    let mut s = Submitted::default();
    let mut errors = FieldErrors::new();
    let text = |key: &'static str, errors: &mut FieldErrors| match map.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(v)) => capped(v, MAX_FIELD_CHARS),
        Some(_) => {
            errors.insert(key, "must be a string".into());
            String::new()
        }
    };
    s.email = text("email", &mut errors);
    s.delivery_time = text("delivery_time", &mut errors);
    let tz = text("timezone", &mut errors);
    s.timezone = (!tz.is_empty()).then_some(tz);
    s.locale = text("locale", &mut errors);
    match map.get("topics") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(slug) => s.push_topic(slug),
                    _ => {
                        errors.insert("topics", "must be an array of topic slugs (strings)".into());
                    }
                }
            }
        }
        Some(_) => {
            errors.insert("topics", "must be an array of topic slugs".into());
        }
    }
    match map.get("weekdays") {
        None | Some(Value::Null) => {}
        Some(Value::Array(days)) => {
            let names = days.iter().filter_map(Value::as_str);
            s.weekdays = Some(weekdays::bits(names));
            if days.iter().any(|d| !d.is_string()) {
                errors.insert(
                    "weekdays",
                    "must be an array of weekday names (strings)".into(),
                );
            }
        }
        Some(_) => {
            errors.insert("weekdays", "must be an array of weekday names".into());
        }
    }
    s.consent = match map.get("consent") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(v)) => matches!(v.as_str(), "on" | "true" | "1" | "yes"),
        None | Some(Value::Null) => false,
        Some(_) => {
            errors.insert("consent", "must be true or \"on\"".into());
            false
        }
    };
    Ok((s, errors))
}

/// Checks every field; returns the sign-up when all are valid. Messages are in the
/// reader's language. Fields already flagged (wrong JSON type) keep their message.
fn validate(
    state: &AppState,
    locale: Locale,
    s: &Submitted,
    offered: &[Topic],
    errors: &mut FieldErrors,
) -> Option<Valid> {
    let t = |key: &str| state.templates.string(locale, key);
    let mut flag = |field: &'static str, msg: String| {
        errors.entry(field).or_insert(msg);
    };
    let email = parse_email(state, locale, &s.email)
        .map_err(|msg| flag("email", msg))
        .ok();
    let topics = chosen_topics(s, offered, &t)
        .map_err(|msg| flag("topics", msg))
        .unwrap_or_default();
    let delivery_time = if s.delivery_time.trim().is_empty() {
        Some(state.config.defaults.delivery_time)
    } else {
        DeliveryTime::parse(&s.delivery_time)
            .map_err(|_| flag("delivery_time", t("err_delivery_time")))
            .ok()
    };
    let timezone = match &s.timezone {
        None => Some(state.config.defaults.timezone),
        Some(tz) => TimeZone::parse(tz)
            .map_err(|_| flag("timezone", t("err_timezone")))
            .ok(),
    };
    let signup_locale = if s.locale.trim().is_empty() {
        Some(locale)
    } else {
        Locale::parse(&s.locale)
            .map_err(|_| flag("locale", t("err_locale")))
            .ok()
    };
    let weekdays = match s.weekdays {
        None => Some(Weekdays::EVERY_DAY),
        Some(bits) => Weekdays::from_bits(bits).or_else(|| {
            flag("weekdays", t("err_weekdays"));
            None
        }),
    };
    if !s.consent {
        flag("consent", t("err_consent"));
    }
    Some(Valid {
        email: email?,
        topics,
        delivery_time: delivery_time?,
        timezone: timezone?,
        weekdays: weekdays?,
        locale: signup_locale?,
    })
}

/// The address a form field holds, or why it is none, in `locale`: the same
/// messages on the sign-up and the "send me my link" form.
pub(super) fn parse_email(
    state: &AppState,
    locale: Locale,
    raw: &str,
) -> Result<EmailAddress, String> {
    EmailAddress::parse(raw).map_err(|e| {
        let key = match e {
            EmailError::Empty => "err_email_empty",
            EmailError::TooLong => "err_email_too_long",
            _ => "err_email_invalid",
        };
        state.templates.string(locale, key)
    })
}

/// The chosen topics, each once, in the order given; or why they are no choice:
/// too many, unknown ones (the first few named), or none.
fn chosen_topics(
    s: &Submitted,
    offered: &[Topic],
    t: &impl Fn(&str) -> String,
) -> Result<Vec<TopicSlug>, String> {
    let offered_slugs: HashSet<&str> = offered.iter().map(|t| t.slug.as_str()).collect();
    let mut topics: Vec<TopicSlug> = Vec::new();
    let mut chosen: HashSet<&str> = HashSet::new();
    let mut unknown: Vec<&str> = Vec::new();
    for slug in &s.topics {
        match TopicSlug::parse(slug) {
            Ok(parsed) if offered_slugs.contains(slug.as_str()) => {
                if chosen.insert(slug.as_str()) {
                    topics.push(parsed);
                }
            }
            _ => unknown.push(slug),
        }
    }
    if s.too_many_topics {
        return Err(t("err_topics_too_many"));
    }
    if !unknown.is_empty() {
        let mut list: Vec<String> = unknown
            .iter()
            .take(MAX_UNKNOWN_SHOWN)
            .map(|u| u.chars().take(64).collect())
            .collect();
        if unknown.len() > MAX_UNKNOWN_SHOWN {
            list.push("…".into());
        }
        return Err(format!("{} {}", t("err_topics_unknown"), list.join(", ")));
    }
    if topics.is_empty() {
        return Err(t("err_topics_missing"));
    }
    Ok(topics)
}

/// Why a request is a cross-site post a browser was made to send, or `None`.
///
/// A browser tells where a request comes from: `Sec-Fetch-Site: cross-site`, or an
/// `Origin` other than the origin (scheme, host, port) of `public_url` (`null`
/// included). `same-origin`, `same-site` and `none` are fine, and so is a request
/// with neither header: curl and API clients send none, and they cannot be made to
/// post by a web page. A browser that sends `Sec-Fetch-Site` has said it all (a
/// page of ours under an older `Referrer-Policy: no-referrer`, still cached, makes
/// it send `Origin: null` with the form). Where a browser sends no
/// `Sec-Fetch-Site` (plain HTTP under a name: no secure context), the pages'
/// `Referrer-Policy: same-origin` lets it send our origin.
fn cross_site(headers: &HeaderMap, public_url: &str) -> Option<String> {
    let mut fetch_site = headers.get_all("sec-fetch-site").iter().peekable();
    if fetch_site.peek().is_some() {
        return fetch_site
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
            .then(|| "Sec-Fetch-Site: cross-site".into());
    }
    let own = url::Url::parse(public_url)
        .ok()?
        .origin()
        .ascii_serialization();
    headers
        .get_all(header::ORIGIN)
        .iter()
        .find(|v| {
            let origin = v.to_str().ok().and_then(|v| url::Url::parse(v).ok());
            origin.is_none_or(|o| o.origin().ascii_serialization() != own)
        })
        .map(|v| {
            let shown: String = String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect();
            format!("Origin: {shown:?}, not {own}")
        })
}

/// How often the sign-up limits refused a request, summed in memory and added to
/// the database's counters (`Store::add_rate_limit_hits`) at most once per
/// [`TALLY_FLUSH`]: a flood of refused requests costs one small write now and
/// then, not one per request. Counts of the last half second are lost when the
/// process dies.
#[derive(Debug, Default)]
pub struct LimitTally {
    /// Refusals not yet written, by [`LimitScope::index`].
    pending: [AtomicU64; 4],
    /// A flush is waiting to run.
    flush_scheduled: AtomicBool,
}

impl LimitTally {
    /// Counts one refusal by `scope`; the count reaches the database shortly.
    pub fn count(self: &Arc<Self>, scope: LimitScope, store: &Store) {
        self.pending[scope.index()].fetch_add(1, Ordering::Relaxed);
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let tally = Arc::clone(self);
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TALLY_FLUSH).await;
            // Cleared before taking the counts: a refusal counted after this
            // either lands in this flush or schedules the next one.
            tally.flush_scheduled.store(false, Ordering::Release);
            let hits: Vec<(LimitScope, u64)> = LimitScope::ALL
                .into_iter()
                .map(|s| (s, tally.pending[s.index()].swap(0, Ordering::AcqRel)))
                .filter(|(_, n)| *n > 0)
                .collect();
            if let Err(e) = store.add_rate_limit_hits(&hits).await {
                tracing::warn!(error = %e, "counting refused sign-ups failed; kept for the next try");
                for (s, n) in hits {
                    tally.pending[s.index()].fetch_add(n, Ordering::Relaxed);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    /// Everything a parser hands on is within the caps.
    fn bounded(s: &Submitted) -> Result<(), TestCaseError> {
        for field in [&s.email, &s.delivery_time, &s.locale]
            .into_iter()
            .chain(s.timezone.as_ref())
            .chain(s.page_locale.as_ref())
        {
            prop_assert!(field.chars().count() <= MAX_FIELD_CHARS);
        }
        prop_assert!(s.topics.len() <= MAX_TOPICS);
        prop_assert!(
            s.topics
                .iter()
                .all(|t| t.chars().count() <= MAX_TOPIC_CHARS)
        );
        Ok(())
    }

    /// One field, repeated until the input is about `size` bytes.
    fn repeated(field: &str, size: usize) -> Vec<u8> {
        field.repeat(size / field.len() + 1).into_bytes()
    }

    #[test]
    fn a_form_keeps_repeated_topics_and_every_field() {
        let s = parse_form(
            b"email=a%40example.org&topics=wirtschaft&topics=kultur&delivery_time=07%3A30\
              &timezone=Europe%2FBerlin&locale=en&form_locale=de&consent=on",
        );
        assert_eq!(s.email, "a@example.org");
        assert_eq!(s.topics, ["wirtschaft", "kultur"]);
        assert_eq!(
            (s.delivery_time.as_str(), s.timezone.as_deref()),
            ("07:30", Some("Europe/Berlin"))
        );
        assert_eq!(
            (s.locale.as_str(), s.page_locale.as_deref()),
            ("en", Some("de"))
        );
        assert!(s.consent && !s.too_many_topics);
    }

    #[test]
    fn over_long_values_are_cut_but_stay_invalid() {
        let long = format!("email={}%40example.org", "a".repeat(5000));
        let s = parse_form(long.as_bytes());
        assert_eq!(s.email.chars().count(), MAX_FIELD_CHARS);
        assert!(EmailAddress::parse(&s.email).is_err());
        assert_eq!(capped("äöü", 2), "äö");
        assert_eq!(capped("äöü", 3), "äöü");
    }

    #[test]
    fn a_megabyte_in_one_field_is_cut_to_the_cap() {
        let size = 1 << 20;
        for key in [
            "email",
            "topics",
            "delivery_time",
            "timezone",
            "locale",
            "form_locale",
        ] {
            let one = format!("{key}={}", "x".repeat(size));
            bounded(&parse_form(one.as_bytes())).unwrap();
            let json = format!(r#"{{"{key}":"{}"}}"#, "x".repeat(size));
            let (s, _) = parse_json(json.as_bytes()).unwrap();
            bounded(&s).unwrap();
        }
    }

    #[test]
    fn more_topics_than_the_cap_are_flagged() {
        let s = parse_form(&repeated("topics=kultur&", 20 * MAX_TOPICS));
        assert_eq!(s.topics.len(), MAX_TOPICS);
        assert!(s.too_many_topics);
        let json = format!(r#"{{"topics":[{}"x"]}}"#, r#""kultur","#.repeat(MAX_TOPICS));
        let (s, errors) = parse_json(json.as_bytes()).unwrap();
        assert!(s.too_many_topics && errors.is_empty());
    }

    #[test]
    fn browsers_posting_from_another_site_are_told_apart() {
        let own = "https://news.example.org/base";
        let check = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            cross_site(&h, own)
        };
        for fine in [
            &[][..],
            &[("sec-fetch-site", "same-origin")],
            &[("sec-fetch-site", "same-site")],
            &[("sec-fetch-site", "none")],
            &[("origin", "https://news.example.org")],
            &[("origin", "https://NEWS.example.org:443")],
            &[
                ("origin", "https://news.example.org"),
                ("sec-fetch-site", "same-origin"),
            ],
            // What Chromium sends from a page of ours under `no-referrer`.
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
        ] {
            assert_eq!(check(fine), None, "{fine:?}");
        }
        for refused in [
            &[("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "Cross-Site")],
            &[("origin", "https://evil.example")],
            &[("origin", "http://news.example.org")],
            &[("origin", "https://news.example.org:8443")],
            &[("origin", "null")],
            &[("origin", "")],
            &[
                ("origin", "https://news.example.org"),
                ("origin", "https://evil.example"),
            ],
            &[
                ("origin", "https://news.example.org"),
                ("sec-fetch-site", "cross-site"),
            ],
            &[("origin", "null"), ("sec-fetch-site", "cross-site")],
        ] {
            assert!(check(refused).is_some(), "{refused:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn the_form_parser_takes_any_bytes_and_stays_bounded(
            raw in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            bounded(&parse_form(&raw))?;
        }

        #[test]
        fn the_form_parser_takes_any_fields_and_stays_bounded(
            fields in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("email".to_owned()),
                        Just("topics".to_owned()),
                        Just("timezone".to_owned()),
                        Just("consent".to_owned()),
                        Just("form_locale".to_owned()),
                        any::<String>(),
                    ],
                    any::<String>(),
                ),
                0..64,
            ),
        ) {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&fields)
                .finish();
            bounded(&parse_form(body.as_bytes()))?;
        }

        #[test]
        fn the_json_parser_takes_any_bytes_and_stays_bounded(
            raw in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            if let Ok((s, errors)) = parse_json(&raw) {
                bounded(&s)?;
                prop_assert!(errors.len() <= 6);
            }
        }

        #[test]
        fn the_json_parser_takes_any_json_and_stays_bounded(
            email in any::<String>(),
            topics in proptest::collection::vec(any::<String>(), 0..40),
            repeats in 0usize..300,
            odd in prop_oneof![
                Just(Value::Null),
                Just(json!(7)),
                Just(json!([[[[]]]])),
                Just(json!({"a": {"b": true}})),
                any::<String>().prop_map(Value::String),
            ],
        ) {
            let mut topics = topics;
            topics.extend(std::iter::repeat_n("kultur".to_owned(), repeats));
            for body in [
                json!({"email": email, "topics": topics, "consent": true}),
                json!({"email": odd, "topics": [odd, email], "timezone": odd, "consent": odd}),
                json!({"topics": odd}),
                json!([email]),
            ] {
                let raw = serde_json::to_vec(&body).unwrap();
                if let Ok((s, errors)) = parse_json(&raw) {
                    bounded(&s)?;
                    prop_assert!(errors.len() <= 6);
                }
            }
        }

    }

    proptest! {
        // Each case parses up to three megabyte-sized bodies.
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// A 1 MB body of one field repeated, at sizes up to 1 MB: a parser that
        /// were quadratic in the input would not return from the largest (about
        /// 10^11 steps); this one does, with bounded output.
        #[test]
        fn repeated_fields_up_to_a_megabyte_are_parsed_in_one_pass(
            size in prop_oneof![Just(1usize << 20), 1usize..(1 << 20)],
            field in prop_oneof![
                Just("topics=wirtschaft&"),
                Just("email=a%40example.org&"),
                Just("&&&&"),
                Just("%%%%"),
                Just("consent=on&"),
            ],
        ) {
            let raw = repeated(field, size);
            bounded(&parse_form(&raw))?;
            let items = size / 8;
            let json = format!(r#"{{"topics":[{}"x"],"email":"{}"}}"#, r#""a-b-c","#.repeat(items), "e".repeat(size));
            let (s, _) = parse_json(json.as_bytes()).unwrap();
            bounded(&s)?;
            let keys = format!("{{{}\"email\":\"x\"}}", r#""email":"x","#.repeat(items / 2));
            let (s, _) = parse_json(keys.as_bytes()).unwrap();
            bounded(&s)?;
        }
    }
}
