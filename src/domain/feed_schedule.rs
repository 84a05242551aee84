//! When a feed is polled: [`FeedSchedule`], a cron expression parsed once where it
//! enters (the configuration file, the admin API) and carried as a type after that.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A feed's cron schedule: standard five fields (`*/15 * * * *`) or the `cron`
/// crate's six or seven with seconds first (`0 */15 * * * *`). Keeps its text
/// (trimmed) for storage and display.
#[derive(Clone)]
pub struct FeedSchedule {
    /// The expression as written, without surrounding white space.
    text: String,
    /// The parsed expression (five fields get a leading `0` for the seconds).
    cron: cron::Schedule,
}

/// Why a text is not a [`FeedSchedule`]; the message is the cron parser's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cron schedule: {0}")]
pub struct FeedScheduleError(String);

impl FeedSchedule {
    /// # Errors
    /// [`FeedScheduleError`] unless the text is a cron expression of five, six or
    /// seven fields.
    pub fn parse(s: &str) -> Result<Self, FeedScheduleError> {
        let text = s.trim();
        let expr = if text.split_whitespace().count() == 5 {
            format!("0 {text}")
        } else {
            text.to_owned()
        };
        let cron = cron::Schedule::from_str(&expr).map_err(|e| FeedScheduleError(e.to_string()))?;
        Ok(Self {
            text: text.to_owned(),
            cron,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first instant strictly after `after` the schedule fires; `None` past the
    /// end of the cron calendar.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.after(&after).next()
    }
}

impl FromStr for FeedSchedule {
    type Err = FeedScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for FeedSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for FeedSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FeedSchedule").field(&self.text).finish()
    }
}

impl PartialEq for FeedSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for FeedSchedule {}

/// Serialised as the expression as written.
impl serde::Serialize for FeedSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_take_five_or_six_fields() {
        assert!(FeedSchedule::parse("*/15 * * * *").is_ok());
        assert!(FeedSchedule::parse("0 */15 * * * *").is_ok());
        let err = FeedSchedule::parse("jede Stunde").unwrap_err();
        assert!(
            err.to_string().starts_with("not a cron schedule: "),
            "{err}"
        );
    }

    #[test]
    fn a_schedule_shows_its_text_and_fires_on_it() {
        let s = FeedSchedule::parse(" */15 * * * * ").unwrap();
        assert_eq!(s.as_str(), "*/15 * * * *");
        assert_eq!(s.to_string(), "*/15 * * * *");
        let at: DateTime<Utc> = "2027-05-03T06:07:30Z".parse().unwrap();
        assert_eq!(
            s.next_after(at),
            Some("2027-05-03T06:15:00Z".parse().unwrap())
        );
    }
}
