//! `[defaults]`: what the sign-up page offers before the reader chooses.

use serde::Deserialize;

use super::{ConfigError, Sourced};
use crate::domain::{DeliveryTime, Locale, TimeZone};

/// `[defaults]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDefaults {
    locale: Option<String>,
    delivery_time: Option<String>,
    timezone: Option<String>,
}

/// Defaults offered on the sign-up page.
#[derive(Debug, Clone)]
pub struct SignUpDefaults {
    /// Page and mail language when the reader chooses none.
    pub locale: Locale,
    /// Pre-filled delivery time.
    pub delivery_time: DeliveryTime,
    /// Pre-filled time zone (JavaScript replaces it by the browser's).
    pub timezone: TimeZone,
}

/// Parses `[defaults]` into domain types; default German, 07:00, Europe/Berlin.
pub(super) fn resolve(file: FileDefaults) -> Result<SignUpDefaults, ConfigError> {
    Ok(SignUpDefaults {
        locale: opt_parse("defaults.locale", file.locale, Locale::parse)?.unwrap_or_default(),
        delivery_time: opt_parse(
            "defaults.delivery_time",
            file.delivery_time,
            DeliveryTime::parse,
        )?
        .unwrap_or_else(|| DeliveryTime::parse("07:00").expect("valid")),
        timezone: opt_parse("defaults.timezone", file.timezone, TimeZone::parse)?
            .unwrap_or_else(|| TimeZone::parse("Europe/Berlin").expect("valid")),
    })
}

/// `value` parsed, when set; an error names `key`.
fn opt_parse<T, E: std::fmt::Display>(
    key: &str,
    value: Option<String>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, ConfigError> {
    let key = key.to_owned();
    value
        .map(|value| Sourced { key, value }.parse(parse))
        .transpose()
}
