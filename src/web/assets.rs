//! `GET /assets/postbote.<hash>.css`, the pages' stylesheet with the configured
//! accent colour, and `GET /assets/timezone.<hash>.js`, the sign-up page's
//! time-zone script, each named after its content ([`HashedAsset`]) so browsers
//! may keep it for a year; the same files under their old names
//! (`GET /assets/postbote.css`, `GET /assets/timezone.js`, kept for an hour), built
//! into the binary; and `GET /favicon.ico`, which every browser asks for (a 404
//! there is an error in its console on every page). They are files, not inline
//! code, so the Content-Security-Policy can allow scripts and styles from postbote
//! itself and nothing inline (see [`super::CONTENT_SECURITY_POLICY`]); that is also
//! why the accent colour is written into the stylesheet at start instead of a
//! `style=`.

use std::sync::LazyLock;

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

/// A file served under a name that holds the first 10 hex digits of its content's
/// SHA-256 (`/assets/<stem>.<hash>.<extension>`): a new content is a new name, so
/// the file may be cached as immutable.
#[derive(Debug, Clone)]
pub struct HashedAsset {
    /// The file's bytes.
    body: String,
    /// `/assets/<stem>.<hash>.<extension>`.
    href: String,
    /// Its `Content-Type`.
    content_type: &'static str,
}

impl HashedAsset {
    /// `body` under its content-hashed name.
    fn new(stem: &str, extension: &str, content_type: &'static str, body: String) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(body.as_bytes());
        let href = format!(
            "/assets/{stem}.{}.{extension}",
            &crate::domain::hex(&digest)[..10]
        );
        Self {
            body,
            href,
            content_type,
        }
    }

    /// The path pages link the file under.
    pub fn href(&self) -> &str {
        &self.href
    }

    /// The file with the cache lifetime `cache`.
    fn response(&self, cache: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, self.content_type),
                (header::CACHE_CONTROL, cache),
            ],
            self.body.clone(),
        )
            .into_response()
    }
}

/// The stylesheet as served: the built-in rules and the accent colour, under its
/// content-hashed name (which the configured colour decides, so it is made at start).
#[derive(Debug, Clone)]
pub struct Stylesheet(HashedAsset);

impl Stylesheet {
    /// The built-in stylesheet with `accent` as its `--accent` colour.
    pub fn new(accent: &AccentColor) -> Self {
        let body = format!("{STYLESHEET}:root{{--accent:{}}}\n", accent.as_str());
        Self(HashedAsset::new(
            "postbote",
            "css",
            "text/css; charset=utf-8",
            body,
        ))
    }

    /// The path pages link the stylesheet under.
    pub fn href(&self) -> &str {
        self.0.href()
    }
}

/// The time-zone script under its content-hashed name (the same for every
/// installation of a build, so made once).
pub fn timezone_script() -> &'static HashedAsset {
    static SCRIPT: LazyLock<HashedAsset> = LazyLock::new(|| {
        HashedAsset::new(
            "timezone",
            "js",
            "text/javascript; charset=utf-8",
            TIMEZONE_SCRIPT.to_owned(),
        )
    });
    &SCRIPT
}

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/assets/postbote.css",
            get(|State(state): State<AppState>| async move { state.stylesheet.0.response(CACHE) }),
        )
        .route("/assets/{file}", get(hashed))
        .route(
            "/assets/timezone.js",
            get(|| async { timezone_script().response(CACHE) }),
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

/// `GET /assets/postbote.<hash>.css` and `GET /assets/timezone.<hash>.js`: a
/// [`HashedAsset`] under its current name; any other name (an old hash, a file that
/// does not exist) is a 404.
async fn hashed(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, PageError> {
    [&state.stylesheet.0, timezone_script()]
        .into_iter()
        .find(|asset| asset.href().strip_prefix("/assets/") == Some(file.as_str()))
        .map(|asset| asset.response(IMMUTABLE))
        .ok_or_else(|| Problem::NotFound.into())
}
