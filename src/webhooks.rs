//! Signed webhooks: delivering the events the store queued (table
//! `webhook_deliveries`, see `store::webhooks`) to the URLs of `[webhooks]`, signed
//! per the Standard Webhooks scheme (<https://www.standardwebhooks.com/>).
//!
//! Each request is a `POST` of the stored JSON body with the headers `webhook-id`
//! (the event's id, the same on every attempt), `webhook-timestamp` (Unix seconds
//! of this attempt, on the system clock) and `webhook-signature`: `v1,` and the
//! base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` under the secret's decoded
//! bytes ([`sign`]). A 2xx answer delivers; anything else (another status, a
//! redirect, a timeout, a refused connection) is tried again after a doubling delay
//! (`retry_base_ms` … `retry_max_ms`) until `max_attempts`, then given up. Like the
//! mail workers, the deliverer claims rows with a lease, so a crash in the middle
//! sends at most the claimed batch again, and several `serve` processes on one
//! PostgreSQL database never send one delivery at the same time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use hmac::Mac as _;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::WebhookSettings;
use crate::mail::delivery::doubling;
use crate::store::{ClaimedWebhook, Store, StoreError, WebhookAttempt};
use crate::web::error::ErrorChain;

/// Deliveries claimed (and sent side by side) at once.
const BATCH: u32 = 16;
/// How often finished deliveries past `keep_days` are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Headroom of a lease over the request's own time limit.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Most characters of an error kept for the console.
const MAX_ERROR: usize = 500;

/// The `webhook-signature` value of one attempt: `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">` under `key` (the secret's decoded bytes).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Delivers queued webhooks until cancelled. One per `serve` process.
pub struct Deliverer {
    /// The queue.
    store: Store,
    /// When deliveries are due and retried (the lease is on the system clock).
    clock: Arc<dyn Clock>,
    /// URLs, secret, timing.
    settings: WebhookSettings,
    /// The active endpoints' URLs by id, as synced at start.
    endpoints: HashMap<i64, String>,
    /// Sends the requests: no proxy, no redirects, `timeout_ms` per attempt.
    client: reqwest::Client,
    /// This deliverer's lease token (`lease_owner`).
    owner: i64,
}

impl Deliverer {
    /// Makes the configured URLs the active endpoints (deactivating any other, see
    /// `Store::sync_webhook_endpoints`) and builds the HTTP client.
    ///
    /// # Errors
    /// When the database fails or the client cannot be built.
    pub async fn start(
        store: Store,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let endpoints = store
            .sync_webhook_endpoints(&settings.urls, clock.now())
            .await
            .context("Failed to store the webhook endpoints")?
            .into_iter()
            .collect();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("postbote/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("Failed to set up the webhook client")?;
        Ok(Self {
            store,
            clock,
            settings,
            endpoints,
            client,
            owner: rand::random::<i64>().abs(),
        })
    }

    /// Claims and sends due deliveries until `stop` fires; a batch in flight is
    /// finished (each request is bounded by `timeout_ms`). Purges finished
    /// deliveries past `keep_days` at start and then hourly.
    pub async fn run(self, stop: CancellationToken) {
        let mut purged_at: Option<tokio::time::Instant> = None;
        loop {
            if purged_at.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                self.purge().await;
                purged_at = Some(tokio::time::Instant::now());
            }
            let sent = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "claiming webhooks failed; retried later");
                    0
                }
            };
            if sent == BATCH as usize {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// One claim and its sends; returns how many were claimed.
    async fn round(&self) -> Result<usize, StoreError> {
        let lease_now = Utc::now();
        let lease = chrono::Duration::from_std(self.settings.timeout + LEASE_MARGIN)
            .unwrap_or(chrono::Duration::minutes(5));
        let claimed = self
            .store
            .claim_webhooks(
                self.clock.now(),
                lease_now,
                lease_now + lease,
                self.owner,
                BATCH,
            )
            .await?;
        let n = claimed.len();
        futures_util::future::join_all(claimed.iter().map(|w| self.deliver(w))).await;
        Ok(n)
    }

    /// Sends one delivery and records the outcome.
    #[tracing::instrument(skip_all, fields(webhook.id = w.id, webhook.attempt = w.attempts))]
    async fn deliver(&self, w: &ClaimedWebhook) {
        let outcome = match self.endpoints.get(&w.endpoint_id) {
            Some(url) => self.send(url, w).await,
            None => Err((None, "endpoint no longer configured".to_owned())),
        };
        let now = self.clock.now();
        let attempt = match &outcome {
            Ok(status) => {
                tracing::info!(status, "webhook delivered");
                WebhookAttempt {
                    now,
                    http_status: Some(i32::from(*status)),
                    error: None,
                    next_at: None,
                }
            }
            Err((status, error)) => {
                let retry = w.attempts < self.settings.max_attempts as i32;
                tracing::warn!(%error, retry, "webhook delivery failed");
                let delay = doubling(
                    self.settings.retry_base,
                    self.settings.retry_max,
                    w.attempts,
                );
                WebhookAttempt {
                    now,
                    http_status: status.map(i32::from),
                    error: Some(error),
                    next_at: retry.then(|| {
                        now + chrono::Duration::from_std(delay)
                            .unwrap_or(chrono::Duration::hours(1))
                    }),
                }
            }
        };
        if let Err(e) = self
            .store
            .webhook_attempted(w.id, self.owner, &attempt)
            .await
        {
            tracing::warn!(error = %ErrorChain(&e), "recording a webhook attempt failed; the lease runs out and it is sent again");
        }
    }

    /// One signed `POST`; the status on a 2xx, else the status (if any) and why.
    async fn send(&self, url: &str, w: &ClaimedWebhook) -> Result<u16, (Option<u16>, String)> {
        let timestamp = Utc::now().timestamp();
        let signature = sign(
            self.settings.secret.expose(),
            &w.message_id,
            timestamp,
            &w.payload,
        );
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &w.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(w.payload.clone())
            .send()
            .await
            .map_err(|e| {
                let text = ErrorChain(&e).to_string();
                (None, text.chars().take(MAX_ERROR).collect::<String>())
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err((Some(status.as_u16()), format!("HTTP {status}")))
        }
    }

    /// Deletes finished deliveries past `keep_days`.
    async fn purge(&self) {
        let cutoff = self.clock.now() - chrono::Duration::days(i64::from(self.settings.keep_days));
        match self.store.purge_finished_webhooks(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged finished webhook deliveries"),
            Err(e) => tracing::warn!(error = %ErrorChain(&e), "purging webhook deliveries failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let signature = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
