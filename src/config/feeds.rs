//! `[[feeds]]`: feeds declared in the file, created or updated at start.

use serde::Deserialize;

use super::ConfigError;
use crate::domain::{FeedSchedule, HttpUrl, TopicSlug};

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
    pub url: HttpUrl,
    /// The topic its items go to.
    pub topic: TopicSlug,
    /// When it is polled.
    pub schedule: FeedSchedule,
}

/// Checks every `[[feeds]]` entry: an http(s) URL (white space around it is
/// dropped), a topic slug, a cron schedule, and a name (default: host and path of
/// the URL) no other entry has.
pub(super) fn resolve(file: Vec<FileFeed>) -> Result<Vec<FeedSeed>, ConfigError> {
    let mut feeds = Vec::with_capacity(file.len());
    for (i, f) in file.into_iter().enumerate() {
        let key = |field: &str| format!("feeds[{i}].{field}");
        let url = HttpUrl::parse(f.url.trim())
            .map_err(|e| ConfigError::new(key("url"), e.to_string()))?;
        let topic = TopicSlug::parse(&f.topic)
            .map_err(|e| ConfigError::new(key("topic"), e.to_string()))?;
        let schedule = FeedSchedule::parse(&f.schedule)
            .map_err(|e| ConfigError::new(key("schedule"), e.to_string()))?;
        let name = f.name.unwrap_or_else(|| url.host_and_path());
        if feeds.iter().any(|x: &FeedSeed| x.name == name) {
            return Err(ConfigError::new(
                key("name"),
                format!("{name:?} is used twice"),
            ));
        }
        feeds.push(FeedSeed {
            name,
            url,
            topic,
            schedule,
        });
    }
    Ok(feeds)
}
