//! `GET /assets/postbote.<hash>.css`, the pages' stylesheet with the configured
//! accent colour, named after its content so browsers may keep it for a year;
//! `GET /assets/postbote.css` (the same bytes under the old name, kept for an hour)
//! and `GET /assets/timezone.js`, the sign-up page's time-zone script, built into
//! the binary; and `GET /favicon.ico`, which every browser asks for (a 404 there is
//! an error in its console on every page). They are files, not inline code, so the
//! Content-Security-Policy can allow scripts and styles from postbote itself and
//! nothing inline (see [`super::CONTENT_SECURITY_POLICY`]); that is also why the
//! accent colour is written into the stylesheet at start instead of a `style=`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::error::{PageError, Problem};
use crate::config::AccentColor;

/// The stylesheet every page links, before the accent colour is added.
const STYLESHEET: &str = include_str!("../../assets/postbote.css");
/// Pre-selects the browser's time zone on the sign-up form.
const TIMEZONE_SCRIPT: &str = include_str!("../../assets/timezone.js");
/// The site icon: an envelope, 32×32 px, a PNG in an ICO container.
const FAVICON: &[u8] = include_bytes!("../../assets/favicon.ico");
/// Files under a fixed name: browsers may keep them for an hour; an upgrade shows
/// within that.
const CACHE: &str = "public, max-age=3600";
/// Files named after their content never change under that name.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The stylesheet as served: the built-in rules and the accent colour, and the
/// content-hashed path the pages link it under.
#[derive(Debug, Clone)]
pub struct Stylesheet {
    /// The CSS.
    body: String,
    /// `/assets/postbote.<first 10 hex digits of its SHA-256>.css`.
    href: String,
}

impl Stylesheet {
    /// The built-in stylesheet with `accent` as its `--accent` colour.
    pub fn new(accent: &AccentColor) -> Self {
        use sha2::Digest as _;
        let body = format!("{STYLESHEET}:root{{--accent:{}}}\n", accent.as_str());
        let digest = sha2::Sha256::digest(body.as_bytes());
        let href = format!(
            "/assets/postbote.{}.css",
            &crate::domain::hex(&digest)[..10]
        );
        Self { body, href }
    }

    /// The path pages link the stylesheet under.
    pub fn href(&self) -> &str {
        &self.href
    }

    /// The CSS with the cache lifetime `cache`.
    fn response(&self, cache: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, cache),
            ],
            self.body.clone(),
        )
            .into_response()
    }
}

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/assets/postbote.css",
            get(|State(state): State<AppState>| async move { state.stylesheet.response(CACHE) }),
        )
        .route("/assets/{file}", get(hashed))
        .route(
            "/assets/timezone.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    TIMEZONE_SCRIPT,
                )
                    .into_response()
            }),
        )
        .route(
            "/favicon.ico",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "image/x-icon"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    FAVICON,
                )
                    .into_response()
            }),
        )
}

/// `GET /assets/postbote.<hash>.css`: the stylesheet under its current name; any
/// other name (an old hash, a file that does not exist) is a 404.
async fn hashed(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, PageError> {
    if state.stylesheet.href().strip_prefix("/assets/") == Some(file.as_str()) {
        Ok(state.stylesheet.response(IMMUTABLE))
    } else {
        Err(Problem::NotFound.into())
    }
}
