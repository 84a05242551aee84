//! The console's topic page: `GET /admin/topics` lists every topic with its
//! confirmed and pending readers (retired ones last); `POST /admin/topics`
//! creates one (slug, name, description), `POST /admin/topics/{slug}/rename`
//! gives one a new name, `POST /admin/topics/{slug}/retire` stops offering it
//! (its readers keep it until they change their choice). Each POST carries the
//! session's CSRF token; a refused form comes back with the reason above it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::{ConsoleForm, Refusal, Session, field, localized, page, see_other};
use crate::domain::{Locale, TopicSlug};
use crate::store::{StoreError, TopicChange};
use crate::web::AppState;
use crate::web::error::{PageError, Problem};
use crate::web::input::{self, FieldError};
use crate::web::pages::PageLang;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/topics", get(list).post(create))
        .route("/admin/topics/{slug}/rename", post(rename))
        .route("/admin/topics/{slug}/retire", post(retire))
}

/// The topic page, with `refusal` above the forms when a form was refused.
async fn show(
    state: &AppState,
    locale: Locale,
    session: &Session,
    refusal: Option<Refusal>,
) -> Result<Response, PageError> {
    let topics = state.store.topics_with_readers().await?;
    let status = refusal.as_ref().map_or(StatusCode::OK, Refusal::status);
    let data = json!({"topics": topics, "refused": refusal.map(|r| r.shown(state, locale))});
    Ok(page(
        state,
        status,
        locale,
        "topics",
        data,
        "/admin/topics",
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

/// The slug of a form or path, or the refusal naming `slug`.
fn slug(value: &str) -> Result<TopicSlug, FieldError> {
    TopicSlug::parse(value.trim()).map_err(|e| FieldError::new("slug", e))
}

async fn create(State(state): State<AppState>, form: ConsoleForm) -> Result<Response, PageError> {
    let ConsoleForm {
        session,
        lang,
        body,
    } = form;
    let checked = slug(&field(&body, "slug")).and_then(|slug| {
        let name = input::topic_name(&field(&body, "name"))?;
        let description = input::text("description", Some(field(&body, "description")), 2000)?;
        Ok((slug, name, description))
    });
    let (slug, name, description) = match checked {
        Ok(ok) => ok,
        Err(e) => return show(&state, lang.locale, &session, Some(e.into())).await,
    };
    let now = state.clock.now();
    let _changing = state.offered_topics.changing();
    match state
        .store
        .create_topic(&slug, &name, description.as_deref(), now)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) => {
            let refusal = Refusal::Exists(slug.to_string());
            return show(&state, lang.locale, &session, Some(refusal)).await;
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(topic = %slug, "console: topic created");
    Ok(see_other(&localized("/admin/topics", lang.locale), None))
}

async fn rename(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session,
        lang,
        body,
    } = form;
    let slug = TopicSlug::parse(&slug).map_err(|_| Problem::NotFound)?;
    let name = match input::topic_name(&field(&body, "name")) {
        Ok(name) => name,
        Err(e) => return show(&state, lang.locale, &session, Some(e.into())).await,
    };
    let change = TopicChange {
        name: Some(name),
        description: None,
    };
    let _changing = state.offered_topics.changing();
    state
        .store
        .update_topic(&slug, &change)
        .await?
        .ok_or(Problem::NotFound)?;
    tracing::info!(topic = %slug, "console: topic renamed");
    Ok(see_other(&localized("/admin/topics", lang.locale), None))
}

async fn retire(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _,
        lang,
        body: _,
    } = form;
    let slug = TopicSlug::parse(&slug).map_err(|_| Problem::NotFound)?;
    let _changing = state.offered_topics.changing();
    state
        .store
        .retire_topic(&slug, state.clock.now())
        .await?
        .ok_or(Problem::NotFound)?;
    tracing::info!(topic = %slug, "console: topic retired");
    Ok(see_other(&localized("/admin/topics", lang.locale), None))
}
