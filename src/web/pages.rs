//! Rendering pages: language choice ([`PageLang`]), the shared page data, the
//! message pages (the error pages among them, see [`super::error`]) and the 404
//! fallback.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{PageError, Problem};
use crate::domain::Locale;
use crate::mail::templates::TemplateError;

/// `?lang=` on any page.
#[derive(Debug, Default, Deserialize)]
pub struct LangQuery {
    /// Requested page language.
    pub lang: Option<String>,
}

/// The page language a request asks for, as an extractor: `?lang=`, else the
/// browser's first supported language, else the configured default. A `?lang=`
/// that does not parse is refused as axum's `Query` refuses it (400).
#[derive(Debug, Clone, Copy)]
pub struct PageLang {
    /// The negotiated language.
    pub locale: Locale,
    /// Whether the request named one with `?lang=` (even one we do not speak).
    asked: bool,
}

impl PageLang {
    /// The language of a page about a reader whose own language is `theirs`:
    /// the one the request named with `?lang=`, else theirs.
    pub fn or_theirs(self, theirs: Locale) -> Locale {
        if self.asked { self.locale } else { theirs }
    }
}

impl FromRequestParts<AppState> for PageLang {
    type Rejection = QueryRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Query(q) = Query::<LangQuery>::from_request_parts(parts, state).await?;
        Ok(Self {
            locale: negotiate(state, q.lang.as_deref(), &parts.headers),
            asked: q.lang.is_some(),
        })
    }
}

/// The page language: `?lang=`, else the browser's first supported language, else
/// the configured default.
pub fn negotiate(state: &AppState, query: Option<&str>, headers: &HeaderMap) -> Locale {
    if let Some(l) = query.and_then(|q| Locale::parse(q).ok()) {
        return l;
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(|part| part.split(';').next().unwrap_or_default())
                .find_map(|tag| Locale::parse(tag).ok())
        })
        .unwrap_or(state.config.defaults.locale)
}

/// A rendered page with its status, or a plain 500 when even rendering fails.
pub fn render(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    name: &str,
    title_key: &str,
    data: Value,
    path: &str,
) -> Response {
    page_response(
        state,
        status,
        render_html(state, locale, name, title_key, data, path),
    )
}

/// The HTML of page `name` with `data` and what every page shows (texts, language
/// switch to `path`, site).
///
/// # Errors
/// When the template fails.
pub fn render_html(
    state: &AppState,
    locale: Locale,
    name: &str,
    title_key: &str,
    mut data: Value,
    path: &str,
) -> Result<String, TemplateError> {
    let t = state.templates.strings(locale);
    let other = if locale == Locale::De {
        Locale::En
    } else {
        Locale::De
    };
    if let Value::Object(map) = &mut data {
        map.insert("t".into(), t.clone());
        map.insert("locale".into(), json!(locale.as_str()));
        map.entry("title").or_insert_with(|| t[title_key].clone());
        map.insert(
            "lang_switch_href".into(),
            json!(format!("{path}?lang={other}")),
        );
        map.insert("site".into(), site_data(state, locale));
    }
    state.templates.page(name, &data)
}

/// `html` as a page with `status` and the pages' headers, or a plain 500 when
/// rendering failed.
pub fn page_response(
    state: &AppState,
    status: StatusCode,
    html: Result<String, TemplateError>,
) -> Response {
    match html {
        Ok(html) => match logo_policy(state) {
            Some(csp) => {
                (status, [(header::CONTENT_SECURITY_POLICY, csp)], Html(html)).into_response()
            }
            None => (status, Html(html)).into_response(),
        },
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// Pages that are the same for every request in a language (the thank-you page
/// after a sign-up), rendered once per language: the busiest page of the site is
/// then no template work at all.
#[derive(Debug, Default)]
pub struct FixedPages {
    by_locale: [std::sync::OnceLock<String>; 2],
}

impl FixedPages {
    /// The page for `locale`, rendered by `render` the first time it succeeds.
    ///
    /// # Errors
    /// When `render` fails (nothing is kept then).
    pub fn get(
        &self,
        locale: Locale,
        render: impl FnOnce() -> Result<String, TemplateError>,
    ) -> Result<String, TemplateError> {
        let slot = match locale {
            Locale::De => &self.by_locale[0],
            Locale::En => &self.by_locale[1],
        };
        if let Some(html) = slot.get() {
            return Ok(html.clone());
        }
        let html = render()?;
        Ok(slot.get_or_init(|| html).clone())
    }
}

/// With a logo configured, the Content-Security-Policy of pages also allows images
/// from the logo's origin (the one remote file a page loads).
fn logo_policy(state: &AppState) -> Option<String> {
    let logo = state.config.site.logo_url.as_ref()?;
    Some(format!(
        "{}; img-src 'self' {}",
        super::CONTENT_SECURITY_POLICY,
        logo.url().origin().ascii_serialization()
    ))
}

/// The site's branding as the layout sees it: `site.name` (configured, else the
/// language's `site_title`), `site.logo_url`, `site.imprint_url`,
/// `site.privacy_url`, `site.stylesheet` and `site.timezone_script`, the
/// content-hashed paths of the stylesheet and the sign-up page's time-zone script.
fn site_data(state: &AppState, locale: Locale) -> Value {
    let site = &state.config.site;
    let url = |u: &Option<crate::domain::HttpUrl>| u.as_ref().map(|u| u.as_str().to_owned());
    json!({
        "name": state.composer.site_name(locale),
        "logo_url": url(&site.logo_url),
        "imprint_url": url(&site.imprint_url),
        "privacy_url": url(&site.privacy_url),
        "stylesheet": state.stylesheet.href(),
        "timezone_script": super::assets::timezone_script().href(),
    })
}

/// A page with a heading, a text and an optional link back to the sign-up.
pub fn message(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    key: &str,
    link_home: bool,
) -> Response {
    let link = link_home.then(|| format!("/?lang={locale}"));
    message_linking(state, status, locale, key, link, false)
}

/// A page with the heading and text of `key` (`{key}_heading`, `{key}_text`) and
/// an optional link under them, labelled "subscribe again"; with `offer_my_link`
/// also the offer to mail a reader their preferences link (`/link`).
pub fn message_linking(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    key: &str,
    link: Option<String>,
    offer_my_link: bool,
) -> Response {
    let t = state.templates.strings(locale);
    let data = json!({
        "heading": t[format!("{key}_heading")],
        "text": t[format!("{key}_text")],
        "link_href": link,
        "link_text": t["subscribe_again"],
        "my_link_href": offer_my_link.then(|| format!("/link?lang={locale}")),
    });
    render(
        state,
        status,
        locale,
        "message",
        &format!("{key}_heading"),
        data,
        "/",
    )
}

/// The page saying that a reader is unsubscribed (after one-click, after "unsubscribe
/// from everything", or when their link is used again).
pub fn unsubscribed(state: &AppState, locale: Locale) -> Response {
    message(state, StatusCode::OK, locale, "unsubscribed", true)
}

/// The answer to unsubscribing `subscriber_id`, given what the store's
/// `unsubscribe` returned: the page saying so in the reader's language, or the
/// unknown-link page when the link named nobody.
///
/// # Errors
/// [`Problem::UnknownLink`] when `theirs` is `None`.
pub fn after_unsubscribe(
    state: &AppState,
    subscriber_id: i64,
    theirs: Option<Locale>,
) -> Result<Response, PageError> {
    let theirs = theirs.ok_or(Problem::UnknownLink)?;
    tracing::info!(subscriber.id = subscriber_id, "unsubscribed");
    Ok(unsubscribed(state, theirs))
}

/// The months in German (chrono names them in English only).
const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];

/// A date as a page shows it in `locale`, the month in words ("2. Dezember 2026",
/// "2 December 2026").
pub fn local_date(locale: Locale, date: chrono::NaiveDate) -> String {
    use chrono::Datelike as _;
    match locale {
        Locale::De => format!(
            "{}. {} {}",
            date.day(),
            MONTHS_DE[date.month0() as usize],
            date.year()
        ),
        Locale::En => date.format("%-d %B %Y").to_string(),
    }
}

/// The day of `at` where the site is (`defaults.timezone`), as a page shows it: an
/// item published at half past midnight in Berlin is dated that day, not the day
/// before, which it still is in UTC.
pub fn site_date(state: &AppState, locale: Locale, at: chrono::DateTime<chrono::Utc>) -> String {
    let zone = state.config.defaults.timezone.tz();
    local_date(locale, at.with_timezone(&zone).date_naive())
}

/// Fallback for unknown routes.
pub async fn not_found(_lang: PageLang) -> PageError {
    Problem::NotFound.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_page_is_rendered_once_per_language_and_a_failure_is_not_kept() {
        let pages = FixedPages::default();
        let failed = pages.get(Locale::De, || {
            Err(TemplateError::Render(
                "pages/message".into(),
                "broken".into(),
            ))
        });
        assert!(failed.is_err());
        let mut renders = 0;
        for _ in 0..3 {
            let html = pages.get(Locale::De, || {
                renders += 1;
                Ok("<p>Danke</p>".into())
            });
            assert_eq!(html.expect("rendered"), "<p>Danke</p>");
        }
        assert_eq!(renders, 1, "rendered once after the failure");
        let en = pages.get(Locale::En, || Ok("<p>Thanks</p>".into()));
        assert_eq!(
            en.expect("rendered"),
            "<p>Thanks</p>",
            "each language its own"
        );
    }
}
