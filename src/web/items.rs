//! `GET /items/{id}`: an item's public page, for items without their own URL
//! (mailed-in press releases); digests link there.

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
    Router::new().route("/items/{id}", get(show))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LangQuery>,
    headers: HeaderMap,
) -> Response {
    let locale = negotiate(&state, q.lang.as_deref(), &headers);
    let Ok(id) = id.parse::<i64>() else {
        return message(&state, StatusCode::NOT_FOUND, locale, "not_found", true);
    };
    match state.store.item(id).await {
        Ok(Some(item)) => {
            let date = item.published_at.unwrap_or(item.created_at);
            let published = match locale {
                Locale::De => date.format("%d.%m.%Y").to_string(),
                Locale::En => date.format("%-d %B %Y").to_string(),
            };
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
            render(
                &state,
                StatusCode::OK,
                locale,
                "item",
                "site_title",
                data,
                &format!("/items/{id}"),
            )
        }
        Ok(None) => message(&state, StatusCode::NOT_FOUND, locale, "not_found", true),
        Err(e) => {
            tracing::error!(error = %e, "loading an item failed");
            internal_error(&state, locale)
        }
    }
}
