//! `GET /` (the sign-up page) and `POST /subscribe` (form or JSON).
//!
//! The response to an accepted sign-up is the same, byte for byte, whether the
//! address is new, pending or confirmed: nobody can learn from it who subscribes.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::pages::{LangQuery, negotiate, render};
use super::{AppState, BODY_LIMIT, client_ip};
use crate::domain::{DeliveryTime, EmailAddress, EmailError, Locale, TimeZone, Token, TopicSlug};
use crate::store::{ConsentProof, SignUp, SignUpKind, SignUpOutcome, Topic};

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
    consent: bool,
}

/// A submission whose every field parsed.
#[derive(Debug)]
struct Valid {
    email: EmailAddress,
    topics: Vec<TopicSlug>,
    delivery_time: DeliveryTime,
    timezone: TimeZone,
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

async fn page(
    State(state): State<AppState>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let locale = negotiate(&state, q.lang.as_deref(), &headers);
    let form = Submitted {
        delivery_time: state.config.defaults.delivery_time.to_string(),
        locale: locale.as_str().to_owned(),
        ..Submitted::default()
    };
    match state.store.list_topics(false).await {
        Ok(topics) => form_page(
            &state,
            StatusCode::OK,
            locale,
            &topics,
            &form,
            &FieldErrors::new(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "listing topics failed");
            super::pages::internal_error(&state, locale)
        }
    }
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
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let page_locale = negotiate(&state, q.lang.as_deref(), &headers);
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
    let format = match mime.as_str() {
        "application/json" => Format::Json,
        "application/x-www-form-urlencoded" => Format::Html,
        _ => {
            let msg = "must be application/x-www-form-urlencoded or application/json";
            return problem(
                Format::Json,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type",
                msg,
            );
        }
    };

    let ip = client_ip(&state, &headers, &peer);
    if let Err(wait) = state.client_limiter.check(ip) {
        return too_many(&state, format, page_locale, wait.as_secs().max(1));
    }

    let bytes = match super::read_body(body).await {
        Ok(b) => b,
        Err(_) => {
            let msg = format!("the request body is larger than {} KiB", BODY_LIMIT / 1024);
            return problem(format, StatusCode::PAYLOAD_TOO_LARGE, "body", &msg);
        }
    };
    let (submitted, mut errors) = match format {
        Format::Html => (parse_form(&bytes), FieldErrors::new()),
        Format::Json => match parse_json(&bytes) {
            Ok(parsed) => parsed,
            Err(msg) => return problem(format, StatusCode::BAD_REQUEST, "body", &msg),
        },
    };
    let locale = Locale::parse(&submitted.locale).unwrap_or(page_locale);

    let topics = match state.store.list_topics(false).await {
        Ok(t) => t,
        Err(e) => return server_error(&state, format, locale, &e),
    };
    let valid = validate(&state, locale, &submitted, &topics, &mut errors);
    let Some(valid) = valid.filter(|_| errors.is_empty()) else {
        return match format {
            Format::Json => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "errors": errors })),
            )
                .into_response(),
            Format::Html => form_page(
                &state,
                StatusCode::UNPROCESSABLE_ENTITY,
                locale,
                &topics,
                &submitted,
                &errors,
            ),
        };
    };

    let consent_locale = submitted
        .page_locale
        .as_deref()
        .and_then(|l| Locale::parse(l).ok())
        .unwrap_or(page_locale);
    let now = state.clock.now();
    let confirm_token = Token::generate();
    let per_hour = state.config.rate_limit.per_address_per_hour;
    let signup = SignUp {
        email: valid.email,
        topics: valid.topics,
        delivery_time: valid.delivery_time,
        timezone: valid.timezone,
        locale: valid.locale,
        proof: ConsentProof {
            at: now,
            ip: Some(ip.to_string()),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(512).collect()),
            consent_version: state.config.consent_version.clone(),
            consent_text: state.templates.string(consent_locale, "consent_text"),
        },
        confirm_token: confirm_token.hash(),
        confirm_expires_at: now + state.config.confirmation_lifetime,
        mail_limit: (per_hour > 0).then(|| (per_hour, now - chrono::Duration::hours(1))),
    };
    let locale = signup.locale;

    // The mail is rendered inside the transaction, once it is known what the address
    // is (new, pending, confirmed) and which id it has.
    let composer = &state.composer;
    let outcome = state
        .store
        .sign_up(&signup, |kind, id| {
            let mail = if kind == SignUpKind::Confirmed {
                composer.already_subscribed(&signup.email, locale, id, now)
            } else {
                composer.confirmation(&signup.email, locale, &confirm_token, id, now)
            };
            mail.map_err(Into::into)
        })
        .await;
    match outcome {
        Ok(SignUpOutcome::Accepted(kind)) => {
            tracing::info!(?kind, "sign-up accepted");
            state.mail_wake.notify_waiters();
            match format {
                Format::Json => {
                    (StatusCode::ACCEPTED, Json(json!({"status": "accepted"}))).into_response()
                }
                Format::Html => render(
                    &state,
                    StatusCode::OK,
                    locale,
                    "message",
                    "thanks_heading",
                    thanks(&state, locale),
                    "/",
                ),
            }
        }
        Ok(SignUpOutcome::Limited { retry_at }) => {
            let wait = (retry_at - now).num_seconds().max(1) as u64;
            too_many(&state, format, locale, wait)
        }
        Err(e) => server_error(&state, format, locale, &e),
    }
}

fn thanks(state: &AppState, locale: Locale) -> Value {
    let t = state.templates.strings(locale);
    json!({"heading": t["thanks_heading"], "text": t["thanks_text"]})
}

/// Parses `application/x-www-form-urlencoded`, keeping repeated `topics` fields.
fn parse_form(bytes: &[u8]) -> Submitted {
    let mut s = Submitted::default();
    for (key, value) in form_urlencoded::parse(bytes) {
        match key.as_ref() {
            "email" => s.email = value.into_owned(),
            "topics" => s.topics.push(value.into_owned()),
            "delivery_time" => s.delivery_time = value.into_owned(),
            "timezone" => s.timezone = Some(value.into_owned()),
            "locale" => s.locale = value.into_owned(),
            "form_locale" => s.page_locale = Some(value.into_owned()),
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
fn parse_json(bytes: &[u8]) -> Result<(Submitted, FieldErrors), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("must be a JSON object".into());
    };
    let mut s = Submitted::default();
    let mut errors = FieldErrors::new();
    let text = |key: &'static str, errors: &mut FieldErrors| match map.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(v)) => v.clone(),
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
                    Value::String(slug) => s.topics.push(slug.clone()),
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
    let flag = |errors: &mut FieldErrors, field: &'static str, msg: String| {
        errors.entry(field).or_insert(msg);
    };

    let email = EmailAddress::parse(&s.email)
        .map_err(|e| {
            let key = match e {
                EmailError::Empty => "err_email_empty",
                EmailError::TooLong => "err_email_too_long",
                _ => "err_email_invalid",
            };
            flag(errors, "email", t(key));
        })
        .ok();

    let offered_slugs: HashSet<&str> = offered.iter().map(|t| t.slug.as_str()).collect();
    let mut topics: Vec<TopicSlug> = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    for slug in &s.topics {
        match TopicSlug::parse(slug) {
            Ok(parsed) if offered_slugs.contains(slug.as_str()) => {
                if !topics.contains(&parsed) {
                    topics.push(parsed);
                }
            }
            _ => unknown.push(slug),
        }
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| u.chars().take(64).collect())
            .collect();
        flag(
            errors,
            "topics",
            format!("{} {}", t("err_topics_unknown"), list.join(", ")),
        );
    } else if topics.is_empty() {
        flag(errors, "topics", t("err_topics_missing"));
    }

    let delivery_time = if s.delivery_time.trim().is_empty() {
        Some(state.config.defaults.delivery_time)
    } else {
        DeliveryTime::parse(&s.delivery_time)
            .map_err(|_| flag(errors, "delivery_time", t("err_delivery_time")))
            .ok()
    };
    let timezone = match &s.timezone {
        None => Some(state.config.defaults.timezone),
        Some(tz) => TimeZone::parse(tz)
            .map_err(|_| flag(errors, "timezone", t("err_timezone")))
            .ok(),
    };
    let signup_locale = if s.locale.trim().is_empty() {
        Some(locale)
    } else {
        Locale::parse(&s.locale)
            .map_err(|_| flag(errors, "locale", t("err_locale")))
            .ok()
    };
    if !s.consent {
        flag(errors, "consent", t("err_consent"));
    }

    Some(Valid {
        email: email?,
        topics,
        delivery_time: delivery_time?,
        timezone: timezone?,
        locale: signup_locale?,
    })
}

/// A request-level problem (not a form field): JSON `{"errors":{field: msg}}` or text.
fn problem(format: Format, status: StatusCode, field: &str, msg: &str) -> Response {
    match format {
        Format::Json => (status, Json(json!({"errors": {field: msg}}))).into_response(),
        Format::Html => (status, format!("{field}: {msg}\n")).into_response(),
    }
}

fn too_many(state: &AppState, format: Format, locale: Locale, wait_secs: u64) -> Response {
    let mut response = match format {
        Format::Json => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "too many requests; try again later"})),
        )
            .into_response(),
        Format::Html => super::pages::message(
            state,
            StatusCode::TOO_MANY_REQUESTS,
            locale,
            "too_many",
            true,
        ),
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait_secs));
    response
}

fn server_error(
    state: &AppState,
    format: Format,
    locale: Locale,
    e: &dyn std::error::Error,
) -> Response {
    let chain = error_chain(e);
    tracing::error!(error = %chain, "sign-up failed");
    let unavailable = chain.contains("database unavailable");
    let status = if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    match format {
        Format::Json => (
            status,
            Json(json!({"error": "internal error; please try again later"})),
        )
            .into_response(),
        Format::Html => super::pages::message(state, status, locale, "error", false),
    }
}

/// An error and its causes, joined for the log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
