//! The sign-up keys at the top of the file: `confirmation_lifetime_hours` and
//! `consent_version`.

use super::ConfigError;

/// How long a confirmation link is valid: 1 to 8,760 hours, default 7 days.
pub(super) fn confirmation_lifetime(hours: Option<u64>) -> Result<chrono::Duration, ConfigError> {
    let hours = hours.unwrap_or(7 * 24);
    if !(1..=24 * 365).contains(&hours) {
        return Err(ConfigError::new(
            "confirmation_lifetime_hours",
            "must be between 1 and 8760",
        ));
    }
    Ok(chrono::Duration::hours(hours as i64))
}

/// The consent text's version label; default `1`.
pub(super) fn consent_version(from_file: Option<String>) -> String {
    from_file.unwrap_or_else(|| "1".to_owned())
}
