//! HTTP: the public pages ([`subscribe`], [`confirm`], [`preferences`],
//! [`unsubscribe`], [`items`]), the admin API ([`admin`]), health checks and
//! metrics ([`health`]). Each module exports a `router()`; [`router`] merges
//! them. Handlers parse input into domain types at the edge and call the store.

pub mod admin;
pub mod confirm;
pub mod health;
pub mod items;
pub mod pages;
pub mod preferences;
pub mod rate_limit;
pub mod subscribe;
pub mod unsubscribe;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Config;
use crate::digest::Digester;
use crate::mail::compose::Composer;
use crate::mail::templates::Templates;
use crate::store::Store;

/// Largest request body accepted anywhere: sign-ups and API calls are small.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A too-large body is still read (and thrown away) up to this size, so the client
/// is not cut off mid-upload and actually receives the 413 that explains why.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// The request body was larger than [`BODY_LIMIT`].
#[derive(Debug)]
pub struct BodyTooLarge;

/// Reads a request body of at most [`BODY_LIMIT`] bytes.
///
/// # Errors
/// [`BodyTooLarge`] when it is larger (or breaks off).
pub async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, BodyTooLarge> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyTooLarge)?;
        seen += chunk.len();
        if seen <= BODY_LIMIT {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            return Err(BodyTooLarge);
        }
    }
    if seen > BODY_LIMIT {
        Err(BodyTooLarge)
    } else {
        Ok(buf.into())
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The configuration.
    pub config: Arc<Config>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Pages and page texts.
    pub templates: Arc<Templates>,
    /// Builds the mails.
    pub composer: Composer,
    /// The admin bearer token.
    pub admin_token: Arc<str>,
    /// Sign-up requests per client.
    pub client_limiter: Arc<rate_limit::ClientLimiter>,
    /// Rung after mail is queued, so the delivery workers start at once.
    pub mail_wake: Arc<Notify>,
    /// Runs digest passes (for `POST /api/v1/digests/run`).
    pub digester: Digester,
    /// Polls feeds.
    pub poller: crate::feeds::Poller,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(subscribe::router())
        .merge(confirm::router())
        .merge(unsubscribe::router())
        .merge(preferences::router())
        .merge(items::router())
        .merge(health::router())
        .nest("/api/v1", admin::router(state.clone()))
        .fallback(pages::not_found)
        .with_state(state)
}

/// The client's address: the socket peer, or the last `X-Forwarded-For` entry (the
/// one the trusted proxy appended; earlier ones are the client's own claims) when
/// the operator said a trusted proxy sits in front.
pub fn client_ip(state: &AppState, headers: &HeaderMap, peer: &ConnectInfo<SocketAddr>) -> IpAddr {
    if state.config.trust_proxy_headers {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    peer.0.ip()
}
