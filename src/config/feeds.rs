//! `[[feeds]]`: feeds declared in the file, created or updated at start.

use serde::Deserialize;

use super::ConfigError;
use crate::domain::{FeedSchedule, TopicSlug};

/// One `[[feeds]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFeed {
    url: String,
    topic: String,
    schedule: String,
    name: Option<String>,
}

/// A feed declared in the file.
#[derive(Debug, Clone)]
pub struct FeedSeed {
    /// Unique name (default: derived from the URL).
    pub name: String,
    /// The feed's URL.
    pub url: String,
    /// The topic its items go to.
    pub topic: TopicSlug,
    /// When it is polled.
    pub schedule: FeedSchedule,
}

/// Checks every `[[feeds]]` entry: an http(s) URL, a topic slug, a cron schedule,
/// and a name (default: host and path of the URL) no other entry has.
pub(super) fn resolve(file: Vec<FileFeed>) -> Result<Vec<FeedSeed>, ConfigError> {
    let mut feeds = Vec::with_capacity(file.len());
    for (i, f) in file.into_iter().enumerate() {
        let key = |field: &str| format!("feeds[{i}].{field}");
        let url =
            url::Url::parse(&f.url).map_err(|e| ConfigError::new(key("url"), e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                key("url"),
                "must be an http:// or https:// URL",
            ));
        }
        let topic = TopicSlug::parse(&f.topic)
            .map_err(|e| ConfigError::new(key("topic"), e.to_string()))?;
        let schedule = FeedSchedule::parse(&f.schedule)
            .map_err(|e| ConfigError::new(key("schedule"), e.to_string()))?;
        let name = f
            .name
            .unwrap_or_else(|| format!("{}{}", url.host_str().unwrap_or_default(), url.path()));
        if feeds.iter().any(|x: &FeedSeed| x.name == name) {
            return Err(ConfigError::new(
                key("name"),
                format!("{name:?} is used twice"),
            ));
        }
        feeds.push(FeedSeed {
            name,
            url: f.url,
            topic,
            schedule,
        });
    }
    Ok(feeds)
}
