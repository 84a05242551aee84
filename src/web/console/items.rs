//! The console's item page: `GET /admin/items?topic=&source=&page=` lists items
//! newest first, by topic and by source, 50 a page, each with its topics and
//! whether it is hidden; `POST /admin/items` adds one from the form (source
//! `console`, the same checks as the admin API's), `POST /admin/items/{id}/hide`
//! hides one from every digest planned after (its page stays, for the digests
//! that listed it already). Each POST carries the session's CSRF token.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::{ConsoleForm, Refusal, Session, field, localized, page, see_other};
use crate::domain::{Locale, TopicSlug};
use crate::store::{ItemQuery, NewItem, StoreError};
use crate::web::AppState;
use crate::web::error::{PageError, Problem};
use crate::web::input::{self, FieldError};
use crate::web::pages::PageLang;

/// Items per result page.
pub const PAGE_SIZE: u32 = 50;
/// The source the console's items are stored with.
pub const SOURCE: &str = "console";

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/items", get(list).post(add))
        .route("/admin/items/{id}/hide", post(hide))
        // An item may carry a full text, as through the admin API.
        .layer(DefaultBodyLimit::max(1024 * 1024))
}

/// The filter's fields; empty ones mean "any".
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    page: Option<u32>,
}

impl ListParams {
    /// The store's query; a malformed topic is a 400 page.
    fn query(&self) -> Result<ItemQuery, PageError> {
        Ok(ItemQuery {
            topic: match self.topic.as_str() {
                "" => None,
                t => Some(TopicSlug::parse(t).map_err(|_| PageError::from(Problem::BadRequest))?),
            },
            source: (!self.source.is_empty()).then(|| self.source.clone()),
        })
    }

    /// This filter on page `page`, in `locale`.
    fn href(&self, page: u32, locale: Locale) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("topic", &self.topic)
            .append_pair("source", &self.source)
            .append_pair("page", &page.to_string())
            .append_pair("lang", locale.as_str())
            .finish();
        format!("/admin/items?{query}")
    }
}

/// The item page for `params`, with `refusal` and the form's values when the
/// form was refused.
async fn show(
    state: &AppState,
    locale: Locale,
    session: &Session,
    params: &ListParams,
    refused: Option<(Refusal, serde_json::Value)>,
) -> Result<Response, PageError> {
    let page_no = params.page.unwrap_or(1).max(1);
    let offset = (page_no - 1).saturating_mul(PAGE_SIZE);
    let mut items = state
        .store
        .find_items(&params.query()?, offset, PAGE_SIZE + 1)
        .await?;
    let more = items.len() > PAGE_SIZE as usize;
    items.truncate(PAGE_SIZE as usize);
    let topics = state.store.list_topics(true).await?;
    let topics: Vec<_> = topics
        .iter()
        .map(|t| json!({"slug": t.slug, "name": t.name, "offered": t.retired_at.is_none(), "selected": t.slug == params.topic}))
        .collect();
    let sources: Vec<_> = state
        .store
        .item_sources()
        .await?
        .into_iter()
        .map(|s| json!({"name": s, "selected": s == params.source}))
        .collect();
    let status = refused.as_ref().map_or(StatusCode::OK, |(r, _)| r.status());
    let (refusal, form) = refused.map_or_else(
        || (None, item_form(&[])),
        |(r, form)| (Some(r.shown(state, locale)), form),
    );
    let data = json!({
        "items": items,
        "topics": topics,
        "sources": sources,
        "page": page_no,
        "prev_href": (page_no > 1).then(|| params.href(page_no - 1, locale)),
        "next_href": more.then(|| params.href(page_no + 1, locale)),
        "back": params.href(page_no, locale),
        "refused": refusal,
        "form": form,
    });
    Ok(page(
        state,
        status,
        locale,
        "items",
        data,
        "/admin/items",
        Some(session),
    ))
}

async fn list(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
    Query(params): Query<ListParams>,
) -> Result<Response, PageError> {
    show(&state, lang.locale, &session, &params, None).await
}

/// The add form's values as `body` (a refused form) has them; empty for none.
fn item_form(body: &[u8]) -> serde_json::Value {
    json!({
        "title": field(body, "title"),
        "url": field(body, "url"),
        "summary": field(body, "summary"),
        "body": field(body, "body"),
    })
}

/// Every value of field `name` of a url-encoded form body (checkboxes).
fn all_fields(body: &[u8], name: &str) -> Vec<String> {
    form_urlencoded::parse(body)
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The item the form describes, checked as the admin API checks one.
fn new_item(state_topics: &[crate::store::Topic], body: &[u8]) -> Result<NewItem, FieldError> {
    let topics = input::item_topics(state_topics, &all_fields(body, "topics"))?;
    let optional = |name: &'static str| {
        Some(field(body, name))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let item = NewItem {
        topics,
        title: field(body, "title").trim().to_owned(),
        url: optional("url"),
        summary: optional("summary"),
        body: optional("body"),
        published_at: None,
        guid: None,
        source: SOURCE.to_owned(),
    };
    item.validate()
        .map_err(|e| FieldError::new(e.field, e.problem))?;
    Ok(item)
}

async fn add(State(state): State<AppState>, form: ConsoleForm) -> Result<Response, PageError> {
    let ConsoleForm {
        session,
        lang,
        body,
    } = form;
    let offered = state.store.list_topics(false).await?;
    let refused = |e: FieldError| (Refusal::from(e), item_form(&body));
    let params = ListParams::default();
    let item = match new_item(&offered, &body) {
        Ok(item) => item,
        Err(e) => return show(&state, lang.locale, &session, &params, Some(refused(e))).await,
    };
    match state.store.add_item(&item, state.clock.now()).await {
        Ok(_) => {}
        Err(StoreError::InvalidItem(e)) => {
            let e = FieldError::new(e.field, e.problem);
            return show(&state, lang.locale, &session, &params, Some(refused(e))).await;
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!("console: item added");
    Ok(see_other(&localized("/admin/items", lang.locale), None))
}

async fn hide(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    form: ConsoleForm,
) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _,
        lang,
        body,
    } = form;
    if !state.store.hide_item(id, state.clock.now()).await? {
        return Err(Problem::NotFound.into());
    }
    tracing::info!(item.id = id, "console: item hidden from future digests");
    let back = field(&body, "back");
    // Back to the list the operator came from: never another site, never a
    // character a `Location` header cannot carry.
    let to = if back.starts_with("/admin/items?") && back.bytes().all(|b| b.is_ascii_graphic()) {
        back
    } else {
        localized("/admin/items", lang.locale)
    };
    Ok(see_other(&to, None))
}
