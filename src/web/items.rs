//! `GET /items/{id}`: an item's public page, for items without their own URL
//! (mailed-in press releases); digests link there.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::AppState;
use super::error::{PageError, Problem};
use super::pages::{PageLang, render, site_date};

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/items/{id}", get(show))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    lang: PageLang,
) -> Result<Response, PageError> {
    let locale = lang.locale;
    let id: i64 = id.parse().map_err(|_| Problem::NotFound)?;
    let item = state.store.item(id).await?.ok_or(Problem::NotFound)?;
    let date = item.published_at.unwrap_or(item.created_at);
    let published = site_date(&state, locale, date);
    let paragraphs: Vec<&str> = item
        .body
        .as_deref()
        .unwrap_or_default()
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .collect();
    let data = json!({
        "title": item.title,
        "item": item,
        "published": published,
        "topics": item.topics.join(", "),
        "paragraphs": paragraphs,
    });
    Ok(render(
        &state,
        StatusCode::OK,
        locale,
        "item",
        "site_title",
        data,
        &format!("/items/{id}"),
    ))
}
