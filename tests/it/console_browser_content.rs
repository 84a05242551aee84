//! The console's content pages in headless Chromium against the real `postbote
//! serve` binary, on both backends, as an operator uses them: create, rename and
//! retire a topic; add an item and hide another; add a feed (a real RSS server on
//! loopback) and "poll now"; approve a submission that the real `postbote inbound`
//! held and find it among the items; preview a digest of chosen topics in a chosen
//! language (text part and HTML frame) and send a test copy that smtp-sink
//! receives; read the webhook deliveries a real confirmation caused at a loopback
//! receiver. Every page is screenshotted at 1280 and 375 px, checked by axe-core
//! and has no console error (see [`Browser::check_page`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::browser::{Browser, console_serve};
use crate::feeds::{fixture_server, hold};
use crate::harness::{Api, Backend, SmtpSink, TestDb, a_day_with_a_digest, parse, recipient};
use crate::webhooks::{Receiver, webhooks_config};

/// The id of the item titled `title`, as the admin API lists it.
async fn item_id(api: Api<'_>, title: &str) -> i64 {
    let items: serde_json::Value = api
        .admin(reqwest::Method::GET, "/items", None)
        .await
        .json()
        .await
        .unwrap();
    items["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["title"] == title)
        .unwrap_or_else(|| panic!("no item {title}: {items}"))["id"]
        .as_i64()
        .unwrap()
}

/// The topics page: `technik` created on the form, then renamed in its row.
async fn create_and_rename_a_topic(browser: &Browser) {
    browser.click_and_wait("a[href^='/admin/topics?']").await;
    browser.fill("#slug", "technik").await;
    browser.fill("#name", "Technik").await;
    browser.fill("#description", "Geräte und Netze").await;
    browser
        .click_and_wait("form[action^='/admin/topics?'] button")
        .await;
    assert_eq!(browser.path().await, "/admin/topics");
    assert!(browser.has("#name-technik").await, "a row for technik");
    browser.fill("#name-technik", "Technik & Wissen").await;
    browser
        .click_and_wait("form[action^='/admin/topics/technik/rename'] button")
        .await;
    let table = browser.text("main table").await;
    assert!(table.contains("technik Technik & Wissen"), "{table}");
}

/// The items page: two items added on the form for technik, the second hidden.
async fn add_and_hide_items(browser: &Browser, api: Api<'_>, shots: &str) {
    browser.click_and_wait("a[href^='/admin/items?']").await;
    for (n, title) in ["Aus dem Browser", "Zurückgezogen"].iter().enumerate() {
        browser.click("input[name=topics][value=technik]").await;
        browser.fill("#title", title).await;
        let url = format!("https://presse.example/browser/{n}");
        browser.fill("#url", &url).await;
        browser.fill("#summary", "Von Hand im Browser").await;
        browser
            .click_and_wait("form[action^='/admin/items?'] button[type=submit]")
            .await;
        assert_eq!(browser.path().await, "/admin/items");
        let table = browser.text("main table").await;
        assert!(table.contains(title) && table.contains(&url), "{table}");
    }
    let kept = item_id(api, "Aus dem Browser").await;
    let hidden = item_id(api, "Zurückgezogen").await;
    browser
        .click_and_wait(&format!(
            "form[action^='/admin/items/{hidden}/hide'] button"
        ))
        .await;
    assert!(
        !browser
            .has(&format!("form[action^='/admin/items/{hidden}/hide']"))
            .await,
        "hidden: no hide button"
    );
    assert!(
        browser
            .has(&format!("form[action^='/admin/items/{kept}/hide']"))
            .await
    );
    browser.check_page(&format!("{shots}/console-items")).await;
}

/// The feeds page: a feed of the loopback RSS server added for technik (polled at
/// once, its two items counted), then polled again with "poll now".
async fn add_a_feed_and_poll_it_now(browser: &Browser, shots: &str) {
    let (base, seen) = fixture_server().await;
    browser.click_and_wait("a[href^='/admin/feeds?']").await;
    browser.fill("#url", &format!("{base}/rss.xml")).await;
    browser.click("#topic option[value=technik]").await;
    // New Year's midnight: never due again while the test runs.
    browser.fill("#schedule", "0 0 0 1 1 *").await;
    browser.fill("#name", "presse").await;
    browser
        .click_and_wait("form[action^='/admin/feeds?'] button")
        .await;
    assert_eq!(browser.path().await, "/admin/feeds");
    // The item count is the row's sixth cell after its heading.
    let count = "main tbody tr td:nth-of-type(6)";
    assert_eq!(browser.reload_until(count, "2").await, "2");
    assert_eq!(seen.rss_requests.load(Ordering::SeqCst), 1);
    browser
        .click_and_wait("form[action*='/poll?'] button")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.rss_requests.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "poll now did not poll");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser.check_page(&format!("{shots}/console-feeds")).await;
}

async fn topics_items_and_feeds_are_managed_in_the_browser(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let serve = console_serve(&db, &sink, "[polling]\ntick_ms = 50\n").await;
    let http = reqwest::Client::new();
    let api = serve.api(&http);
    let shots = format!("{backend:?}").to_lowercase();
    let browser = Browser::start().await;
    browser.login(&serve.base).await;

    create_and_rename_a_topic(&browser).await;
    add_and_hide_items(&browser, api, &shots).await;
    add_a_feed_and_poll_it_now(&browser, &shots).await;

    browser.click_and_wait("a[href^='/admin/topics?']").await;
    browser
        .click_and_wait("form[action^='/admin/topics/technik/retire'] button")
        .await;
    assert!(
        !browser
            .has("form[action^='/admin/topics/technik/retire']")
            .await
    );
    let topics: serde_json::Value = api
        .admin(reqwest::Method::GET, "/topics", None)
        .await
        .json()
        .await
        .unwrap();
    let technik = &topics.as_array().unwrap()[0];
    assert_eq!(technik["name"], "Technik & Wissen");
    assert!(technik["retired_at"].is_string(), "{technik}");
    browser.check_page(&format!("{shots}/console-topics")).await;
    browser.close().await;
}

async fn a_held_submission_is_approved_in_the_browser(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let serve = console_serve(&db, &sink, "").await;
    let http = reqwest::Client::new();
    let api = serve.api(&http);
    api.create_topic("wirtschaft", "Wirtschaft").await;
    hold(&db, "m1", "Erste Mitteilung").await;
    let shots = format!("{backend:?}").to_lowercase();
    let browser = Browser::start().await;
    browser.login(&serve.base).await;

    browser
        .click_and_wait("a[href^='/admin/submissions?']")
        .await;
    let held = browser.text("article.submission").await;
    assert!(
        held.contains("Erste Mitteilung") && held.contains("pr@agentur.example"),
        "{held}"
    );
    browser
        .check_page(&format!("{shots}/console-submissions"))
        .await;
    browser
        .click_and_wait("form[action*='/approve?'] button")
        .await;
    assert_eq!(browser.path().await, "/admin/submissions");
    assert!(
        browser
            .text("main")
            .await
            .contains("Nothing waits for a decision.")
    );
    browser.click_and_wait("a[href^='/admin/items?']").await;
    let items = browser.text("main table tbody").await;
    assert!(
        items.contains("Erste Mitteilung") && items.contains("mail:pr@agentur.example"),
        "{items}"
    );
    item_id(api, "Erste Mitteilung").await;
    browser.close().await;
}

/// The preview page: kultur in English shown, its text part and its HTML part in
/// the frame; then a test copy to `to`, which smtp-sink receives.
async fn preview_and_send_a_test_copy(browser: &Browser, sink: &SmtpSink, shots: &str) {
    let to = "tester@example.net";
    browser.click_and_wait("a[href^='/admin/preview?']").await;
    browser.click("input[name=topics][value=kultur]").await;
    browser.click("#preview-locale option[value=en]").await;
    browser
        .click_and_wait("form[action='/admin/preview'] button")
        .await;
    assert!(browser.text("main h2").await.starts_with("Your news of"));
    let text = browser.text("pre.digest-preview").await;
    assert!(text.contains("* Museum opens a new wing"), "{text}");
    assert!(
        !text.contains("Quartalszahlen"),
        "not a chosen topic: {text}"
    );
    let frame = browser.find("iframe.digest-preview").await;
    frame.enter_frame().await.expect("enter the frame");
    let part = browser.text("body").await;
    browser.client.enter_parent_frame().await.unwrap();
    assert!(
        part.contains("Your news of") && part.contains("Museum opens a new wing"),
        "{part}"
    );
    browser
        .check_page(&format!("{shots}/console-preview"))
        .await;

    let before = sink.raw_messages().len();
    browser.fill("#preview-to", to).await;
    browser
        .click_and_wait("form[action='/admin/preview/send'] button")
        .await;
    assert!(browser.text("[role=status]").await.contains("queued"));
    let mails = sink.wait_for(before + 1).await;
    let copy = mails.iter().find(|m| recipient(m) == to).expect("the copy");
    let copy = parse(copy).body_text(0).unwrap().into_owned();
    assert!(copy.contains("* Museum opens a new wing"), "{copy}");
}

async fn a_digest_is_previewed_and_sent_and_webhooks_are_listed_in_the_browser(backend: Backend) {
    let receiver = Receiver::start().await;
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let serve = console_serve(&db, &sink, &webhooks_config(&receiver.url)).await;
    let http = reqwest::Client::new();
    let api = serve.api(&http);
    // Its confirmation is a `subscriber.confirmed` for the receiver.
    a_day_with_a_digest(api, &sink).await;
    api.post_item(&["kultur"], "Museum opens a new wing").await;
    receiver.wait_for(1).await;
    let shots = format!("{backend:?}").to_lowercase();
    let browser = Browser::start().await;
    browser.login(&serve.base).await;

    preview_and_send_a_test_copy(&browser, &sink, &shots).await;

    browser.click_and_wait("a[href^='/admin/webhooks?']").await;
    assert!(browser.text("main ul").await.contains(&receiver.url));
    let row = browser.reload_until("main tbody tr", "delivered").await;
    assert!(row.contains("subscriber.confirmed"), "{row}");
    browser
        .check_page(&format!("{shots}/console-webhooks"))
        .await;
    browser.close().await;
}

on_both_backends!(
    topics_items_and_feeds_are_managed_in_the_browser,
    a_held_submission_is_approved_in_the_browser,
    a_digest_is_previewed_and_sent_and_webhooks_are_listed_in_the_browser,
);
