//! Items arrive by themselves: feeds polled from a real HTTP server on loopback on
//! a schedule driven by the injectable clock, hostile feeds contained, and press
//! releases mailed in through `postbote inbound`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Backend, SmtpSink, TestApp, TestDb, parse, recipient, test_config, utc};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use postbote::clock::ManualClock;

/// What the fixture server has seen.
#[derive(Default)]
pub struct Seen {
    pub rss_requests: AtomicUsize,
    atom_requests: AtomicUsize,
    rss_not_modified: AtomicUsize,
    rewritten_requests: AtomicUsize,
}

const RSS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>Presse RSS</title><link>https://presse.example/</link><description>x</description>
<item><title>Müller AG übernimmt Schulze GmbH</title><link>https://presse.example/1</link><guid>presse-1</guid>
<description>&lt;p&gt;Die Übernahme ist &lt;b&gt;abgeschlossen&lt;/b&gt;.&lt;/p&gt;&lt;p&gt;Zweiter Absatz.&lt;/p&gt;</description><pubDate>Mon, 03 May 2027 08:00:00 +0200</pubDate></item>
<item><title>Quartalszahlen veröffentlicht</title><link>https://presse.example/2</link><guid>presse-2</guid><description>Zahlen.</description></item>
</channel></rss>"#;

const ATOM: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom Presse</title><id>urn:atom-presse</id><updated>2027-05-03T08:00:00Z</updated>
<entry><title>Atom-Meldung</title><id>urn:atom-1</id><link href="https://atom.example/1"/><updated>2027-05-03T08:00:00Z</updated><summary>Eine Atom-Zusammenfassung</summary></entry>
</feed>"#;

const JSON_FEED: &str = r#"{"version":"https://jsonfeed.org/version/1.1","title":"JSON Presse","items":[
{"id":"json-1","url":"https://json.example/1","title":"JSON-Meldung","content_text":"Text aus JSON Feed"}]}"#;

/// A feed without entries, for probes.
const EMPTY: &str = r#"<?xml version="1.0"?><rss version="2.0"><channel><title>Leer</title><link>https://leer.example/</link><description>x</description></channel></rss>"#;

const EVIL: &str = r#"<?xml version="1.0"?><rss version="2.0"><channel><title>Evil</title><link>https://evil.example/</link><description>x</description>
<item><title>Harmlos &lt;script&gt;alert(1)&lt;/script&gt;</title><link>https://evil.example/1</link><guid>evil-1</guid>
<description>&lt;script&gt;steal()&lt;/script&gt;&lt;img src="https://track.example/pixel.gif" width="1" height="1"&gt;Echter Text</description></item>
</channel></rss>"#;

async fn rss(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> Response {
    seen.rss_requests.fetch_add(1, Ordering::SeqCst);
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v == "\"v1\"")
    {
        seen.rss_not_modified.fetch_add(1, Ordering::SeqCst);
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        [
            (header::ETAG, "\"v1\""),
            (header::CONTENT_TYPE, "application/rss+xml"),
        ],
        RSS,
    )
        .into_response()
}

/// The same two entries, with a new date on every request (one has no guid).
async fn rewritten(State(seen): State<Arc<Seen>>) -> Response {
    let n = seen.rewritten_requests.fetch_add(1, Ordering::SeqCst);
    let body = format!(
        r#"<?xml version="1.0"?><rss version="2.0"><channel><title>R</title><link>https://r.example/</link><description>x</description>
<item><title>Mit guid</title><link>https://r.example/a</link><guid>r-a</guid><pubDate>Mon, 0{d} May 2027 08:00:00 +0000</pubDate></item>
<item><title>Ohne guid</title><link>https://r.example/b</link><pubDate>Mon, 0{d} May 2027 09:00:00 +0000</pubDate></item>
</channel></rss>"#,
        d = 3 + n % 5
    );
    body.into_response()
}

async fn big() -> Response {
    let chunk = axum::body::Bytes::from(vec![b'x'; 1024 * 1024]);
    let stream =
        futures_util::stream::iter((0..50).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    axum::body::Body::from_stream(stream).into_response()
}

async fn hang() -> Response {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "never".into_response()
}

async fn redirect_loop() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/hostile/loop")]).into_response()
}

/// Serves the fixtures on a port chosen by the OS.
pub async fn fixture_server() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/rss.xml", get(rss))
        .route(
            "/atom.xml",
            get(|State(seen): State<Arc<Seen>>| async move {
                seen.atom_requests.fetch_add(1, Ordering::SeqCst);
                ATOM
            }),
        )
        .route("/empty.xml", get(|| async { EMPTY }))
        .route("/feed.json", get(|| async { JSON_FEED }))
        .route("/rewritten.xml", get(rewritten))
        .route("/evil.xml", get(|| async { EVIL }))
        .route("/hostile/big", get(big))
        .route("/hostile/hang", get(hang))
        .route("/hostile/loop", get(redirect_loop))
        .route(
            "/hostile/garbage",
            get(|| async { "<rss><channel><item><title>kaputt" }),
        )
        .route(
            "/hostile/missing",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

async fn feeds(app: &TestApp) -> Vec<serde_json::Value> {
    app.admin(reqwest::Method::GET, "/feeds", None)
        .await
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap()
}

/// Waits until every feed has been polled at least `n` times since `since`.
async fn polled(app: &TestApp, since: DateTime<Utc>) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = feeds(app).await;
        let done = all
            .iter()
            .all(|f| f["last_poll_at"].as_str().is_some_and(|t| utc(t) >= since));
        if done {
            return all;
        }
        assert!(Instant::now() < deadline, "feeds not polled: {all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets two poll rounds go by, the second beginning after the first finished every
/// poll it took on: two probe feeds are added one after the other, each waited for,
/// then deleted. A round takes every feed that is due, so a feed due by now has
/// been fetched by the end.
async fn two_poll_rounds(app: &TestApp, base: &str) {
    for probe in ["probe-1", "probe-2"] {
        add_feed(app, probe, &format!("{base}/empty.xml"), "wirtschaft").await;
        let polled = polled_once(app, probe).await;
        assert_eq!(polled["failures"], 0, "{polled}");
    }
    for probe in ["probe-1", "probe-2"] {
        let r = app
            .admin(reqwest::Method::DELETE, &format!("/feeds/{probe}"), None)
            .await;
        assert_eq!(r.status(), 204, "{probe}");
    }
}

async fn items(app: &TestApp) -> Vec<serde_json::Value> {
    let v: serde_json::Value = app
        .admin(reqwest::Method::GET, "/items?limit=1000", None)
        .await
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().clone()
}

async fn feeds_are_polled_on_schedule_once_per_entry_and_hostile_ones_are_contained(
    backend: Backend,
) {
    let (base, seen) = fixture_server().await;
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let mut config = test_config(&db, &sink.url());
    config.digest.run_scheduler = false;
    config.polling.tick = Duration::from_millis(50);
    config.polling.timeout = Duration::from_secs(2);
    config.polling.max_bytes = 2 * 1024 * 1024;
    let t0 = utc("2027-05-03T06:00:00Z");
    let clock = ManualClock::new(t0);
    let app = TestApp::spawn_with_clock(config, Arc::new(clock.clone())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.reader(
        "leser@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        t0,
    )
    .await;

    let every_15_min = "0 */15 * * * *";
    for (name, path) in [
        ("rss", "/rss.xml"),
        ("atom", "/atom.xml"),
        ("json", "/feed.json"),
        ("rewritten", "/rewritten.xml"),
        ("evil", "/evil.xml"),
        ("big", "/hostile/big"),
        ("hang", "/hostile/hang"),
        ("loop", "/hostile/loop"),
        ("garbage", "/hostile/garbage"),
        ("missing", "/hostile/missing"),
    ] {
        let body = serde_json::json!({"name": name, "url": format!("{base}{path}"), "topic": "wirtschaft", "schedule": every_15_min});
        let r = app.admin(reqwest::Method::POST, "/feeds", Some(body)).await;
        assert_eq!(r.status(), 201, "{name}");
    }
    let bad = app.admin(reqwest::Method::POST, "/feeds", Some(serde_json::json!({"url": format!("{base}/x"), "topic": "wirtschaft", "schedule": "jede Stunde"}))).await;
    assert_eq!(bad.status(), 422);

    // First round, right away.
    let all = polled(&app, t0).await;
    let by = |name: &str| all.iter().find(|f| f["name"] == name).unwrap().clone();
    for ok in ["rss", "atom", "json", "rewritten", "evil"] {
        assert_eq!(by(ok)["failures"], 0, "{ok}: {}", by(ok));
    }
    for (name, error) in [
        ("big", "larger than"),
        ("hang", "timed out"),
        ("loop", "redirect"),
        ("garbage", "not a feed"),
        ("missing", "HTTP 500"),
    ] {
        let f = by(name);
        assert_eq!(f["failures"], 1, "{name}");
        assert!(
            f["last_error"].as_str().unwrap().contains(error),
            "{name}: {}",
            f["last_error"]
        );
    }
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the daemon lives on"
    );
    let stats: serde_json::Value = app
        .admin(reqwest::Method::GET, "/stats", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            stats["feeds"]["total"].as_i64(),
            stats["feeds"]["failing"].as_i64()
        ),
        (Some(10), Some(5))
    );
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
        metrics.contains("postbote_feed_failures_total{feed=\"hang\"} 1"),
        "{metrics}"
    );

    let first = items(&app).await;
    let titles: Vec<&str> = first.iter().map(|i| i["title"].as_str().unwrap()).collect();
    for t in [
        "Müller AG übernimmt Schulze GmbH",
        "Quartalszahlen veröffentlicht",
        "Atom-Meldung",
        "JSON-Meldung",
        "Mit guid",
        "Ohne guid",
    ] {
        assert_eq!(
            titles.iter().filter(|x| **x == t).count(),
            1,
            "{t} once in {titles:?}"
        );
    }
    let muller = first
        .iter()
        .find(|i| i["title"] == "Müller AG übernimmt Schulze GmbH")
        .unwrap();
    assert_eq!(muller["summary"], "Die Übernahme ist abgeschlossen.");
    assert_eq!(muller["source"], "feed:rss");
    let evil = first.iter().find(|i| i["source"] == "feed:evil").unwrap();
    assert_eq!(evil["title"], "Harmlos");
    assert_eq!(evil["summary"], "Echter Text");

    // Before the schedule comes round nothing is polled again; after it, the RSS feed
    // answers 304 and the rewritten dates make no duplicates.
    clock.set(t0 + chrono::Duration::minutes(10));
    two_poll_rounds(&app, &base).await;
    assert_eq!(
        seen.rss_requests.load(Ordering::SeqCst),
        1,
        "not before its schedule"
    );
    let second = t0 + chrono::Duration::minutes(17);
    clock.set(second);
    let all = polled(&app, second).await;
    assert_eq!(
        seen.rss_not_modified.load(Ordering::SeqCst),
        1,
        "a conditional GET answered 304"
    );
    assert_eq!(seen.rewritten_requests.load(Ordering::SeqCst), 2);
    assert_eq!(items(&app).await.len(), first.len(), "nothing stored twice");
    // The hanging feed was retried at its next scheduled time (its back-off of one
    // minute ended before that), and failed again the same way.
    let hang = all.iter().find(|f| f["name"] == "hang").unwrap();
    assert_eq!(
        (&hang["failures"], &hang["failures_total"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "{hang}"
    );
    assert!(
        hang["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{hang}"
    );

    // The entries reach the next digest, once, as text.
    app.run_pass("2027-05-04T05:00:00Z").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let raw = loop {
        if let Some(raw) = sink
            .raw_messages()
            .into_iter()
            .find(|r| recipient(r) == "leser@example.org")
        {
            break raw;
        }
        assert!(Instant::now() < deadline, "no digest");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sink.wait_for(1).await;
    let mail = parse(&raw);
    let html = mail.body_html(0).unwrap().into_owned();
    let text = mail.body_text(0).unwrap().into_owned();
    assert_eq!(
        text.matches("* Müller AG übernimmt Schulze GmbH").count(),
        1
    );
    assert!(text.contains("* Atom-Meldung") && text.contains("* JSON-Meldung"));
    assert!(!html.contains("<script") && !html.contains("pixel.gif") && !text.contains("steal()"));
}

/// Runs `postbote inbound` on `message` for `to`, killed and failing the test
/// after [`crate::harness::PROCESS_DEADLINE`]; returns its exit code and stdout.
pub async fn inbound(
    db: &TestDb,
    config: &std::path::Path,
    to: &str,
    message: &str,
) -> (i32, String) {
    let out = crate::harness::run_to_end_async(
        std::process::Command::new(env!("CARGO_BIN_EXE_postbote"))
            .args(["inbound", "--config"])
            .arg(config)
            .args(["--recipient", to])
            .env("POSTBOTE_DATABASE_URL", &db.url),
        Some(message.as_bytes().to_vec()),
    )
    .await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The inbound configuration of the submission tests: our MTA's authserv-id, no
/// DNS (postbote's own DKIM check is off).
pub const SUBMISSIONS: &str = "[submissions]\naddress = \"presse+{topic}@news.example.org\"\nallowed_senders = [\"pr@agentur.example\", \"@trusted.example\"]\nauthserv_id = \"mx.news.example.org\"\nverify_dkim = false\n";

/// Mails a press release with `subject` (and Message-ID `<id@agentur.example>`) for
/// the topic wirtschaft through `postbote inbound` with [`SUBMISSIONS`]: from an
/// allowed sender but without authentication, so it is held for a decision.
pub async fn hold(db: &TestDb, id: &str, subject: &str) {
    let file = db.dir.path().join("inbound.toml");
    std::fs::write(&file, SUBMISSIONS).unwrap();
    let to = "presse+wirtschaft@news.example.org";
    let message = format!(
        "From: pr@agentur.example\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{id}@agentur.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nText von {subject}.\r\n"
    );
    let (code, out) = inbound(db, &file, to, &message).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("held"), "{out}");
}

async fn press_releases_mailed_in_from_allowed_senders_become_items(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let mut config = test_config(&db, &sink.url());
    config.digest.run_scheduler = false;
    let t0 = utc("2027-05-03T06:00:00Z");
    let clock = ManualClock::new(t0);
    let app = TestApp::spawn_with_clock(config, Arc::new(clock.clone())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.reader(
        "leser@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        t0,
    )
    .await;
    let file = db.dir.path().join("inbound.toml");
    std::fs::write(&file, SUBMISSIONS).unwrap();
    let to = "presse+wirtschaft@news.example.org";

    // Our MTA checked DMARC and said so under its own authserv-id.
    let plain = "Authentication-Results: mx.news.example.org; dkim=pass header.d=agentur.example; dmarc=pass header.from=agentur.example\r\nFrom: PR <pr@agentur.example>\r\nTo: presse+wirtschaft@news.example.org\r\nSubject: Neues Werk in Görlitz <script>x</script>\r\nMessage-ID: <pm-1@agentur.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDie Firma eröffnet ein Werk.\r\n\r\nWeitere Details folgen.\r\n";
    let (code, out) = inbound(&db, &file, to, plain).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("item "), "{out}");
    let (code, out) = inbound(&db, &file, to, plain).await;
    assert_eq!(
        (code, out.contains("stored before")),
        (0, true),
        "the same message twice is one item"
    );

    let stranger = plain
        .replace("pr@agentur.example", "spam@elsewhere.example")
        .replace("pm-1@", "pm-2@");
    let (code, out) = inbound(&db, &file, to, &stranger).await;
    assert_eq!(code, 0);
    assert!(out.contains("not allowed"), "{out}");

    let html_only = "Authentication-Results: mx.news.example.org; dkim=pass header.d=trusted.example\r\nFrom: news@trusted.example\r\nTo: presse+wirtschaft@news.example.org\r\nSubject: Nur HTML\r\nMessage-ID: <pm-3@trusted.example>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Erster <b>Absatz</b>.</p><img src=\"https://t.example/p.gif\"><p>Zweiter.</p></body></html>\r\n";
    assert_eq!(inbound(&db, &file, to, html_only).await.0, 0);

    let with_attachment = "Authentication-Results: mx.news.example.org; dmarc=pass header.from=agentur.example\r\nFrom: pr@agentur.example\r\nTo: presse+wirtschaft@news.example.org\r\nSubject: Mit Anhang\r\nMessage-ID: <pm-4@agentur.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nText der Meldung.\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"pm.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n";
    assert_eq!(inbound(&db, &file, to, with_attachment).await.0, 0);

    let all = items(&app).await;
    assert_eq!(all.len(), 3, "{all:#?}");
    let first = &all[0];
    assert_eq!(first["title"], "Neues Werk in Görlitz <script>x</script>");
    assert_eq!(first["summary"], "Die Firma eröffnet ein Werk.");
    assert!(
        first["body"]
            .as_str()
            .unwrap()
            .contains("Weitere Details folgen.")
    );
    assert_eq!(first["source"], "mail:pr@agentur.example");
    assert!(first["url"].is_null());
    assert_eq!(all[1]["body"], "Erster Absatz.\n\nZweiter.");
    assert!(
        all[2]["source"]
            .as_str()
            .unwrap()
            .contains("1 attachments ignored")
    );
    assert_eq!(all[2]["body"], "Text der Meldung.");

    // The item page renders in the site's layout and escapes.
    let page = app
        .http
        .get(app.url(&format!("/items/{}", first["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Neues Werk in Görlitz &lt;script&gt;x&lt;/script&gt;")
            && !html.contains("<script>x")
    );
    assert!(html.contains("Weitere Details folgen."));
    assert_eq!(
        app.http
            .get(app.url("/items/999999"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The digest links to that page.
    app.run_pass("2027-05-04T05:00:00Z").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let raw = loop {
        if let Some(raw) = sink
            .raw_messages()
            .into_iter()
            .find(|r| recipient(r) == "leser@example.org")
        {
            break raw;
        }
        assert!(Instant::now() < deadline, "no digest");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sink.wait_for(1).await;
    let text = parse(&raw).body_text(0).unwrap().into_owned();
    assert!(
        text.contains(&format!("{}/items/{}", app.base, first["id"])),
        "{text}"
    );
}

async fn submissions(app: &TestApp, status: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = app
        .admin(
            reqwest::Method::GET,
            &format!("/submissions?status={status}"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    v["submissions"].as_array().unwrap().clone()
}

async fn mailed_in_items_are_published_only_with_one_authenticated_from(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let mut config = test_config(&db, &sink.url());
    config.digest.run_scheduler = false;
    let t0 = utc("2027-05-03T06:00:00Z");
    let app = TestApp::spawn_with_clock(config, Arc::new(ManualClock::new(t0))).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.reader(
        "leser@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        t0,
    )
    .await;
    let file = db.dir.path().join("inbound.toml");
    std::fs::write(&file, SUBMISSIONS).unwrap();
    let to = "presse+wirtschaft@news.example.org";
    let message = |headers: &str, id: &str, subject: &str| {
        format!(
            "{headers}To: {to}\r\nSubject: {subject}\r\nMessage-ID: <{id}@agentur.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nText von {subject}.\r\n"
        )
    };

    // mail-parser reads the LAST of two From headers: the attacker puts the
    // allowed sender second. Refused, and recorded as refused.
    let two_froms = message(
        "Authentication-Results: mx.news.example.org; dmarc=pass header.from=agentur.example\r\nFrom: a@attacker.example\r\nFrom: pr@agentur.example\r\n",
        "two",
        "Zwei Absender",
    );
    let (code, out) = inbound(&db, &file, to, &two_froms).await;
    assert_eq!((code, out.starts_with("refused")), (0, true), "{out}");
    // The MTA delivering it again records it once.
    assert!(
        inbound(&db, &file, to, &two_froms)
            .await
            .1
            .starts_with("refused")
    );
    let both_in_one = message(
        "From: a@attacker.example, pr@agentur.example\r\n",
        "one-header",
        "Zwei in einem",
    );
    let (_, out) = inbound(&db, &file, to, &both_in_one).await;
    assert!(out.starts_with("refused"), "{out}");
    let refused = submissions(&app, "refused").await;
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(
        refused[0]["sender"]
            .as_str()
            .unwrap()
            .contains("a@attacker.example")
    );

    // Authentication-Results of someone else's authserv-id are the sender's to write.
    let foreign = message(
        "Authentication-Results: mx.attacker.example; dmarc=pass header.from=agentur.example\r\nFrom: pr@agentur.example\r\n",
        "foreign",
        "Fremde Prüfung",
    );
    let (_, out) = inbound(&db, &file, to, &foreign).await;
    assert!(out.starts_with("held"), "{out}");
    // An allowed sender with no authentication at all: held as well.
    let bare = message("From: pr@agentur.example\r\n", "bare", "Ohne Prüfung");
    let (_, out) = inbound(&db, &file, to, &bare).await;
    assert!(out.starts_with("held"), "{out}");
    let (_, again) = inbound(&db, &file, to, &bare).await;
    assert!(again.contains("stored before"), "{again}");
    // A DKIM pass of another domain is not aligned with the From domain.
    let unaligned = message(
        "Authentication-Results: mx.news.example.org; dkim=pass header.d=attacker.example\r\nFrom: pr@agentur.example\r\n",
        "unaligned",
        "Fremde Signatur",
    );
    assert!(
        inbound(&db, &file, to, &unaligned)
            .await
            .1
            .starts_with("held")
    );
    // Our MTA's aligned DKIM pass: published at once.
    let aligned = message(
        "Authentication-Results: mx.news.example.org; dkim=pass header.d=agentur.example header.s=2027\r\nFrom: PR <pr@agentur.example>\r\n",
        "aligned",
        "Geprüfte Meldung",
    );
    assert!(
        inbound(&db, &file, to, &aligned)
            .await
            .1
            .starts_with("item ")
    );

    let titles = |items: &[serde_json::Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["title"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(titles(&items(&app).await), ["Geprüfte Meldung"]);
    let held = submissions(&app, "held").await;
    assert_eq!(
        titles(&held),
        ["Fremde Prüfung", "Ohne Prüfung", "Fremde Signatur"]
    );
    // Held items are on no page.
    assert_eq!(
        app.http
            .get(app.url("/items/999"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The operator approves one and rejects another.
    let approve = |id: &serde_json::Value, action: &str| {
        let path = format!("/submissions/{id}/{action}");
        let app = &app;
        async move { app.admin(reqwest::Method::POST, &path, None).await }
    };
    let r = approve(&held[1]["id"], "approve").await;
    assert_eq!(r.status(), 200);
    let approved: serde_json::Value = r.json().await.unwrap();
    assert_eq!(approved["status"], "approved");
    assert!(approved["item_id"].is_i64());
    assert_eq!(approve(&held[1]["id"], "approve").await.status(), 409);
    assert_eq!(approve(&held[0]["id"], "reject").await.status(), 200);
    assert_eq!(approve(&held[0]["id"], "approve").await.status(), 409);
    assert_eq!(
        approve(&serde_json::json!(999_999), "approve")
            .await
            .status(),
        404
    );
    assert_eq!(
        titles(&submissions(&app, "held").await),
        ["Fremde Signatur"]
    );

    // The next digest lists the published and the approved item, and nothing held.
    app.run_pass("2027-05-04T05:00:00Z").await;
    let raw = sink.wait_for(1).await.into_iter().next().unwrap();
    let text = parse(&raw).body_text(0).unwrap().into_owned();
    assert!(text.contains("Geprüfte Meldung"), "{text}");
    assert!(text.contains("Ohne Prüfung"), "{text}");
    for absent in [
        "Fremde Prüfung",
        "Fremde Signatur",
        "Zwei Absender",
        "Zwei in einem",
    ] {
        assert!(!text.contains(absent), "{absent}: {text}");
    }
}

/// Serves `app` on a port chosen by the OS; returns its base URL.
async fn serve_router(listener: tokio::net::TcpListener, app: Router) -> String {
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// Waits until the feed `name` has been polled once; returns it.
async fn polled_once(app: &TestApp, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(feed) = feeds(app)
            .await
            .into_iter()
            .find(|f| f["name"] == name && !f["last_poll_at"].is_null())
        {
            return feed;
        }
        assert!(Instant::now() < deadline, "feed {name} not polled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add_feed(app: &TestApp, name: &str, url: &str, topic: &str) {
    let body =
        serde_json::json!({"name": name, "url": url, "topic": topic, "schedule": "0 0 * * * *"});
    let r = app.admin(reqwest::Method::POST, "/feeds", Some(body)).await;
    assert_eq!(r.status(), 201, "{name}");
}

/// One press release as an RSS feed: `guid`, link and title as given.
fn release(guid: &str, link: &str, title: &str) -> String {
    format!(
        r#"<?xml version="1.0"?><rss version="2.0"><channel><title>F</title><link>https://f.example/</link><description>x</description>
<item><title>{title}</title><link>{link}</link><guid>{guid}</guid><description>Die Meldung.</description></item></channel></rss>"#
    )
}

async fn the_same_release_in_feeds_of_two_topics_reaches_the_readers_of_both_once(
    backend: Backend,
) {
    let (app, sink, _db, clock) = crate::harness::app_at(backend, "2027-05-03T06:00:00Z", |c| {
        c.polling.tick = Duration::from_millis(50);
    })
    .await;
    app.create_topic("it", "IT & Telekommunikation").await;
    let title = "Gemeinsame Meldung von IT und Wirtschaft";
    let link = "https://presse.example/pm-42";
    let it = release("pm-42", link, title);
    let wirtschaft = release("pm-42", link, title);
    // Another portal: its own guid, the same link and title.
    let kultur = release("portal-b-7", link, title);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = serve_router(
        listener,
        Router::new()
            .route("/it.xml", get(move || async move { it }))
            .route("/wirtschaft.xml", get(move || async move { wirtschaft }))
            .route("/kultur.xml", get(move || async move { kultur })),
    )
    .await;
    let t0 = utc("2027-05-03T06:00:00Z");
    let berlin = |email: &'static str, topics: &'static [&'static str]| {
        let app = &app;
        async move {
            app.reader(email, topics, "07:00", "Europe/Berlin", "de", t0)
                .await
        }
    };
    berlin("it@example.org", &["it"]).await;
    berlin("wirtschaft@example.org", &["wirtschaft"]).await;
    berlin("beides@example.org", &["it", "wirtschaft"]).await;
    berlin("kultur@example.org", &["kultur"]).await;

    // The IT feed brings it first; the next pass serves every reader, so the
    // Wirtschaft reader's watermark moves past the item's id (they got no mail).
    add_feed(&app, "it", &format!("{base}/it.xml"), "it").await;
    polled_once(&app, "it").await;
    assert_eq!(app.run_pass("2027-05-04T05:00:00Z").await, (4, 2));
    let got = crate::harness::delivered(&app, &sink).await;
    for reader in ["it@example.org", "beides@example.org"] {
        assert_eq!(got[reader].len(), 1, "{reader}");
        assert!(text(&got[reader][0]).contains(title), "{reader}");
    }

    // A day later the Wirtschaft feed and another portal (another guid) carry it too.
    clock.set(utc("2027-05-04T06:00:00Z"));
    add_feed(
        &app,
        "wirtschaft",
        &format!("{base}/wirtschaft.xml"),
        "wirtschaft",
    )
    .await;
    add_feed(&app, "kultur", &format!("{base}/kultur.xml"), "kultur").await;
    polled_once(&app, "wirtschaft").await;
    polled_once(&app, "kultur").await;
    let stored = items(&app).await;
    assert_eq!(stored.len(), 1, "one item: {stored:#?}");
    assert_eq!(
        stored[0]["topics"],
        serde_json::json!(["it", "kultur", "wirtschaft"])
    );
    assert_eq!(app.run_pass("2027-05-05T05:00:00Z").await, (4, 2));
    assert_eq!(app.run_pass("2027-05-06T05:00:00Z").await, (4, 0));
    let got = crate::harness::delivered(&app, &sink).await;
    for (reader, digests) in [
        ("it@example.org", 1),
        ("beides@example.org", 1),
        ("wirtschaft@example.org", 1),
        ("kultur@example.org", 1),
    ] {
        let mails = got.get(reader).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(mails.len(), digests, "{reader}: {digests} digest(s)");
        assert_eq!(text(&mails[0]).matches(title).count(), 1, "{reader}");
    }
}

fn text(raw: &[u8]) -> String {
    parse(raw).body_text(0).unwrap().into_owned()
}

async fn a_feed_redirect_to_a_private_address_is_refused_and_one_to_its_own_host_followed(
    backend: Backend,
) {
    let landed = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let to = |location: String| {
        move || {
            let location = location.clone();
            async move { (StatusCode::FOUND, [(header::LOCATION, location)]).into_response() }
        }
    };
    let counted = landed.clone();
    let base = serve_router(
        listener,
        Router::new()
            .route("/rss.xml", get(|| async { RSS }))
            .route(
                "/landing.xml",
                get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { RSS }
                }),
            )
            .route("/same-host", get(to("/rss.xml".into())))
            .route(
                "/metadata",
                get(to("http://169.254.169.254/latest/meta-data/".into())),
            )
            .route("/private", get(to("http://10.255.255.1/feed.xml".into())))
            .route(
                "/mapped",
                get(to("http://[::ffff:10.255.255.1]/feed.xml".into())),
            )
            .route("/decimal", get(to("http://167772161/feed.xml".into())))
            // A name, not an address: it resolves to 127.0.0.1 and ::1.
            .route(
                "/by-name",
                get(to(format!("http://localhost:{port}/landing.xml"))),
            ),
    )
    .await;
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let mut config = test_config(&db, &sink.url());
    config.digest.run_scheduler = false;
    config.polling.tick = Duration::from_millis(50);
    config.polling.timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with_clock(
        config,
        Arc::new(ManualClock::new(utc("2027-05-03T06:00:00Z"))),
    )
    .await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    for name in [
        "same-host",
        "metadata",
        "private",
        "mapped",
        "decimal",
        "by-name",
    ] {
        add_feed(&app, name, &format!("{base}/{name}"), "wirtschaft").await;
    }
    // A feed the operator configured on a private address is polled as always.
    let own = polled_once(&app, "same-host").await;
    assert_eq!(own["failures"], 0, "{own}");
    assert_eq!(
        items(&app).await.len(),
        2,
        "followed to /rss.xml on its own host"
    );
    // Refused by the redirect policy before any connection: a connection attempt
    // to these unroutable addresses would have ended in a time-out instead.
    for name in ["metadata", "private", "mapped", "decimal"] {
        let feed = polled_once(&app, name).await;
        let error = feed["last_error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("redirect refused") && error.contains("non-public address"),
            "{name}: {error}"
        );
    }
    // Refused by the resolver: the address the name resolves to is checked.
    let feed = polled_once(&app, "by-name").await;
    let error = feed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("localhost resolves only to non-public addresses"),
        "{error}"
    );
    assert_eq!(landed.load(Ordering::SeqCst), 0, "never connected");
}

async fn api_items_with_a_long_or_foreign_scheme_url_are_refused_naming_the_url(backend: Backend) {
    let (app, _sink, _db, _clock) =
        crate::harness::app_at(backend, "2027-05-03T06:00:00Z", |_| {}).await;
    let post = |url: String| {
        let app = &app;
        async move {
            app.admin(
                reqwest::Method::POST,
                "/items",
                Some(serde_json::json!({"topics": ["wirtschaft"], "title": "Meldung", "url": url})),
            )
            .await
        }
    };
    let prefix = "https://presse.example/";
    for url in [
        format!("{prefix}{}", "a".repeat(2_049 - prefix.len())),
        "javascript:alert(document.cookie)".to_owned(),
        "data:text/html,<script>x</script>".to_owned(),
    ] {
        let r = post(url.clone()).await;
        assert_eq!(r.status(), 422, "{}", &url[..40.min(url.len())]);
        let error = r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(error.starts_with("url: "), "{error}");
    }
    let longest = format!("{prefix}{}", "ä".repeat(2_048 - prefix.len()));
    assert_eq!(
        post(longest).await.status(),
        201,
        "2,048 characters are fine"
    );
    let r = app
        .admin(
            reqwest::Method::POST,
            "/items",
            Some(serde_json::json!({"topics": ["wirtschaft"], "title": "Lang", "summary": "x".repeat(2_001)})),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(
        r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .starts_with("summary: ")
    );
    assert_eq!(items(&app).await.len(), 1, "nothing refused was stored");
}

/// A feed that serves one entry with a 2 MB link and then 4,000 entries with fresh
/// guids and over-long titles and summaries full of characters that grow when
/// escaped, in 10 MB.
fn flood() -> String {
    use std::fmt::Write;
    let mut xml = String::with_capacity(12 << 20);
    xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Flut</title><link>https://flut.example/</link><description>x</description>"#);
    write!(
        xml,
        "<item><title>Riesenlink</title><link>https://flut.example/{}</link><guid>flut-link</guid><description>Kurz.</description></item>",
        "a".repeat(2 << 20)
    )
    .unwrap();
    let text = "<Ä&€> ".repeat(100);
    for n in 0..4_000 {
        write!(
            xml,
            "<item><title><![CDATA[{n} {text}]]></title><link>https://flut.example/{n}</link><guid>flut-{n}</guid><description><![CDATA[{text}]]></description></item>"
        )
        .unwrap();
    }
    xml.push_str("</channel></rss>");
    xml
}

/// Peak resident memory of a process, from `/proc/<pid>/status`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

async fn a_hostile_feed_is_capped_and_neither_the_digest_nor_serve_grows_with_it(backend: Backend) {
    let flood = axum::body::Bytes::from(flood());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = serve_router(
        listener,
        Router::new().route("/flut.xml", get(move || async move { flood.clone() })),
    )
    .await;
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    // The real binary, so that its peak memory can be read; a feed body of up to
    // 16 MiB is allowed (the default is 5 MiB).
    let serve = crate::harness::Serve::start_on_own_port(
        &db,
        &sink.url(),
        "[digest]\nrun_scheduler = false\n[polling]\ntick_ms = 50\nmax_bytes = 16777216\n",
    )
    .await;
    let http = reqwest::Client::new();
    serve.wait_ready(&http).await;
    let admin = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut request = http
            .request(method, format!("{}/api/v1{path}", serve.base))
            .bearer_auth(crate::harness::ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap() }
    };
    let r = admin(
        reqwest::Method::POST,
        "/topics",
        Some(serde_json::json!({"slug": "flut", "name": "Flut"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let now = Utc::now();
    db.store()
        .await
        .import_confirmed(
            &postbote::store::ImportedSubscriber {
                email: postbote::domain::EmailAddress::parse("leser@example.org").unwrap(),
                topics: vec![postbote::domain::TopicSlug::parse("flut").unwrap()],
                schedule: postbote::domain::DeliverySchedule {
                    time: postbote::domain::DeliveryTime::parse("07:00").unwrap(),
                    timezone: postbote::domain::TimeZone::parse("Europe/Berlin").unwrap(),
                    weekdays: postbote::domain::Weekdays::EVERY_DAY,
                },
                locale: postbote::domain::Locale::parse("de").unwrap(),
                consent_at: now,
                consent_ip: None,
                source: "tests".into(),
            },
            now,
            chrono::Duration::hours(24),
        )
        .await
        .unwrap()
        .expect("a new reader");
    let r = admin(
        reqwest::Method::POST,
        "/feeds",
        Some(serde_json::json!({"name": "flut", "url": format!("{base}/flut.xml"), "topic": "flut", "schedule": "0 0 * * * *"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(120);
    let feed = loop {
        let all: Vec<serde_json::Value> = admin(reqwest::Method::GET, "/feeds", None)
            .await
            .json()
            .await
            .unwrap();
        if !all[0]["last_poll_at"].is_null() {
            break all[0].clone();
        }
        assert!(Instant::now() < deadline, "not polled: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(feed["failures"], 0, "{feed}");

    let listed: serde_json::Value = admin(reqwest::Method::GET, "/items?limit=1000", None)
        .await
        .json()
        .await
        .unwrap();
    let stored = listed["items"].as_array().unwrap();
    assert_eq!(stored.len(), 200, "polling.max_new_items per poll");
    assert_eq!(stored[0]["title"], "Riesenlink");
    assert!(stored[0]["url"].is_null(), "the 2 MB link is dropped");
    for item in stored {
        assert!(item["title"].as_str().unwrap().chars().count() <= 500);
        assert!(item["summary"].as_str().unwrap().chars().count() <= 501);
    }

    let at = (now + chrono::Duration::days(2)).to_rfc3339();
    let pass = serve.run_pass(&http, &at).await;
    assert_eq!(
        (pass["due"].as_u64(), pass["enqueued"].as_u64()),
        (Some(1), Some(1))
    );
    let raw = sink.wait_for(1).await.remove(0);
    assert!(raw.len() < 256 * 1024, "digest of {} bytes", raw.len());
    let text = text(&raw);
    assert!(
        text.contains("weitere Meldungen"),
        "the rest counted: {text}"
    );

    let peak = peak_rss(serve.child.id());
    assert!(
        peak < 150 * 1024 * 1024,
        "serve peaked at {} MB",
        peak >> 20
    );
    eprintln!(
        "{backend:?}: digest {} KB, serve peak {} MB",
        raw.len() >> 10,
        peak >> 20
    );
}

/// Posts a feed through the API.
async fn post_feed(app: &TestApp, name: &str, url: &str) -> reqwest::Response {
    let body = serde_json::json!({"name": name, "url": url, "topic": "wirtschaft", "schedule": "0 0 * * * *"});
    app.admin(reqwest::Method::POST, "/feeds", Some(body)).await
}

async fn delete_feed(app: &TestApp, name: &str) -> u16 {
    app.admin(reqwest::Method::DELETE, &format!("/feeds/{name}"), None)
        .await
        .status()
        .as_u16()
}

async fn a_configured_feed_is_polled_keeps_its_name_and_comes_back_at_the_next_start_after_a_delete(
    backend: Backend,
) {
    let (base, seen) = fixture_server().await;
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let mut config = test_config(&db, &sink.url());
    config.digest.run_scheduler = false;
    config.polling.tick = Duration::from_millis(50);
    let wirtschaft = postbote::domain::TopicSlug::parse("wirtschaft").unwrap();
    config.topics = vec![postbote::config::TopicSeed {
        slug: wirtschaft.clone(),
        name: "Wirtschaft".into(),
        description: None,
    }];
    config.feeds = vec![postbote::config::FeedSeed {
        name: "presse".into(),
        url: postbote::domain::HttpUrl::parse(&format!("{base}/rss.xml")).unwrap(),
        topic: wirtschaft,
        schedule: postbote::domain::FeedSchedule::parse("0 0 * * * *").unwrap(),
    }];
    let t0 = utc("2027-05-03T06:00:00Z");
    let clock = ManualClock::new(t0);
    let app = TestApp::spawn_with_clock(config.clone(), Arc::new(clock.clone())).await;

    // There after the start, from the configuration, and polled at once.
    let feed = polled_once(&app, "presse").await;
    assert_eq!(
        (
            &feed["origin"],
            &feed["url"],
            &feed["topic"],
            &feed["schedule"],
            &feed["failures"]
        ),
        (
            &serde_json::json!("config"),
            &serde_json::json!(format!("{base}/rss.xml")),
            &serde_json::json!("wirtschaft"),
            &serde_json::json!("0 0 * * * *"),
            &serde_json::json!(0)
        ),
        "{feed}"
    );
    assert_eq!(seen.rss_requests.load(Ordering::SeqCst), 1);
    assert_eq!(items(&app).await.len(), 2);

    // A name is taken once: the API can take neither the configured feed's name
    // nor that of a feed it made itself, and the feed keeps what it had.
    let taken = post_feed(&app, "presse", &format!("{base}/atom.xml")).await;
    assert_eq!(taken.status(), 409);
    assert!(taken.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    let r = post_feed(&app, "atom", &format!("{base}/atom.xml")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["origin"],
        "api"
    );
    let r = post_feed(&app, "atom", &format!("{base}/feed.json")).await;
    assert_eq!(r.status(), 409);
    polled_once(&app, "atom").await;
    let listed: Vec<(String, String, String)> = feeds(&app)
        .await
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["url"].as_str().unwrap().to_owned(),
                f["origin"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("atom".into(), format!("{base}/atom.xml"), "api".into()),
            ("presse".into(), format!("{base}/rss.xml"), "config".into()),
        ]
    );
    assert_eq!(items(&app).await.len(), 3);

    // Deleted through the API: gone, a second delete finds nothing, the items stay.
    assert_eq!(delete_feed(&app, "presse").await, 204);
    assert_eq!(delete_feed(&app, "presse").await, 404);
    assert_eq!(delete_feed(&app, "atom").await, 204);
    assert_eq!(feeds(&app).await, Vec::<serde_json::Value>::new());
    assert_eq!(items(&app).await.len(), 3);

    // And no longer polled: once both would have been due again, two poll rounds
    // go by without fetching them.
    clock.set(t0 + chrono::Duration::minutes(61));
    two_poll_rounds(&app, &base).await;
    assert_eq!(seen.rss_requests.load(Ordering::SeqCst), 1);
    assert_eq!(seen.atom_requests.load(Ordering::SeqCst), 1);

    // At the next start the configured feed is back, and polled again (in full:
    // it is a new feed) without storing anything twice; the API's stays deleted.
    app.stop().await;
    let app = TestApp::spawn_with_clock(config, Arc::new(clock.clone())).await;
    let feed = polled_once(&app, "presse").await;
    assert_eq!(feed["origin"], "config");
    assert_eq!(feed["failures"], 0);
    let names: Vec<serde_json::Value> = feeds(&app)
        .await
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, ["presse"]);
    assert_eq!(seen.rss_not_modified.load(Ordering::SeqCst), 0);
    assert_eq!(seen.rss_requests.load(Ordering::SeqCst), 2);
    assert_eq!(items(&app).await.len(), 3);
}

async fn the_items_api_pages_through_every_item_once_and_filters_by_the_exact_topic(
    backend: Backend,
) {
    let (app, _sink, _db, _clock) =
        crate::harness::app_at(backend, "2027-05-03T06:00:00Z", |_| {}).await;
    // A slug that starts like another one: the filter must not take one for the other.
    app.create_topic("wirtschaft-international", "Wirtschaft international")
        .await;
    let mut stored: Vec<(i64, &[&str])> = Vec::new();
    for n in 0..23 {
        let topics: &[&str] = match n % 4 {
            0 => &["wirtschaft"],
            1 => &["kultur"],
            2 => &["wirtschaft-international"],
            _ => &["wirtschaft", "kultur"],
        };
        stored.push((app.post_item(topics, &format!("Meldung {n}")).await, topics));
    }
    let page = |query: String| {
        let app = &app;
        async move {
            let r = app
                .admin(reqwest::Method::GET, &format!("/items?{query}"), None)
                .await;
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };

    for topic in [
        None,
        Some("wirtschaft"),
        Some("kultur"),
        Some("wirtschaft-international"),
        Some("sport"),
    ] {
        let mut walked: Vec<i64> = Vec::new();
        let mut after: Option<i64> = None;
        for pages in 1.. {
            assert!(pages <= 10, "{topic:?}: the paging does not end");
            let mut query = "limit=5".to_owned();
            if let Some(topic) = topic {
                query.push_str(&format!("&topic={topic}"));
            }
            if let Some(after) = after {
                query.push_str(&format!("&after={after}"));
            }
            let (status, v) = page(query).await;
            assert_eq!(status, 200, "{v}");
            let items = v["items"].as_array().unwrap();
            assert!(items.len() <= 5);
            for item in items {
                if let Some(topic) = topic {
                    assert!(
                        item["topics"].as_array().unwrap().contains(&topic.into()),
                        "{topic}: {item}"
                    );
                }
                walked.push(item["id"].as_i64().unwrap());
            }
            // A full page points past its last item; a short one ends the walk.
            match v["next_after"].as_i64() {
                Some(next) => {
                    assert_eq!(items.len(), 5, "{v}");
                    assert_eq!(Some(next), walked.last().copied());
                    after = Some(next);
                }
                None => {
                    assert!(items.len() < 5, "{v}");
                    break;
                }
            }
        }
        let expected: Vec<i64> = stored
            .iter()
            .filter(|(_, topics)| topic.is_none_or(|t| topics.contains(&t)))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            walked, expected,
            "{topic:?}: every item once, in arrival order"
        );
    }

    // A cursor in the middle starts right after it.
    let (_, v) = page(format!("limit=3&after={}", stored[10].0)).await;
    let ids: Vec<i64> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [stored[11].0, stored[12].0, stored[13].0]);
    // Out of range or malformed: refused, naming the parameter.
    for (query, status) in [
        ("limit=0", 422),
        ("limit=1001", 422),
        ("topic=Nicht%20g%C3%BCltig", 422),
        ("after=zwei", 400),
    ] {
        let (got, v) = page(query.into()).await;
        assert_eq!(got, status, "{query}: {v}");
        assert!(v["error"].is_string(), "{query}: {v}");
    }
}

async fn a_feed_whose_stored_schedule_does_not_parse_is_set_aside_naming_the_row_and_the_others_are_polled(
    backend: Backend,
) {
    let (base, seen) = fixture_server().await;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let t0 = utc("2027-05-03T06:00:00Z");
    let topic = postbote::domain::TopicSlug::parse("wirtschaft").unwrap();
    store
        .create_topic(&topic, "Wirtschaft", None, t0)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (name, path) in [("presse", "rss.xml"), ("kaputt", "atom.xml")] {
        let spec = postbote::store::FeedSpec {
            name: name.into(),
            url: postbote::domain::HttpUrl::parse(&format!("{base}/{path}")).unwrap(),
            topic: topic.clone(),
            schedule: postbote::domain::FeedSchedule::parse("0 */15 * * * *").unwrap(),
            next_poll_at: t0,
        };
        ids.push(store.put_feed(&spec, "api", t0).await.unwrap().id);
    }
    let kaputt = ids[1];
    crate::store_contract::damage_row(&db, "feeds", kaputt, "schedule", "jede Stunde").await;

    let config = test_config(&db, "smtp://127.0.0.1:25");
    let poller = postbote::feeds::Poller::new(
        store.clone(),
        Arc::new(ManualClock::new(t0)),
        config.polling,
        "https://postbote.example",
    )
    .unwrap();
    assert_eq!(poller.poll_due().await, 2, "both claimed");
    assert_eq!(
        seen.rss_requests.load(Ordering::SeqCst),
        1,
        "the other is polled"
    );
    assert_eq!(
        seen.atom_requests.load(Ordering::SeqCst),
        0,
        "not fetched on a guessed schedule"
    );

    // Set aside for an hour with the row named where the operator looks.
    crate::store_contract::damage_row(&db, "feeds", kaputt, "schedule", "0 */15 * * * *").await;
    let feed = store.feed(kaputt).await.unwrap().unwrap();
    let error = feed.last_error.unwrap_or_default();
    assert!(
        error.contains(&format!("feeds row {kaputt}")) && error.contains("schedule"),
        "{error}"
    );
    assert_eq!(
        (feed.failures, feed.next_poll_at, feed.last_ok_at),
        (1, t0 + chrono::Duration::hours(1), None)
    );
}

on_both_backends!(
    mailed_in_items_are_published_only_with_one_authenticated_from,
    feeds_are_polled_on_schedule_once_per_entry_and_hostile_ones_are_contained,
    press_releases_mailed_in_from_allowed_senders_become_items,
    the_same_release_in_feeds_of_two_topics_reaches_the_readers_of_both_once,
    a_feed_redirect_to_a_private_address_is_refused_and_one_to_its_own_host_followed,
    api_items_with_a_long_or_foreign_scheme_url_are_refused_naming_the_url,
    a_hostile_feed_is_capped_and_neither_the_digest_nor_serve_grows_with_it,
    a_configured_feed_is_polled_keeps_its_name_and_comes_back_at_the_next_start_after_a_delete,
    the_items_api_pages_through_every_item_once_and_filters_by_the_exact_topic,
    a_feed_whose_stored_schedule_does_not_parse_is_set_aside_naming_the_row_and_the_others_are_polled,
);
