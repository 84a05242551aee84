//! `[bounces]`: how many soft bounces, and within which window, condemn an address.

use serde::Deserialize;

use super::ConfigError;

/// `[bounces]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileBounces {
    soft_threshold: Option<u32>,
    soft_window_days: Option<u32>,
}

/// What bounces do.
#[derive(Debug, Clone, Copy)]
pub struct BounceSettings {
    /// Soft bounces (4.x.x, delayed) within the window that condemn an address.
    pub soft_threshold: u32,
    /// The window soft bounces are counted in.
    pub soft_window: chrono::Duration,
}

/// Checks `[bounces]`: a threshold of at least one; default 3 within 14 days.
pub(super) fn resolve(file: FileBounces) -> Result<BounceSettings, ConfigError> {
    let soft_threshold = file.soft_threshold.unwrap_or(3);
    if soft_threshold == 0 {
        return Err(ConfigError::new(
            "bounces.soft_threshold",
            "must be at least 1",
        ));
    }
    Ok(BounceSettings {
        soft_threshold,
        soft_window: chrono::Duration::days(i64::from(file.soft_window_days.unwrap_or(14))),
    })
}
