//! `[polling]`: how feeds are fetched. Values out of range are clamped, not refused.

use std::time::Duration;

use serde::Deserialize;

/// `[polling]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FilePolling {
    tick_ms: Option<u64>,
    timeout_secs: Option<u64>,
    max_bytes: Option<usize>,
    concurrency: Option<usize>,
    max_new_items: Option<usize>,
}

/// How feeds are fetched.
#[derive(Debug, Clone, Copy)]
pub struct PollingSettings {
    /// How often the poller looks for due feeds.
    pub tick: Duration,
    /// Time limit for one fetch, body included.
    pub timeout: Duration,
    /// Largest feed body read.
    pub max_bytes: usize,
    /// Feeds fetched at the same time.
    pub concurrency: usize,
    /// New items one feed may add in one poll; the rest wait for the next poll.
    pub max_new_items: usize,
}

/// `[polling]` with defaults, each value clamped to what the poller can use.
pub(super) fn resolve(file: FilePolling) -> PollingSettings {
    PollingSettings {
        tick: Duration::from_millis(file.tick_ms.unwrap_or(1000).max(10)),
        timeout: Duration::from_secs(file.timeout_secs.unwrap_or(20).clamp(1, 300)),
        max_bytes: file.max_bytes.unwrap_or(5 * 1024 * 1024),
        concurrency: file.concurrency.unwrap_or(4).clamp(1, 64),
        max_new_items: file.max_new_items.unwrap_or(200).clamp(1, 10_000),
    }
}
