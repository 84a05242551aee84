//! The one error path of the public pages. A handler returns
//! `Result<Response, PageError>` and writes its happy path with `?`: a
//! [`StoreError`] becomes a 500 page (a 503 page with `Retry-After` when the
//! database is unavailable), an unknown link a 404, an expired one a 410, and so
//! on ([`Problem`]). [`PageError`]'s response logs the cause chain once and carries
//! the page to show; [`error_pages`], the layer around every route, renders it
//! (the error knows no templates). [`ErrorChain`] prints an error with its causes,
//! for these logs and the admin API's.

use std::error::Error;
use std::fmt;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::AppState;
use super::pages::{LangQuery, message_linking, negotiate};
use crate::domain::Locale;
use crate::store::StoreError;

/// What a client is told to wait before it retries while the database is
/// unavailable: a pool timeout takes seconds, a restart a little longer.
const RETRY_UNAVAILABLE_SECS: u64 = 30;

/// An error and its causes, `outer: inner: innermost`, for a log line.
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// Why a page cannot be shown as asked; each has its status and message page.
#[derive(Debug)]
pub enum Problem {
    /// No such page or item: 404.
    NotFound,
    /// A link token that is broken, forged or names nobody: 404.
    UnknownLink,
    /// A confirmation link past its lifetime: 410.
    ExpiredLink,
    /// A form without a valid form token: 403.
    Forbidden,
    /// A query or form value that does not parse (e.g. the console's search): 400.
    BadRequest,
    /// A sign-up a browser was made to post from another site: 403, with a link to
    /// the form on `home` (the public sign-up page).
    CrossSite {
        /// The sign-up page's absolute URL.
        home: String,
    },
    /// Over a sign-up limit: 429 with `Retry-After`.
    TooMany {
        /// Seconds until a retry can succeed (at least 1).
        wait_secs: u64,
    },
    /// The database failed: 503 with `Retry-After` when it is unavailable, else 500.
    Store(StoreError),
}

impl Problem {
    /// The same problem, its page in `locale` (a reader's own language) instead of
    /// the request's.
    pub fn in_locale(self, locale: Locale) -> PageError {
        PageError {
            problem: self,
            locale: Some(locale),
        }
    }
}

/// A [`Problem`] on its way to becoming a page, in the request's language unless
/// the handler knows the reader's.
#[derive(Debug)]
pub struct PageError {
    /// What went wrong.
    pub problem: Problem,
    /// The page's language; `None` is the request's ([`negotiate`]).
    pub locale: Option<Locale>,
}

impl From<Problem> for PageError {
    fn from(problem: Problem) -> Self {
        Self {
            problem,
            locale: None,
        }
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        Problem::Store(e).into()
    }
}

/// `.in_locale(locale)` on a result: its error's page in the reader's language.
pub trait InLocale<T> {
    /// The error, if any, as a [`PageError`] in `locale`.
    ///
    /// # Errors
    /// The result's error, converted.
    fn in_locale(self, locale: Locale) -> Result<T, PageError>;
}

impl<T, E: Into<PageError>> InLocale<T> for Result<T, E> {
    fn in_locale(self, locale: Locale) -> Result<T, PageError> {
        self.map_err(|e| PageError {
            locale: Some(locale),
            ..e.into()
        })
    }
}

/// Which link a message page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// None.
    None,
    /// Back to the sign-up form (`/`).
    SignUp,
    /// To the sign-up form at the public URL (for pages another site made a
    /// browser ask for).
    PublicSignUp,
}

/// The message page an error response asks [`error_pages`] to render.
#[derive(Debug, Clone, Copy)]
struct ErrorPage {
    /// The texts' key prefix (`unknown_link` → `unknown_link_heading`, …).
    key: &'static str,
    /// The link under the text.
    link: Link,
    /// The page's language; `None` is the request's.
    locale: Option<Locale>,
    /// Whether the page also offers to mail a reader their preferences link: a
    /// reader whose link failed may want it anew.
    offer_my_link: bool,
}

impl PageError {
    /// The status, the page's text key and its link.
    fn page(&self) -> (StatusCode, &'static str, Link) {
        match &self.problem {
            Problem::NotFound => (StatusCode::NOT_FOUND, "not_found", Link::SignUp),
            Problem::UnknownLink => (StatusCode::NOT_FOUND, "unknown_link", Link::SignUp),
            Problem::ExpiredLink => (StatusCode::GONE, "expired_link", Link::SignUp),
            Problem::Forbidden => (StatusCode::FORBIDDEN, "forbidden", Link::None),
            Problem::BadRequest => (StatusCode::BAD_REQUEST, "bad_request", Link::None),
            Problem::CrossSite { .. } => (StatusCode::FORBIDDEN, "cross_site", Link::PublicSignUp),
            Problem::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many", Link::SignUp),
            Problem::Store(StoreError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "error", Link::None)
            }
            Problem::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "error", Link::None),
        }
    }

    /// When a client may retry, for the `Retry-After` header.
    fn retry_after(&self) -> Option<u64> {
        match &self.problem {
            Problem::TooMany { wait_secs } => Some(*wait_secs),
            Problem::Store(StoreError::Unavailable(_)) => Some(RETRY_UNAVAILABLE_SECS),
            _ => None,
        }
    }

    /// Logs a server-side cause with its whole chain; the client's problems are
    /// logged where they are found, if at all.
    fn log(&self) {
        if let Problem::Store(e) = &self.problem {
            tracing::error!(error = %ErrorChain(e), "answering a request failed: the database");
        }
    }

    /// The status with `Retry-After` where it applies, around `body`.
    fn respond(&self, status: StatusCode, body: impl IntoResponse) -> Response {
        self.log();
        let mut response = (status, body).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// The same error answered as JSON `body` (for clients that posted JSON).
    pub fn into_json(self, body: Value) -> Response {
        let (status, _, _) = self.page();
        self.respond(status, Json(body))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, key, link) = self.page();
        let mut response = self.respond(status, ());
        let offer_my_link = matches!(self.problem, Problem::UnknownLink | Problem::ExpiredLink);
        response.extensions_mut().insert(ErrorPage {
            key,
            link,
            locale: self.locale,
            offer_my_link,
        });
        response
    }
}

/// The layer around every route that renders the message page a [`PageError`]
/// asked for, in its language or else the request's, keeping its status and
/// `Retry-After`. Other responses pass untouched.
pub async fn error_pages(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let lang = Query::<LangQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(q)| q.lang);
    let request_locale = negotiate(&state, lang.as_deref(), request.headers());
    let response = next.run(request).await;
    let Some(page) = response.extensions().get::<ErrorPage>() else {
        return response;
    };
    let locale = page.locale.unwrap_or(request_locale);
    let link = match page.link {
        Link::None => None,
        Link::SignUp => Some(format!("/?lang={locale}")),
        Link::PublicSignUp => Some(format!("{}?lang={locale}", state.links.home())),
    };
    let status = response.status();
    let mut rendered = message_linking(&state, status, locale, page.key, link, page.offer_my_link);
    if let Some(retry_after) = response.headers().get(header::RETRY_AFTER) {
        rendered
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after.clone());
    }
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_database_is_a_503_with_retry_after() {
        let error = PageError::from(StoreError::from(sqlx::Error::PoolTimedOut));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            RETRY_UNAVAILABLE_SECS.to_string()
        );
        let page = response.extensions().get::<ErrorPage>().expect("a page");
        assert_eq!((page.key, page.link), ("error", Link::None));
    }

    #[test]
    fn other_database_errors_are_a_500_without_retry_after() {
        let error = PageError::from(StoreError::from(sqlx::Error::RowNotFound));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn links_and_forms_map_to_their_status_and_page() {
        for (problem, status, key) in [
            (Problem::NotFound, 404, "not_found"),
            (Problem::UnknownLink, 404, "unknown_link"),
            (Problem::ExpiredLink, 410, "expired_link"),
            (Problem::Forbidden, 403, "forbidden"),
            (Problem::TooMany { wait_secs: 9 }, 429, "too_many"),
        ] {
            let response = problem.in_locale(Locale::En).into_response();
            assert_eq!(response.status().as_u16(), status);
            let page = response.extensions().get::<ErrorPage>().expect("a page");
            assert_eq!((page.key, page.locale), (key, Some(Locale::En)));
            // A reader whose link failed is offered a new one by mail.
            assert_eq!(page.offer_my_link, key.ends_with("_link"), "{key}");
        }
    }

    #[test]
    fn the_chain_names_every_cause() {
        let e = StoreError::from(sqlx::Error::Io(std::io::Error::other("connection refused")));
        let shown = ErrorChain(&e).to_string();
        assert!(shown.starts_with("database unavailable: "), "{shown}");
        assert!(shown.ends_with("connection refused"), "{shown}");
    }
}
