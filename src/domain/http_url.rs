//! Links into the web: [`HttpUrl`], an absolute `http(s)` URL with a host, parsed
//! once where it enters (the configuration file, the admin API, a feed entry, a
//! stored row) and carried as a type after that.

use std::fmt;

/// An absolute `http://` or `https://` URL with a host, at most
/// [`HttpUrl::MAX_LEN`] characters, without spaces or control characters. Keeps
/// its text exactly as given, for storage, display and recognising a repeat; with
/// no spaces or control characters in it, that text is all the parser read.
#[derive(Clone)]
pub struct HttpUrl {
    /// The URL as given.
    text: String,
    /// The parsed URL, for fetching and for its host and path.
    url: url::Url,
}

/// Why a text is not an [`HttpUrl`]; the messages are the ones the admin API
/// answers with (a 422 naming the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpUrlError {
    /// Longer than [`HttpUrl::MAX_LEN`] characters.
    #[error("must be at most {} characters", HttpUrl::MAX_LEN)]
    TooLong,
    /// Spaces or control characters, which a URL parser would silently drop or
    /// encode while the stored text kept them.
    #[error("must not contain spaces or control characters")]
    Spaces,
    /// Not a URL at all; the parser's message.
    #[error("is not a URL: {0}")]
    NotUrl(String),
    /// Another scheme (`javascript:`, `data:`, `file:` …) or no host.
    #[error("must be an http:// or https:// URL")]
    NotHttp,
}

impl HttpUrl {
    /// Longest URL, in characters.
    pub const MAX_LEN: usize = 2_048;

    /// # Errors
    /// [`HttpUrlError`] for the first rule the text breaks: length, spaces or
    /// control characters, URL syntax, scheme and host.
    pub fn parse(s: &str) -> Result<Self, HttpUrlError> {
        // A character is at most 4 bytes: only a long string needs counting.
        if s.len() > Self::MAX_LEN && s.chars().count() > Self::MAX_LEN {
            return Err(HttpUrlError::TooLong);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(HttpUrlError::Spaces);
        }
        let url = url::Url::parse(s).map_err(|e| HttpUrlError::NotUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(HttpUrlError::NotHttp);
        }
        Ok(Self {
            text: s.to_owned(),
            url,
        })
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// Host and path (`presse.example/rss.xml`): a feed's name when none is given.
    pub fn host_and_path(&self) -> String {
        format!(
            "{}{}",
            self.url.host_str().unwrap_or_default(),
            self.url.path()
        )
    }
}

impl std::str::FromStr for HttpUrl {
    type Err = HttpUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HttpUrl").field(&self.text).finish()
    }
}

impl PartialEq for HttpUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for HttpUrl {}

/// Serialised as the text as given.
impl serde::Serialize for HttpUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_with_a_host_parse_and_keep_their_text() {
        let u = HttpUrl::parse("https://Presse.example/a?b=1").unwrap();
        assert_eq!(u.as_str(), "https://Presse.example/a?b=1");
        assert_eq!(u.to_string(), u.as_str());
        assert_eq!(u.url().host_str(), Some("presse.example"));
        assert_eq!(u.host_and_path(), "presse.example/a");
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#""https://Presse.example/a?b=1""#
        );
        assert!(HttpUrl::parse("http://x.example").is_ok());
        for (text, err) in [
            ("javascript:alert(1)", HttpUrlError::NotHttp),
            ("file:///etc/passwd", HttpUrlError::NotHttp),
            ("https://x.example/a b", HttpUrlError::Spaces),
            (" https://x.example/", HttpUrlError::Spaces),
            ("https://x.example/\u{0}", HttpUrlError::Spaces),
        ] {
            assert_eq!(HttpUrl::parse(text), Err(err), "{text:?}");
        }
        assert!(matches!(
            HttpUrl::parse("/relativ"),
            Err(HttpUrlError::NotUrl(_))
        ));
    }

    #[test]
    fn a_url_is_capped_in_characters_not_bytes() {
        let at = |n: usize| format!("https://x.example/{}", "ä".repeat(n - 18));
        assert!(HttpUrl::parse(&at(HttpUrl::MAX_LEN)).is_ok());
        assert_eq!(
            HttpUrl::parse(&at(HttpUrl::MAX_LEN + 1)),
            Err(HttpUrlError::TooLong)
        );
        assert_eq!(
            HttpUrlError::TooLong.to_string(),
            "must be at most 2048 characters"
        );
    }
}
