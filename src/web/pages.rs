//! Rendering pages: language choice, the shared page data, and the error pages.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::domain::Locale;

/// `?lang=` on any page.
#[derive(Debug, Default, Deserialize)]
pub struct LangQuery {
    /// Requested page language.
    pub lang: Option<String>,
}

/// The page language: `?lang=`, else the browser's first supported language, else
/// the configured default.
pub fn negotiate(state: &AppState, query: Option<&str>, headers: &HeaderMap) -> Locale {
    if let Some(l) = query.and_then(|q| Locale::parse(q).ok()) {
        return l;
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(|part| part.split(';').next().unwrap_or_default())
                .find_map(|tag| Locale::parse(tag).ok())
        })
        .unwrap_or(state.config.defaults.locale)
}

/// A rendered page with its status, or a plain 500 when even rendering fails.
pub fn render(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    name: &str,
    title_key: &str,
    mut data: Value,
    path: &str,
) -> Response {
    let t = state.templates.strings(locale);
    let other = if locale == Locale::De {
        Locale::En
    } else {
        Locale::De
    };
    if let Value::Object(map) = &mut data {
        map.insert("t".into(), t.clone());
        map.insert("locale".into(), json!(locale.as_str()));
        map.entry("title").or_insert_with(|| t[title_key].clone());
        map.insert(
            "lang_switch_href".into(),
            json!(format!("{path}?lang={other}")),
        );
    }
    match state.templates.page(name, &data) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A page with a heading, a text and an optional link back to the sign-up.
pub fn message(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    key: &str,
    link_home: bool,
) -> Response {
    let t = state.templates.strings(locale);
    let data = json!({
        "heading": t[format!("{key}_heading")],
        "text": t[format!("{key}_text")],
        "link_href": link_home.then(|| format!("/?lang={locale}")),
        "link_text": t["subscribe_again"],
    });
    render(
        state,
        status,
        locale,
        "message",
        &format!("{key}_heading"),
        data,
        "/",
    )
}

/// The 500 page; the cause has been logged by the caller.
pub fn internal_error(state: &AppState, locale: Locale) -> Response {
    message(
        state,
        StatusCode::INTERNAL_SERVER_ERROR,
        locale,
        "error",
        false,
    )
}

/// Fallback for unknown routes.
pub async fn not_found(
    State(state): State<AppState>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let locale = negotiate(&state, q.lang.as_deref(), &headers);
    message(&state, StatusCode::NOT_FOUND, locale, "not_found", true)
}
