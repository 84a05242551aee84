//! Topic identifiers.

use std::fmt;

/// A topic's slug: `[a-z0-9-]{1,64}`, the stable key in URLs, forms and the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicSlug(String);

/// Why a string is not a [`TopicSlug`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 64 characters of a-z, 0-9 and -")]
pub struct SlugError;

impl TopicSlug {
    /// # Errors
    /// [`SlugError`] when the text is empty, too long or has other characters.
    pub fn parse(s: &str) -> Result<Self, SlugError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(SlugError)
        }
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Serialised as the slug itself.
impl serde::Serialize for TopicSlug {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_contract() {
        assert!(TopicSlug::parse("it-telekommunikation").is_ok());
        assert!(TopicSlug::parse(&"a".repeat(64)).is_ok());
        assert!(TopicSlug::parse(&"a".repeat(65)).is_err());
        assert!(TopicSlug::parse("").is_err());
        assert!(TopicSlug::parse("Wirtschaft").is_err());
        assert!(TopicSlug::parse("a b").is_err());
    }
}
