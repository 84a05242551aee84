//! `GET /healthz` (the process answers), `GET /readyz` (the database answers) and
//! `GET /metrics` (Prometheus text format, behind the admin token or
//! `metrics_token`: the numbers are the operator's, and computing them costs
//! database time).

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ErrorChain;
use super::{AppState, bearer_token, token_matches};
use crate::store::Stats;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "readiness check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
        }
    }
}

/// Whether the request carries the admin token or the metrics token.
fn may_read_metrics(state: &AppState, headers: &HeaderMap) -> bool {
    let presented = bearer_token(headers).unwrap_or_default();
    let admin = token_matches(presented, &state.admin_token);
    let metrics = state
        .config
        .metrics_token
        .as_ref()
        .is_some_and(|t| token_matches(presented, t.expose()));
    admin | metrics
}

/// Prometheus text format, from the same counters as `/api/v1/stats`.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !may_read_metrics(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            "missing or wrong bearer token\n",
        )
            .into_response();
    }
    let stats = match state.store.stats().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "metrics: database unreachable");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response();
        }
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        exposition(&stats),
    )
        .into_response()
}

/// The counters in Prometheus' text format.
fn exposition(stats: &Stats) -> String {
    let mut out = Exposition::default();
    out.family("postbote_subscribers", "Subscribers by status.", "gauge");
    for (status, n) in &stats.subscribers {
        out.sample("postbote_subscribers", &[("status", status)], n);
    }
    out.family(
        "postbote_mail_queue_depth",
        "Mails waiting for delivery.",
        "gauge",
    );
    out.sample("postbote_mail_queue_depth", &[], stats.queue_depth);
    out.family("postbote_mails", "Mails by kind and status.", "gauge");
    for (kind, by_status) in &stats.mails {
        for (status, n) in by_status {
            out.sample("postbote_mails", &[("kind", kind), ("status", status)], n);
        }
    }
    out.family(
        "postbote_mails_retried",
        "Mails that needed more than one attempt.",
        "gauge",
    );
    out.sample("postbote_mails_retried", &[], stats.retried);
    out.family(
        "postbote_mail_events",
        "Bounces, complaints and unsubscribe replies by kind.",
        "counter",
    );
    for (kind, n) in &stats.mail_events {
        out.sample("postbote_mail_events", &[("kind", kind)], n);
    }
    out.family(
        "postbote_feeds_failing",
        "Feeds whose last poll failed.",
        "gauge",
    );
    out.sample("postbote_feeds_failing", &[], stats.feeds.failing);
    out.family(
        "postbote_feed_failures_total",
        "Failed polls per feed.",
        "counter",
    );
    for (feed, n) in &stats.feeds.failures {
        let name = feed.replace('\\', "\\\\").replace('"', "\\\"");
        out.sample("postbote_feed_failures_total", &[("feed", &name)], n);
    }
    out.0
}

/// Prometheus text being written: metric families, each with its samples.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A family's `# HELP` and `# TYPE` lines.
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; label values are written as given (escape them first).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}
