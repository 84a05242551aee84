//! The console's moderation page: `GET /admin/submissions?after=` lists the
//! mailed-in items that wait for a decision (held), oldest first, 50 a page, with
//! sender, topic, why they were held and their text; `POST
//! /admin/submissions/{id}/approve` publishes one as an item, `POST
//! /admin/submissions/{id}/reject` drops it. Each POST carries the session's CSRF
//! token; a submission decided already is a 409 page.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::{ConsoleForm, Refusal, Session, localized, page, see_other};
use crate::store::{Decided, SubmissionStatus};
use crate::web::AppState;
use crate::web::error::{PageError, Problem};
use crate::web::pages::PageLang;

/// Submissions per page.
pub const PAGE_SIZE: u32 = 50;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/submissions", get(list))
        .route("/admin/submissions/{id}/approve", post(approve))
        .route("/admin/submissions/{id}/reject", post(reject))
}

/// Where the page starts: after this submission id.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    #[serde(default)]
    after: i64,
}

async fn list(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
    Query(params): Query<ListParams>,
) -> Result<Response, PageError> {
    show(&state, lang, &session, &params, None).await
}

/// The page of held submissions after `params.after`, with `refusal` above them.
async fn show(
    state: &AppState,
    lang: PageLang,
    session: &Session,
    params: &ListParams,
    refusal: Option<Refusal>,
) -> Result<Response, PageError> {
    let mut held = state
        .store
        .list_submissions(Some(SubmissionStatus::Held), params.after, PAGE_SIZE + 1)
        .await?;
    let more = held.len() > PAGE_SIZE as usize;
    held.truncate(PAGE_SIZE as usize);
    let next_href = more
        .then(|| held.last().map(|s| s.id))
        .flatten()
        .map(|after| localized(&format!("/admin/submissions?after={after}"), lang.locale));
    let status = refusal.as_ref().map_or(StatusCode::OK, Refusal::status);
    let data = json!({
        "refused": refusal.map(|r| r.shown(state, lang.locale)),
        "held": held,
        "next_href": next_href,
        "first_href": (params.after > 0).then(|| localized("/admin/submissions", lang.locale)),
    });
    Ok(page(
        state,
        status,
        lang.locale,
        "submissions",
        data,
        "/admin/submissions",
        Some(session),
    ))
}

/// The page after a decision: back to the list; the list with a 409 when the
/// submission was decided already; 404 when there is none.
async fn decided(
    state: &AppState,
    session: &Session,
    outcome: Decided,
    lang: PageLang,
) -> Result<Response, PageError> {
    match outcome {
        Decided::Done(s) => {
            tracing::info!(submission.id = s.id, status = %s.status, "console: submission decided");
            Ok(see_other(
                &localized("/admin/submissions", lang.locale),
                None,
            ))
        }
        Decided::NotHeld(_) => {
            let params = ListParams::default();
            show(state, lang, session, &params, Some(Refusal::Decided)).await
        }
        Decided::NotFound => Err(Problem::NotFound.into()),
    }
}

async fn approve(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session,
        lang,
        body: _,
    } = form;
    let outcome = state
        .store
        .approve_submission(id, state.clock.now())
        .await?;
    decided(&state, &session, outcome, lang).await
}

async fn reject(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session,
        lang,
        body: _,
    } = form;
    let outcome = state.store.reject_submission(id, state.clock.now()).await?;
    decided(&state, &session, outcome, lang).await
}
