//! `GET /unsubscribe/{token}` shows a button and changes nothing;
//! `POST /unsubscribe/{token}` unsubscribes at once (RFC 8058 one-click: any body,
//! no cookie, no CSRF token, no redirect, 200, idempotent).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::AppState;
use super::pages::{LangQuery, internal_error, message, negotiate, render};
use crate::domain::Locale;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/unsubscribe/{token}", get(show).post(unsubscribe))
}

async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let page_locale = negotiate(&state, q.lang.as_deref(), &headers);
    let Some(token) = state.composer.link_key().verify(&token) else {
        return message(
            &state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        );
    };
    match state.store.subscriber_status(token.subscriber_id).await {
        Ok(Some((status, locale))) => {
            let locale = if q.lang.is_some() {
                page_locale
            } else {
                locale
            };
            if status == crate::domain::SubscriberStatus::Unsubscribed {
                return message(&state, StatusCode::OK, locale, "unsubscribed", true);
            }
            let path = format!("/unsubscribe/{}", token.as_str());
            render(
                &state,
                StatusCode::OK,
                locale,
                "unsubscribe",
                "unsubscribe_heading",
                json!({"action": path}),
                &path,
            )
        }
        Ok(None) => message(
            &state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        ),
        Err(e) => {
            tracing::error!(error = %e, "looking up a reader for unsubscribing failed");
            internal_error(&state, page_locale)
        }
    }
}

async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let page_locale = negotiate(&state, q.lang.as_deref(), &headers);
    let Some(token) = state.composer.link_key().verify(&token) else {
        return message(
            &state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        );
    };
    unsubscribe_now(&state, token.subscriber_id, page_locale).await
}

/// Unsubscribes a reader and answers with the page saying so (also used by the
/// preferences page's "unsubscribe from everything").
pub(super) async fn unsubscribe_now(
    state: &AppState,
    subscriber_id: i64,
    page_locale: Locale,
) -> Response {
    match state
        .store
        .unsubscribe(subscriber_id, state.clock.now())
        .await
    {
        Ok(Some(locale)) => {
            tracing::info!(subscriber.id = subscriber_id, "unsubscribed");
            message(state, StatusCode::OK, locale, "unsubscribed", true)
        }
        Ok(None) => message(
            state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        ),
        Err(e) => {
            tracing::error!(error = %e, "unsubscribing failed");
            internal_error(state, page_locale)
        }
    }
}
