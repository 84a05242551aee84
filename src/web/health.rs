//! `GET /healthz` (the process answers), `GET /readyz` (the database answers) and
//! `GET /metrics` (Prometheus text format, behind the admin token or
//! `metrics_token`: the numbers are the operator's, and computing them costs
//! database time).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AppState, bearer_token, token_matches};

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
            tracing::warn!(error = %e, "readiness check: database unreachable");
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
    use std::fmt::Write;
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
            tracing::warn!(error = %e, "metrics: database unreachable");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response();
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP postbote_subscribers Subscribers by status.\n# TYPE postbote_subscribers gauge"
    );
    for (status, n) in &stats.subscribers {
        let _ = writeln!(out, "postbote_subscribers{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP postbote_mail_queue_depth Mails waiting for delivery.\n# TYPE postbote_mail_queue_depth gauge"
    );
    let _ = writeln!(out, "postbote_mail_queue_depth {}", stats.queue_depth);
    let _ = writeln!(
        out,
        "# HELP postbote_mails Mails by kind and status.\n# TYPE postbote_mails gauge"
    );
    for (kind, by_status) in &stats.mails {
        for (status, n) in by_status {
            let _ = writeln!(
                out,
                "postbote_mails{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP postbote_mails_retried Mails that needed more than one attempt.\n# TYPE postbote_mails_retried gauge"
    );
    let _ = writeln!(out, "postbote_mails_retried {}", stats.retried);
    let _ = writeln!(
        out,
        "# HELP postbote_mail_events Bounces, complaints and unsubscribe replies by kind.\n# TYPE postbote_mail_events counter"
    );
    for (kind, n) in &stats.mail_events {
        let _ = writeln!(out, "postbote_mail_events{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP postbote_feeds_failing Feeds whose last poll failed.\n# TYPE postbote_feeds_failing gauge"
    );
    let _ = writeln!(out, "postbote_feeds_failing {}", stats.feeds.failing);
    let _ = writeln!(
        out,
        "# HELP postbote_feed_failures_total Failed polls per feed.\n# TYPE postbote_feed_failures_total counter"
    );
    for (feed, n) in &stats.feeds.failures {
        let name = feed.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(out, "postbote_feed_failures_total{{feed=\"{name}\"}} {n}");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
