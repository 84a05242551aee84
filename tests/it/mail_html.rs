//! The HTML of every mail a reader gets, checked against what Gmail, Outlook (its
//! Word engine) and Apple Mail render, as captured by Postfix's smtp-sink from the
//! real app: the digest at `digest.max_items`, the confirmation, "already
//! subscribed" and "send me my link" mails, in German and English, with and
//! without a configured logo. No mail client renders them here (none runs
//! headless); the check holds the constraints those clients are known to impose:
//!
//! - layout by tables, each `role="presentation"`, the content table 600 px by its
//!   `width` attribute (Outlook ignores `max-width`);
//! - every style inline: no `<style>` block but at most one dark-mode
//!   `@media (prefers-color-scheme …)` block, no `class=` without one (Gmail drops
//!   `<style>` in some of its apps), `<meta name="color-scheme">` for dark mode;
//! - no CSS that Outlook or Gmail drops (flex, grid, `position`, `float`, `var(`,
//!   `calc(`, background images, `url(`), no `<script>`, `<form>`, `<link>`,
//!   `<iframe>`, `<svg>`, video or audio;
//! - no remote image but the configured logo, which has `alt`, `width` and
//!   `height` attributes (Outlook sizes images by them);
//! - `<html lang>` in the reader's language; a text part that carries the items
//!   and the links on its own;
//! - the HTML part (as sent, transfer-encoded) under Gmail's 102 KB clipping limit.

use crate::harness::{
    Backend, SmtpSink, TestApp, app_at, delivered, execute_sql, find_link, parse, utc,
};
use postbote::config::LogoWidth;
use postbote::domain::HttpUrl;

const READER: &str = "leserin@example.org";
const NEWCOMER: &str = "neu@example.org";
const LOGO: &str = "https://cdn.example.net/logo.png";
/// Gmail shows "[Message clipped]" and hides the rest (the footer with the
/// unsubscribe link) when a mail's HTML is larger than this.
const GMAIL_CLIPS_AT: usize = 102 * 1024;
/// CSS properties Outlook's Word engine or Gmail drop, so a layout must not need
/// them.
const DROPPED_PROPERTIES: [&str; 3] = ["position", "float", "background-image"];
/// CSS values of the same kind.
const DROPPED_VALUES: [&str; 7] = ["flex", "grid", "var(", "calc(", "url(", "fixed", "sticky"];
/// Elements mail clients strip or refuse.
const DROPPED_ELEMENTS: [&str; 9] = [
    "<script", "<form", "<link", "<iframe", "<object", "<embed", "<svg", "<video", "<audio",
];

/// The start tags `<name …>` of `html`, each without its `<` and `>`.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    html.split(&format!("<{name}"))
        .skip(1)
        .filter(|rest| rest.starts_with([' ', '>', '/']))
        .map(|rest| rest.split('>').next().unwrap_or(rest))
        .collect()
}

/// The value of the attribute `name="…"` in a start tag.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    tag[at..].split('"').next()
}

/// Fails when `html` (the mail `what`) breaks a rule of the module doc.
fn assert_mail_clients_render(what: &str, html: &str, lang: &str, logo: Option<&str>) {
    assert_table_layout(what, html, lang);
    assert_inline_styles(what, html);
    assert_only_the_logo(what, html, logo);
}

/// Language, dark mode and a layout of presentation tables in a 600 px column.
fn assert_table_layout(what: &str, html: &str, lang: &str) {
    assert!(
        html.contains(&format!("<html lang=\"{lang}\"")),
        "{what}: the language"
    );
    assert!(
        html.contains("<meta name=\"color-scheme\" content=\"light dark\">"),
        "{what}: dark mode is declared, so clients do not invert it blindly"
    );
    let tables = tags(html, "table");
    assert!(tables.len() >= 2, "{what}: a layout of tables");
    for table in &tables {
        assert_eq!(
            attribute(table, "role"),
            Some("presentation"),
            "{what}: {table}"
        );
    }
    assert!(
        tables[..2]
            .iter()
            .any(|t| attribute(t, "width") == Some("600")),
        "{what}: the outer tables hold a 600 px column: {tables:?}"
    );
}

/// Every style inline (a `<style>` block only for dark mode), nothing that Outlook
/// or Gmail drops.
fn assert_inline_styles(what: &str, html: &str) {
    let blocks: Vec<&str> = html.split("<style").skip(1).collect();
    assert!(blocks.len() <= 1, "{what}: at most one <style> block");
    for block in &blocks {
        let css = block
            .split_once('>')
            .map_or("", |(_, css)| css)
            .trim_start();
        assert!(
            css.starts_with("@media (prefers-color-scheme"),
            "{what}: a <style> block only for dark mode, everything else inline"
        );
    }
    if blocks.is_empty() {
        assert!(
            !html.contains(" class=\""),
            "{what}: a class styles nothing"
        );
    }

    let lower = html.to_ascii_lowercase();
    for element in DROPPED_ELEMENTS {
        assert!(!lower.contains(element), "{what}: {element}");
    }
    assert!(
        !lower.contains(" background=\""),
        "{what}: a background image"
    );
    for style in lower.split(" style=\"").skip(1) {
        let style = style.split('"').next().unwrap_or_default();
        for declaration in style.split(';').filter(|d| !d.trim().is_empty()) {
            let (property, value) = declaration.split_once(':').unwrap_or((declaration, ""));
            let (property, value) = (property.trim(), value.trim());
            assert!(
                !DROPPED_PROPERTIES.contains(&property),
                "{what}: {declaration}"
            );
            for dropped in DROPPED_VALUES {
                assert!(!value.contains(dropped), "{what}: {declaration}");
            }
        }
    }
}

/// No image but the logo, which has an alt text and its size as attributes.
fn assert_only_the_logo(what: &str, html: &str, logo: Option<&str>) {
    let lower = html.to_ascii_lowercase();
    let images = tags(html, "img");
    assert_eq!(
        lower.matches(" src=\"").count(),
        images.len(),
        "{what}: nothing else loads from anywhere"
    );
    match logo {
        None => assert!(images.is_empty(), "{what}: no image: {images:?}"),
        Some(src) => {
            assert_eq!(images.len(), 1, "{what}: the logo only");
            let img = images[0];
            assert_eq!(attribute(img, "src"), Some(src), "{what}");
            assert!(
                attribute(img, "alt").is_some_and(|a| !a.is_empty()),
                "{what}: {img}"
            );
            for size in ["width", "height"] {
                assert!(
                    attribute(img, size).is_some_and(|v| v.parse::<u32>().is_ok()),
                    "{what}: the {size} attribute in {img}"
                );
            }
        }
    }
}

/// The HTML part of a captured mail, after checking its size as sent.
fn html_part(what: &str, raw: &[u8]) -> String {
    let message = parse(raw);
    let part = message.html_part(0).expect("an HTML part");
    let sent = (part.raw_end_offset() - part.raw_body_offset()) as usize;
    let html = message.body_html(0).expect("an HTML part").into_owned();
    println!("{what}: HTML {} bytes, {sent} as sent", html.len());
    assert!(
        sent.max(html.len()) < GMAIL_CLIPS_AT,
        "{what}: {sent} bytes of HTML, Gmail clips it"
    );
    html
}

/// The text part of a captured mail.
fn text_part(raw: &[u8]) -> String {
    parse(raw).body_text(0).expect("a text part").into_owned()
}

/// The title of item `n`: as long as a press release's headline gets.
fn title(n: usize) -> String {
    format!(
        "Meldung {n:02}: Stadtrat beschließt den Haushalt für Straßen, Schulen und Brücken, Kämmerin erwartet höhere Einnahmen aus der Gewerbesteuer"
    )
}

/// Posts `count` items to wirtschaft and kultur in turn, each with a summary as
/// long as a feed's (500 characters) and a long link.
async fn post_items(app: &TestApp, count: usize) {
    let summary: String = "Die Stadtverordneten haben nach langer Debatte zugestimmt; die Opposition kritisiert höhere Gebühren. "
        .repeat(6)
        .chars()
        .take(500)
        .collect();
    for n in 0..count {
        let topic = ["wirtschaft", "kultur"][n % 2];
        let body = serde_json::json!({
            "topics": [topic],
            "title": title(n),
            "summary": summary,
            "url": format!("https://presse.example.org/meldungen/2027/05/{n:02}-stadtrat-beschliesst-haushalt-fuer-strassen-schulen-und-bruecken"),
        });
        let r = app.admin(reqwest::Method::POST, "/items", Some(body)).await;
        assert_eq!(r.status(), 201);
    }
}

/// Posts the sign-up form for `email` in `lang`.
async fn sign_up(app: &TestApp, email: &str, lang: &str) {
    let r = app
        .sign_up_form(&[
            ("email", email),
            ("topics", "wirtschaft"),
            ("delivery_time", "07:30"),
            ("timezone", "Europe/Berlin"),
            ("locale", lang),
            ("consent", "on"),
        ])
        .await;
    assert_eq!(r.status(), 200);
}

/// The `n`th mail (from 0) smtp-sink received, once it has.
async fn nth(sink: &SmtpSink, n: usize) -> Vec<u8> {
    sink.wait_for(n + 1).await.swap_remove(n)
}

/// The reader's digest with `max` items and ten more counted, checked; its text
/// part lists every title and carries the links.
async fn the_digest_at_max_items(
    app: &TestApp,
    sink: &SmtpSink,
    max: usize,
    lang: &str,
    logo: Option<&str>,
) {
    post_items(app, max + 10).await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (1, 1));
    let digest = delivered(app, sink).await[READER][0].clone();
    let html = html_part("digest", &digest);
    assert_mail_clients_render("digest", &html, lang, logo);
    let text = text_part(&digest);
    let listed = text.lines().filter(|l| l.starts_with("* ")).count();
    assert_eq!(listed, max, "a digest at max_items");
    for n in 10..max + 10 {
        let title = title(n);
        assert!(text.contains(&title), "the text part lists {title}");
        assert!(html.contains(&title), "the HTML part lists {title}");
    }
    let unsubscribe = find_link(&text, "unsubscribe").expect("the unsubscribe link in the text");
    assert!(html.contains(&format!("href=\"{unsubscribe}\"")));
    assert!(find_link(&text, "preferences").is_some());
}

async fn every_mail_keeps_to_what_mail_clients_render(
    backend: Backend,
    lang: &str,
    logo: Option<&str>,
) {
    let mut max = 0;
    let (app, sink, _db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |c| {
        max = c.digest.max_items;
        c.rate_limit.per_address_per_hour = 0;
        if let Some(logo) = logo {
            c.site.logo_url = Some(HttpUrl::parse(logo).unwrap());
            c.site.logo_width = LogoWidth::new(120).unwrap();
        }
    })
    .await;
    let now = utc("2027-05-01T08:00:00Z");
    app.reader(
        READER,
        &["wirtschaft", "kultur"],
        "07:00",
        "Europe/Berlin",
        lang,
        now,
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    the_digest_at_max_items(&app, &sink, max, lang, logo).await;

    sign_up(&app, NEWCOMER, lang).await;
    let confirm = nth(&sink, 1).await;
    assert_mail_clients_render(
        "confirmation",
        &html_part("confirmation", &confirm),
        lang,
        logo,
    );
    assert!(find_link(&text_part(&confirm), "confirm").is_some());

    sign_up(&app, READER, lang).await;
    let again = nth(&sink, 2).await;
    assert_mail_clients_render(
        "already subscribed",
        &html_part("already subscribed", &again),
        lang,
        logo,
    );
    assert!(find_link(&text_part(&again), "preferences").is_some());

    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("form_locale", lang), ("email", READER)])
        .finish();
    let r = app
        .http
        .post(app.url("/link"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let link = nth(&sink, 3).await;
    assert_mail_clients_render(
        "preferences link",
        &html_part("preferences link", &link),
        lang,
        logo,
    );
    assert!(find_link(&text_part(&link), "preferences").is_some());
    app.stop().await;
}

async fn the_mails_in_german_with_a_logo(backend: Backend) {
    every_mail_keeps_to_what_mail_clients_render(backend, "de", Some(LOGO)).await
}

async fn the_mails_in_english_without_a_logo(backend: Backend) {
    every_mail_keeps_to_what_mail_clients_render(backend, "en", None).await
}

async fn the_mails_in_english_with_a_logo(backend: Backend) {
    every_mail_keeps_to_what_mail_clients_render(backend, "en", Some(LOGO)).await
}

/// A digest for [`READER`] from 1,010 short items in one topic with `max_items` at
/// its highest (1,000), checked: under the size at which Gmail clips a mail and
/// hides its end (the footer with the unsubscribe link), the rest counted, the
/// footer in the HTML. With `html_template`, the German digest's HTML template is
/// replaced by it and the text template by a bare list of titles (`templates_dir`).
async fn a_digest_of_many_items(backend: Backend, html_template: Option<&str>) -> usize {
    let templates = tempfile::tempdir().unwrap();
    if let Some(template) = html_template {
        let dir = templates.path().join("mail/de/digest");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("body.html.hbs"), template).unwrap();
        std::fs::write(
            dir.join("body.txt.hbs"),
            "{{#each groups}}{{#each items}}* {{title}}\n{{/each}}{{/each}}{{#if more}}… und {{more}} weitere Meldungen\n{{/if}}",
        )
        .unwrap();
    }
    let (app, sink, _db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |c| {
        c.digest.max_items = 1000;
        if html_template.is_some() {
            c.templates_dir = Some(templates.path().to_owned());
        }
    })
    .await;
    let now = utc("2027-05-01T08:00:00Z");
    app.reader(READER, &["wirtschaft"], "07:00", "Europe/Berlin", "de", now)
        .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    // One item through the API, the rest as copies of it straight into the tables.
    let body = serde_json::json!({
        "topics": ["wirtschaft"],
        "title": title(0),
        "summary": "Der Rat stimmt zu.",
        "url": "https://presse.example.org/meldungen/0",
    });
    let r = app.admin(reqwest::Method::POST, "/items", Some(body)).await;
    assert_eq!(r.status(), 201);
    let posted = 1010;
    let topic = app.store.topics_by_slugs(&["wirtschaft"]).await.unwrap()[0].id;
    execute_sql(
        &app.store,
        format!(
            "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < {copies}) \
             INSERT INTO items (dedup_key, title, url, summary, source, created_at) \
             SELECT 'copy:' || k, 'Kopie ' || k || ': ' || title, url || '-' || k, summary, source, created_at \
             FROM n, items WHERE items.id = (SELECT MIN(id) FROM items); \
             INSERT INTO item_topics (item_id, topic_id, arrival) \
             SELECT id, {topic}, id FROM items WHERE dedup_key LIKE 'copy:%';",
            copies = posted - 1
        ),
    )
    .await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (1, 1));
    let digest = delivered(&app, &sink).await[READER][0].clone();
    // Checks the size as sent and decoded against Gmail's limit.
    let html = html_part("a digest of many items", &digest);
    let text = text_part(&digest);
    let listed = text.lines().filter(|l| l.starts_with("* ")).count();
    assert!(listed > 10 && listed < 1000, "{listed} listed");
    assert!(
        text.contains(&format!("… und {} weitere Meldungen", posted - listed)),
        "the rest counted: {text}"
    );
    let unsubscribe = find_link(&text, "unsubscribe").expect("the unsubscribe link");
    assert!(
        html.contains(&format!("href=\"{unsubscribe}\"")),
        "the footer is in the HTML"
    );
    app.stop().await;
    listed
}

/// The built-in templates: the size limit of the whole mail binds first.
async fn a_digest_of_many_items_lists_fewer_before_gmail_clips_it(backend: Backend) {
    a_digest_of_many_items(backend, None).await;
}

/// An operator's own HTML template with heavy markup per item: the whole mail would
/// still be within its limit with the HTML part far past Gmail's, so the HTML part's
/// own limit lists fewer items.
async fn an_own_template_with_heavy_markup_lists_fewer_before_gmail_clips_it(backend: Backend) {
    let cell = format!(
        "<td style=\"{}\">",
        "padding:0;margin:0;border:0;".repeat(30)
    );
    let template = format!(
        "<!DOCTYPE html><html lang=\"de\"><body><table role=\"presentation\" width=\"600\">\n\
         {{{{#each groups}}}}{{{{#each items}}}}<tr>{cell}{{{{title}}}}</td></tr>\n{{{{/each}}}}{{{{/each}}}}"
    );
    let listed = a_digest_of_many_items(backend, Some(&template)).await;
    assert!(listed < 200, "{listed} listed");
}

on_both_backends!(
    a_digest_of_many_items_lists_fewer_before_gmail_clips_it,
    an_own_template_with_heavy_markup_lists_fewer_before_gmail_clips_it,
    the_mails_in_german_with_a_logo,
    the_mails_in_english_without_a_logo,
    the_mails_in_english_with_a_logo,
);
