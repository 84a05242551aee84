//! `[digest]`: how digests are made and how often `serve` plans them.

use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use super::ConfigError;

/// `[digest]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDigest {
    max_items: Option<usize>,
    lookback_hours: Option<u64>,
    list_id: Option<String>,
    pass_interval_secs: Option<u64>,
    run_scheduler: Option<bool>,
}

/// How digests are made.
#[derive(Debug, Clone)]
pub struct DigestSettings {
    /// Items listed in one digest at most; the rest is counted ("… and 12 more").
    pub max_items: usize,
    /// How far before their confirmation a reader's first digest reaches back.
    pub lookback: chrono::Duration,
    /// The `List-Id` header value, e.g. `Presse-Newsletter <news.example.org>`.
    pub list_id: String,
    /// How often `serve` runs a scheduling pass.
    pub pass_interval: Duration,
    /// Whether `serve` runs passes by itself (tests that choose the instants of
    /// passes turn this off and call `POST /api/v1/digests/run`).
    pub run_scheduler: bool,
}

/// Checks `[digest]`: a look-back of at most a year, a one-line `List-Id` with
/// `<…>` (default on the domain of `mail_from`), 1 to 1,000 items, a pass interval
/// above zero.
pub(super) fn resolve(
    file: FileDigest,
    mail_from: &Mailbox,
) -> Result<DigestSettings, ConfigError> {
    let lookback_hours = file.lookback_hours.unwrap_or(24);
    if lookback_hours > 8760 {
        return Err(ConfigError::new(
            "digest.lookback_hours",
            "must be at most 8760",
        ));
    }
    let list_id = match file.list_id {
        Some(id) if id.chars().any(char::is_control) || !id.contains('<') => {
            return Err(ConfigError::new(
                "digest.list_id",
                "must look like Name <list.example.org>, on one line",
            ));
        }
        Some(id) => id,
        None => format!("Newsletter <newsletter.{}>", mail_from.email.domain()),
    };
    let max_items = file.max_items.unwrap_or(50);
    if !(1..=1000).contains(&max_items) {
        return Err(ConfigError::new(
            "digest.max_items",
            "must be between 1 and 1000",
        ));
    }
    let pass_interval = Duration::from_secs(file.pass_interval_secs.unwrap_or(60));
    if pass_interval.is_zero() {
        return Err(ConfigError::new(
            "digest.pass_interval_secs",
            "must be greater than 0",
        ));
    }
    Ok(DigestSettings {
        max_items,
        lookback: chrono::Duration::hours(lookback_hours as i64),
        list_id,
        pass_interval,
        run_scheduler: file.run_scheduler.unwrap_or(true),
    })
}
