//! `[[topics]]`: topics declared in the file, created or updated at start.

use serde::Deserialize;

use super::ConfigError;
use crate::domain::TopicSlug;

/// One `[[topics]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTopic {
    slug: String,
    name: String,
    description: Option<String>,
}

/// A topic declared in the file, created or updated at start.
#[derive(Debug, Clone)]
pub struct TopicSeed {
    /// Stable key.
    pub slug: TopicSlug,
    /// Display name.
    pub name: String,
    /// Optional longer text.
    pub description: Option<String>,
}

/// Checks every `[[topics]]` entry: a slug and a name that is not blank.
pub(super) fn resolve(file: Vec<FileTopic>) -> Result<Vec<TopicSeed>, ConfigError> {
    file.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let slug = TopicSlug::parse(&t.slug)
                .map_err(|e| ConfigError::new(format!("topics[{i}].slug"), e.to_string()))?;
            if t.name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("topics[{i}].name"),
                    "must not be empty",
                ));
            }
            Ok(TopicSeed {
                slug,
                name: t.name,
                description: t.description,
            })
        })
        .collect()
}
