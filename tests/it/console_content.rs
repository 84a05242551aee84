//! The console's content pages over HTTP against the real app on both backends:
//! topics, items (a hidden item never goes out again), feeds polled from a real
//! HTTP server on loopback, held submissions made by the real `postbote inbound`;
//! every page needs the session, every form the CSRF token; the links keep the
//! page language. Also the subscriber CSV export against formula injection, read
//! back by the real `postbote import`, and the search's literal `%` and `_`.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use postbote::clock::Clock;

use crate::console::{Console, get, login, post};
use crate::feeds::{fixture_server, hold};
use crate::harness::{Backend, TestApp, app_at, delivered, parse, run_to_end_async, utc};

/// Every page of this area.
const PAGES: [&str; 4] = [
    "/admin/topics",
    "/admin/items",
    "/admin/feeds",
    "/admin/submissions",
];

async fn html(app: &TestApp, c: &Console, path: &str) -> String {
    let r = get(app, Some(&c.cookie), path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

/// The text part of a captured mail.
fn text_of(raw: &[u8]) -> String {
    parse(raw).body_text(0).unwrap().into_owned()
}

async fn api_json(app: &TestApp, path: &str) -> serde_json::Value {
    app.admin(reqwest::Method::GET, path, None)
        .await
        .json()
        .await
        .unwrap()
}

/// Two submissions held for a decision, made by `postbote inbound` from an allowed
/// sender without authentication; returns their ids.
async fn two_held(db: &crate::harness::TestDb, app: &TestApp) -> Vec<i64> {
    for (id, subject) in [("m1", "Erste Mitteilung"), ("m2", "Zweite Mitteilung")] {
        hold(db, id, subject).await;
    }
    let held = api_json(app, "/submissions").await;
    held["submissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect()
}

async fn content_pages_need_a_session_and_keep_the_language(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    for path in PAGES {
        let r = get(&app, None, path).await;
        assert_eq!(r.status(), 303, "{path} without a session");
        assert_eq!(r.headers()["location"], "/admin/login");
    }
    for path in [
        "/admin/topics",
        "/admin/topics/kultur/rename",
        "/admin/topics/kultur/retire",
        "/admin/items",
        "/admin/items/1/hide",
        "/admin/feeds",
        "/admin/feeds/1/poll",
        "/admin/feeds/1/delete",
        "/admin/submissions/1/approve",
        "/admin/submissions/1/reject",
    ] {
        let r = app
            .http
            .post(app.url(path))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "POST {path} without a session");
    }
    let c = login(&app).await;
    for path in PAGES {
        let en = html(&app, &c, &format!("{path}?lang=en")).await;
        assert!(en.contains("<html lang=\"en\""), "{path}");
        for link in PAGES {
            assert!(
                en.contains(&format!("href=\"{link}?lang=en\"")),
                "{path} links {link} in English: {en}"
            );
        }
        assert!(en.contains("href=\"/admin?lang=en\""), "{path}");
        let de = html(&app, &c, &format!("{path}?lang=de")).await;
        assert!(de.contains("<html lang=\"de\""), "{path}");
        assert!(de.contains("Zurückgehaltene Einsendungen"), "{path}");
    }
    let topics = html(&app, &c, "/admin/topics?lang=en").await;
    assert!(topics.contains("action=\"/admin/topics?lang=en\""));
    assert!(topics.contains("action=\"/admin/topics/kultur/rename?lang=en\""));
    let r = post(
        &app,
        &c,
        "/admin/topics/kultur/rename?lang=en",
        &[("csrf", &c.csrf), ("name", "Culture")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/admin/topics?lang=en",
        "stays in English"
    );
    app.stop().await;
}

async fn content_forms_without_the_csrf_token_are_refused_and_change_nothing(backend: Backend) {
    let (base, seen) = fixture_server().await;
    let (app, _sink, db, _clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    let item = app.post_item(&["kultur"], "Ausstellung").await;
    let r = app
        .admin(
            reqwest::Method::POST,
            "/feeds",
            Some(serde_json::json!({"name": "presse", "url": format!("{base}/rss.xml"), "topic": "wirtschaft", "schedule": "0 0 * * * *"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let feed = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let held = two_held(&db, &app).await;
    let c = login(&app).await;
    // Due at once: let its first poll happen before taking stock.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api_json(&app, "/items").await["items"]
        .as_array()
        .unwrap()
        .len()
        < 3
    {
        assert!(Instant::now() < deadline, "the feed was not polled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = (
        api_json(&app, "/topics").await,
        api_json(&app, "/items").await,
        api_json(&app, "/submissions?status=all").await,
    );
    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            "/admin/topics".into(),
            vec![("slug", "neu"), ("name", "Neu")],
        ),
        (
            "/admin/topics/kultur/rename".into(),
            vec![("name", "Anders")],
        ),
        ("/admin/topics/kultur/retire".into(), vec![]),
        (
            "/admin/items".into(),
            vec![("topics", "kultur"), ("title", "Fremd")],
        ),
        (format!("/admin/items/{item}/hide"), vec![]),
        (
            "/admin/feeds".into(),
            vec![
                ("url", "https://fremd.example/rss"),
                ("topic", "kultur"),
                ("schedule", "0 0 * * * *"),
            ],
        ),
        (format!("/admin/feeds/{feed}/delete"), vec![]),
        (format!("/admin/feeds/{feed}/poll"), vec![]),
        (format!("/admin/submissions/{}/approve", held[0]), vec![]),
        (format!("/admin/submissions/{}/reject", held[1]), vec![]),
    ];
    let wrong = "f".repeat(64);
    for (path, fields) in &forms {
        for csrf in [None, Some(wrong.as_str())] {
            let mut f = fields.clone();
            if let Some(t) = csrf {
                f.push(("csrf", t));
            }
            let r = post(&app, &c, path, &f).await;
            assert_eq!(r.status(), 403, "{path} with {f:?}");
        }
    }
    let after = (
        api_json(&app, "/topics").await,
        api_json(&app, "/items").await,
        api_json(&app, "/submissions?status=all").await,
    );
    assert_eq!(before, after, "nothing changed");
    let feeds = api_json(&app, "/feeds").await;
    assert_eq!(
        feeds.as_array().unwrap().len(),
        1,
        "the feed is still there"
    );
    // Polled once when it was added (due at once), never again: "poll now" was refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(seen.rss_requests.load(Ordering::SeqCst) <= 1);
    app.stop().await;
}

async fn topics_are_created_renamed_and_retired_with_reader_counts(backend: Backend) {
    let (app, _sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    for email in ["a@example.org", "b@example.org"] {
        app.reader(
            email,
            &["kultur"],
            "07:00",
            "Europe/Berlin",
            "de",
            clock.now(),
        )
        .await;
    }
    app.sign_up_json(serde_json::json!({"email": "p@example.org", "topics": ["kultur", "sport"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true}))
        .await;
    let c = login(&app).await;
    let page = html(&app, &c, "/admin/topics").await;
    assert!(
        page.contains("<th scope=\"row\">kultur</th><td>Kultur</td><td>2</td><td>1</td>"),
        "two confirmed, one pending: {page}"
    );
    assert!(page.contains("<th scope=\"row\">sport</th><td>Sport</td><td>0</td><td>1</td>"));

    let r = post(
        &app,
        &c,
        "/admin/topics?lang=de",
        &[
            ("csrf", &c.csrf),
            ("slug", "technik"),
            ("name", " Technik "),
            ("description", "Geräte"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let topics = api_json(&app, "/topics").await;
    let technik = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "technik")
        .expect("created");
    assert_eq!(technik["name"], "Technik");
    assert_eq!(technik["description"], "Geräte");

    let r = post(
        &app,
        &c,
        "/admin/topics",
        &[("csrf", &c.csrf), ("slug", "technik"), ("name", "Nochmal")],
    )
    .await;
    assert_eq!(r.status(), 409, "the slug exists");
    assert!(r.text().await.unwrap().contains("technik"));
    let r = post(
        &app,
        &c,
        "/admin/topics?lang=en",
        &[
            ("csrf", &c.csrf),
            ("slug", "Groß Buchstaben"),
            ("name", "X"),
        ],
    )
    .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("Not saved: slug"));
    let r = post(
        &app,
        &c,
        "/admin/topics/technik/rename",
        &[("csrf", &c.csrf), ("name", " ")],
    )
    .await;
    assert_eq!(r.status(), 422, "a blank name");

    let r = post(
        &app,
        &c,
        "/admin/topics/technik/rename",
        &[("csrf", &c.csrf), ("name", "Technik & Wissen")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = post(
        &app,
        &c,
        "/admin/topics/kultur/retire",
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = post(
        &app,
        &c,
        "/admin/topics/nirgends/retire",
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 404);
    let offered = app
        .store
        .list_topics(false)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.slug, t.name))
        .collect::<Vec<_>>();
    assert!(offered.contains(&("technik".into(), "Technik & Wissen".into())));
    assert!(!offered.iter().any(|(s, _)| s == "kultur"), "retired");
    let page = html(&app, &c, "/admin/topics").await;
    assert!(page.contains("Technik &amp; Wissen"), "escaped: {page}");
    assert!(
        !page.contains("action=\"/admin/topics/kultur/retire"),
        "a retired topic cannot be retired again"
    );
    app.stop().await;
}

async fn an_item_added_in_the_console_goes_out_and_a_hidden_one_never_does(backend: Backend) {
    let (app, sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    // Same topics, language and previous digest: one content, served at two slots.
    app.reader(
        "frueh@example.org",
        &["kultur"],
        "07:00",
        "Europe/Berlin",
        "de",
        clock.now(),
    )
    .await;
    app.reader(
        "spaet@example.org",
        &["kultur"],
        "08:00",
        "Europe/Berlin",
        "de",
        clock.now(),
    )
    .await;
    clock.set(utc("2027-01-14T13:00:00Z"));
    let c = login(&app).await;
    let r = post(
        &app,
        &c,
        "/admin/items?lang=de",
        &[("csrf", &c.csrf), ("topics", "sport"), ("title", " ")],
    )
    .await;
    assert_eq!(r.status(), 422, "a blank title");
    assert!(r.text().await.unwrap().contains("Nicht gespeichert: title"));
    let r = post(
        &app,
        &c,
        "/admin/items?lang=de",
        &[
            ("csrf", &c.csrf),
            ("topics", "kultur"),
            ("topics", "sport"),
            ("title", "Aus der Konsole"),
            ("url", "https://presse.example/konsole"),
            ("summary", "Von Hand"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/items?lang=de");
    let stale = app.post_item(&["kultur"], "Zurückgezogen").await;
    let page = html(&app, &c, "/admin/items?source=console").await;
    assert!(page.contains("Aus der Konsole") && !page.contains("Zurückgezogen"));
    let page = html(&app, &c, "/admin/items?topic=sport").await;
    assert!(page.contains("Aus der Konsole") && page.contains("kultur sport"));

    // The early reader gets both.
    clock.set(utc("2027-01-15T06:00:00Z"));
    assert_eq!(app.run_pass("2027-01-15T06:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    let early = text_of(&got["frueh@example.org"][0]);
    assert!(
        early.contains("Aus der Konsole") && early.contains("Zurückgezogen"),
        "{early}"
    );

    // A session lasts 12 hours.
    let c = login(&app).await;
    let r = post(
        &app,
        &c,
        &format!("/admin/items/{stale}/hide"),
        &[
            ("csrf", &c.csrf),
            ("back", "/admin/items?topic=kultur&lang=en"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/items?topic=kultur&lang=en");
    let r = post(
        &app,
        &c,
        "/admin/items/999999/hide",
        &[("csrf", &c.csrf), ("back", "https://evil.example/")],
    )
    .await;
    assert_eq!(r.status(), 404);
    let page = html(&app, &c, "/admin/items?topic=kultur").await;
    assert!(
        !page.contains(&format!("/admin/items/{stale}/hide")),
        "hidden: no hide button"
    );

    // The late reader's digest, planned after hiding, has the same topics, date
    // and previous digest as the early one: it must not be the body stored then.
    clock.set(utc("2027-01-15T07:00:00Z"));
    assert_eq!(app.run_pass("2027-01-15T07:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    let late = text_of(&got["spaet@example.org"][0]);
    assert!(late.contains("Aus der Konsole"), "{late}");
    assert!(!late.contains("Zurückgezogen"), "{late}");
    // An item hidden before its first digest never goes out; the rest does.
    app.post_item(&["kultur"], "Noch eins").await;
    let newest = app.post_item(&["kultur"], "Auch weg").await;
    let r = post(
        &app,
        &c,
        &format!("/admin/items/{newest}/hide"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    clock.set(utc("2027-01-16T06:00:00Z"));
    assert_eq!(app.run_pass("2027-01-16T06:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    let next = text_of(&got["frueh@example.org"][1]);
    assert!(
        next.contains("Noch eins") && !next.contains("Auch weg"),
        "{next}"
    );
    app.stop().await;
}

/// Waits until the feed page shows `needle`.
async fn feed_page_shows(app: &TestApp, c: &Console, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = html(app, c, "/admin/feeds").await;
        if page.contains(needle) {
            return page;
        }
        assert!(Instant::now() < deadline, "{needle} not in {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn feeds_are_added_polled_now_and_removed(backend: Backend) {
    let (base, seen) = fixture_server().await;
    let (app, _sink, _db, _clock) = app_at(backend, "2027-05-03T06:00:00Z", |c| {
        c.polling.tick = Duration::from_millis(50);
    })
    .await;
    let c = login(&app).await;
    let rss = format!("{base}/rss.xml");
    let add = |name: &'static str, url: String| {
        let (app, c) = (&app, &c);
        async move {
            post(
                app,
                c,
                "/admin/feeds?lang=en",
                &[
                    ("csrf", &c.csrf),
                    ("name", name),
                    ("url", &url),
                    ("topic", "wirtschaft"),
                    ("schedule", "0 0 * * * *"),
                ],
            )
            .await
        }
    };
    let r = add("presse", rss.clone()).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/feeds?lang=en");
    // Due at once: polled, two items; the health columns show it (the poll's record
    // is written after its items, so the page may show the items a moment before).
    feed_page_shows(&app, &c, ">2</a></td>").await;
    let page = feed_page_shows(&app, &c, "2027-05-03T06:00:00").await;
    assert!(page.contains(">2</a></td>"), "{page}");
    // Handlebars escapes `=` and `&` in the attribute; a browser reads them back.
    assert!(
        page.contains("\"/admin/items?source&#x3D;feed%3Apresse&amp;lang&#x3D;de\""),
        "{page}"
    );
    assert_eq!(seen.rss_requests.load(Ordering::SeqCst), 1);

    assert_eq!(
        add("presse", rss.clone()).await.status(),
        409,
        "the name is taken"
    );
    let r = add("x", "ftp://presse.example/rss".into()).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("Not saved: url"));
    let r = add("kaputt", format!("{base}/hostile/missing")).await;
    assert_eq!(r.status(), 303);
    feed_page_shows(&app, &c, "HTTP 500").await;

    // The clock stands still: without "poll now" the feed is not due before 07:00.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.rss_requests.load(Ordering::SeqCst), 1);
    let presse = api_json(&app, "/feeds").await;
    let presse_id = presse
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "presse")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let r = post(
        &app,
        &c,
        &format!("/admin/feeds/{presse_id}/poll?lang=en"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.rss_requests.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "poll now did not poll");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = post(
        &app,
        &c,
        &format!("/admin/feeds/{presse_id}/delete"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let names: Vec<_> = api_json(&app, "/feeds")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["kaputt"]);
    assert_eq!(
        api_json(&app, "/items").await["items"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "its items stay"
    );
    let r = post(
        &app,
        &c,
        &format!("/admin/feeds/{presse_id}/poll"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 404);
    app.stop().await;
}

async fn held_submissions_are_approved_or_rejected(backend: Backend) {
    let (app, _sink, db, _clock) = app_at(backend, "2027-05-03T06:00:00Z", |_| {}).await;
    let held = two_held(&db, &app).await;
    let c = login(&app).await;
    let page = html(&app, &c, "/admin/submissions?lang=en").await;
    assert!(page.contains("Erste Mitteilung") && page.contains("Zweite Mitteilung"));
    assert!(page.contains("pr@agentur.example"));
    let r = post(
        &app,
        &c,
        &format!("/admin/submissions/{}/approve?lang=en", held[0]),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/submissions?lang=en");
    let r = post(
        &app,
        &c,
        &format!("/admin/submissions/{}/reject", held[1]),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let items = api_json(&app, "/items").await;
    let titles: Vec<_> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        titles,
        ["Erste Mitteilung"],
        "approved is published, rejected not"
    );
    let all = api_json(&app, "/submissions?status=all").await;
    let statuses: Vec<_> = all["submissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["approved", "rejected"]);
    let page = html(&app, &c, "/admin/submissions?lang=en").await;
    assert!(page.contains("Nothing waits for a decision."), "{page}");
    let r = post(
        &app,
        &c,
        &format!("/admin/submissions/{}/approve", held[1]),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 409, "decided already");
    let r = post(
        &app,
        &c,
        "/admin/submissions/999999/approve",
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 404);
    app.stop().await;
}

/// The addresses and topics a spreadsheet would run as formulas.
const FORMULA_READERS: [&str; 5] = [
    "=cmd|'/ccalc'!a0@example.org",
    "+49301234@example.org",
    "-minus@example.org",
    "@x", // never a valid address: see below
    "'=quoted@example.org",
];

async fn the_csv_export_runs_no_formula_and_reads_back_the_same_addresses(backend: Backend) {
    let (app, _sink, _db, clock) = app_at(backend, "2025-06-01T12:00:00Z", |_| {}).await;
    app.create_topic("-minus", "Minus").await;
    let readers: Vec<&str> = FORMULA_READERS
        .iter()
        .copied()
        .filter(|e| postbote::domain::EmailAddress::parse(e).is_ok())
        .chain(["plain@example.org"])
        .collect();
    assert_eq!(
        readers.len(),
        5,
        "four formula addresses are valid addresses"
    );
    for email in &readers {
        app.reader(
            email,
            &["-minus", "kultur"],
            "07:00",
            "Europe/Berlin",
            "de",
            clock.now(),
        )
        .await;
    }
    let c = login(&app).await;
    let r = get(&app, Some(&c.cookie), "/admin/subscribers.csv").await;
    assert_eq!(r.status(), 200);
    let csv = r.text().await.unwrap();
    let mut cells = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = cells.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 5, "{csv}");
    for row in &rows {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a cell a spreadsheet would run: {cell:?} in {csv}"
            );
        }
    }
    assert!(csv.contains("'=cmd|'/ccalc'!a0@example.org"), "{csv}");
    assert!(csv.contains("''=quoted@example.org"), "{csv}");
    assert!(csv.contains("'-minus;kultur"), "{csv}");
    app.stop().await;

    let (other, _sink2, other_db, _clock2) = app_at(backend, "2025-06-01T12:00:00Z", |_| {}).await;
    other.create_topic("-minus", "Minus").await;
    let file = other_db.dir.path().join("export.csv");
    std::fs::write(&file, &csv).unwrap();
    let out = run_to_end_async(
        Command::new(env!("CARGO_BIN_EXE_postbote"))
            .args(["import", file.to_str().unwrap()])
            .env("POSTBOTE_DATABASE_URL", &other_db.url)
            .env("POSTBOTE_DATA_DIR", other_db.dir.path().join("data")),
        None,
    )
    .await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.contains("imported 5"),
        "{said}"
    );
    for email in &readers {
        let address = postbote::domain::EmailAddress::parse(email).unwrap();
        let export = other.store.export_subscriber(&address).await.unwrap();
        let export = serde_json::to_value(export.expect(email)).unwrap();
        assert_eq!(export["status"], "confirmed", "{email}");
        assert_eq!(export["topics"], serde_json::json!(["-minus", "kultur"]));
    }
    assert_eq!(
        other
            .store
            .subscriber_id("=quoted@example.org")
            .await
            .unwrap(),
        None,
        "the exporter's quote was taken off, never one of the data"
    );
    other.stop().await;
}

async fn a_search_prefix_with_percent_or_underscore_is_matched_literally(backend: Backend) {
    let (app, _sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    let all = [
        "a%b@example.org",
        "axb@example.org",
        "a_c@example.org",
        "ayc@example.org",
    ];
    for email in all {
        app.reader(
            email,
            &["kultur"],
            "07:00",
            "Europe/Berlin",
            "de",
            clock.now(),
        )
        .await;
    }
    let c = login(&app).await;
    let found = |html: String| -> Vec<&str> {
        all.iter()
            .copied()
            .filter(|e| html.contains(&format!(">{e}<")))
            .collect()
    };
    let search = |q: &str| {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("q", q)
            .finish();
        format!("/admin/subscribers?{query}")
    };
    assert_eq!(
        found(html(&app, &c, &search("a%")).await),
        ["a%b@example.org"]
    );
    assert_eq!(
        found(html(&app, &c, &search("a_")).await),
        ["a_c@example.org"]
    );
    assert_eq!(
        found(html(&app, &c, &search("%")).await),
        Vec::<&str>::new()
    );
    assert_eq!(
        found(html(&app, &c, &search("_")).await),
        Vec::<&str>::new()
    );
    assert_eq!(found(html(&app, &c, &search("a")).await).len(), 4);
    app.stop().await;
}

on_both_backends!(
    content_pages_need_a_session_and_keep_the_language,
    content_forms_without_the_csrf_token_are_refused_and_change_nothing,
    topics_are_created_renamed_and_retired_with_reader_counts,
    an_item_added_in_the_console_goes_out_and_a_hidden_one_never_does,
    feeds_are_added_polled_now_and_removed,
    held_submissions_are_approved_or_rejected,
    the_csv_export_runs_no_formula_and_reads_back_the_same_addresses,
    a_search_prefix_with_percent_or_underscore_is_matched_literally,
);
