//! `GET /confirm/{token}` shows a button and changes nothing: mail scanners fetch
//! links. `POST /confirm/{token}` confirms, idempotently, and stores when and from
//! which address.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::pages::{LangQuery, internal_error, message, negotiate, render};
use super::{AppState, client_ip};
use crate::domain::Token;
use crate::store::{ConfirmOutcome, TokenState};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/confirm/{token}", get(show).post(confirm))
}

async fn show(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let page_locale = negotiate(&state, q.lang.as_deref(), &headers);
    let Some(token) = Token::from_path(&token) else {
        return message(
            &state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        );
    };
    match state
        .store
        .confirm_token_state(&token.hash(), state.clock.now())
        .await
    {
        Ok((found, locale)) => {
            let locale = if q.lang.is_some() {
                page_locale
            } else {
                locale.unwrap_or(page_locale)
            };
            match found {
                TokenState::Unknown => {
                    message(&state, StatusCode::NOT_FOUND, locale, "unknown_link", true)
                }
                TokenState::Expired => {
                    message(&state, StatusCode::GONE, locale, "expired_link", true)
                }
                TokenState::Valid => {
                    let path = format!("/confirm/{}", token.as_str());
                    render(
                        &state,
                        StatusCode::OK,
                        locale,
                        "confirm",
                        "confirm_heading",
                        json!({"action": path}),
                        &path,
                    )
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "looking up a confirmation token failed");
            internal_error(&state, page_locale)
        }
    }
}

async fn confirm(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let page_locale = negotiate(&state, q.lang.as_deref(), &headers);
    let Some(token) = Token::from_path(&token) else {
        return message(
            &state,
            StatusCode::NOT_FOUND,
            page_locale,
            "unknown_link",
            true,
        );
    };
    let ip = client_ip(&state, &headers, &peer).to_string();
    match state
        .store
        .confirm(
            &token.hash(),
            state.clock.now(),
            Some(&ip),
            state.config.digest.lookback,
        )
        .await
    {
        Ok((outcome, locale)) => {
            let locale = locale.unwrap_or(page_locale);
            match outcome {
                ConfirmOutcome::Confirmed | ConfirmOutcome::AlreadyConfirmed => {
                    if outcome == ConfirmOutcome::Confirmed {
                        tracing::info!("subscription confirmed");
                    }
                    message(&state, StatusCode::OK, locale, "confirmed", false)
                }
                ConfirmOutcome::Unknown => {
                    message(&state, StatusCode::NOT_FOUND, locale, "unknown_link", true)
                }
                ConfirmOutcome::Expired => {
                    message(&state, StatusCode::GONE, locale, "expired_link", true)
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "confirming failed");
            internal_error(&state, page_locale)
        }
    }
}
