//! `GET /unsubscribe/{token}` shows a button and changes nothing;
//! `POST /unsubscribe/{token}` unsubscribes at once (RFC 8058 one-click: any body,
//! no cookie, no CSRF token, no redirect, 200, idempotent).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::AppState;
use super::error::{PageError, Problem};
use super::pages::{PageLang, after_unsubscribe, render, unsubscribed};
use super::tokens::ManageLink;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/unsubscribe/{token}", get(show).post(unsubscribe))
}

async fn show(
    State(state): State<AppState>,
    lang: PageLang,
    ManageLink(token): ManageLink,
) -> Result<Response, PageError> {
    let (status, theirs) = state
        .store
        .subscriber_status(token.subscriber_id)
        .await?
        .ok_or(Problem::UnknownLink)?;
    let locale = lang.or_theirs(theirs);
    if status == crate::domain::SubscriberStatus::Unsubscribed {
        return Ok(unsubscribed(&state, locale));
    }
    let path = format!("/unsubscribe/{}", token.as_str());
    Ok(render(
        &state,
        StatusCode::OK,
        locale,
        "unsubscribe",
        "unsubscribe_heading",
        json!({"action": path}),
        &path,
    ))
}

async fn unsubscribe(
    State(state): State<AppState>,
    // `?lang=` is checked as on every page; the answer is in the reader's language.
    _lang: PageLang,
    ManageLink(token): ManageLink,
) -> Result<Response, PageError> {
    let id = token.subscriber_id;
    let theirs = state.store.unsubscribe(id, state.clock.now()).await?;
    after_unsubscribe(&state, id, theirs)
}
