//! HTTP: the public pages ([`subscribe`], [`confirm`], [`preferences`],
//! [`unsubscribe`], [`items`], the public [`archive`], [`link`] "send me my link"; [`weekdays`] holds the
//! weekday boxes two forms share), the operator's console under `/admin` ([`console`]),
//! the admin API ([`admin`]), health checks and metrics ([`health`]). Each module exports a `router()`; [`router`] merges
//! them. Handlers parse input into domain types at the edge (the page language
//! and link tokens through the extractors in [`pages`] and [`tokens`]) and call
//! the store; the pages' errors take one path ([`error`]); what an operator types
//! into the API or the console is checked once, in [`input`].
//! [`harden`] puts the security headers on every response and a deadline on every
//! request body; [`server`] accepts the connections (cap, header timeout, graceful
//! shutdown).

pub mod admin;
pub mod archive;
pub mod assets;
pub mod confirm;
pub mod console;
pub mod error;
pub mod health;
pub mod input;
pub mod items;
pub mod link;
pub mod pages;
pub mod preferences;
pub mod rate_limit;
pub mod server;
pub mod subscribe;
pub mod tokens;
pub mod topics;
pub mod unsubscribe;
pub mod weekdays;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::{Config, IpNetwork};
use crate::digest::Digester;
use crate::links::Links;
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

/// What every handler can reach: a handle on one [`Shared`], so that the clone
/// axum makes for every request (and each detached task) copies a pointer. (Held
/// by value, the two composers and their strings were copied and freed for every
/// request: 7 % of `serve`'s CPU in a sign-up.)
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The handle on `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
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
    /// Builds public links and checks the reader tokens in them.
    pub links: Links,
    /// The admin bearer token.
    pub admin_token: Arc<str>,
    /// Sign-up requests per client.
    pub client_limiter: Arc<rate_limit::ClientLimiter>,
    /// Console login attempts per client (see [`console`]).
    pub login_limiter: Arc<rate_limit::ClientLimiter>,
    /// Sign-ups refused by each limit, on their way to `/api/v1/stats`.
    pub limit_tally: Arc<subscribe::LimitTally>,
    /// Rung after mail is queued, so the delivery workers start at once: one
    /// mail wakes one idle worker (`notify_one`); waking all of them for it would
    /// send every idle worker to the database to find nothing (with 32 workers
    /// that cost a third of the sign-up rate).
    pub mail_wake: Arc<Notify>,
    /// Runs digest passes (for `POST /api/v1/digests/run`).
    pub digester: Digester,
    /// The pages' stylesheet with the accent colour, under its content-hashed name.
    pub stylesheet: Arc<assets::Stylesheet>,
    /// The thank-you page after a sign-up, rendered once per language.
    pub thanks_pages: Arc<pages::FixedPages>,
    /// The offered topics as `POST /subscribe` checks them; every handler that
    /// changes a topic drops it.
    pub offered_topics: Arc<topics::OfferedTopics>,
}

/// Starts `work` on a task of its own and returns what waits for it. A client that
/// hangs up drops the handler, not the work: a commit and the hand-over of its mail
/// to the workers (`mail::handoff`) stay together.
///
/// The work is boxed and spawned at once: a transaction's future is large, and
/// kept in the handler's future it was copied with it, and again into the task
/// (the copies were 2 % of `serve`'s CPU for a sign-up).
pub(crate) fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
) -> impl Future<Output = Result<T, crate::store::StoreError>> {
    let task = tokio::spawn(Box::pin(work));
    async move {
        task.await.unwrap_or_else(|e| {
            Err(crate::store::StoreError::Callback(
                format!("the task stopped: {e}").into(),
            ))
        })
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let body_timeout = state.config.http.body_timeout;
    Router::new()
        .merge(subscribe::router())
        .merge(confirm::router())
        .merge(unsubscribe::router())
        .merge(preferences::router())
        .merge(items::router())
        .merge(archive::router())
        .merge(link::router())
        .merge(health::router())
        .merge(assets::router())
        .merge(console::router())
        .nest("/api/v1", admin::router(state.clone()))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            error::error_pages,
        ))
        .with_state(state)
        // Last, so it wraps everything: pages, API, 404s, 405s and 413s alike.
        .layer(middleware::from_fn_with_state(body_timeout, harden))
}

/// What every response may load and who may frame it: scripts, styles and images
/// only from postbote itself (no inline code: the sign-up page's time-zone script
/// and the stylesheet are files under `/assets/`), forms only to postbote, no
/// framing (clickjacking), no `<base>` tricks.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Pages whose URL carries a reader's token: never stored by a browser or proxy.
const TOKEN_PAGES: [&str; 3] = ["/confirm/", "/unsubscribe/", "/preferences/"];

/// The one middleware every request passes: the request body gets a deadline (a
/// client that sends it slowly is cut off), and every response gets
/// `X-Content-Type-Options`, `Content-Security-Policy` and `Referrer-Policy:
/// same-origin` (the token in a token page's URL must not leak to the sites an
/// item links to; our own pages still get their origin, so a browser's form post
/// carries `Origin` and not `null`);
/// token pages also `Cache-Control: no-store`.
pub async fn harden(
    State(body_timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let token_page = TOKEN_PAGES
        .iter()
        .any(|prefix| request.uri().path().starts_with(prefix));
    let request = request.map(|body| Body::new(TimedBody::new(body, body_timeout)));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if token_page {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A request body that fails once its deadline has passed.
struct TimedBody {
    /// The body as it arrives.
    inner: Body,
    /// When the whole body must have arrived.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: Body, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body took too long",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
}

/// Whether a presented bearer token is the expected one. Both sides are hashed
/// first, so neither content nor length leaks through timing.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    !presented.is_empty() && bool::from(a.ct_eq(&b))
}

/// The client's address, see [`client_address`].
pub fn client_ip(state: &AppState, headers: &HeaderMap, peer: &ConnectInfo<SocketAddr>) -> IpAddr {
    let config = &state.config;
    let trusted = config
        .trust_proxy_headers
        .then_some(config.trusted_proxies.as_slice());
    client_address(peer.0.ip(), headers, trusted)
}

/// The client's address: the socket peer (an IPv4-mapped IPv6 peer as its IPv4
/// address), or, when `trusted_proxies` is given and the peer is one of them, the
/// first `X-Forwarded-For` entry from the right that is not a trusted proxy. All
/// `X-Forwarded-For` lines count as one list, in order: the entries left of the
/// first untrusted one are the client's own claims and never count. When every
/// entry is a trusted proxy, the leftmost is the client; an entry that is no
/// address ends the walk at the hop to its right.
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted_proxies: Option<&[IpNetwork]>,
) -> IpAddr {
    let peer = peer.to_canonical();
    let Some(trusted) = trusted_proxies else {
        return peer;
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','));
    let mut nearest = peer;
    for entry in entries.rev() {
        let entry = std::str::from_utf8(entry).unwrap_or("?").trim();
        if entry.is_empty() {
            continue;
        }
        let ip = entry
            .parse::<IpAddr>()
            .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
            .map(|ip| ip.to_canonical());
        match ip {
            Ok(ip) if is_trusted(ip) => nearest = ip,
            Ok(ip) => return ip,
            Err(_) => return nearest,
        }
    }
    nearest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", line.parse().unwrap());
        }
        headers
    }

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|n| IpNetwork::parse(n).unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right_over_all_lines() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let at = |peer: &str, lines: &[&str]| {
            client_address(ip(peer), &forwarded(lines), Some(trusted.as_slice()))
        };
        // The client's own claim on its own line, the proxies' entries after it.
        assert_eq!(
            at("127.0.0.1", &["6.6.6.6", "198.51.100.7", "10.0.0.2"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            at("127.0.0.1", &["6.6.6.6, 198.51.100.7, 10.0.0.2, 10.0.0.3"]),
            ip("198.51.100.7")
        );
        assert_eq!(at("127.0.0.1", &["198.51.100.7:4711"]), ip("198.51.100.7"));
        assert_eq!(
            at("127.0.0.1", &["::ffff:198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Only trusted hops: the leftmost is the client.
        assert_eq!(at("127.0.0.1", &["10.0.0.9, 10.0.0.2"]), ip("10.0.0.9"));
        // No header: the peer.
        assert_eq!(at("127.0.0.1", &[]), ip("127.0.0.1"));
        // Garbage stops the walk at the hop that wrote it.
        assert_eq!(
            at("127.0.0.1", &["1.1.1.1, nonsense, 10.0.0.2"]),
            ip("10.0.0.2")
        );
        // A peer that is no trusted proxy: its header is not believed.
        assert_eq!(at("192.0.2.1", &["198.51.100.7"]), ip("192.0.2.1"));
        // trust_proxy_headers off: never believed.
        assert_eq!(
            client_address(ip("127.0.0.1"), &forwarded(&["198.51.100.7"]), None),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_is_its_ipv4_address() {
        assert_eq!(
            client_address(ip("::ffff:192.0.2.1"), &HeaderMap::new(), None),
            ip("192.0.2.1")
        );
        let trusted = nets(&["127.0.0.1/32"]);
        assert_eq!(
            client_address(
                ip("::ffff:127.0.0.1"),
                &forwarded(&["198.51.100.7"]),
                Some(trusted.as_slice())
            ),
            ip("198.51.100.7"),
            "a mapped loopback peer is the trusted proxy"
        );
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches("secret-token-0123", "secret-token-0123"));
        assert!(!token_matches("secret-token-012", "secret-token-0123"));
        assert!(!token_matches("", ""));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
