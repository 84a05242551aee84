//! Daily digests at each reader's local time, exactly once, on both backends and
//! through a real SMTP server, with passes run at chosen instants.

use crate::harness::{
    Backend, RefusedPort, SmtpSink, TestApp, TestDb, app_at as app_with, delivered, digests,
    find_link, parse, test_config, utc,
};
use mail_parser::Message;
use postbote::clock::ManualClock;

fn text(raw: &[u8]) -> String {
    parse(raw).body_text(0).unwrap().into_owned()
}

fn html(raw: &[u8]) -> String {
    parse(raw).body_html(0).unwrap().into_owned()
}

async fn readers_get_their_digest_at_their_own_local_time(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    // Berlin subscribes through the real double opt-in; the others are imported.
    let r = app
        .sign_up_json(serde_json::json!({"email": "berlin@example.org", "topics": ["wirtschaft"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true}))
        .await;
    assert_eq!(r.status(), 202);
    let raw = sink.wait_for(1).await;
    let link = find_link(&text(&raw[0]), "confirm").unwrap();
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    let now = utc("2027-01-14T12:00:00Z");
    app.reader(
        "newyork@example.org",
        &["wirtschaft"],
        "07:00",
        "America/New_York",
        "en",
        now,
    )
    .await;
    app.reader(
        "tokyo@example.org",
        &["wirtschaft"],
        "07:00",
        "Asia/Tokyo",
        "de",
        now,
    )
    .await;
    clock.set(utc("2027-01-14T13:00:00Z"));
    app.post_item(&["wirtschaft"], "Quartalszahlen").await;

    // Tokyo 07:00 = 22:00 UTC, Berlin 07:00 = 06:00 UTC, New York 07:00 = 12:00 UTC.
    for (at, expected_due) in [
        ("2027-01-14T21:59:00Z", 0),
        ("2027-01-14T22:00:00Z", 1),
        ("2027-01-15T05:59:59Z", 0),
        ("2027-01-15T06:00:00Z", 1),
        ("2027-01-15T11:59:00Z", 0),
        ("2027-01-15T12:00:00Z", 1),
    ] {
        let (due, enqueued) = app.run_pass(at).await;
        assert_eq!(
            (due, enqueued),
            (expected_due, expected_due),
            "pass at {at}"
        );
        let got = delivered(&app, &sink).await;
        let expect: &[&str] = match at {
            "2027-01-14T21:59:00Z" => &[],
            "2027-01-14T22:00:00Z" | "2027-01-15T05:59:59Z" => &["tokyo@example.org"],
            "2027-01-15T06:00:00Z" | "2027-01-15T11:59:00Z" => {
                &["tokyo@example.org", "berlin@example.org"]
            }
            _ => &[
                "tokyo@example.org",
                "berlin@example.org",
                "newyork@example.org",
            ],
        };
        let mut have: Vec<&str> = got.keys().map(String::as_str).collect();
        have.sort_unstable();
        let mut want = expect.to_vec();
        want.sort_unstable();
        assert_eq!(have, want, "after the pass at {at}");
        assert!(got.values().all(|v| v.len() == 1), "one digest each");
    }
    let ny = parse(&digests(&sink)["newyork@example.org"][0])
        .subject()
        .unwrap()
        .to_owned();
    assert_eq!(ny, "Your news of 15 January 2027: 1 new");
    let tokyo = parse(&digests(&sink)["tokyo@example.org"][0])
        .subject()
        .unwrap()
        .to_owned();
    assert_eq!(
        tokyo, "Neue Meldungen für Sie am 15.01.2027: 1",
        "Tokyo's date is its own"
    );
}

/// Runs passes every 15 minutes across `[from, to)`, posting an item before each,
/// and returns how many digests the reader got.
async fn digests_across(
    app: &TestApp,
    sink: &SmtpSink,
    clock: &ManualClock,
    from: &str,
    to: &str,
) -> usize {
    let (mut at, end) = (utc(from), utc(to));
    let before = digests(sink).get("night@example.org").map_or(0, Vec::len);
    let mut n = 0;
    while at < end {
        clock.set(at - chrono::Duration::minutes(1));
        app.post_item(&["wirtschaft"], &format!("Meldung {n}"))
            .await;
        app.run_pass(&at.to_rfc3339()).await;
        at += chrono::Duration::minutes(15);
        n += 1;
    }
    delivered(app, sink)
        .await
        .get("night@example.org")
        .map_or(0, Vec::len)
        - before
}

async fn a_0230_berlin_reader_gets_exactly_one_digest_on_both_dst_days(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-03-27T12:00:00Z", |_| {}).await;
    app.reader(
        "night@example.org",
        &["wirtschaft"],
        "02:30",
        "Europe/Berlin",
        "de",
        utc("2027-03-27T12:00:00Z"),
    )
    .await;
    // 2027-03-28 in Berlin: 22:00 UTC the day before to 22:00 UTC (the day is 23 hours).
    let spring = digests_across(
        &app,
        &sink,
        &clock,
        "2027-03-27T23:00:00Z",
        "2027-03-28T22:00:00Z",
    )
    .await;
    assert_eq!(spring, 1, "one digest on the day 02:30 does not exist");
    // Catch up to the autumn day with one pass, then walk through 2027-10-31 (25 hours).
    clock.set(utc("2027-10-30T12:00:00Z"));
    app.run_pass("2027-10-30T12:00:00Z").await;
    delivered(&app, &sink).await;
    let autumn = digests_across(
        &app,
        &sink,
        &clock,
        "2027-10-30T22:00:00Z",
        "2027-10-31T23:00:00Z",
    )
    .await;
    assert_eq!(autumn, 1, "one digest on the day 02:30 happens twice");
}

async fn a_digest_lists_the_chosen_topics_once_escaped_and_intact(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let now = utc("2027-05-01T08:00:00Z");
    app.reader(
        "leserin@example.org",
        &["wirtschaft", "kultur"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Größere Aufträge für Maschinenbauer")
        .await;
    app.post_item(&["sport"], "Nicht abonniert").await;
    app.post_item(&["wirtschaft", "kultur"], "Kulturwirtschaft wächst")
        .await;
    app.post_item(&["kultur"], "<script>alert('x')</script> & Theater")
        .await;
    let (due, enqueued) = app.run_pass("2027-05-02T05:00:00Z").await;
    assert_eq!((due, enqueued), (1, 1));
    let got = delivered(&app, &sink).await;
    let raw = &got["leserin@example.org"][0];
    let mail = parse(raw);
    assert_eq!(
        mail.subject(),
        Some("Neue Meldungen für Sie am 02.05.2027: 3")
    );
    let (text, html) = (text(raw), html(raw));
    assert!(
        text.contains("Größere Aufträge für Maschinenbauer"),
        "umlauts intact in text"
    );
    assert!(
        html.contains("Größere Aufträge für Maschinenbauer"),
        "umlauts intact in HTML"
    );
    assert!(!text.contains("Nicht abonniert"), "only chosen topics");
    assert_eq!(
        text.matches("* Kulturwirtschaft wächst").count(),
        1,
        "an item in two topics once"
    );

    assert!(!html.contains("<script>"), "no markup from items");
    assert!(
        html.contains("&lt;script&gt;alert(") && html.contains("&lt;/script&gt; &amp; Theater"),
        "{html}"
    );

    assert!(
        text.contains("<script>alert('x')</script> & Theater"),
        "the text part shows the title as it is"
    );
    // Grouped by topic (Kultur before Wirtschaft), newest first within a group.
    let kultur = text.find("== Kultur ==").unwrap();
    let wirtschaft = text.find("== Wirtschaft ==").unwrap();
    assert!(kultur < wirtschaft);
    assert!(
        text.find("* <script>").unwrap() < text.find("* Kulturwirtschaft").unwrap(),
        "newest first"
    );

    // The list headers and the links in the body.
    let unsubscribe = mail
        .header_raw("List-Unsubscribe")
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        unsubscribe.starts_with(&format!("<{}/unsubscribe/", app.base))
            && unsubscribe.ends_with('>')
    );
    assert_eq!(
        mail.header_raw("List-Unsubscribe-Post").map(str::trim),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(
        mail.header_raw("List-Id").map(str::trim),
        Some("Newsletter <newsletter.example.org>")
    );
    assert!(mail.message_id().is_some() && mail.date().is_some());
    let link = &unsubscribe[1..unsubscribe.len() - 1];
    assert!(
        text.contains(link) && html.contains(link),
        "a visible unsubscribe link"
    );
    assert!(
        find_link(&text, "preferences").is_some() && html.contains("/preferences/"),
        "a preferences link"
    );
    assert!(
        text.contains("weil Sie leserin@example.org") && text.contains("Kultur, Wirtschaft"),
        "why the reader gets it"
    );
}

async fn at_most_max_items_then_a_count_of_the_rest(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.reader(
        "viel@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "en",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    for i in 0..53 {
        app.post_item(&["wirtschaft"], &format!("Item {i:02}"))
            .await;
    }
    app.run_pass("2027-05-02T05:00:00Z").await;
    let raw = &delivered(&app, &sink).await["viel@example.org"][0];
    let text = text(raw);
    assert_eq!(text.matches("* Item").count(), 50);
    assert!(
        text.contains("Item 52") && !text.contains("Item 02"),
        "the newest 50"
    );
    assert!(text.contains("… and 3 more"));
    assert_eq!(
        parse(raw).subject(),
        Some("Your news of 2 May 2027: 53 new")
    );
}

async fn passes_never_send_twice_and_never_skip_an_item(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.reader(
        "genau@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    // No new items: the slot passes without a mail.
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (1, 0));
    clock.set(utc("2027-05-02T06:00:00Z"));
    app.post_item(&["wirtschaft"], "Erste Meldung").await;
    assert_eq!(app.run_pass("2027-05-03T05:00:00Z").await, (1, 1));
    assert_eq!(
        app.run_pass("2027-05-03T05:00:00Z").await,
        (0, 0),
        "the same instant again"
    );
    assert_eq!(
        app.run_pass("2027-05-03T05:00:30Z").await,
        (0, 0),
        "the clock reaching the slot later"
    );
    // A pass as of a future instant, then an item that arrives after it.
    assert_eq!(app.run_pass("2027-05-10T05:00:00Z").await, (1, 0));
    clock.set(utc("2027-05-03T07:00:00Z"));
    app.post_item(&["wirtschaft"], "Nach dem Zukunftslauf")
        .await;
    assert_eq!(
        app.run_pass("2027-05-11T05:00:00Z").await,
        (1, 1),
        "the late item is in the next digest"
    );
    let got = delivered(&app, &sink).await;
    let mails = &got["genau@example.org"];
    assert_eq!(mails.len(), 2);
    assert!(text(&mails[0]).contains("Erste Meldung"));
    assert!(
        text(&mails[1]).contains("Nach dem Zukunftslauf")
            && !text(&mails[1]).contains("Erste Meldung")
    );
}

async fn a_daemon_down_for_days_sends_one_catch_up_digest(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.reader(
        "urlaub@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    for day in 1..=4 {
        clock.set(utc(&format!("2027-05-0{}T09:00:00Z", day)));
        app.post_item(&["wirtschaft"], &format!("Tag {day}")).await;
    }
    assert_eq!(app.run_pass("2027-05-05T10:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    assert_eq!(got["urlaub@example.org"].len(), 1);
    let t = text(&got["urlaub@example.org"][0]);
    assert!(
        (1..=4).all(|d| t.contains(&format!("Tag {d}"))),
        "everything since the last digest"
    );
}

async fn one_click_unsubscribe_stops_the_digests(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let now = utc("2027-05-01T08:00:00Z");
    app.reader(
        "form@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    app.reader(
        "multi@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Vorher").await;
    app.run_pass("2027-05-02T05:00:00Z").await;
    let got = delivered(&app, &sink).await;
    let link = |who: &str| {
        let m: Message = parse(&got[who][0]);
        let h = m.header_raw("List-Unsubscribe").unwrap().trim().to_owned();
        h[1..h.len() - 1].to_owned()
    };
    let (form_link, multi_link) = (link("form@example.org"), link("multi@example.org"));

    // A GET (a mail scanner, a preview) changes nothing.
    let page = app.http.get(&form_link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("method=\"post\""));
    assert_eq!(
        app.export("form@example.org").await.unwrap()["status"],
        "confirmed"
    );

    // RFC 8058: urlencoded and multipart bodies, no cookie, 200, no redirect.
    let r = app
        .http
        .post(&form_link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
    let r = app
        .http
        .post(&multi_link)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(multipart)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.http.post(&multi_link).send().await.unwrap().status(),
        200,
        "idempotent"
    );
    for who in ["form@example.org", "multi@example.org"] {
        let export = app.export(who).await.unwrap();
        assert_eq!(export["status"], "unsubscribed");
        assert!(export["unsubscribed_at"].is_string());
    }
    let forged = form_link
        .replace("/unsubscribe/", "/unsubscribe/9")
        .replace(".", ".0");
    assert_eq!(app.http.post(&forged).send().await.unwrap().status(), 404);

    clock.set(utc("2027-05-02T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Nachher").await;
    assert_eq!(
        app.run_pass("2027-05-03T05:00:00Z").await,
        (0, 0),
        "no further digest"
    );
    let got = delivered(&app, &sink).await;
    assert_eq!(got["form@example.org"].len(), 1);
    assert_eq!(got["multi@example.org"].len(), 1);
}

async fn items_are_validated_and_never_duplicated(backend: Backend) {
    let (app, _sink, _db, _clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    use reqwest::Method;
    let post = |body: serde_json::Value| app.admin(Method::POST, "/items", Some(body));
    let first = post(serde_json::json!({"topics": ["wirtschaft"], "title": "A", "guid": "pr-1", "url": "https://example.org/a", "published_at": "2027-05-01T10:00:00+02:00"})).await;
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["topics"], serde_json::json!(["wirtschaft"]));
    assert_eq!(first["source"], "api");
    let again =
        post(serde_json::json!({"topics": ["wirtschaft"], "title": "A changed", "guid": "pr-1"}))
            .await;
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(
        (again["id"].clone(), again["title"].clone()),
        (first["id"].clone(), first["title"].clone())
    );
    let by_url = post(
        serde_json::json!({"topics": ["kultur"], "title": "B", "url": "https://example.org/b"}),
    )
    .await;
    assert_eq!(by_url.status(), 201);
    let by_url_again = post(
        serde_json::json!({"topics": ["kultur"], "title": "B", "url": "https://example.org/b"}),
    )
    .await;
    assert_eq!(by_url_again.status(), 200);

    for (body, field) in [
        (
            serde_json::json!({"topics": ["gibt-es-nicht"], "title": "X"}),
            "topics",
        ),
        (serde_json::json!({"topics": [], "title": "X"}), "topics"),
        (
            serde_json::json!({"topics": ["wirtschaft"], "title": "  "}),
            "title",
        ),
        (
            serde_json::json!({"topics": ["wirtschaft"], "title": "X", "url": "javascript:alert(1)"}),
            "url",
        ),
        (
            serde_json::json!({"topics": ["wirtschaft"], "title": "X", "url": "nicht eine url"}),
            "url",
        ),
        (
            serde_json::json!({"topics": ["wirtschaft"], "title": "X", "published_at": "gestern"}),
            "published_at",
        ),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let msg = r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(msg.starts_with(field), "{body}: {msg}");
    }
    let far = app
        .admin(
            Method::POST,
            "/digests/run",
            Some(serde_json::json!({"at": "2101-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(
        far.status(),
        422,
        "a pass beyond the calendar is refused, not a panic"
    );
    let missing = post(serde_json::json!({"topics": ["wirtschaft"]})).await;
    assert_eq!(missing.status(), 422);
    assert!(
        missing.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("title")
    );
}

async fn stats_count_readers_queue_and_digests(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.reader(
        "eins@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    app.sign_up_json(
        serde_json::json!({"email": "zwei@example.org", "topics": ["kultur"], "consent": true}),
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Zahl").await;
    app.run_pass("2027-05-02T05:00:00Z").await;
    delivered(&app, &sink).await;
    let stats: serde_json::Value = app
        .admin(reqwest::Method::GET, "/stats", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["subscribers"]["confirmed"], 1);
    assert_eq!(stats["subscribers"]["pending"], 1);
    assert_eq!(stats["queue_depth"], 0);
    assert_eq!(stats["digests_sent"], 1);
    assert_eq!(stats["mails"]["confirm"]["sent"], 1);
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("postbote_subscribers{status=\"confirmed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("postbote_mails{kind=\"digest\",status=\"sent\"} 1"));
}

async fn the_first_digest_reaches_back_the_look_back_before_confirmation(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-04-29T12:00:00Z", |_| {}).await;
    // Signed up two days before confirming: the look-back counts back from the
    // confirmation, not from the sign-up.
    let r = app
        .sign_up_json(serde_json::json!({"email": "neu@example.org", "topics": ["wirtschaft"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "consent": true}))
        .await;
    assert_eq!(r.status(), 202);
    let link = find_link(&text(&sink.wait_for(1).await[0]), "confirm").unwrap();
    clock.set(utc("2027-04-30T06:00:00Z"));
    app.post_item(&["wirtschaft"], "Vor 26 Stunden").await;
    clock.set(utc("2027-04-30T10:00:00Z"));
    app.post_item(&["wirtschaft"], "Vor 22 Stunden").await;
    // Confirmed now, with the default look-back of 24 hours.
    clock.set(utc("2027-05-01T08:00:00Z"));
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    let export = app.export("neu@example.org").await.unwrap();
    assert_eq!(export["status"], "confirmed");
    assert_eq!(export["confirmation"]["at"], "2027-05-01T08:00:00Z");
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Nach der Bestätigung").await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    let text = text(&got["neu@example.org"][0]);
    assert!(
        text.contains("Vor 22 Stunden")
            && text.contains("Nach der Bestätigung")
            && !text.contains("Vor 26 Stunden"),
        "{text}"
    );
}

/// `unsubscribe_address` of the digests in [`a_digest_offers_a_mailto_unsubscribe_that_works`].
const UNSUBSCRIBE_ADDRESS: &str = "unsubscribe+{id}@bounces.example.org";

async fn a_digest_offers_a_mailto_unsubscribe_that_works(backend: Backend) {
    let (app, sink, db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |c| {
        c.unsubscribe_address = Some(UNSUBSCRIBE_ADDRESS.into());
    })
    .await;
    let now = utc("2027-05-01T08:00:00Z");
    let id = app
        .reader(
            "leser@example.org",
            &["wirtschaft"],
            "07:00",
            "Europe/Berlin",
            "de",
            now,
        )
        .await;
    app.reader(
        "bleibt@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Meldung").await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (2, 2));
    let got = delivered(&app, &sink).await;
    let raw = &got["leser@example.org"][0];
    let mail = parse(raw);
    let header = mail.header_raw("List-Unsubscribe").unwrap();
    let header: String = header.split_whitespace().collect::<Vec<_>>().join(" ");
    let https = find_link(&text(raw), "unsubscribe").expect("the link in the body");
    // The address, signed as documented (not with the code that checks it).
    let address = format!(
        "unsubscribe+{}@bounces.example.org",
        crate::harness::signed_id(&crate::harness::link_key(&db).await, id)
    );
    assert_eq!(
        header,
        format!("<{https}>, <mailto:{address}?subject=unsubscribe>")
    );
    assert_eq!(
        mail.header_raw("List-Unsubscribe-Post").map(str::trim),
        Some("List-Unsubscribe=One-Click")
    );

    // The reader's mail program sends its unsubscribe mail there; the MTA hands it
    // to `postbote inbound` with the envelope recipient.
    let config = db.dir.path().join("inbound.toml");
    std::fs::write(
        &config,
        format!("unsubscribe_address = \"{UNSUBSCRIBE_ADDRESS}\"\n"),
    )
    .unwrap();
    let reply = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/inbound/unsubscribe_reply.eml"
    ))
    .unwrap()
    .replace("{{ADDRESS}}", "leser@example.org")
    .replace("{{UNSUBSCRIBE}}", &address);
    let out = crate::harness::run_to_end_async(
        std::process::Command::new(env!("CARGO_BIN_EXE_postbote"))
            .args(["inbound", "--config"])
            .arg(&config)
            .args(["--recipient", &address])
            .env("POSTBOTE_DATABASE_URL", &db.url)
            .env("POSTBOTE_DATA_DIR", db.dir.path().join("data")),
        Some(reply.into_bytes()),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("unsubscribe_reply"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        app.export("leser@example.org").await.unwrap()["status"],
        "unsubscribed"
    );
    assert_eq!(
        app.export("bleibt@example.org").await.unwrap()["status"],
        "confirmed"
    );
}

/// The markers the digest personalisation once replaced over the whole mail, and
/// handlebars syntax: an item carrying them must reach readers as written.
const HOSTILE_URL: &str =
    "https://attacker.example/r?e=PBMARK-EMAIL-7c1e&u=PBMARK-UNSUBSCRIBE-7c1e";
const HOSTILE_TITLE: &str = "Studie PBMARK-EMAIL-7c1e {{email}} {{unsubscribe_url}}";
const HOSTILE_SUMMARY: &str =
    "Ergebnisse PBMARK-PREFERENCES-7c1e {{#each x}}{{/each}} {{{email}}} {{preferences_url}}";

async fn item_content_never_becomes_a_readers_address_or_link(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let now = utc("2027-05-01T08:00:00Z");
    // Two readers of the same news share one rendered body.
    for who in ["anna@example.org", "ben@example.org"] {
        app.reader(who, &["wirtschaft"], "07:00", "Europe/Berlin", "de", now)
            .await;
    }
    clock.set(utc("2027-05-01T09:00:00Z"));
    let r = app
        .admin(
            reqwest::Method::POST,
            "/items",
            Some(serde_json::json!({"topics": ["wirtschaft"], "title": HOSTILE_TITLE, "url": HOSTILE_URL, "summary": HOSTILE_SUMMARY})),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (2, 2));
    let got = delivered(&app, &sink).await;

    for (who, other) in [
        ("anna@example.org", "ben@example.org"),
        ("ben@example.org", "anna@example.org"),
    ] {
        let raw = &got[who][0];
        let mail = parse(raw);
        let (text, html) = (text(raw), html(raw));
        let list_unsubscribe = mail.header_raw("List-Unsubscribe").unwrap().trim();
        let token = list_unsubscribe
            .trim_matches(|c| c == '<' || c == '>')
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        assert!(token.contains('.'), "a manage token: {token}");

        // The item as it was written: verbatim in text, escaped in HTML.
        assert!(
            text.contains(&format!(
                "* {HOSTILE_TITLE}\n  {HOSTILE_SUMMARY}\n  {HOSTILE_URL}\n"
            )),
            "{text}"
        );
        assert!(html.contains(&format!(">{HOSTILE_TITLE}</a>")), "{html}");
        assert!(html.contains(&format!(">{HOSTILE_SUMMARY}</p>")), "{html}");
        assert!(
            html.contains(
                "href=\"https://attacker.example/r?e&#x3D;PBMARK-EMAIL-7c1e&amp;u&#x3D;PBMARK-UNSUBSCRIBE-7c1e\""
            ),
            "{html}"
        );

        // The reader's address and links only where their own part puts them:
        // once "why you get this", twice a link (preferences, unsubscribe); the
        // headers carry the address in To and the token in List-Unsubscribe.
        let (content, footer) = text.split_once("\n--\n").expect("the text footer");
        for part in [content, &html[..html.find("<hr").expect("the HTML footer")]] {
            assert!(
                !part.contains(who) && !part.contains(&token) && !part.contains("/unsubscribe/"),
                "nothing of the reader in the content: {part}"
            );
        }
        assert_eq!(footer.matches(who).count(), 1, "{footer}");
        assert_eq!(footer.matches(&token).count(), 2, "{footer}");
        assert_eq!(text.matches(who).count(), 1);
        assert_eq!(text.matches(&token).count(), 2);
        assert_eq!(html.matches(who).count(), 1, "{html}");
        assert_eq!(html.matches(&token).count(), 2, "{html}");
        assert!(
            footer.contains(&format!("weil Sie {who} ")),
            "why the reader gets it"
        );
        assert_eq!(mail.header_raw("To").map(str::trim), Some(who));
        assert_eq!(list_unsubscribe.matches(&token).count(), 1);
        assert!(
            !String::from_utf8_lossy(raw).contains(other),
            "nothing of {other}"
        );
    }
}

/// An operator's `digest` template from before the split still renders the reader's
/// address and links itself: `postbote check` refuses it and says where they go now.
#[test]
fn check_refuses_a_digest_template_that_uses_the_readers_data() {
    let dir = tempfile::tempdir().unwrap();
    let digest = dir.path().join("tpl/mail/de/digest");
    std::fs::create_dir_all(&digest).unwrap();
    std::fs::write(
        digest.join("body.txt.hbs"),
        "Ihre Meldungen vom {{date}}\n{{#each groups}}* {{topic}}\n{{/each}}\n--\nAn {{email}}. Abmelden: {{unsubscribe_url}}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("p.toml"), "templates_dir = \"tpl\"\n").unwrap();
    let out = crate::harness::run_to_end(
        std::process::Command::new(env!("CARGO_BIN_EXE_postbote"))
            .current_dir(dir.path())
            .args(["check", "--config", "p.toml"]),
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("mail/de/digest/body.txt.hbs")
            && err.contains("email")
            && err.contains("mail/de/digest-footer/body.txt.hbs"),
        "{err}"
    );
}

/// The one value of a single-row, single-column query, as text.
async fn one_value(db: &TestDb, sql: &str) -> String {
    db.text_rows(sql, &[]).await[0][0]
        .clone()
        .unwrap_or_default()
}

async fn readers_with_the_same_news_share_one_stored_body_and_each_gets_their_own_links(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    // The relay is down while the pass runs, so the queue can be looked at.
    let down = RefusedPort::new();
    let mut config = test_config(&db, &down.smtp_url());
    config.digest.run_scheduler = false;
    let clock = ManualClock::new(utc("2027-05-01T08:00:00Z"));
    let app = TestApp::spawn_with_clock(config, std::sync::Arc::new(clock.clone())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.create_topic("politik", "Politik").await;
    let readers = [
        ("a@example.org", &["wirtschaft"][..], "de"),
        ("b@example.org", &["wirtschaft"][..], "de"),
        ("c@example.org", &["wirtschaft"][..], "de"),
        ("d@example.org", &["wirtschaft"][..], "en"),
        ("e@example.org", &["wirtschaft", "politik"][..], "de"),
    ];
    let mut ids = std::collections::HashMap::new();
    for (email, topics, locale) in readers {
        let now = utc("2027-05-01T08:00:00Z");
        let id = app
            .reader(email, topics, "07:00", "Europe/Berlin", locale, now)
            .await;
        ids.insert(email, id);
    }
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Geteilte Meldung").await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (5, 5));

    // Three contents (German, English, German with two topics), stored once each;
    // the jobs hold a reference and no message.
    assert_eq!(
        one_value(&db, "SELECT CAST(COUNT(*) AS TEXT) FROM digest_bodies").await,
        "3"
    );
    let jobs = db
        .text_rows(
            "SELECT recipient, CAST(body_id AS TEXT), CASE WHEN message IS NULL THEN 'true' ELSE 'false' END \
             FROM mail_jobs WHERE kind = 'digest' ORDER BY recipient",
            &[],
        )
        .await;
    assert_eq!(jobs.len(), 5);
    let body_of = |i: usize| jobs[i][1].clone().expect("a body");
    assert!(
        jobs.iter()
            .all(|j| matches!(j[2].as_deref(), Some("true" | "1"))),
        "{jobs:?}"
    );
    assert_eq!(
        (body_of(0), body_of(1)),
        (body_of(2), body_of(2)),
        "a, b, c share"
    );
    assert!(body_of(3) != body_of(0) && body_of(4) != body_of(0) && body_of(3) != body_of(4));

    let sink = SmtpSink::start_in_place_of(down, &[]);
    let got = delivered(&app, &sink).await;
    let mut shared = None;
    for (email, _, _) in readers {
        let raw = &got[email][0];
        let text = text(raw);
        assert!(text.contains("Geteilte Meldung"), "{email}: {text}");
        // Each reader's own links, in the body and in the header.
        let unsubscribe = find_link(&text, "unsubscribe").expect("an unsubscribe link");
        assert!(
            unsubscribe.contains(&format!("/unsubscribe/{}.", ids[email])),
            "{email}: {unsubscribe}"
        );
        let header = parse(raw)
            .header_raw("List-Unsubscribe")
            .unwrap()
            .to_owned();
        assert!(header.contains(&unsubscribe), "{email}: {header}");
        assert!(text.contains(email), "{email}'s footer names them");
        // The content before the reader's part is the same for a, b and c.
        if ["a@example.org", "b@example.org", "c@example.org"].contains(&email) {
            let content = text.split(email).next().unwrap().to_owned();
            assert_eq!(shared.get_or_insert_with(|| content.clone()), &content);
        }
    }
    // A finished mail lets go of its body.
    assert_eq!(
        one_value(
            &db,
            "SELECT CAST(COUNT(*) AS TEXT) FROM mail_jobs WHERE body_id IS NOT NULL"
        )
        .await,
        "0"
    );
}

async fn a_digest_queued_whole_by_an_older_version_is_still_delivered(backend: Backend) {
    let (app, sink, db, _clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    // What versions before shared bodies queued: the whole message, no body.
    let message = "From: News <news@example.org>\r\nTo: alt@example.org\r\n\
                   Subject: Alte Ausgabe\r\nMessage-ID: <alt@example.org>\r\n\
                   List-Unsubscribe: <http://localhost/unsubscribe/1.x>\r\n\
                   List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nAus der Schlange.\r\n";
    let sql = "INSERT INTO mail_jobs (subscriber_id, kind, recipient, envelope_from, message, \
               status, next_attempt_at, created_at) \
               VALUES (NULL, 'digest', 'alt@example.org', 'news@example.org', $1, 'queued', $2, $2)";
    let now = utc("2027-05-01T08:00:00Z");
    match db.store().await {
        postbote::store::Store::Postgres(pool) => {
            let q = sqlx::query(sql).bind(message.as_bytes()).bind(now);
            q.execute(&pool).await.map(|r| r.rows_affected())
        }
        postbote::store::Store::Sqlite(pool) => {
            let q = sqlx::query(sql).bind(message.as_bytes()).bind(now);
            q.execute(&pool).await.map(|r| r.rows_affected())
        }
    }
    .expect("an old queued mail");
    let got = delivered(&app, &sink).await;
    let raw = &got["alt@example.org"][0];
    assert_eq!(parse(raw).subject(), Some("Alte Ausgabe"));
    assert!(text(raw).contains("Aus der Schlange."));
}

async fn more_distinct_digests_than_a_worker_keeps_in_memory_all_go_out(backend: Backend) {
    let (app, sink, _db, clock) = app_with(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let topics: Vec<String> = (1..=12).map(|i| format!("thema-{i:02}")).collect();
    for t in &topics {
        app.create_topic(t, &t.replace('-', " ")).await;
    }
    // Every reader gets content of their own: 220 sets of three topics, in two
    // languages, more bodies than the workers keep in memory at once.
    let mut sets = Vec::new();
    for a in 0..12 {
        for b in a + 1..12 {
            for c in b + 1..12 {
                sets.push([topics[a].as_str(), topics[b].as_str(), topics[c].as_str()]);
            }
        }
    }
    let now = utc("2027-05-01T08:00:00Z");
    let mut n: u64 = 0;
    for (i, set) in sets.iter().enumerate() {
        for locale in ["de", "en"] {
            let email = format!("leser{i:03}-{locale}@example.org");
            app.reader(&email, set, "07:00", "Europe/Berlin", locale, now)
                .await;
            n += 1;
        }
    }
    clock.set(utc("2027-05-01T09:00:00Z"));
    for t in &topics {
        app.post_item(&[t.as_str()], &format!("Neu in {t}")).await;
    }
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (n, n));
    let got = delivered(&app, &sink).await;
    assert_eq!(got.len(), n as usize, "every reader got their digest");
    let stats = app.store.stats().await.unwrap();
    assert_eq!((stats.digests_sent, stats.digests_failed), (n as i64, 0));
}

on_both_backends!(
    item_content_never_becomes_a_readers_address_or_link,
    the_first_digest_reaches_back_the_look_back_before_confirmation,
    a_digest_offers_a_mailto_unsubscribe_that_works,
    readers_get_their_digest_at_their_own_local_time,
    a_0230_berlin_reader_gets_exactly_one_digest_on_both_dst_days,
    a_digest_lists_the_chosen_topics_once_escaped_and_intact,
    at_most_max_items_then_a_count_of_the_rest,
    passes_never_send_twice_and_never_skip_an_item,
    a_daemon_down_for_days_sends_one_catch_up_digest,
    one_click_unsubscribe_stops_the_digests,
    items_are_validated_and_never_duplicated,
    stats_count_readers_queue_and_digests,
    readers_with_the_same_news_share_one_stored_body_and_each_gets_their_own_links,
    a_digest_queued_whole_by_an_older_version_is_still_delivered,
    more_distinct_digests_than_a_worker_keeps_in_memory_all_go_out,
);
