//! The console's digest preview: `GET /admin/preview?topics=…&locale=…` shows the
//! digest a reader with these topics and this language would get at their next
//! slot (see `digest::preview`: the pass's own planner and renderer, the workers'
//! assembly), its text part in a `<pre>` and its HTML part in a sandboxed frame
//! loaded from `GET /admin/preview/html?…`. That document gets its own
//! Content-Security-Policy (`sandbox`, no scripts, no requests but images,
//! `frame-ancestors 'self'`), so a digest's markup can neither run code nor reach
//! the console; the console page keeps the site-wide policy.
//!
//! `POST /admin/preview/send` (CSRF-protected) queues the same digest, addressed to
//! an address the operator types, as a mail of kind `test-digest` for no reader
//! (`Store::queue_test_mail`): the delivery workers send it (DKIM-signed, through
//! the configured relay) like any other mail. No subscriber is created, and the
//! digest log and the readers' watermarks are not touched.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{ConsoleForm, Session, field, page, see_other};
use crate::digest::{DigestPreview, PreviewReader};
use crate::domain::{DeliverySchedule, EmailAddress, Locale, Weekdays};
use crate::web::AppState;
use crate::web::error::{PageError, Problem};
use crate::web::pages::PageLang;

/// The policy of the previewed HTML part: nothing runs, nothing loads but images,
/// only the console may frame it.
pub const FRAME_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'self'; sandbox";
/// The address the preview's footer names until the operator types one.
const SAMPLE_ADDRESS: &str = "leser@example.org";
/// The kind a test digest is queued and counted as.
pub const TEST_KIND: &str = "test-digest";

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/preview", get(show))
        .route("/admin/preview/html", get(html_part))
        .route("/admin/preview/send", post(send))
}

/// The form's choices: topic slugs (repeated `topics`), the digest's `locale`, and
/// whether a test copy was just queued (`sent=1`).
#[derive(Debug, Default)]
struct Choice {
    /// Chosen topic slugs.
    topics: Vec<String>,
    /// The digest's language; `None` → the configured default.
    locale: Option<Locale>,
    /// A test copy was queued.
    sent: bool,
}

impl Choice {
    /// Reads a query string or form body; an unknown language is a 400.
    fn parse(text: &[u8]) -> Result<Self, PageError> {
        let mut choice = Self::default();
        for (k, v) in form_urlencoded::parse(text) {
            match k.as_ref() {
                "topics" if choice.topics.len() < 256 => choice.topics.push(v.into_owned()),
                "locale" if !v.is_empty() => {
                    choice.locale =
                        Some(Locale::parse(&v).map_err(|_| PageError::from(Problem::BadRequest))?);
                }
                "sent" => choice.sent = v == "1",
                _ => {}
            }
        }
        Ok(choice)
    }

    /// This choice as a query string.
    fn query(&self, locale: Locale) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for t in &self.topics {
            q.append_pair("topics", t);
        }
        q.append_pair("locale", locale.as_str()).finish()
    }
}

/// The previewed digest for `choice`, addressed to `to`; `None` when no topic is
/// chosen or nothing new would be in it.
async fn preview(
    state: &AppState,
    choice: &Choice,
    to: EmailAddress,
) -> Result<Option<DigestPreview>, PageError> {
    let topics = state.store.list_topics(false).await?;
    let topic_ids: Vec<i64> = topics
        .iter()
        .filter(|t| choice.topics.contains(&t.slug))
        .map(|t| t.id)
        .collect();
    if topic_ids.is_empty() {
        return Ok(None);
    }
    let defaults = &state.config.defaults;
    let reader = PreviewReader {
        email: to,
        locale: choice.locale.unwrap_or(defaults.locale),
        schedule: DeliverySchedule {
            time: defaults.delivery_time,
            timezone: defaults.timezone,
            weekdays: Weekdays::EVERY_DAY,
        },
        topic_ids,
    };
    Ok(state.digester.preview(reader).await?)
}

/// The sample address the page's preview is built for.
fn sample() -> EmailAddress {
    EmailAddress::parse(SAMPLE_ADDRESS).expect("a valid address")
}

async fn show(
    State(state): State<AppState>,
    lang: PageLang,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let choice = Choice::parse(query.unwrap_or_default().as_bytes())?;
    let locale = choice.locale.unwrap_or(state.config.defaults.locale);
    let previewed = preview(&state, &choice, sample()).await?;
    let topics: Vec<_> = state
        .store
        .list_topics(false)
        .await?
        .into_iter()
        .map(
            |t| json!({"slug": t.slug, "name": t.name, "checked": choice.topics.contains(&t.slug)}),
        )
        .collect();
    let locales: Vec<_> = Locale::ALL
        .iter()
        .map(|l| json!({"code": l.as_str(), "selected": *l == locale}))
        .collect();
    let digest = previewed.as_ref().map(|p| {
        let parsed = mail_parser::MessageParser::default().parse(&p.mail.message);
        json!({
            "subject": parsed.as_ref().and_then(|m| m.subject()).unwrap_or_default(),
            "text": parsed.as_ref().and_then(|m| m.body_text(0)).unwrap_or_default(),
            "item_count": p.item_count,
            "html_src": format!("/admin/preview/html?{}", choice.query(locale)),
        })
    });
    let data = json!({
        "topics": topics,
        "locales": locales,
        "chosen": !choice.topics.is_empty(),
        "digest": digest,
        "sent": choice.sent,
        "topic_fields": choice.topics,
        "locale": locale.as_str(),
    });
    Ok(page(
        &state,
        StatusCode::OK,
        lang.locale,
        "preview",
        data,
        "/admin/preview",
        Some(&session),
    ))
}

async fn html_part(
    State(state): State<AppState>,
    _session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let choice = Choice::parse(query.unwrap_or_default().as_bytes())?;
    let previewed = preview(&state, &choice, sample())
        .await?
        .ok_or(Problem::NotFound)?;
    let html = mail_parser::MessageParser::default()
        .parse(&previewed.mail.message)
        .and_then(|m| m.body_html(0).map(|h| h.into_owned()))
        .unwrap_or_default();
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FRAME_POLICY),
    );
    Ok(response)
}

async fn send(State(state): State<AppState>, form: ConsoleForm) -> Result<Response, PageError> {
    let ConsoleForm {
        session: _, body, ..
    } = form;
    let choice = Choice::parse(&body)?;
    let to = EmailAddress::parse(field(&body, "to").trim())
        .map_err(|_| PageError::from(Problem::BadRequest))?;
    let locale = choice.locale.unwrap_or(state.config.defaults.locale);
    let previewed = preview(&state, &choice, to)
        .await?
        .ok_or(Problem::NotFound)?;
    let mail = crate::store::NewMail {
        kind: TEST_KIND,
        ..previewed.mail
    };
    state
        .store
        .queue_test_mail(&mail, state.clock.now())
        .await?;
    state.mail_wake.notify_one();
    tracing::info!("console: a test digest was queued");
    Ok(see_other(
        &format!("/admin/preview?{}&sent=1", choice.query(locale)),
        None,
    ))
}
