//! The tokens in page paths, as extractors: [`ConfirmLink`] (a confirmation
//! token, `/confirm/{token}`) and [`ManageLink`] (a reader's signed token,
//! `/unsubscribe/{token}`, `/preferences/{token}`). A token that is malformed or
//! whose signature does not verify is the unknown-link page (404), before the
//! handler runs; a path that is not even UTF-8 is axum's 400, as before.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{PageError, Problem};
use crate::domain::{ManageToken, Token};

/// The path's one parameter as text.
async fn path_text(parts: &mut Parts, state: &AppState) -> Result<String, Response> {
    let Path(text) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(text)
}

/// The unknown-link page, in the request's language.
fn unknown_link() -> Response {
    PageError::from(Problem::UnknownLink).into_response()
}

/// A confirmation link's token, well-formed (whether it is known is the store's
/// to say).
#[derive(Debug)]
pub struct ConfirmLink(pub Token);

impl FromRequestParts<AppState> for ConfirmLink {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let text = path_text(parts, state).await?;
        Token::from_path(&text).map(Self).ok_or_else(unknown_link)
    }
}

/// A reader's unsubscribe or preferences token, its signature verified with the
/// installation's link key.
#[derive(Debug)]
pub struct ManageLink(pub ManageToken);

impl FromRequestParts<AppState> for ManageLink {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let text = path_text(parts, state).await?;
        state
            .links
            .key()
            .verify(&text)
            .map(Self)
            .ok_or_else(unknown_link)
    }
}
