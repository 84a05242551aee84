//! `[site]` branding end to end, on both backends: the configured name, logo,
//! imprint and privacy links on the sign-up, archive and preferences pages and in
//! the digest; the stylesheet under its content-hashed name with the accent colour
//! and an immutable cache lifetime; a bad accent colour refused at load.

use std::collections::HashMap;

use postbote::config::{AccentColor, Config, LogoWidth, SiteSettings};
use postbote::domain::HttpUrl;

use crate::harness::{Backend, app_at, delivered, find_link, parse, utc};

const NAME: &str = "Pressedienst Musterstadt";
const LOGO: &str = "https://cdn.example.net/logo.png";
const IMPRINT: &str = "https://musterstadt.example/impressum";
const PRIVACY: &str = "https://musterstadt.example/datenschutz";

fn branded() -> SiteSettings {
    let url = |u: &str| Some(HttpUrl::parse(u).unwrap());
    SiteSettings {
        name: Some(NAME.to_owned()),
        logo_url: url(LOGO),
        logo_width: LogoWidth::new(120).unwrap(),
        accent_color: AccentColor::parse("#7A1F5C").unwrap(),
        imprint_url: url(IMPRINT),
        privacy_url: url(PRIVACY),
    }
}

/// GET `url`: status, `Cache-Control`, `Content-Security-Policy` and body.
async fn get(url: &str) -> (u16, String, String, String) {
    let r = reqwest::get(url).await.unwrap();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (cache, csp) = (header("cache-control"), header("content-security-policy"));
    (r.status().as_u16(), cache, csp, r.text().await.unwrap())
}

/// The page shows the name linking home, the logo, and imprint, privacy, archive
/// and `/link` in its footer.
fn assert_branded(what: &str, page: &str) {
    assert!(
        page.contains(&format!(" – {NAME}</title>")),
        "{what}: the name in the title"
    );
    assert!(
        page.contains("class=\"site-name\" href=\"/?lang=") && page.contains(NAME),
        "{what}: the name linking home"
    );
    assert!(
        page.contains(&format!("src=\"{LOGO}\"")),
        "{what}: the logo"
    );
    assert!(
        page.contains("<nav aria-label=\"Sprachwahl\">")
            || page.contains("<nav aria-label=\"Language\">"),
        "{what}: the header's navigation is named"
    );
    let footer = page
        .split("<footer")
        .nth(1)
        .unwrap_or_else(|| panic!("{what}: a footer"));
    for href in [IMPRINT, PRIVACY, "/archive?lang=", "/link?lang="] {
        assert!(
            footer.contains(&format!("href=\"{href}")),
            "{what}: {href} in {footer}"
        );
    }
}

async fn the_configured_site_shows_on_every_page_and_in_the_digest(backend: Backend) {
    let (app, sink, _db, clock) =
        app_at(backend, "2027-05-01T08:00:00Z", |c| c.site = branded()).await;
    let now = utc("2027-05-01T08:00:00Z");
    app.reader(
        "leser@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Haushalt beschlossen").await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    let mail = parse(&got["leser@example.org"][0]);
    let html = mail.body_html(0).unwrap().into_owned();
    let text = mail.body_text(0).unwrap().into_owned();
    assert!(
        html.contains(NAME) && text.starts_with(NAME),
        "the name heads the digest"
    );
    assert!(
        html.contains(&format!(
            "<img src=\"{LOGO}\" alt=\"{NAME}\" width=\"120\" height=\"40\""
        )),
        "the logo in the header, sized for Outlook: {html}"
    );
    assert_eq!(html.matches("<img").count(), 1, "no other image");
    assert!(html.contains("#7a1f5c"), "the accent colour");
    for url in [IMPRINT, PRIVACY] {
        assert!(
            html.contains(url) && text.contains(url),
            "{url} in the digest"
        );
    }
    let preferences = find_link(&text, "preferences").expect("a preferences link");

    for (what, path) in [
        ("sign-up", app.url("/?lang=de")),
        ("archive", app.url("/archive?lang=en")),
        ("topic archive", app.url("/archive/wirtschaft")),
        ("preferences", preferences),
    ] {
        let (status, _, csp, page) = get(&path).await;
        assert_eq!(status, 200, "{what}");
        assert_branded(what, &page);
        assert!(
            csp.contains("img-src 'self' https://cdn.example.net"),
            "{what}: the policy lets the logo load: {csp}"
        );
    }
}

async fn the_stylesheet_has_a_content_hash_in_its_name_and_is_kept_for_a_year(backend: Backend) {
    let (app, _sink, _db, _clock) =
        app_at(backend, "2027-05-01T08:00:00Z", |c| c.site = branded()).await;
    let (_, _, _, page) = get(&app.url("/")).await;
    let href = page
        .split("<link rel=\"stylesheet\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a stylesheet link")
        .to_owned();
    let hash = href
        .strip_prefix("/assets/postbote.")
        .and_then(|s| s.strip_suffix(".css"))
        .unwrap_or_else(|| panic!("{href}"));
    assert!(
        hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{href}"
    );
    let (status, cache, _, css) = get(&app.url(&href)).await;
    assert_eq!(status, 200);
    assert_eq!(cache, "public, max-age=31536000, immutable");
    assert!(
        css.contains("--accent:#7a1f5c"),
        "the accent colour in the file"
    );
    assert!(css.contains("box-sizing:border-box") && css.contains("prefers-color-scheme:dark"));
    assert!(css.contains(":focus-visible"));

    let (status, cache, _, old) = get(&app.url("/assets/postbote.css")).await;
    assert_eq!((status, old), (200, css), "the old name keeps working");
    assert_ne!(
        cache, "public, max-age=31536000, immutable",
        "but is not immutable"
    );
    assert_eq!(
        get(&app.url("/assets/postbote.0000000000.css")).await.0,
        404
    );

    // Another accent colour is another file.
    let (other, _sink, _db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let (_, _, _, plain) = get(&other.url("/")).await;
    assert!(!plain.contains(&href), "the hash follows the content");
    assert!(
        !plain.contains("<footer class=\"site\">\n<a href=\"https"),
        "no imprint unless configured"
    );
}

#[test]
fn a_bad_accent_colour_is_a_configuration_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("postbote.toml");
    for bad in ["blue", "#12345", "#12345g", "7a1f5c"] {
        std::fs::write(&file, format!("[site]\naccent_color = \"{bad}\"\n")).unwrap();
        let e = Config::from_sources(Some(&file), &HashMap::new()).unwrap_err();
        assert_eq!(e.key, "site.accent_color", "{bad}: {e}");
    }
    std::fs::write(
        &file,
        "[site]\nlogo_url = \"http://example.org/logo.png\"\n",
    )
    .unwrap();
    let e = Config::from_sources(Some(&file), &HashMap::new()).unwrap_err();
    assert_eq!(e.key, "site.logo_url", "{e}");
    for bad in ["0", "553"] {
        std::fs::write(&file, format!("[site]\nlogo_width = {bad}\n")).unwrap();
        let e = Config::from_sources(Some(&file), &HashMap::new()).unwrap_err();
        assert_eq!(e.key, "site.logo_width", "{bad}: {e}");
    }
    std::fs::write(&file, "[site]\naccent_color = \"#A0b1C2\"\n").unwrap();
    let c = Config::from_sources(Some(&file), &HashMap::new()).unwrap();
    assert_eq!(c.site.accent_color.as_str(), "#a0b1c2");
}

on_both_backends!(
    the_configured_site_shows_on_every_page_and_in_the_digest,
    the_stylesheet_has_a_content_hash_in_its_name_and_is_kept_for_a_year,
);
