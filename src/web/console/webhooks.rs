//! The console's webhook page: `GET /admin/webhooks` lists the newest deliveries
//! (event, reader, endpoint, status, attempts, the receiver's last answer or
//! error, times); the configured URLs are shown above them. Payloads are not
//! shown: they may hold an address.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::{Session, page};
use crate::web::AppState;
use crate::web::error::PageError;
use crate::web::pages::PageLang;

/// Deliveries the page lists.
pub const SHOWN: u32 = 200;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/admin/webhooks", get(list))
}

async fn list(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
) -> Result<Response, PageError> {
    let deliveries = state.store.recent_webhook_deliveries(SHOWN).await?;
    let urls: Vec<&str> = state
        .config
        .webhooks
        .iter()
        .flat_map(|w| w.urls.iter().map(String::as_str))
        .collect();
    let data = json!({"urls": urls, "deliveries": deliveries});
    Ok(page(
        &state,
        StatusCode::OK,
        lang.locale,
        "webhooks",
        data,
        "/admin/webhooks",
        Some(&session),
    ))
}
