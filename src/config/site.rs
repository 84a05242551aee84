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
    logo_width: Option<u32>,
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
    /// The logo's width in px when shown 40 px high: mails give it as the `<img>`'s
    /// `width` (Outlook sizes images by their attributes, not by CSS).
    pub logo_width: LogoWidth,
    /// `#rrggbb` for links and buttons.
    pub accent_color: AccentColor,
    /// The operator's imprint (Impressum).
    pub imprint_url: Option<HttpUrl>,
    /// The operator's privacy policy.
    pub privacy_url: Option<HttpUrl>,
}

/// The logo's width in px at [`LogoWidth::HEIGHT`], 1 to [`LogoWidth::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoWidth(u32);

impl LogoWidth {
    /// The height every page and mail shows the logo at, in px.
    pub const HEIGHT: u32 = 40;
    /// The widest logo the 600 px mail column holds beside its padding.
    pub const MAX: u32 = 552;

    /// A width of 1 to [`Self::MAX`] px.
    ///
    /// # Errors
    /// A message when `px` is 0 or wider than the mail column.
    pub fn new(px: u32) -> Result<Self, String> {
        if (1..=Self::MAX).contains(&px) {
            Ok(Self(px))
        } else {
            Err(format!("{px} is not a width from 1 to {} px", Self::MAX))
        }
    }

    /// The width in px.
    pub fn px(self) -> u32 {
        self.0
    }
}

impl Default for LogoWidth {
    /// Square, as high as wide.
    fn default() -> Self {
        Self(Self::HEIGHT)
    }
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

/// Checks `[site]`: a name that is not blank, an `https` logo 1 to 552 px wide, a
/// `#rrggbb` accent colour, `http(s)` imprint and privacy URLs.
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
    let logo_width = match file.logo_width {
        Some(px) => LogoWidth::new(px).map_err(|e| ConfigError::new("site.logo_width", e))?,
        None => LogoWidth::default(),
    };
    let accent_color = match file.accent_color {
        Some(c) => AccentColor::parse(&c).map_err(|e| ConfigError::new("site.accent_color", e))?,
        None => AccentColor::default(),
    };
    Ok(SiteSettings {
        name,
        logo_url,
        logo_width,
        accent_color,
        imprint_url: url("site.imprint_url", file.imprint_url)?,
        privacy_url: url("site.privacy_url", file.privacy_url)?,
    })
}
