//! The admin API under `/api/v1`: JSON in and out, bearer-token auth compared in
//! constant time, errors as `{"error": "…"}` with a fitting status.

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::AppState;
use super::error::ErrorChain;
use super::input::{self, FieldError};
use crate::domain::{EmailAddress, TopicSlug};
use crate::store::{Decided, ItemOutcome, NewItem, StoreError, SubmissionStatus, TopicChange};

/// An admin API failure: a status and a message for the client.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => {
                Self::new(StatusCode::CONFLICT, format!("{what} already exists"))
            }
            StoreError::InvalidItem(e) => unprocessable(e.field, e.problem),
            StoreError::Unavailable(_) => {
                tracing::error!(error = %ErrorChain(&e), "admin API: database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable; try again later",
                )
            }
            other => {
                tracing::error!(error = %ErrorChain(&other), "admin API failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

/// The routes of this module, behind the token check.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/topics", get(list_topics).post(create_topic))
        .route(
            "/topics/{slug}",
            axum::routing::patch(update_topic).delete(retire_topic),
        )
        .route("/subscribers", get(list_subscribers))
        .route(
            "/subscribers/{email}",
            get(export_subscriber).delete(erase_subscriber),
        )
        .route("/items", axum::routing::post(create_item).get(list_items))
        .route("/feeds", get(list_feeds).post(create_feed))
        .route("/feeds/{name}", axum::routing::delete(delete_feed))
        .route("/digests/run", axum::routing::post(run_digests))
        .route("/stats", get(stats))
        .route("/submissions", get(list_submissions))
        .route(
            "/submissions/{id}/approve",
            axum::routing::post(approve_submission),
        )
        .route(
            "/submissions/{id}/reject",
            axum::routing::post(reject_submission),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API route") })
        .layer(middleware::from_fn_with_state(state, require_token))
        // Items may carry a full text; everything else is small.
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
}

/// Lets a request through only with `Authorization: Bearer <admin token>`,
/// compared in constant time ([`super::token_matches`]).
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = super::bearer_token(request.headers()).unwrap_or_default();
    if !super::token_matches(presented, &state.admin_token) {
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    next.run(request).await
}

/// Parses a JSON body with an error message that says what is wrong.
fn parse_body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, format!("invalid JSON body: {e}"))
    })
}

fn parse_slug(slug: &str) -> Result<TopicSlug, ApiError> {
    TopicSlug::parse(slug)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("slug: {e}")))
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        unprocessable(e.field, e.problem)
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    input::topic_name(name)?;
    Ok(())
}

async fn list_topics(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.store.list_topics(true).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    slug: String,
    name: String,
    description: Option<String>,
}

async fn create_topic(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let t: NewTopic = parse_body(&body)?;
    let slug = parse_slug(&t.slug)?;
    check_name(&t.name)?;
    let description = text_field("description", t.description, 2000)?;
    let _changing = state.offered_topics.changing();
    let topic = state
        .store
        .create_topic(
            &slug,
            t.name.trim(),
            description.as_deref(),
            state.clock.now(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(topic)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTopic {
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

async fn update_topic(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let slug = parse_slug(&slug)?;
    let p: PatchTopic = parse_body(&body)?;
    if let Some(name) = &p.name {
        check_name(name)?;
    }
    let description = match p.description {
        Some(d) => Some(text_field("description", d, 2000)?),
        None => None,
    };
    let change = TopicChange {
        name: p.name.map(|n| n.trim().to_owned()),
        description,
    };
    let _changing = state.offered_topics.changing();
    match state.store.update_topic(&slug, &change).await? {
        Some(topic) => Ok(Json(topic).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no topic {slug}"),
        )),
    }
}

async fn retire_topic(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Response, ApiError> {
    let slug = parse_slug(&slug)?;
    let _changing = state.offered_topics.changing();
    match state.store.retire_topic(&slug, state.clock.now()).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no topic {slug}"),
        )),
    }
}

async fn export_subscriber(
    State(state): State<AppState>,
    Path(email): Path<String>,
) -> Result<Response, ApiError> {
    let email = EmailAddress::parse(&email)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("email: {e}")))?;
    match state.store.export_subscriber(&email).await? {
        Some(export) => Ok(Json(export).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no data stored for this address",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItemBody {
    topics: Vec<String>,
    title: String,
    url: Option<String>,
    summary: Option<String>,
    body: Option<String>,
    published_at: Option<String>,
    guid: Option<String>,
}

fn unprocessable(field: &str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("{field}: {problem}"),
    )
}

/// Trims a text field; empty means absent. Longer than `max` characters is an error.
fn text_field(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    Ok(input::text(field, value, max)?)
}

async fn create_item(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b: NewItemBody = parse_body(&body)?;
    let offered = state.store.list_topics(false).await?;
    let topics = input::item_topics(&offered, &b.topics)?;
    // Trimmed, blank meaning absent. The limits are the store's, the same for every
    // source (`NewItem::validate`): what it refuses is a 422 naming the field.
    let trimmed = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let published_at = match b.published_at {
        Some(p) => Some(
            chrono::DateTime::parse_from_rfc3339(p.trim())
                .map_err(|e| {
                    unprocessable(
                        "published_at",
                        format!("{e}; expected RFC 3339, e.g. 2027-03-28T09:00:00+02:00"),
                    )
                })?
                .with_timezone(&chrono::Utc),
        ),
        None => None,
    };
    let item = NewItem {
        topics,
        title: trimmed(Some(b.title)).unwrap_or_default(),
        url: trimmed(b.url),
        summary: trimmed(b.summary),
        body: trimmed(b.body),
        published_at,
        guid: trimmed(b.guid),
        source: "api".to_owned(),
    };
    match state.store.add_item(&item, state.clock.now()).await? {
        ItemOutcome::Created(item) => Ok((StatusCode::CREATED, Json(item)).into_response()),
        ItemOutcome::Existing(item) => Ok((StatusCode::OK, Json(item)).into_response()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunBody {
    at: Option<String>,
}

async fn run_digests(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let run: RunBody = if body.iter().all(u8::is_ascii_whitespace) {
        RunBody::default()
    } else {
        parse_body(&body)?
    };
    let at = match run.at {
        Some(at) => chrono::DateTime::parse_from_rfc3339(at.trim())
            .map_err(|e| unprocessable("at", format!("{e}; expected RFC 3339")))?
            .with_timezone(&chrono::Utc),
        None => state.clock.now(),
    };
    // The schedule's calendar ends in 2099; a pass beyond it is a typo.
    if !(2000..=2099).contains(&chrono::Datelike::year(&at)) {
        return Err(unprocessable(
            "at",
            "must lie between the years 2000 and 2099",
        ));
    }
    // A client that hangs up does not cut a batch off between its commit and its
    // hand-over to the workers.
    let digester = state.digester.clone();
    let outcome = super::detached(async move { digester.run_pass(at).await }).await?;
    Ok(Json(outcome).into_response())
}

async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.store.stats().await?).into_response())
}

async fn erase_subscriber(
    State(state): State<AppState>,
    Path(email): Path<String>,
) -> Result<Response, ApiError> {
    let email = EmailAddress::parse(&email).map_err(|e| unprocessable("email", e))?;
    if state.store.erase(&email, state.clock.now()).await? {
        tracing::info!("subscriber erased; the address hash is suppressed");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no data stored for this address",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    topic: Option<String>,
    limit: Option<u32>,
    after: Option<i64>,
}

async fn list_subscribers(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let known = |s: &str| crate::domain::SubscriberStatus::parse(s).is_ok();
    if q.status.as_deref().is_some_and(|s| !known(s)) {
        return Err(unprocessable(
            "status",
            "must be pending, confirmed, unsubscribed or bounced",
        ));
    }
    let topic = q.topic.as_deref().map(parse_slug).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(unprocessable("limit", "must be between 1 and 1000"));
    }
    let rows = state
        .store
        .list_subscribers(
            q.status.as_deref(),
            topic.as_ref(),
            q.after.unwrap_or(0),
            limit,
        )
        .await?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({"subscribers": rows, "next_after": next})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmissionsQuery {
    status: Option<String>,
    limit: Option<u32>,
    after: Option<i64>,
}

/// Mailed-in items: `?status=held` (the default) waits for a decision.
async fn list_submissions(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<SubmissionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let status = match q.status.as_deref() {
        None => Some(SubmissionStatus::Held),
        Some("all") => None,
        Some(s) => Some(SubmissionStatus::parse(s).map_err(|_| {
            unprocessable("status", "must be held, approved, rejected, refused or all")
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(unprocessable("limit", "must be between 1 and 1000"));
    }
    let rows = state
        .store
        .list_submissions(status, q.after.unwrap_or(0), limit)
        .await?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({"submissions": rows, "next_after": next})).into_response())
}

async fn approve_submission(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = submission_id(&id)?;
    decided(
        state
            .store
            .approve_submission(id, state.clock.now())
            .await?,
    )
}

async fn reject_submission(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = submission_id(&id)?;
    decided(state.store.reject_submission(id, state.clock.now()).await?)
}

fn submission_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such submission"))
}

fn decided(outcome: Decided) -> Result<Response, ApiError> {
    match outcome {
        Decided::Done(s) => Ok(Json(s).into_response()),
        Decided::NotHeld(s) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("submission {} is {}, not held", s.id, s.status),
        )),
        Decided::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "no such submission")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsQuery {
    topic: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn list_items(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<ItemsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let topic = q.topic.as_deref().map(parse_slug).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(unprocessable("limit", "must be between 1 and 1000"));
    }
    let items = state
        .store
        .list_items(topic.as_ref(), q.after.unwrap_or(0), limit)
        .await?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|i| i.id))
        .flatten();
    Ok(Json(json!({"items": items, "next_after": next})).into_response())
}

async fn list_feeds(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.store.list_feeds().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFeedBody {
    name: Option<String>,
    url: String,
    topic: String,
    schedule: String,
}

async fn create_feed(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b: NewFeedBody = parse_body(&body)?;
    let offered = state.store.list_topics(false).await?;
    let now = state.clock.now();
    let spec = input::new_feed(&offered, b.name, &b.url, &b.topic, &b.schedule, now)?;
    let feed = state.store.put_feed(&spec, "api", now).await?;
    Ok((StatusCode::CREATED, Json(feed)).into_response())
}

async fn delete_feed(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if state.store.delete_feed(&name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no feed {name:?}"),
        ))
    }
}
