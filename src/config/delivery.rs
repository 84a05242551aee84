//! `[delivery]`: how the delivery workers send, retry and keep mail.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// `[delivery]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDelivery {
    workers: Option<usize>,
    poll_interval_ms: Option<u64>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    max_attempts: Option<u32>,
    max_per_second: Option<u32>,
    smtp_timeout_ms: Option<u64>,
    keep_days: Option<u32>,
}

/// How the delivery workers behave.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Concurrent SMTP connections (one worker each).
    pub workers: usize,
    /// How often idle workers look for due mail (other instances' work, retries).
    pub poll_interval: Duration,
    /// First retry delay after a temporary failure; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts before a temporarily failing mail is given up as failed.
    pub max_attempts: u32,
    /// Timeout for connecting (greeting, TLS, authentication included) and for
    /// sending one whole message.
    pub smtp_timeout: Duration,
    /// Mails per second over all workers of this process; 0 means no limit.
    pub max_per_second: u32,
    /// Days finished (sent or failed) mail rows are kept before the retention task
    /// folds them into each reader's daily delivery counts and deletes them.
    pub keep_days: u32,
}

/// Checks `[delivery]`: 1 to 256 workers, no zero interval or timeout, 1 to
/// 36,500 days kept, at least one attempt.
pub(super) fn resolve(file: FileDelivery) -> Result<Delivery, ConfigError> {
    let delivery = Delivery {
        workers: file.workers.unwrap_or(64),
        poll_interval: Duration::from_millis(file.poll_interval_ms.unwrap_or(1000)),
        retry_base: Duration::from_millis(file.retry_base_ms.unwrap_or(30_000)),
        retry_max: Duration::from_millis(file.retry_max_ms.unwrap_or(3_600_000)),
        max_attempts: file.max_attempts.unwrap_or(25),
        smtp_timeout: Duration::from_millis(file.smtp_timeout_ms.unwrap_or(30_000)),
        max_per_second: file.max_per_second.unwrap_or(0),
        keep_days: file.keep_days.unwrap_or(90),
    };
    if !(1..=256).contains(&delivery.workers) {
        return Err(ConfigError::new(
            "delivery.workers",
            "must be between 1 and 256",
        ));
    }
    for (key, value) in [
        ("delivery.poll_interval_ms", delivery.poll_interval),
        ("delivery.retry_base_ms", delivery.retry_base),
        ("delivery.retry_max_ms", delivery.retry_max),
        ("delivery.smtp_timeout_ms", delivery.smtp_timeout),
    ] {
        if value.is_zero() {
            return Err(ConfigError::new(key, "must be greater than 0"));
        }
    }
    if !(1..=36_500).contains(&delivery.keep_days) {
        return Err(ConfigError::new(
            "delivery.keep_days",
            "must be between 1 and 36500",
        ));
    }
    if delivery.max_attempts == 0 {
        return Err(ConfigError::new(
            "delivery.max_attempts",
            "must be at least 1",
        ));
    }
    Ok(delivery)
}
