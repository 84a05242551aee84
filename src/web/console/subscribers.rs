//! The console's subscriber pages: `GET /admin/subscribers?q=&status=&topic=&page=`
//! (search by address prefix, status and topic, 50 a page), `GET
//! /admin/subscribers.csv?…` (the search's confirmed readers in the columns
//! `postbote import` reads, cells a spreadsheet would run as formulas quoted as
//! [`crate::import`] describes), `GET /admin/subscribers/{id}` (everything the export
//! shows) and the actions, each a POST with the session's CSRF token:
//! `…/{id}/unsubscribe`, `…/{id}/resend` (a new confirmation mail to a pending
//! reader) and `…/{id}/erase`, which needs the confirmation step of `GET
//! …/{id}/erase` (a form field `confirm=yes`).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::{ConsoleForm, Session, field, page, see_other};
use crate::domain::{SubscriberStatus, Token, TopicSlug};
use crate::store::{BoxError, SubscriberQuery};
use crate::web::AppState;
use crate::web::error::{PageError, Problem};
use crate::web::pages::PageLang;

/// Readers per result page.
pub const PAGE_SIZE: u32 = 50;
/// Most readers one CSV export holds.
pub const EXPORT_LIMIT: u32 = 100_000;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/subscribers", get(search))
        .route("/admin/subscribers.csv", get(export_csv))
        .route("/admin/subscribers/{id}", get(detail))
        .route("/admin/subscribers/{id}/unsubscribe", post(unsubscribe))
        .route("/admin/subscribers/{id}/resend", post(resend))
        .route("/admin/subscribers/{id}/erase", get(erase_form).post(erase))
}

/// The search form's fields; empty ones mean "any".
#[derive(Debug, Default, Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    page: Option<u32>,
}

impl SearchParams {
    /// The store's query; an unknown status or a malformed topic is a 400 page.
    fn query(&self) -> Result<SubscriberQuery, PageError> {
        let bad = |_| PageError::from(Problem::BadRequest);
        let q = self.q.trim();
        Ok(SubscriberQuery {
            prefix: (!q.is_empty()).then(|| q.chars().take(320).collect()),
            status: match self.status.as_str() {
                "" => None,
                s => Some(SubscriberStatus::parse(s).map_err(bad)?),
            },
            topic: match self.topic.as_str() {
                "" => None,
                t => Some(TopicSlug::parse(t).map_err(|_| PageError::from(Problem::BadRequest))?),
            },
        })
    }

    /// The query string of this search on another page.
    fn href(&self, page: u32) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("q", &self.q)
            .append_pair("status", &self.status)
            .append_pair("topic", &self.topic)
            .append_pair("page", &page.to_string())
            .finish();
        format!("/admin/subscribers?{query}")
    }
}

async fn search(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
    Query(params): Query<SearchParams>,
) -> Result<Response, PageError> {
    let query = params.query()?;
    let page_no = params.page.unwrap_or(1).max(1);
    let offset = (page_no - 1).saturating_mul(PAGE_SIZE);
    let mut rows = state
        .store
        .search_subscribers(&query, offset, PAGE_SIZE + 1)
        .await?;
    let more = rows.len() > PAGE_SIZE as usize;
    rows.truncate(PAGE_SIZE as usize);
    let topics = state.store.list_topics(true).await?;
    let csv = params
        .href(1)
        .replacen("/admin/subscribers?", "/admin/subscribers.csv?", 1);
    let statuses: Vec<_> = SubscriberStatus::ALL
        .iter()
        .map(|s| json!({"name": s.as_str(), "selected": s.as_str() == params.status}))
        .collect();
    let topics: Vec<_> = topics
        .iter()
        .map(|t| json!({"slug": t.slug, "selected": t.slug.as_str() == params.topic}))
        .collect();
    let data = json!({
        "q": params.q,
        "statuses": statuses,
        "topics": topics,
        "rows": rows,
        "page": page_no,
        "prev_href": (page_no > 1).then(|| params.href(page_no - 1)),
        "next_href": more.then(|| params.href(page_no + 1)),
        "csv_href": csv,
    });
    Ok(page(
        &state,
        StatusCode::OK,
        lang.locale,
        "subscribers",
        data,
        "/admin/subscribers",
        Some(&session),
    ))
}

async fn export_csv(
    State(state): State<AppState>,
    _session: Session,
    Query(params): Query<SearchParams>,
) -> Result<Response, PageError> {
    let rows = state
        .store
        .export_rows(&params.query()?, EXPORT_LIMIT)
        .await?;
    let mut out = csv::Writer::from_writer(Vec::new());
    let write = |out: &mut csv::Writer<Vec<u8>>| -> Result<(), csv::Error> {
        out.write_record(crate::import::KNOWN)?;
        for r in &rows {
            let consent_at = r.confirmed_at.map(|t| t.to_rfc3339()).unwrap_or_default();
            // No cell runs as a formula in a spreadsheet; `import` reads them back.
            out.write_record(
                [
                    r.email.as_str(),
                    r.topics.as_str(),
                    r.delivery_time.as_str(),
                    r.timezone.as_str(),
                    r.locale.as_str(),
                    consent_at.as_str(),
                    r.confirmed_ip.as_deref().unwrap_or_default(),
                ]
                .map(crate::import::export_cell)
                .iter()
                .map(|c| c.as_bytes()),
            )?;
        }
        Ok(())
    };
    write(&mut out).map_err(|_| PageError::from(Problem::BadRequest))?;
    let body = out.into_inner().unwrap_or_default();
    tracing::info!(rows = rows.len(), "console: subscribers exported as CSV");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"subscribers.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

async fn detail(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let email = state
        .store
        .subscriber_email(id)
        .await?
        .ok_or(Problem::NotFound)?;
    let export = state
        .store
        .export_subscriber(&email)
        .await?
        .ok_or(Problem::NotFound)?;
    let pending = export.status == SubscriberStatus::Pending;
    let active = matches!(
        export.status,
        SubscriberStatus::Pending | SubscriberStatus::Confirmed
    );
    let data = json!({
        "id": id,
        "reader": export,
        "can_resend": pending,
        "can_unsubscribe": active,
        "export_json": serde_json::to_string_pretty(&export).unwrap_or_default(),
    });
    let path = format!("/admin/subscribers/{id}");
    Ok(page(
        &state,
        StatusCode::OK,
        lang.locale,
        "subscriber",
        data,
        &path,
        Some(&session),
    ))
}

async fn unsubscribe(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _,
        body: _,
        ..
    } = form;
    state
        .store
        .unsubscribe(id, state.clock.now())
        .await?
        .ok_or(Problem::NotFound)?;
    tracing::info!(subscriber.id = id, "console: unsubscribed by the operator");
    Ok(see_other(&format!("/admin/subscribers/{id}"), None))
}

async fn resend(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _,
        body: _,
        ..
    } = form;
    let now = state.clock.now();
    let token = Token::generate();
    let expires_at = now + state.config.confirmation_lifetime;
    let composer = &state.composer;
    let sent = state
        .store
        .resend_confirmation(id, &token.hash(), expires_at, now, |email, locale| {
            composer
                .confirmation(email, locale, &token, id, now)
                .map_err(|e| Box::new(e) as BoxError)
        })
        .await?;
    if !sent {
        return Err(Problem::NotFound.into());
    }
    state.mail_wake.notify_one();
    tracing::info!(subscriber.id = id, "console: confirmation sent again");
    Ok(see_other(&format!("/admin/subscribers/{id}"), None))
}

async fn erase_form(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let email = state
        .store
        .subscriber_email(id)
        .await?
        .ok_or(Problem::NotFound)?;
    let path = format!("/admin/subscribers/{id}/erase");
    let data = json!({"id": id, "email": email.as_str(), "action": path});
    Ok(page(
        &state,
        StatusCode::OK,
        lang.locale,
        "erase",
        data,
        &path,
        Some(&session),
    ))
}

async fn erase(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _, body, ..
    } = form;
    if field(&body, "confirm") != "yes" {
        return Ok(see_other(&format!("/admin/subscribers/{id}/erase"), None));
    }
    let email = state
        .store
        .subscriber_email(id)
        .await?
        .ok_or(Problem::NotFound)?;
    state.store.erase(&email, state.clock.now()).await?;
    tracing::info!(subscriber.id = id, "console: erased by the operator");
    Ok(see_other("/admin/subscribers", None))
}
