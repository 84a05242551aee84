//! `[webhooks]`: the URLs that receive signed events about readers (Standard
//! Webhooks), the signing secret (`whsec_<base64>`, or `POSTBOTE_WEBHOOKS_SECRET`)
//! and how deliveries are timed, retried and kept.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::{ConfigError, Env};

/// `[webhooks]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileWebhooks {
    urls: Vec<String>,
    secret: Option<String>,
    timeout_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    max_attempts: Option<u32>,
    keep_days: Option<u32>,
}

/// The signing key of the Standard Webhooks scheme: the bytes of the base64 after
/// `whsec_`. Its `Debug` shows none of it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Parses `whsec_<base64>` (standard alphabet, with padding) of 24 to 64 bytes,
    /// as the Standard Webhooks specification has it.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (Standard Webhooks)")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(
                "must hold 24 to 64 bytes (e.g. whsec_ + `openssl rand -base64 32`)".into(),
            );
        }
        Ok(Self(bytes))
    }

    /// The key bytes, for the one place that signs with them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// Where and how webhooks go; `None` in [`super::Config`] when no URL is set.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The endpoints; every event goes to each of them.
    pub urls: Vec<String>,
    /// Signs every delivery.
    pub secret: WebhookSecret,
    /// Limit for one delivery attempt (connect, send, answer).
    pub timeout: Duration,
    /// How often the deliverer looks for due deliveries.
    pub poll_interval: Duration,
    /// First retry delay after a failed attempt; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts before a delivery is given up.
    pub max_attempts: u32,
    /// Days finished deliveries stay listed before they are deleted.
    pub keep_days: u32,
}

/// Checks `[webhooks]`: http(s) URLs with a host, a secret whenever there is a
/// URL, no zero durations, 1 to 100 attempts, 1 to 3,650 days kept.
pub(super) fn resolve(
    env: &Env<'_>,
    file: FileWebhooks,
) -> Result<Option<WebhookSettings>, ConfigError> {
    let secret = env.pick("POSTBOTE_WEBHOOKS_SECRET", "webhooks.secret", file.secret);
    if file.urls.is_empty() {
        return Ok(None);
    }
    for (i, u) in file.urls.iter().enumerate() {
        let ok = url::Url::parse(u)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
        if !ok {
            return Err(ConfigError::new(
                format!("webhooks.urls[{i}]"),
                "must be an http:// or https:// URL with a host",
            ));
        }
    }
    let secret = secret
        .ok_or_else(|| ConfigError::new("webhooks.secret", "is required when urls are set"))?
        .parse(WebhookSecret::parse)?;
    let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
    let settings = WebhookSettings {
        urls: file.urls,
        secret,
        timeout: ms(file.timeout_ms, 10_000),
        poll_interval: ms(file.poll_interval_ms, 1_000),
        retry_base: ms(file.retry_base_ms, 30_000),
        retry_max: ms(file.retry_max_ms, 3_600_000),
        max_attempts: file.max_attempts.unwrap_or(20),
        keep_days: file.keep_days.unwrap_or(30),
    };
    for (key, value) in [
        ("webhooks.timeout_ms", settings.timeout),
        ("webhooks.poll_interval_ms", settings.poll_interval),
        ("webhooks.retry_base_ms", settings.retry_base),
        ("webhooks.retry_max_ms", settings.retry_max),
    ] {
        if value.is_zero() {
            return Err(ConfigError::new(key, "must be greater than 0"));
        }
    }
    if !(1..=100).contains(&settings.max_attempts) {
        return Err(ConfigError::new(
            "webhooks.max_attempts",
            "must be between 1 and 100",
        ));
    }
    if !(1..=3650).contains(&settings.keep_days) {
        return Err(ConfigError::new(
            "webhooks.keep_days",
            "must be between 1 and 3650",
        ));
    }
    Ok(Some(settings))
}
