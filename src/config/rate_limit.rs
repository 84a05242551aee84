//! `[rate_limit]`: abuse limits on `POST /subscribe`.

use serde::Deserialize;

use super::ConfigError;

/// `[rate_limit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileRateLimit {
    per_client_per_minute: Option<u32>,
    per_address_per_hour: Option<u32>,
    per_domain_per_hour: Option<u32>,
    global_per_hour: Option<u32>,
    suppressed_quiet_days: Option<u32>,
}

/// Abuse limits on `POST /subscribe`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Sign-up requests one client address may make per minute; 0 disables the limit.
    pub per_client_per_minute: u32,
    /// Mails one mailbox (`+tags` and Gmail dots do not make a new one) may be sent
    /// per hour by sign-ups; 0 disables the limit.
    pub per_address_per_hour: u32,
    /// Sign-up mails per hour to one (ASCII) domain; 0 disables the cap.
    pub per_domain_per_hour: u32,
    /// Sign-up mails per hour in total; 0 disables the cap.
    pub global_per_hour: u32,
    /// Days after a hard bounce or complaint in which the form sends the address no
    /// confirmation mail; 0 disables the quiet period.
    pub suppressed_quiet_days: u32,
}

/// Checks `[rate_limit]`: a quiet period of at most ten years.
pub(super) fn resolve(file: FileRateLimit) -> Result<RateLimits, ConfigError> {
    let quiet_days = file.suppressed_quiet_days.unwrap_or(30);
    if quiet_days > 3650 {
        return Err(ConfigError::new(
            "rate_limit.suppressed_quiet_days",
            "must be between 0 and 3650",
        ));
    }
    Ok(RateLimits {
        per_client_per_minute: file.per_client_per_minute.unwrap_or(20),
        per_address_per_hour: file.per_address_per_hour.unwrap_or(3),
        per_domain_per_hour: file.per_domain_per_hour.unwrap_or(50),
        global_per_hour: file.global_per_hour.unwrap_or(1000),
        suppressed_quiet_days: quiet_days,
    })
}
