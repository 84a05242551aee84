//! The console's feed page: `GET /admin/feeds` lists every feed with its last
//! poll, last success, failures, last error and how many items it brought;
//! `POST /admin/feeds` adds one (the admin API's checks; origin `api`), `POST
//! /admin/feeds/{id}/delete` removes one (its items stay; a feed from the
//! configuration file comes back at the next start), `POST
//! /admin/feeds/{id}/poll` makes one due now, so the poller fetches it within
//! `polling.tick_ms`. Each POST carries the session's CSRF token.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::{ConsoleForm, Refusal, Session, field, localized, page, see_other};
use crate::domain::Locale;
use crate::store::StoreError;
use crate::web::AppState;
use crate::web::error::{PageError, Problem};
use crate::web::input;
use crate::web::pages::PageLang;

/// The schedule the add form suggests: every 30 minutes.
pub const SUGGESTED_SCHEDULE: &str = "0 */30 * * * *";

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/feeds", get(list).post(add))
        .route("/admin/feeds/{id}/delete", post(remove))
        .route("/admin/feeds/{id}/poll", post(poll_now))
}

/// The feed page, with `refused` (the refusal and the form's values) when the
/// add form was refused.
async fn show(
    state: &AppState,
    locale: Locale,
    session: &Session,
    refused: Option<(Refusal, serde_json::Value)>,
) -> Result<Response, PageError> {
    let feeds = state.store.list_feeds().await?;
    let counts = state.store.feed_item_counts().await?;
    let feeds: Vec<_> = feeds
        .iter()
        .map(|f| {
            let source = format!("feed:{}", f.name);
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("source", &source)
                .append_pair("lang", locale.as_str())
                .finish();
            let items_href = format!("/admin/items?{query}");
            json!({"feed": f, "items": counts.get(&f.name).copied().unwrap_or(0), "items_href": items_href})
        })
        .collect();
    let topics = state.store.list_topics(false).await?;
    let status = refused.as_ref().map_or(StatusCode::OK, |(r, _)| r.status());
    let (refusal, form) = refused.map_or_else(
        || {
            let form = json!({"name": "", "url": "", "topic": "", "schedule": SUGGESTED_SCHEDULE});
            (None, form)
        },
        |(r, form)| (Some(r.shown(state, locale)), form),
    );
    let data = json!({"feeds": feeds, "topics": topics, "refused": refusal, "form": form});
    Ok(page(
        state,
        status,
        locale,
        "feeds",
        data,
        "/admin/feeds",
        Some(session),
    ))
}

async fn list(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
) -> Result<Response, PageError> {
    show(&state, lang.locale, &session, None).await
}

async fn add(State(state): State<AppState>, form: ConsoleForm) -> Result<Response, PageError> {
    let ConsoleForm {
        session,
        lang,
        body,
    } = form;
    let form = json!({
        "name": field(&body, "name"),
        "url": field(&body, "url"),
        "topic": field(&body, "topic"),
        "schedule": field(&body, "schedule"),
    });
    let offered = state.store.list_topics(false).await?;
    let now = state.clock.now();
    let spec = match input::new_feed(
        &offered,
        Some(field(&body, "name")),
        &field(&body, "url"),
        &field(&body, "topic"),
        field(&body, "schedule").trim(),
        now,
    ) {
        Ok(spec) => spec,
        Err(e) => return show(&state, lang.locale, &session, Some((e.into(), form))).await,
    };
    match state.store.put_feed(&spec, "api", now).await {
        Ok(feed) => tracing::info!(feed = %feed.name, "console: feed added"),
        Err(StoreError::Conflict(_)) => {
            let refusal = Refusal::Exists(spec.name);
            return show(&state, lang.locale, &session, Some((refusal, form))).await;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(see_other(&localized("/admin/feeds", lang.locale), None))
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _,
        lang,
        body: _,
    } = form;
    let feed = state.store.feed(id).await?.ok_or(Problem::NotFound)?;
    if !state.store.delete_feed(&feed.name).await? {
        return Err(Problem::NotFound.into());
    }
    tracing::info!(feed = %feed.name, "console: feed removed");
    Ok(see_other(&localized("/admin/feeds", lang.locale), None))
}

async fn poll_now(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _,
        lang,
        body: _,
    } = form;
    if !state.store.poll_feed_now(id, state.clock.now()).await? {
        return Err(Problem::NotFound.into());
    }
    tracing::info!(feed.id = id, "console: feed due now");
    Ok(see_other(&localized("/admin/feeds", lang.locale), None))
}
