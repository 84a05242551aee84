//! `GET /confirm/{token}` shows a button and changes nothing: mail scanners fetch
//! links. `POST /confirm/{token}` confirms, idempotently, and stores when and from
//! which address.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::error::{PageError, Problem};
use super::pages::{PageLang, message, render};
use super::tokens::ConfirmLink;
use super::{AppState, client_ip};
use crate::store::{ConfirmOutcome, TokenState};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/confirm/{token}", get(show).post(confirm))
}

async fn show(
    State(state): State<AppState>,
    lang: PageLang,
    ConfirmLink(token): ConfirmLink,
) -> Result<Response, PageError> {
    let (found, theirs) = state
        .store
        .confirm_token_state(&token.hash(), state.clock.now())
        .await?;
    let locale = lang.or_theirs(theirs.unwrap_or(lang.locale));
    match found {
        TokenState::Unknown => Err(Problem::UnknownLink.in_locale(locale)),
        TokenState::Expired => Err(Problem::ExpiredLink.in_locale(locale)),
        TokenState::Valid => {
            let path = format!("/confirm/{}", token.as_str());
            Ok(render(
                &state,
                StatusCode::OK,
                locale,
                "confirm",
                "confirm_heading",
                json!({"action": path}),
                &path,
            ))
        }
    }
}

async fn confirm(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    lang: PageLang,
    ConfirmLink(token): ConfirmLink,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let ip = client_ip(&state, &headers, &peer).to_string();
    let (outcome, theirs) = state
        .store
        .confirm(
            &token.hash(),
            state.clock.now(),
            Some(&ip),
            state.config.digest.lookback,
        )
        .await?;
    // The reader's language, whatever `?lang=` says: the page confirms their choice.
    let locale = theirs.unwrap_or(lang.locale);
    match outcome {
        ConfirmOutcome::Confirmed | ConfirmOutcome::AlreadyConfirmed => {
            if outcome == ConfirmOutcome::Confirmed {
                tracing::info!("subscription confirmed");
            }
            Ok(message(&state, StatusCode::OK, locale, "confirmed", false))
        }
        ConfirmOutcome::Unknown => Err(Problem::UnknownLink.in_locale(locale)),
        ConfirmOutcome::Expired => Err(Problem::ExpiredLink.in_locale(locale)),
    }
}
