//! The reader's pages in headless Chromium against the real `postbote serve`
//! binary, in German and in English: sign up on the form, confirm with the link from
//! the mail and its button (weekdays chosen on the sign-up page), open the
//! digest's "view in browser" page and the archive, open the preferences from the
//! digest and change topics, time, weekdays and a pause, get the preferences link
//! again through "send me my link", unsubscribe from the digest's link; the digest
//! itself is screenshotted as a page. Every page is screenshotted at 1280
//! and 375 px, checked by axe-core and has no console error (see
//! [`Browser::check_page`]), and is in the reader's language.
//!
//! Also the sign-up page of a branded installation (`[site] name`, `logo_url`,
//! `accent_color`): the logo is a real `https` image on loopback (see
//! [`LogoServer`]), so it loads as it would in production and a failed load
//! would still be a console error.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::browser::{Browser, NARROW, WIDE};
use crate::harness::{
    Api, Backend, Serve, SmtpSink, Spawned, TestDb, find_link, free_port, listens_on, parse,
};

/// The page texts of `lang`, as the templates have them.
fn texts(lang: &str) -> toml::Table {
    let path = format!(
        "{}/templates/locales/{lang}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .expect("the locale file")
        .parse()
        .expect("TOML")
}

/// The text part of the `n`th mail (from 0) smtp-sink received.
async fn mail_text(sink: &SmtpSink, n: usize) -> String {
    let raw = sink.wait_for(n + 1).await;
    parse(&raw[n])
        .body_text(0)
        .expect("a text part")
        .into_owned()
}

/// A reader at their browser: the texts of their language, their address, where
/// the screenshots go, and the installation's API to look at what they changed.
struct Reader<'a> {
    browser: &'a Browser,
    api: Api<'a>,
    t: toml::Table,
    lang: &'a str,
    email: String,
    shots: String,
}

impl Reader<'_> {
    /// The reader's status as the installation has it.
    async fn status(&self) -> serde_json::Value {
        self.api.export(&self.email).await.unwrap()["status"].clone()
    }

    /// Ticks (or unticks) the checkboxes of `topics`.
    async fn tick(&self, topics: &[&str]) {
        for topic in topics {
            let css = format!("input[name=topics][value={topic}]");
            self.browser.click(&css).await;
        }
    }
}

/// Checks the page shown now (see [`Browser::check_page`]) and that it speaks the
/// reader's language with the heading `t[heading]`.
async fn page(r: &Reader<'_>, heading: &str, name: &str) {
    let (browser, t, lang) = (r.browser, &r.t, r.lang);
    let html_lang = browser
        .client
        .execute("return document.documentElement.lang;", vec![])
        .await
        .unwrap();
    assert_eq!(html_lang, lang, "the language of {name}");
    assert_eq!(
        browser.text("h1").await,
        t[heading].as_str().unwrap(),
        "{name}"
    );
    browser.check_page(&format!("{}/{name}", r.shots)).await;
    browser
        .assert_fits_narrowest(&format!("{}/{name}", r.shots))
        .await;
}

/// Screenshots of the digest's HTML part as a mail client would show it, at both
/// widths (a page of its own from a file: it is mail, not one of our pages).
async fn show_the_digest(r: &Reader<'_>, raw: &[u8]) {
    let html = parse(raw).body_html(0).expect("an HTML part").into_owned();
    let file = tempfile::Builder::new()
        .suffix(".html")
        .tempfile()
        .expect("a file");
    std::fs::write(file.path(), html).unwrap();
    r.browser
        .goto(&format!("file://{}", file.path().display()))
        .await;
    for width in [WIDE, NARROW] {
        r.browser.set_width(width).await;
        r.browser
            .screenshot(&format!("{}/digest-{width}", r.shots))
            .await;
    }
    r.browser.set_width(WIDE).await;
}

/// Fills the sign-up form on the page at `base` and sends it.
async fn sign_up(r: &Reader<'_>, base: &str) {
    let browser = r.browser;
    browser.goto(&format!("{base}/?lang={}", r.lang)).await;
    page(r, "subscribe_heading", "sign-up").await;
    browser.fill("#email", &r.email).await;
    r.tick(&["wirtschaft", "kultur"]).await;
    // All seven days come ticked; this reader wants none on Sundays.
    browser.click("input[name=weekdays][value=sun]").await;
    browser
        .find("#locale")
        .await
        .select_by_value(r.lang)
        .await
        .unwrap();
    browser.click("input[name=consent]").await;
    browser
        .click_and_wait("form[action^='/subscribe'] button")
        .await;
    page(r, "thanks_heading", "sign-up-sent").await;
}

/// Opens the confirmation link from the mail and presses the button.
async fn confirm(r: &Reader<'_>, sink: &SmtpSink) {
    let link = find_link(&mail_text(sink, 0).await, "confirm").expect("a confirmation link");
    r.browser.goto(&link).await;
    page(r, "confirm_heading", "confirm").await;
    assert_eq!(
        r.status().await,
        "pending",
        "opening the link alone confirms nothing"
    );
    r.browser.click_and_wait("form button").await;
    page(r, "confirmed_heading", "confirmed").await;
    assert_eq!(r.status().await, "confirmed");
    assert_eq!(
        r.api.export(&r.email).await.unwrap()["schedule"]["weekdays"],
        serde_json::json!(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]),
        "the weekdays ticked on the sign-up page"
    );
}

/// Sets the value of the input `id` as a reader's picker would (time and date
/// inputs take keys in the browser's own format, so the value is set directly).
async fn set_value(r: &Reader<'_>, id: &str, value: &str) {
    r.browser
        .client
        .execute(
            "document.getElementById(arguments[0]).value = arguments[1];",
            vec![serde_json::json!(id), serde_json::json!(value)],
        )
        .await
        .unwrap();
}

/// Opens the preferences from the digest's link, trades wirtschaft for sport.
async fn change_topics(r: &Reader<'_>, digest: &str) {
    let link = find_link(digest, "preferences").expect("a preferences link");
    r.browser.goto(&link).await;
    page(r, "preferences_heading", "preferences").await;
    r.tick(&["wirtschaft", "sport"]).await;
    set_value(r, "delivery_time", "06:30").await;
    r.browser.click("input[name=weekdays][value=sat]").await;
    let pause = (chrono::Utc::now() + chrono::Duration::days(10)).date_naive();
    set_value(r, "paused_until", &pause.to_string()).await;
    r.browser
        .click_and_wait("form input[value=save] ~ button")
        .await;
    assert_eq!(
        r.browser.text("[role=status]").await,
        r.t["preferences_saved"].as_str().unwrap()
    );
    page(r, "preferences_heading", "preferences-saved").await;
    let export = r.api.export(&r.email).await.unwrap();
    assert_eq!(export["topics"], serde_json::json!(["kultur", "sport"]));
    assert_eq!(export["schedule"]["delivery_time"], "06:30");
    assert_eq!(
        export["schedule"]["weekdays"],
        serde_json::json!(["Mon", "Tue", "Wed", "Thu", "Fri"])
    );
    let changes = export["preference_changes"].as_array().unwrap();
    assert_eq!(
        changes.last().unwrap()["paused_until"],
        pause.to_string(),
        "{changes:?}"
    );
}

/// Asks for the preferences link on "send me my link" and finds it in the mail
/// that is mail number `n` (from 0).
async fn send_me_my_link(r: &Reader<'_>, base: &str, sink: &SmtpSink, n: usize) {
    r.browser
        .goto(&format!("{base}/link?lang={}", r.lang))
        .await;
    page(r, "link_heading", "link").await;
    r.browser.fill("#email", &r.email).await;
    r.browser
        .click_and_wait("form[action^='/link'] button")
        .await;
    page(r, "link_sent_heading", "link-sent").await;
    let mail = mail_text(sink, n).await;
    let link = find_link(&mail, "preferences").expect("the preferences link, mailed");
    r.browser.goto(&link).await;
    page(r, "preferences_heading", "preferences-from-link").await;
}

/// The digest's "view in browser" page and the archive it points to.
async fn the_archive(r: &Reader<'_>, base: &str, digest: &str) {
    let view = digest
        .split_whitespace()
        .find(|w| w.contains("/digest?"))
        .expect("a view-in-browser link");
    r.browser.goto(view).await;
    assert!(
        r.browser
            .text("body")
            .await
            .contains("Premiere im Stadttheater")
    );
    r.browser
        .check_page(&format!("{}/digest-view", r.shots))
        .await;
    r.browser
        .goto(&format!("{base}/archive?lang={}", r.lang))
        .await;
    page(r, "archive_heading", "archive").await;
    r.browser
        .goto(&format!("{base}/archive/kultur?lang={}", r.lang))
        .await;
    assert_eq!(r.browser.text("h1").await, "Kultur");
    r.browser
        .check_page(&format!("{}/archive-topic", r.shots))
        .await;
}

/// Opens the digest's unsubscribe link and presses the button.
async fn unsubscribe(r: &Reader<'_>, digest: &str) {
    let link = find_link(digest, "unsubscribe").expect("an unsubscribe link");
    r.browser.goto(&link).await;
    page(r, "unsubscribe_heading", "unsubscribe").await;
    assert_eq!(
        r.status().await,
        "confirmed",
        "opening the link alone changes nothing"
    );
    r.browser.click_and_wait("form button").await;
    page(r, "unsubscribed_heading", "unsubscribed").await;
    assert_eq!(r.status().await, "unsubscribed");
}

async fn a_reader_signs_up_confirms_changes_topics_and_unsubscribes(backend: Backend, lang: &str) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let serve =
        Serve::start_on_own_port(&db, &sink.url(), "[digest]\nrun_scheduler = false\n").await;
    let http = reqwest::Client::new();
    serve.wait_ready(&http).await;
    let api: Api = serve.api(&http);
    for (slug, name) in [
        ("wirtschaft", "Wirtschaft"),
        ("kultur", "Kultur"),
        ("sport", "Sport"),
    ] {
        api.create_topic(slug, name).await;
    }
    let browser = Browser::start().await;
    let r = Reader {
        browser: &browser,
        api,
        t: texts(lang),
        lang,
        email: format!("leser-{lang}@example.org"),
        shots: format!("{backend:?}/{lang}").to_lowercase(),
    };
    sign_up(&r, &serve.base).await;
    confirm(&r, &sink).await;
    api.post_item(&["kultur"], "Premiere im Stadttheater").await;
    let at = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    assert_eq!(api.run_pass(&at).await, (1, 1));
    let digest = mail_text(&sink, 1).await;
    show_the_digest(&r, &sink.wait_for(2).await[1]).await;
    the_archive(&r, &serve.base, &digest).await;
    change_topics(&r, &digest).await;
    send_me_my_link(&r, &serve.base, &sink, 2).await;
    unsubscribe(&r, &digest).await;
    browser.close().await;
}

async fn the_reader_path_in_german(backend: Backend) {
    a_reader_signs_up_confirms_changes_topics_and_unsubscribes(backend, "de").await
}

async fn the_reader_path_in_english(backend: Backend) {
    a_reader_signs_up_confirms_changes_topics_and_unsubscribes(backend, "en").await
}

/// The logo of the branded installation: 120 × 40 px in the accent colour.
const LOGO_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40" viewBox="0 0 120 40"><rect width="120" height="40" rx="6" fill="#7a1f5c"/><path d="M14 12h28v16H14z M14 12l14 10 14-10" fill="none" stroke="#fff" stroke-width="2"/></svg>"##;

/// A logo served over HTTPS on loopback by `openssl s_server -HTTP`, with a
/// certificate made for the test. The configuration takes only `https` logos and
/// the pages' Content-Security-Policy allows images from the logo's origin, so the
/// image must come from an `https` origin to load at all; Chromium is told to trust
/// this certificate's key and no other (`--ignore-certificate-errors-spki-list`).
struct LogoServer {
    /// `https://127.0.0.1:<port>/logo.svg`.
    url: String,
    /// The Chromium flag that trusts the certificate's key.
    trust: String,
    /// The server, killed when the value is dropped.
    _server: Spawned,
    /// Certificate, key and the response file.
    _dir: tempfile::TempDir,
}

impl LogoServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a folder");
        let sh = |script: &str| {
            let out = Command::new("sh")
                .args(["-c", script])
                .current_dir(dir.path())
                .output()
                .expect("sh");
            assert!(out.status.success(), "{script}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        sh(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout key.pem -out cert.pem -days 2 -subj /CN=127.0.0.1 \
            -addext subjectAltName=IP:127.0.0.1 2>/dev/null",
        );
        let spki = sh(
            "openssl x509 -in cert.pem -noout -pubkey | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
        );
        // s_server -HTTP sends the file as the whole response, headers included.
        let response = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: image/svg+xml\r\nContent-Length: {}\r\n\r\n{LOGO_SVG}",
            LOGO_SVG.len()
        );
        std::fs::write(dir.path().join("logo.svg"), response).unwrap();
        let port = free_port();
        let server = Spawned::start(
            Command::new("openssl")
                .args([
                    "s_server", "-quiet", "-HTTP", "-cert", "cert.pem", "-key", "key.pem",
                ])
                .arg("-accept")
                .arg(format!("127.0.0.1:{port}"))
                .current_dir(dir.path()),
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listens_on(server.id(), port) {
            assert!(
                Instant::now() < deadline,
                "openssl s_server did not listen: {}",
                server.output_so_far()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            url: format!("https://127.0.0.1:{port}/logo.svg"),
            trust: format!("--ignore-certificate-errors-spki-list={spki}"),
            _server: server,
            _dir: dir,
        }
    }
}

/// Runs `script` in the page and returns what it returns.
async fn js(browser: &Browser, script: &str) -> serde_json::Value {
    browser.client.execute(script, vec![]).await.expect(script)
}

async fn the_sign_up_page_wears_the_configured_name_logo_and_accent_colour(backend: Backend) {
    const NAME: &str = "Pressedienst Musterstadt";
    let logo = LogoServer::start().await;
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let site = format!(
        "[digest]\nrun_scheduler = false\n[site]\nname = \"{NAME}\"\nlogo_url = \"{}\"\nlogo_width = 120\naccent_color = \"#7A1F5C\"\n",
        logo.url
    );
    let serve = Serve::start_on_own_port(&db, &sink.url(), &site).await;
    let http = reqwest::Client::new();
    serve.wait_ready(&http).await;
    serve.api(&http).create_topic("kultur", "Kultur").await;
    let browser = Browser::start_with(std::slice::from_ref(&logo.trust)).await;
    browser.goto(&format!("{}/?lang=de", serve.base)).await;

    assert!(browser.text("header.site .site-name").await.contains(NAME));
    // The logo loaded (a broken image has no natural width), with an alt text
    // that is empty on purpose: the name beside it in the same link names the link.
    let loaded = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const img = document.querySelector('header.site .site-name img');
             if (!img) { done('no logo'); return; }
             const report = () => done({ src: img.currentSrc, width: img.naturalWidth,
               alt: img.getAttribute('alt') });
             if (img.complete) report(); else { img.onload = report; img.onerror = report; }",
            vec![],
        )
        .await
        .expect("look at the logo");
    assert_eq!(loaded["src"], logo.url.as_str(), "{loaded}");
    assert_eq!(loaded["width"], 120, "the logo loaded: {loaded}");
    assert_eq!(loaded["alt"], "", "{loaded}");

    // #7a1f5c on the button and the header's rule.
    let accent = "rgb(122, 31, 92)";
    let button = js(
        &browser,
        "return getComputedStyle(document.querySelector(\"form[action^='/subscribe'] button\")).backgroundColor;",
    )
    .await;
    assert_eq!(button, accent, "the button wears the accent colour");
    let rule = js(
        &browser,
        "return getComputedStyle(document.querySelector('header.site')).borderBottomColor;",
    )
    .await;
    assert_eq!(rule, accent);
    let title = js(&browser, "return document.title;").await;
    assert!(
        title.as_str().unwrap().ends_with(&format!(" – {NAME}")),
        "{title}"
    );
    browser
        .check_page(&format!("{backend:?}/branded/sign-up").to_lowercase())
        .await;
    browser.close().await;
}

/// A deployment on plain HTTP under a name (an intranet, a test installation): a
/// browser treats it as no secure context and sends no `Sec-Fetch-Site`, so the
/// form's `Origin` decides whether the post is our own. Under `Referrer-Policy:
/// no-referrer` Chromium sent `Origin: null` even from our own page, and the
/// sign-up was refused as cross-site.
async fn a_sign_up_on_plain_http_under_a_name_is_accepted(backend: Backend) {
    const HOST: &str = "postbote.test";
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let serve = Serve::start_on_own_port_at_host(
        &db,
        &sink.url(),
        "[digest]\nrun_scheduler = false\n",
        HOST,
    )
    .await;
    let http = reqwest::Client::new();
    serve.wait_ready(&http).await;
    serve.api(&http).create_topic("kultur", "Kultur").await;
    let port = serve.base.rsplit(':').next().unwrap();
    let browser =
        Browser::start_with(&[format!("--host-resolver-rules=MAP {HOST} 127.0.0.1")]).await;
    browser
        .goto(&format!("http://{HOST}:{port}/?lang=de"))
        .await;
    browser.fill("#email", "leser@example.org").await;
    browser.click("input[name=topics][value=kultur]").await;
    browser.click("input[name=consent]").await;
    browser
        .click_and_wait("form[action^='/subscribe'] button")
        .await;
    assert_eq!(
        browser.text("h1").await,
        texts("de")["thanks_heading"].as_str().unwrap(),
        "the sign-up was accepted"
    );
    let mail = mail_text(&sink, 0).await;
    assert!(
        mail.contains(&format!("http://{HOST}:{port}/confirm")),
        "{mail}"
    );
    browser.close().await;
}

on_both_backends!(
    a_sign_up_on_plain_http_under_a_name_is_accepted,
    the_reader_path_in_german,
    the_reader_path_in_english,
    the_sign_up_page_wears_the_configured_name_logo_and_accent_colour,
);
