//! The operator's console under `/admin`: server-rendered pages in German and
//! English, usable without JavaScript. The bearer-token API ([`super::admin`])
//! stays beside it, unchanged.
//!
//! **Sessions.** `POST /admin/login` takes the admin token from a form (compared
//! in constant time, attempts throttled per client address), opens a server-side
//! session and sets cookie `postbote_console`: 256 random bits, `HttpOnly`,
//! `SameSite=Strict`, `Path=/admin`, `Secure` when `public_url` is https. The
//! table `admin_sessions` keeps only the token's SHA-256. A session lasts a fixed
//! [`SESSION_HOURS`] from the login (not sliding) or until `POST /admin/logout`.
//! Every form carries the session's CSRF token, and every POST but the login is
//! refused with 403 without it, before anything changes.
//!
//! The pages: [`dashboard`] (`GET /admin`) and [`subscribers`] (search, detail,
//! actions, CSV export). [`charts`] draws the dashboard's SVG charts.
//! The content pages: [`topics`], [`items`], [`feeds`] and held [`submissions`].
//! Their links and forms carry the page language (`?lang=`), so an operator
//! stays in the language they chose.
//! [`webhooks`] lists the signed webhooks' deliveries; [`preview`] shows the
//! next digest for chosen topics and sends a test copy.

pub mod charts;
pub mod dashboard;
pub mod feeds;
pub mod items;
pub mod preview;
pub mod submissions;
pub mod subscribers;
pub mod topics;
pub mod webhooks;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Duration;
use serde_json::{Value, json};

use super::AppState;
use super::error::{PageError, Problem};
use super::input::FieldError;
use super::pages::{PageLang, render};
use crate::domain::{Locale, Token};

/// How long a console session lasts from the login (fixed, not renewed by use).
pub const SESSION_HOURS: i64 = 12;
/// Login attempts allowed per client address and minute.
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 5;
/// The session cookie's name.
pub const COOKIE: &str = "postbote_console";

/// The routes of the console.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(dashboard::show))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .merge(subscribers::router())
        .merge(topics::router())
        .merge(items::router())
        .merge(feeds::router())
        .merge(submissions::router())
        .merge(webhooks::router())
        .merge(preview::router())
        .layer(middleware::map_response(no_store))
}

/// Console pages show readers' data: never kept by a browser or proxy cache.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A request with a live console session, as an extractor: without one, a page
/// redirects to the login form.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie's token (its hash names the session).
    token: Token,
    /// The token every form of this session must carry.
    pub csrf: String,
}

impl Session {
    /// Refuses a form whose CSRF token is missing or not this session's (403).
    ///
    /// # Errors
    /// [`Problem::Forbidden`] then.
    pub fn check(&self, presented: &str) -> Result<(), PageError> {
        if super::token_matches(presented, &self.csrf) {
            Ok(())
        } else {
            tracing::warn!("console: a form without this session's CSRF token was refused");
            Err(Problem::Forbidden.into())
        }
    }
}

/// A console form post, as an extractor: the live session (none: the login page),
/// the page language and the url-encoded body, whose CSRF token is checked before
/// the handler runs (missing or wrong: 403, nothing changes). A handler that takes
/// it is the happy path only.
pub struct ConsoleForm {
    /// The session that posted.
    pub session: Session,
    /// The page language.
    pub lang: PageLang,
    /// The form, url-encoded; read its fields with [`field`].
    pub body: Bytes,
}

impl axum::extract::FromRequest<AppState> for ConsoleForm {
    type Rejection = Response;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let lang = PageLang::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let req = axum::extract::Request::from_parts(parts, body);
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        session
            .check(&field(&body, "csrf"))
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            session,
            lang,
            body,
        })
    }
}

/// The value of cookie `name` among the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/admin/login").into_response();
        let token = cookie(&parts.headers, COOKIE)
            .and_then(Token::from_path)
            .ok_or_else(to_login)?;
        let csrf = state
            .store
            .console_session(&token.hash(), state.clock.now())
            .await
            .map_err(|e| PageError::from(e).into_response())?
            .ok_or_else(to_login)?;
        Ok(Self { token, csrf })
    }
}

/// The first value of field `name` of a url-encoded form body; empty when missing.
pub fn field(body: &[u8], name: &str) -> String {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Renders console page `console-<name>` with the session's CSRF token for its
/// forms and the navigation.
pub fn page(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    name: &str,
    mut data: Value,
    path: &str,
    session: Option<&Session>,
) -> Response {
    if let Value::Object(map) = &mut data {
        map.insert("csrf".into(), json!(session.map(|s| s.csrf.as_str())));
        map.insert("signed_in".into(), json!(session.is_some()));
    }
    let title_key = format!("console_{name}_heading");
    render(
        state,
        status,
        locale,
        &format!("console-{name}"),
        &title_key,
        data,
        path,
    )
}

fn login_page(state: &AppState, status: StatusCode, locale: Locale, wrong: bool) -> Response {
    page(
        state,
        status,
        locale,
        "login",
        json!({"wrong": wrong}),
        "/admin/login",
        None,
    )
}

async fn login_form(State(state): State<AppState>, lang: PageLang) -> Response {
    login_page(&state, StatusCode::OK, lang.locale, false)
}

async fn login(
    State(state): State<AppState>,
    lang: PageLang,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let ip = super::client_ip(&state, &headers, &peer);
    if let Err(wait) = state.login_limiter.check(ip) {
        tracing::warn!("console: login attempts throttled");
        let wait_secs = wait.as_secs().max(1);
        return Err(Problem::TooMany { wait_secs }.in_locale(lang.locale));
    }
    if !super::token_matches(field(&body, "token").trim(), &state.admin_token) {
        tracing::warn!("console: login with a wrong token refused");
        return Ok(login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            lang.locale,
            true,
        ));
    }
    let now = state.clock.now();
    let token = Token::generate();
    let csrf = Token::generate();
    state
        .store
        .open_console_session(
            &token.hash(),
            csrf.as_str(),
            now,
            now + Duration::hours(SESSION_HOURS),
        )
        .await?;
    tracing::info!("console: signed in");
    let secure = if state.links.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        token.as_str(),
        SESSION_HOURS * 3600
    );
    Ok(see_other("/admin", Some(cookie)))
}

async fn logout(State(state): State<AppState>, form: ConsoleForm) -> Result<Response, PageError> {
    let ConsoleForm {
        session, body: _, ..
    } = form;
    state
        .store
        .close_console_session(&session.token.hash())
        .await?;
    tracing::info!("console: signed out");
    let cleared = format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(see_other("/admin/login", Some(cleared)))
}

/// A 303 to `to` (after a form), setting `cookie` if given.
pub fn see_other(to: &str, cookie: Option<String>) -> Response {
    let mut response = Redirect::to(to).into_response();
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `path` with the page language, so a link or redirect keeps the operator in it.
pub fn localized(path: &str, locale: Locale) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}lang={locale}")
}

/// Why a console form was refused: shown above the forms of the page it comes
/// back to, nothing changed.
#[derive(Debug)]
pub enum Refusal {
    /// A field is wrong (422).
    Field(FieldError),
    /// A topic or feed of this name exists already (409).
    Exists(String),
    /// The submission was decided already, by another operator perhaps (409).
    Decided,
}

impl From<FieldError> for Refusal {
    fn from(e: FieldError) -> Self {
        Self::Field(e)
    }
}

impl Refusal {
    /// The page's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Field(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Exists(_) | Self::Decided => StatusCode::CONFLICT,
        }
    }

    /// The sentence shown, in `locale` (the checks' own words are English).
    pub fn shown(self, state: &AppState, locale: Locale) -> String {
        let t = state.templates.strings(locale);
        let say = |key: &str| t[key].as_str().unwrap_or_default().to_owned();
        match self {
            Self::Field(e) => format!("{} {}: {}", say("console_refused"), e.field, e.problem),
            Self::Exists(name) => format!("{} {name}", say("console_exists")),
            Self::Decided => say("console_decided_already"),
        }
    }
}
