//! `[site]`: the public face of the newsletter: its name, logo, accent colour and
//! the imprint and privacy-policy links every page and mail shows.

use serde::Deserialize;

use super::ConfigError;
use crate::domain::HttpUrl;

/// `[site]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileSite {
    name: Option<String>,
    logo_url: Option<String>,
    accent_color: Option<String>,
    imprint_url: Option<String>,
    privacy_url: Option<String>,
}

/// The site's branding.
#[derive(Debug, Clone, Default)]
pub struct SiteSettings {
    /// The newsletter's name; `None` → the page language's `site_title`.
    pub name: Option<String>,
    /// An `https` logo shown in page and mail headers (the only remote image).
    pub logo_url: Option<HttpUrl>,
    /// `#rrggbb` for links and buttons.
    pub accent_color: AccentColor,
    /// The operator's imprint (Impressum).
    pub imprint_url: Option<HttpUrl>,
    /// The operator's privacy policy.
    pub privacy_url: Option<HttpUrl>,
}

/// A colour written `#rrggbb`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccentColor(String);

impl AccentColor {
    /// Parses `#rrggbb` (hex digits in either case).
    ///
    /// # Errors
    /// A message when `s` is not `#` and six hex digits.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.strip_prefix('#') {
            Some(hex) if hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Self(s.to_ascii_lowercase()))
            }
            _ => Err(format!("{s:?} is not a colour written #rrggbb")),
        }
    }

    /// `#rrggbb`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AccentColor {
    /// The blue the pages and mails always had.
    fn default() -> Self {
        Self("#004a8f".to_owned())
    }
}

/// Checks `[site]`: a name that is not blank, an `https` logo, a `#rrggbb` accent
/// colour, `http(s)` imprint and privacy URLs.
pub(super) fn resolve(file: FileSite) -> Result<SiteSettings, ConfigError> {
    let url = |key: &str, value: Option<String>| {
        value
            .map(|v| HttpUrl::parse(v.trim()).map_err(|e| ConfigError::new(key, e.to_string())))
            .transpose()
    };
    let name = match file.name.map(|n| n.trim().to_owned()) {
        Some(n) if n.is_empty() => return Err(ConfigError::new("site.name", "must not be blank")),
        n => n,
    };
    let logo_url = url("site.logo_url", file.logo_url)?;
    if logo_url
        .as_ref()
        .is_some_and(|u| u.url().scheme() != "https")
    {
        return Err(ConfigError::new(
            "site.logo_url",
            "must be an https URL (mail clients block other images)",
        ));
    }
    let accent_color = match file.accent_color {
        Some(c) => AccentColor::parse(&c).map_err(|e| ConfigError::new("site.accent_color", e))?,
        None => AccentColor::default(),
    };
    Ok(SiteSettings {
        name,
        logo_url,
        accent_color,
        imprint_url: url("site.imprint_url", file.imprint_url)?,
        privacy_url: url("site.privacy_url", file.privacy_url)?,
    })
}
