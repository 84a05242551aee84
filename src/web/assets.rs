//! `GET /assets/postbote.css` and `GET /assets/timezone.js`: the pages' stylesheet
//! and the sign-up page's time-zone script, built into the binary; and
//! `GET /favicon.ico`, which every browser asks for (a 404 there is an error in its
//! console on every page). They are files,
//! not inline code, so the Content-Security-Policy can allow scripts and styles
//! from postbote itself and nothing inline (see [`super::CONTENT_SECURITY_POLICY`]).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

/// The stylesheet every page links.
const STYLESHEET: &str = include_str!("../../assets/postbote.css");
/// Pre-selects the browser's time zone on the sign-up form.
const TIMEZONE_SCRIPT: &str = include_str!("../../assets/timezone.js");
/// The site icon: an envelope, 32×32 px, a PNG in an ICO container.
const FAVICON: &[u8] = include_bytes!("../../assets/favicon.ico");
/// Browsers may keep the files for an hour; an upgrade shows within that.
const CACHE: &str = "public, max-age=3600";

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/assets/postbote.css",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    STYLESHEET,
                )
                    .into_response()
            }),
        )
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
