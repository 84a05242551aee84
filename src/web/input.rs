//! The checks the two operator surfaces share for what an operator types in: the
//! admin API's JSON ([`super::admin`]) and the console's forms ([`super::console`]).
//! Each refuses with a [`FieldError`] naming the field; the API answers it with a
//! 422, the console shows it above its form.

use chrono::{DateTime, Utc};

use crate::domain::{FeedSchedule, HttpUrl, TopicSlug};
use crate::store::{FeedSpec, Topic};

/// Why an input field was refused: which one and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field, as the API and the form name it.
    pub field: &'static str,
    /// What is wrong, e.g. "must be at most 200 characters".
    pub problem: String,
}

impl FieldError {
    /// A refusal of `field` because of `problem`.
    pub fn new(field: &'static str, problem: impl std::fmt::Display) -> Self {
        Self {
            field,
            problem: problem.to_string(),
        }
    }
}

/// Trims a text field; blank means absent. NUL (which PostgreSQL text cannot hold)
/// or more than `max` characters is refused.
///
/// # Errors
/// [`FieldError`] for `field` then.
pub fn text(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, FieldError> {
    let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if value.as_ref().is_some_and(|v| v.contains('\0')) {
        return Err(FieldError::new(field, "must not contain NUL characters"));
    }
    if value.as_ref().is_some_and(|v| v.chars().count() > max) {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(value)
}

/// A topic's display name: 1 to 200 characters without NUL, trimmed.
///
/// # Errors
/// [`FieldError`] for `name` otherwise.
pub fn topic_name(name: &str) -> Result<String, FieldError> {
    let refused = || FieldError::new("name", "must be 1 to 200 characters, without NUL");
    match text("name", Some(name.to_owned()), 200) {
        Ok(Some(name)) => Ok(name),
        _ => Err(refused()),
    }
}

/// The topics an item names, each one of `offered` (the topics not retired), in
/// the order given, at least one.
///
/// # Errors
/// [`FieldError`] for `topics` otherwise.
pub fn item_topics(offered: &[Topic], named: &[String]) -> Result<Vec<TopicSlug>, FieldError> {
    if named.is_empty() {
        return Err(FieldError::new("topics", "must name at least one topic"));
    }
    named
        .iter()
        .map(|slug| match TopicSlug::parse(slug) {
            Ok(parsed) if offered.iter().any(|t| t.slug == *slug) => Ok(parsed),
            _ => Err(FieldError::new("topics", format!("unknown topic {slug:?}"))),
        })
        .collect()
}

/// A new feed as an operator describes it: an `http(s)` URL with a host, one of
/// the `offered` topics, a cron schedule, and a name (by default the URL's host
/// and path). It is polled first at `now`.
///
/// # Errors
/// [`FieldError`] for the first field that is wrong.
pub fn new_feed(
    offered: &[Topic],
    name: Option<String>,
    url: &str,
    topic: &str,
    schedule: &str,
    now: DateTime<Utc>,
) -> Result<FeedSpec, FieldError> {
    let url = HttpUrl::parse(url.trim()).map_err(|e| FieldError::new("url", e))?;
    let slug = TopicSlug::parse(topic).map_err(|_| FieldError::new("topic", "not a topic slug"))?;
    if !offered.iter().any(|t| t.slug == slug.as_str()) {
        return Err(FieldError::new("topic", format!("unknown topic {topic:?}")));
    }
    let schedule = FeedSchedule::parse(schedule).map_err(|e| FieldError::new("schedule", e))?;
    let name = text("name", name, 200)?.unwrap_or_else(|| url.host_and_path());
    Ok(FeedSpec {
        name,
        url,
        topic: slug,
        schedule,
        next_poll_at: now,
    })
}
