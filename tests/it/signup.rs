//! Double opt-in end to end: the real app, a real database of each backend and a
//! real SMTP server; mails are read with mail-parser and their links followed.

use std::sync::Arc;

use crate::harness::{
    Backend, SmtpSink, TestApp, TestDb, find_link, form, parse, recipient, test_config,
};
use chrono::{Duration, Utc};
use mail_parser::MimeHeaders;
use postbote::clock::{Clock, ManualClock, SystemClock};
use postbote::store::EventEffect;

async fn app_with_topics(backend: Backend) -> (TestApp, SmtpSink, TestDb) {
    app_with_topics_on(backend, Arc::new(SystemClock)).await
}

/// [`app_with_topics`] on `clock`.
async fn app_with_topics_on(
    backend: Backend,
    clock: Arc<dyn Clock>,
) -> (TestApp, SmtpSink, TestDb) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let app = TestApp::spawn_with_clock(test_config(&db, &sink.url()), clock).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.create_topic("it-telekommunikation", "IT & Telekommunikation")
        .await;
    (app, sink, db)
}

async fn sign_up_confirm_and_export_the_proof(backend: Backend) {
    let (app, sink, _db) = app_with_topics(backend).await;

    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for needle in [
        "name=\"email\"",
        "name=\"topics\" value=\"wirtschaft\"",
        "name=\"delivery_time\"",
        "name=\"timezone\"",
        "name=\"locale\"",
        "name=\"consent\"",
        "IT &amp; Telekommunikation",
        "Einwilligung",
    ] {
        assert!(html.contains(needle), "sign-up page lacks {needle}");
    }

    let r = app
        .sign_up_form(&form(
            "Leser@Example.org",
            &["wirtschaft", "it-telekommunikation"],
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Fast geschafft"));

    let raw = sink.wait_for(1).await;
    let mail = parse(&raw[0]);
    assert_eq!(
        mail.subject(),
        Some("Bitte bestätigen Sie Ihr Newsletter-Abonnement")
    );
    assert_eq!(
        mail.header_raw("X-Rcpt-Args").map(str::trim),
        Some("<leser@example.org>")
    );
    assert_eq!(
        mail.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-generated")
    );
    assert!(
        mail.message_id()
            .is_some_and(|id| id.ends_with("@example.org"))
    );
    assert!(mail.date().is_some());
    assert!(
        mail.content_type()
            .is_some_and(|ct| ct.ctype() == "multipart" && ct.subtype() == Some("alternative"))
    );
    let text = mail.body_text(0).expect("text part").into_owned();
    let html_part = mail.body_html(0).expect("html part").into_owned();
    let link = find_link(&text, "confirm").expect("confirm link in the text part");
    assert!(
        link.starts_with(&app.base),
        "{link} is under the public URL"
    );
    assert!(
        html_part.contains(&link),
        "the same link is in the HTML part"
    );

    // A mail scanner fetches the link: nothing may change.
    let get = app.http.get(&link).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert!(get.text().await.unwrap().contains("method=\"post\""));
    let export = app.export("leser@example.org").await.unwrap();
    assert_eq!(export["status"], "pending", "a GET must not confirm");
    assert!(export["confirmation"].is_null());

    let post = app.http.post(&link).send().await.unwrap();
    assert_eq!(post.status(), 200);
    assert!(post.text().await.unwrap().contains("Vielen Dank"));
    let again = app.http.post(&link).send().await.unwrap();
    assert_eq!(again.status(), 200, "confirming twice is harmless");

    let export = app.wait_delivered("leser@example.org").await;
    assert_eq!(export["status"], "confirmed");
    assert_eq!(
        export["topics"],
        serde_json::json!(["it-telekommunikation", "wirtschaft"])
    );
    assert_eq!(export["schedule"]["delivery_time"], "07:30");
    assert_eq!(export["schedule"]["timezone"], "Europe/Berlin");
    assert_eq!(export["schedule"]["locale"], "de");
    assert_eq!(export["confirmation"]["ip"], "127.0.0.1");
    assert!(export["confirmation"]["at"].is_string());
    let consent = &export["consents"][0];
    assert_eq!(consent["ip"], "127.0.0.1");
    assert_eq!(consent["user_agent"], "postbote-tests/1.0");
    assert_eq!(consent["consent_version"], "1");
    assert!(
        consent["consent_text"]
            .as_str()
            .unwrap()
            .contains("Einwilligung")
    );
    assert_eq!(consent["topics"], "wirtschaft,it-telekommunikation");
    assert_eq!(export["deliveries"][0]["kind"], "confirm");
    assert_eq!(export["deliveries"][0]["status"], "sent");
    app.stop().await;
}

async fn english_json_sign_up_gets_an_english_mail(backend: Backend) {
    let (app, sink, _db) = app_with_topics(backend).await;
    let r = app
        .sign_up_json(serde_json::json!({
            "email": "reader@example.com", "topics": ["wirtschaft"], "delivery_time": "18:05",
            "timezone": "America/New_York", "locale": "en", "consent": true
        }))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "accepted"})
    );
    let raw = sink.wait_for(1).await;
    let mail = parse(&raw[0]);
    assert_eq!(
        mail.subject(),
        Some("Please confirm your newsletter subscription")
    );
    let link = find_link(&mail.body_text(0).unwrap(), "confirm").unwrap();
    let page = app
        .http
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Confirm your subscription"),
        "the page speaks the reader's language"
    );
    let export = app.export("reader@example.com").await.unwrap();
    assert_eq!(export["schedule"]["timezone"], "America/New_York");
    assert_eq!(export["schedule"]["delivery_time"], "18:05");
}

async fn responses_do_not_reveal_whether_an_address_is_subscribed(backend: Backend) {
    let (app, sink, _db) = app_with_topics(backend).await;
    // Make one address confirmed.
    app.sign_up_form(&form("known@example.org", &["wirtschaft"]))
        .await;
    let raw = sink.wait_for(1).await;
    let link = find_link(&parse(&raw[0]).body_text(0).unwrap(), "confirm").unwrap();
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);

    let snapshot = |r: reqwest::Response| async move {
        let status = r.status();
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        (status, headers, r.bytes().await.unwrap())
    };
    let new = snapshot(
        app.sign_up_form(&form("new@example.org", &["wirtschaft"]))
            .await,
    )
    .await;
    let pending = snapshot(
        app.sign_up_form(&form("new@example.org", &["wirtschaft"]))
            .await,
    )
    .await;
    let confirmed = snapshot(
        app.sign_up_form(&form("known@example.org", &["wirtschaft"]))
            .await,
    )
    .await;
    assert_eq!(
        new, confirmed,
        "HTML: new and confirmed addresses get the same bytes"
    );
    assert_eq!(
        new, pending,
        "HTML: new and pending addresses get the same bytes"
    );

    let body = |email: &str| serde_json::json!({"email": email, "topics": ["wirtschaft"], "consent": true});
    let new = snapshot(app.sign_up_json(body("other@example.org")).await).await;
    let confirmed = snapshot(app.sign_up_json(body("known@example.org")).await).await;
    assert_eq!(
        new, confirmed,
        "JSON: new and confirmed addresses get the same bytes"
    );

    // The confirmed reader's topics were not changed by the unauthenticated form...
    let raw = sink.wait_for(6).await;
    let export = app.export("known@example.org").await.unwrap();
    assert_eq!(export["topics"], serde_json::json!(["wirtschaft"]));
    // ...and they got a notice with a preferences link instead of a confirmation.
    let notices: Vec<_> = raw
        .iter()
        .map(|r| parse(r))
        .filter(|m| {
            m.header_raw("X-Rcpt-Args")
                .is_some_and(|r| r.contains("known@"))
        })
        .filter_map(|m| m.body_text(0).map(|t| t.into_owned()))
        .filter(|t| find_link(t, "preferences").is_some())
        .collect();
    assert_eq!(
        notices.len(),
        2,
        "one notice per sign-up of the confirmed address"
    );
}

async fn thirty_sign_ups_for_one_address_send_at_most_three_mails(backend: Backend) {
    let (app, sink, _db) = app_with_topics(backend).await;
    let mut statuses = Vec::new();
    let mut requests = Vec::new();
    for _ in 0..30 {
        let http = app.http.clone();
        let url = app.url("/subscribe");
        requests.push(tokio::spawn(async move {
            http.post(url)
                .json(&serde_json::json!({"email": "target@example.org", "topics": ["wirtschaft"], "consent": true}))
                .send()
                .await
                .unwrap()
        }));
    }
    for r in requests {
        let r = r.await.unwrap();
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=3600).contains(&wait), "Retry-After {wait}");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        27,
        "{statuses:?}"
    );
    // Every mail of the address has its outcome recorded, so no send of theirs is
    // still under way, and each was recorded after the relay's 250: what the relay
    // holds now is all it will get.
    let export = app.wait_delivered("target@example.org").await;
    let deliveries = export["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3);
    assert!(
        deliveries.iter().all(|d| d["status"] == "sent"),
        "{deliveries:?}"
    );
    assert_eq!(
        sink.wait_for(3).await.len(),
        3,
        "no more than three mails reached the relay"
    );
}

async fn too_many_sign_ups_from_one_client_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let mut config = test_config(&db, &sink.url());
    config.rate_limit.per_client_per_minute = 5;
    let app = TestApp::spawn(config).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    let mut last = 0;
    for i in 0..6 {
        let email = format!("reader{i}@example.org");
        let r = app.sign_up_form(&form(&email, &["wirtschaft"])).await;
        last = r.status().as_u16();
        if i < 5 {
            assert_eq!(last, 200);
        } else {
            assert!(r.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(last, 429);
    wait_rate_limited(&app, "client", 1).await;
}

async fn unknown_and_expired_links_get_helpful_pages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let clock = ManualClock::new(Utc::now());
    let app =
        TestApp::spawn_with_clock(test_config(&db, &sink.url()), Arc::new(clock.clone())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;

    let unknown = app.url(&format!("/confirm/{}", "a".repeat(64)));
    for r in [
        app.http.get(&unknown).send().await.unwrap(),
        app.http.post(&unknown).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains("nicht bekannt"));
    }
    assert_eq!(
        app.http
            .get(app.url("/confirm/not-a-token"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    app.sign_up_form(&form("late@example.org", &["wirtschaft"]))
        .await;
    let raw = sink.wait_for(1).await;
    let link = find_link(&parse(&raw[0]).body_text(0).unwrap(), "confirm").unwrap();
    clock.advance(Duration::days(7) + Duration::minutes(1));
    for r in [
        app.http.get(&link).send().await.unwrap(),
        app.http.post(&link).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 410);
        let page = r.text().await.unwrap();
        assert!(
            page.contains("abgelaufen") && page.contains("href=\"/?lang=de\""),
            "explains how to subscribe again"
        );
    }
    assert_eq!(
        app.export("late@example.org").await.unwrap()["status"],
        "pending"
    );

    // The purge removes what was never confirmed.
    let purged = app
        .store
        .purge_pending(clock_now(&clock) - Duration::days(7))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(app.export("late@example.org").await, Err(404));
    assert_eq!(
        app.http.post(&link).send().await.unwrap().status(),
        410,
        "a purged sign-up's link still says expired"
    );
}

fn clock_now(clock: &ManualClock) -> chrono::DateTime<Utc> {
    postbote::clock::Clock::now(clock)
}

async fn the_admin_api_manages_topics_behind_the_token(backend: Backend) {
    let (app, _sink, _db) = app_with_topics(backend).await;
    let no_auth = app
        .http
        .get(app.url("/api/v1/topics"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), 401);
    let wrong = app
        .http
        .get(app.url("/api/v1/topics"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.json::<serde_json::Value>().await.unwrap()["error"].is_string());

    use reqwest::Method;
    let dup = app
        .admin(
            Method::POST,
            "/topics",
            Some(serde_json::json!({"slug": "wirtschaft", "name": "X"})),
        )
        .await;
    assert_eq!(dup.status(), 409);
    let bad = app
        .admin(
            Method::POST,
            "/topics",
            Some(serde_json::json!({"slug": "Bad Slug", "name": "X"})),
        )
        .await;
    assert_eq!(bad.status(), 422);
    assert!(
        bad.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("slug")
    );

    let renamed = app
        .admin(
            Method::PATCH,
            "/topics/wirtschaft",
            Some(serde_json::json!({"name": "Wirtschaft & Finanzen", "description": "Märkte"})),
        )
        .await;
    assert_eq!(renamed.status(), 200);
    let t: serde_json::Value = renamed.json().await.unwrap();
    assert_eq!(
        (t["name"].as_str(), t["description"].as_str()),
        (Some("Wirtschaft & Finanzen"), Some("Märkte"))
    );
    assert_eq!(
        app.admin(
            Method::PATCH,
            "/topics/nope",
            Some(serde_json::json!({"name": "x"}))
        )
        .await
        .status(),
        404
    );

    assert_eq!(
        app.admin(Method::DELETE, "/topics/it-telekommunikation", None)
            .await
            .status(),
        204
    );
    let page = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Wirtschaft &amp; Finanzen"));
    assert!(
        !page.contains("value=\"it-telekommunikation\""),
        "a retired topic is not offered"
    );
    let r = app.sign_up_json(serde_json::json!({"email": "a@example.org", "topics": ["it-telekommunikation"], "consent": true})).await;
    assert_eq!(r.status(), 422);
    let listed: serde_json::Value = app
        .admin(Method::GET, "/topics", None)
        .await
        .json()
        .await
        .unwrap();
    let retired = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "it-telekommunikation")
        .unwrap();
    assert!(retired["retired_at"].is_string());
    assert_eq!(app.export("nobody@example.org").await, Err(404));
}

/// `POST /subscribe` checks the topics against a copy kept for a second of the
/// app's clock (`web::topics`): a change through this process's admin API or
/// console is seen by the next sign-up, and a topic created by another process
/// (the command line, another instance) is never refused for being missing from
/// the copy.
async fn sign_ups_see_topic_changes_at_once(backend: Backend) {
    // The app's clock stands still, so the copy never ages: only the drops can
    // make the changes seen, however slowly the machine runs the steps.
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let (app, _sink, _db) = app_with_topics_on(backend, clock).await;
    let sign_up = |email: &str, topic: &str| {
        app.sign_up_json(serde_json::json!({"email": email, "topics": [topic], "consent": true}))
    };
    // The first sign-up reads the list; the next ones would use the copy.
    let first = sign_up("a@example.org", "it-telekommunikation").await;
    assert!(first.status().is_success(), "{}", first.status());

    let retired = app
        .admin(
            reqwest::Method::DELETE,
            "/topics/it-telekommunikation",
            None,
        )
        .await;
    assert_eq!(retired.status(), 204);
    let r = sign_up("b@example.org", "it-telekommunikation").await;
    assert_eq!(
        r.status(),
        422,
        "a topic retired through the API is refused"
    );

    let elsewhere = postbote::domain::TopicSlug::parse("kultur").unwrap();
    app.store
        .create_topic(&elsewhere, "Kultur", None, Utc::now())
        .await
        .unwrap();
    let r = sign_up("c@example.org", "kultur").await;
    assert!(
        r.status().is_success(),
        "a topic another process created is accepted: {}",
        r.status()
    );

    let console = crate::console::login(&app).await;
    let r = crate::console::post(
        &app,
        &console,
        "/admin/topics/wirtschaft/retire",
        &[("csrf", &console.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = sign_up("d@example.org", "wirtschaft").await;
    assert_eq!(r.status(), 422, "a topic retired in the console is refused");
    let exported = app.export("c@example.org").await.unwrap();
    assert!(exported.to_string().contains("kultur"), "{exported}");
}

async fn a_permanent_rejection_is_recorded_as_failed(backend: Backend) {
    let db = TestDb::new(backend).await;
    // smtp-sink answers RCPT TO with its hard refusal, "500 5.3.0 Error: command
    // failed": a permanent refusal that does not say the address is dead.
    let sink = SmtpSink::start_with(&["-f", "RCPT"]);
    let app = TestApp::spawn(test_config(&db, &sink.url())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.sign_up_form(&form("rejected@example.org", &["wirtschaft"]))
        .await;
    let export = app.wait_delivered("rejected@example.org").await;
    let d = &export["deliveries"][0];
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"], 1, "a 5xx is not retried");
    assert_eq!(
        d["last_error"],
        "relay refused RCPT TO: 500 5.3.0 Error: command failed"
    );
    // Only a 5.1.x refusal of the address bounces the reader.
    let export = app.export("rejected@example.org").await.unwrap();
    assert_eq!(export["status"], "pending");
    assert_eq!(export["mail_events"], serde_json::json!([]));
}

/// A response as bytes: status, headers (without `date`), body.
async fn snapshot(r: reqwest::Response) -> (reqwest::StatusCode, Vec<(String, String)>, Vec<u8>) {
    let status = r.status();
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| *k != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// Posts the sign-up form with extra request headers, as a browser would.
async fn post_form(
    app: &TestApp,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut req = app
        .http
        .post(app.url("/subscribe"))
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body).send().await.expect("sign-up request")
}

/// An app with one worker, so mails reach the relay in the order they were queued:
/// a mail that must not exist would arrive before the one a test waits for.
async fn ordered_app(
    backend: Backend,
    clock: Option<ManualClock>,
    tweak: impl FnOnce(&mut postbote::config::Config),
) -> (TestApp, SmtpSink, TestDb) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let mut config = test_config(&db, &sink.url());
    config.delivery.workers = 1;
    config.rate_limit.per_client_per_minute = 0;
    tweak(&mut config);
    let app = match clock {
        Some(clock) => TestApp::spawn_with_clock(config, Arc::new(clock)).await,
        None => TestApp::spawn(config).await,
    };
    app.create_topic("wirtschaft", "Wirtschaft").await;
    (app, sink, db)
}

/// Signs `email` up and waits until its mail has arrived (and, with one worker,
/// every mail queued before it); returns all mails received so far.
async fn sign_up_and_wait_for_its_mail(
    app: &TestApp,
    sink: &SmtpSink,
    email: &str,
) -> Vec<Vec<u8>> {
    let r = app.sign_up_form(&form(email, &["wirtschaft"])).await;
    assert_eq!(r.status(), 200, "the sign-up of {email}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mails = sink.wait_for(1).await;
        if mails.iter().any(|m| recipient(m) == email) {
            return mails;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no mail to {email} arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

fn recipients(mails: &[Vec<u8>]) -> Vec<String> {
    let mut r: Vec<String> = mails.iter().map(|m| recipient(m)).collect();
    r.sort();
    r
}

/// Waits until `/api/v1/stats` counts `n` sign-ups refused by `limit`.
async fn wait_rate_limited(app: &TestApp, limit: &str, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats: serde_json::Value = app
            .admin(reqwest::Method::GET, "/stats", None)
            .await
            .json()
            .await
            .unwrap();
        let seen = stats["rate_limited"][limit].as_i64();
        if seen == Some(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stats count {seen:?} sign-ups refused by the {limit} limit, expected {n}: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn cross_site_and_foreign_origin_posts_are_refused_and_send_no_mail(backend: Backend) {
    let (app, sink, _db) = ordered_app(backend, None, |_| {}).await;
    let victim = form("victim@example.org", &["wirtschaft"]);
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        // The page's own origin does not help when the browser says cross-site.
        &[
            ("origin", app.base.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
        // Another port of the same host is another origin.
        &[("origin", "http://127.0.0.1:1")],
    ] {
        let r = post_form(&app, &victim, headers).await;
        assert_eq!(r.status(), 403, "{headers:?}");
        let page = r.text().await.unwrap();
        assert!(
            page.starts_with("<!DOCTYPE html>") && page.contains("<html lang=\"de\""),
            "a page in the site's layout"
        );
        assert!(
            page.contains("von einer anderen Website aus abgeschickt"),
            "the page says why: {page}"
        );
        assert!(
            page.contains(&format!("href=\"{}/?lang=de\"", app.base)),
            "and links to the form on the site itself"
        );
    }
    let english = app
        .http
        .post(app.url("/subscribe?lang=en"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body("email=victim%40example.org&topics=wirtschaft&consent=on")
        .send()
        .await
        .unwrap();
    assert_eq!(english.status(), 403);
    assert!(
        english
            .text()
            .await
            .unwrap()
            .contains("sent from another website")
    );
    let json = app
        .http
        .post(app.url("/subscribe"))
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({"email": "victim@example.org", "topics": ["wirtschaft"], "consent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 403);
    let body: serde_json::Value = json.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("cross-site"),
        "{body}"
    );

    assert_eq!(
        app.export("victim@example.org").await,
        Err(404),
        "nothing stored"
    );
    let mails = sign_up_and_wait_for_its_mail(&app, &sink, "reader@example.org").await;
    assert_eq!(
        recipients(&mails),
        ["reader@example.org"],
        "the refused posts sent no mail"
    );
}

async fn same_origin_and_header_less_posts_are_served(backend: Backend) {
    let (app, sink, _db) = ordered_app(backend, None, |_| {}).await;
    let mut expected = Vec::new();
    let upper_case_scheme = app.base.replace("http://", "HTTP://");
    let headers: [&[(&str, &str)]; 6] = [
        &[],
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", app.base.as_str()),
        ],
        &[("sec-fetch-site", "same-site")],
        &[("sec-fetch-site", "none")],
        &[("origin", app.base.as_str())],
        &[("origin", upper_case_scheme.as_str())],
    ];
    for (i, headers) in headers.iter().enumerate() {
        let email = format!("reader{i}@example.org");
        let r = post_form(&app, &form(&email, &["wirtschaft"]), headers).await;
        assert_eq!(r.status(), 200, "{headers:?}");
        expected.push(email);
    }
    let json = app
        .http
        .post(app.url("/subscribe"))
        .header("origin", app.base.as_str())
        .json(&serde_json::json!({"email": "api@example.org", "topics": ["wirtschaft"], "consent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 202);
    expected.push("api@example.org".into());
    expected.sort();
    let mails = sink.wait_for(expected.len()).await;
    assert_eq!(recipients(&mails), expected);
}

async fn tagged_and_dotted_variants_of_one_mailbox_get_at_most_three_mails(backend: Backend) {
    let (app, sink, _db) = ordered_app(backend, None, |c| {
        c.rate_limit.per_address_per_hour = 3;
    })
    .await;
    let tagged: Vec<String> = (1..=7).map(|i| format!("victim+{i}@example.org")).collect();
    let gmail: Vec<String> = [
        "v.ictim@gmail.com",
        "victim+news@googlemail.com",
        "Vic.Tim+x@GMail.com",
        "victim@googlemail.com",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // All at once: concurrent sign-ups must not slip past the last slot together.
    let mut requests = Vec::new();
    for email in tagged.iter().chain(&gmail) {
        let http = app.http.clone();
        let url = app.url("/subscribe");
        let email = email.clone();
        requests.push(tokio::spawn(async move {
            let body: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form(&email, &["wirtschaft"]))
                .finish();
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (email, r.status().as_u16(), retry_after)
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for r in requests {
        let (email, status, retry_after) = r.await.unwrap();
        match status {
            200 => accepted.push(email),
            429 => {
                refused += 1;
                let wait = retry_after.expect("a 429 says when to come back");
                assert!((1..=3600).contains(&wait), "Retry-After {wait}");
            }
            other => panic!("{email}: {other}"),
        }
    }
    let to = |domain: &str| {
        accepted
            .iter()
            .filter(|e| e.to_lowercase().contains(domain))
            .count()
    };
    assert_eq!(to("@example.org"), 3, "{accepted:?}");
    assert_eq!(to("mail.com"), 3, "{accepted:?}");
    assert_eq!(refused, 5);
    wait_rate_limited(&app, "mailbox", 5).await;

    let mails = sign_up_and_wait_for_its_mail(&app, &sink, "other@example.org").await;
    let mut expected: Vec<String> = accepted.iter().map(|e| e.to_lowercase()).collect();
    expected.push("other@example.org".into());
    expected.sort();
    assert_eq!(
        recipients(&mails),
        expected,
        "three mails per mailbox, no more"
    );
}

async fn the_per_domain_cap_counts_the_ascii_domain(backend: Backend) {
    let (app, sink, _db) = ordered_app(backend, None, |c| {
        c.rate_limit.per_domain_per_hour = 2;
    })
    .await;
    for email in ["anna@müller.de", "bert@XN--MLLER-KVA.de"] {
        let r = app.sign_up_form(&form(email, &["wirtschaft"])).await;
        assert_eq!(r.status(), 200, "{email}");
    }
    let capped = app
        .sign_up_form(&form("carla@müller.de", &["wirtschaft"]))
        .await;
    assert_eq!(
        capped.status(),
        429,
        "the third mail to the domain this hour"
    );
    let wait: u64 = capped.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&wait), "Retry-After {wait}");
    assert!(capped.text().await.unwrap().contains("Zu viele Anfragen"));
    let json = app
        .sign_up_json(serde_json::json!({"email": "dora@müller.de", "topics": ["wirtschaft"], "consent": true}))
        .await;
    assert_eq!(json.status(), 429);
    assert!(json.headers().contains_key("retry-after"));
    assert_eq!(
        app.export("carla@müller.de").await,
        Err(404),
        "nothing stored"
    );
    wait_rate_limited(&app, "domain", 2).await;

    let mails = sign_up_and_wait_for_its_mail(&app, &sink, "erika@example.org").await;
    // (A mail to a non-ASCII domain may be refused by the relay; the limit counts
    // what was queued.)
    for (email, queued) in [("anna@müller.de", 1), ("bert@xn--mller-kva.de", 1)] {
        let export = app.wait_delivered(email).await;
        assert_eq!(
            export["deliveries"].as_array().unwrap().len(),
            queued,
            "{email}"
        );
    }
    let got = recipients(&mails);
    assert!(
        got.contains(&"erika@example.org".to_owned()),
        "another domain is served"
    );
    assert!(
        got.iter()
            .all(|r| !r.starts_with("carla@") && !r.starts_with("dora@")),
        "no mail beyond the cap: {got:?}"
    );
}

async fn the_global_cap_holds_under_concurrent_sign_ups(backend: Backend) {
    let clock = ManualClock::new(Utc::now());
    let (app, sink, _db) = ordered_app(backend, Some(clock.clone()), |c| {
        c.rate_limit.global_per_hour = 3;
    })
    .await;
    let mut requests = Vec::new();
    for i in 0..8 {
        let http = app.http.clone();
        let url = app.url("/subscribe");
        requests.push(tokio::spawn(async move {
            http.post(url)
                .json(&serde_json::json!({"email": format!("reader{i}@domain{i}.example"), "topics": ["wirtschaft"], "consent": true}))
                .send()
                .await
                .unwrap()
        }));
    }
    let mut statuses = Vec::new();
    let mut accepted = Vec::new();
    for (i, r) in requests.into_iter().enumerate() {
        let r = r.await.unwrap();
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((3599..=3600).contains(&wait), "Retry-After {wait}");
        } else {
            accepted.push(format!("reader{i}@domain{i}.example"));
        }
        statuses.push(r.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [202, 202, 202, 429, 429, 429, 429, 429]);
    let later = app
        .sign_up_form(&form("late@example.org", &["wirtschaft"]))
        .await;
    assert_eq!(later.status(), 429, "the cap holds for the hour");
    wait_rate_limited(&app, "global", 6).await;

    // An hour later the window has room again.
    clock.advance(Duration::minutes(61));
    let mails = sign_up_and_wait_for_its_mail(&app, &sink, "late@example.org").await;
    accepted.push("late@example.org".into());
    accepted.sort();
    assert_eq!(
        recipients(&mails),
        accepted,
        "three mails in the first hour"
    );
}

async fn a_complained_or_bounced_address_gets_the_same_answer_and_no_mail_until_its_quiet_period_ends(
    backend: Backend,
) {
    let clock = ManualClock::new(Utc::now());
    let (app, sink, _db) = ordered_app(backend, Some(clock.clone()), |_| {}).await;
    let now = clock_now(&clock);
    let complained = app
        .reader(
            "complained@example.org",
            &["wirtschaft"],
            "07:00",
            "Europe/Berlin",
            "de",
            now,
        )
        .await;
    let bounced = app
        .reader(
            "bounced@example.org",
            &["wirtschaft"],
            "07:00",
            "Europe/Berlin",
            "de",
            now,
        )
        .await;
    app.store
        .record_mail_event(
            complained,
            postbote::domain::MailEventKind::Complaint,
            "feedback-type abuse",
            None,
            EventEffect::UnsubscribeAndSuppress,
            now,
        )
        .await
        .unwrap();
    app.store
        .record_mail_event(
            bounced,
            postbote::domain::MailEventKind::HardBounce,
            "5.1.1",
            None,
            EventEffect::Bounce,
            now,
        )
        .await
        .unwrap();
    assert!(
        app.store
            .is_suppressed("complained@example.org")
            .await
            .unwrap()
    );
    assert!(
        app.store
            .is_suppressed("bounced@example.org")
            .await
            .unwrap()
    );

    // An erased address is no such case: the person may sign up again at once.
    app.reader(
        "erased@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    let erased = app
        .admin(
            reqwest::Method::DELETE,
            "/subscribers/erased@example.org",
            None,
        )
        .await;
    assert_eq!(erased.status(), 204);
    assert!(app.store.is_suppressed("erased@example.org").await.unwrap());

    clock.advance(Duration::days(29));
    let fresh = snapshot(
        app.sign_up_form(&form("fresh@example.org", &["wirtschaft"]))
            .await,
    )
    .await;
    for quiet in ["complained@example.org", "bounced@example.org"] {
        let answer = snapshot(app.sign_up_form(&form(quiet, &["wirtschaft"])).await).await;
        assert_eq!(
            answer, fresh,
            "HTML: {quiet} gets the bytes a fresh address gets"
        );
    }
    let body = |email: &str| serde_json::json!({"email": email, "topics": ["wirtschaft"], "consent": true});
    let fresh_json = snapshot(app.sign_up_json(body("fresh2@example.org")).await).await;
    for quiet in ["complained@example.org", "bounced@example.org"] {
        let answer = snapshot(app.sign_up_json(body(quiet)).await).await;
        assert_eq!(
            answer, fresh_json,
            "JSON: {quiet} gets the bytes a fresh address gets"
        );
    }
    let r = app
        .sign_up_form(&form("erased@example.org", &["wirtschaft"]))
        .await;
    assert_eq!(r.status(), 200);

    let mails = sign_up_and_wait_for_its_mail(&app, &sink, "positive@example.org").await;
    assert_eq!(
        recipients(&mails),
        [
            "erased@example.org",
            "fresh2@example.org",
            "fresh@example.org",
            "positive@example.org"
        ],
        "no mail to the complained or bounced address within its quiet period"
    );
    for quiet in ["complained@example.org", "bounced@example.org"] {
        let export = app.export(quiet).await.unwrap();
        assert!(
            export["deliveries"].as_array().unwrap().is_empty(),
            "nothing queued for {quiet}"
        );
        assert_eq!(
            export["consents"].as_array().unwrap().len(),
            1,
            "nothing stored for {quiet}"
        );
    }

    // After the quiet period a new double opt-in is allowed, and its confirmation
    // lifts the suppression.
    clock.advance(Duration::days(1) + Duration::minutes(1));
    let mut received = mails.len();
    for quiet in ["complained@example.org", "bounced@example.org"] {
        let mails = sign_up_and_wait_for_its_mail(&app, &sink, quiet).await;
        received += 1;
        assert_eq!(mails.len(), received, "one mail to {quiet}");
        let mail = mails.iter().find(|m| recipient(m) == quiet).unwrap();
        let link =
            find_link(&parse(mail).body_text(0).unwrap(), "confirm").expect("a confirm link");
        assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
        assert_eq!(app.export(quiet).await.unwrap()["status"], "confirmed");
        assert!(
            !app.store.is_suppressed(quiet).await.unwrap(),
            "{quiet} is welcome again"
        );
    }
}

/// The quiet period is checked by the insert of a new reader: an address whose
/// reader row is gone (removed by hand) while its complaint stays on the list
/// gets no row and no mail within the period.
async fn a_complained_address_without_a_reader_row_is_not_stored_in_its_quiet_period(
    backend: Backend,
) {
    let clock = ManualClock::new(Utc::now());
    let (app, sink, db) = ordered_app(backend, Some(clock.clone()), |_| {}).await;
    let now = clock_now(&clock);
    let gone = app
        .reader(
            "gone@example.org",
            &["wirtschaft"],
            "07:00",
            "Europe/Berlin",
            "de",
            now,
        )
        .await;
    app.store
        .record_mail_event(
            gone,
            postbote::domain::MailEventKind::Complaint,
            "feedback-type abuse",
            None,
            EventEffect::UnsubscribeAndSuppress,
            now,
        )
        .await
        .unwrap();
    let deleted = db
        .text_rows(
            "DELETE FROM subscribers WHERE email = $1 RETURNING CAST(id AS TEXT)",
            &["gone@example.org"],
        )
        .await;
    assert_eq!(deleted.len(), 1);
    assert!(app.store.is_suppressed("gone@example.org").await.unwrap());

    clock.advance(Duration::days(1));
    let r = app
        .sign_up_form(&form("gone@example.org", &["wirtschaft"]))
        .await;
    assert_eq!(r.status(), 200, "the answer every address gets");
    let mails = sign_up_and_wait_for_its_mail(&app, &sink, "positive@example.org").await;
    assert_eq!(recipients(&mails), ["positive@example.org"]);
    assert_eq!(
        app.export("gone@example.org").await,
        Err(404),
        "nothing stored"
    );
}

async fn an_address_with_an_internationalised_domain_gets_its_mail(backend: Backend) {
    let (app, sink, _db) = app_with_topics(backend).await;
    let r = app
        .sign_up_json(serde_json::json!({
            "email": "anna@müller.example", "topics": ["wirtschaft"], "consent": true
        }))
        .await;
    assert_eq!(r.status(), 202);
    // smtp-sink offers no SMTPUTF8: the domain travels in its ASCII form.
    let raw = sink.wait_for(1).await;
    assert_eq!(recipient(&raw[0]), "anna@xn--mller-kva.example");
    let mail = parse(&raw[0]);
    assert!(find_link(&mail.body_text(0).unwrap(), "confirm").is_some());
}

/// Every answer the database cannot give right now is a 503 with `Retry-After`, on
/// a page in the reader's language or as JSON: after a pool timeout (PostgreSQL:
/// the app's 16 connections all held elsewhere for longer than its 5 s acquire
/// timeout) and once the pool is gone.
async fn an_unreachable_database_answers_503_with_retry_after(backend: Backend) {
    let (app, _sink, _db) = app_with_topics(backend).await;
    let unavailable = |r: &reqwest::Response, what: &str| {
        assert_eq!(r.status(), 503, "{what}");
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&wait), "{what}: Retry-After {wait}");
    };
    if let postbote::store::Store::Postgres(pool) = &app.store {
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(pool.acquire().await.expect("a connection"));
        }
        let r = app
            .sign_up_form(&form("leser@example.org", &["wirtschaft"]))
            .await;
        unavailable(&r, "pool timeout, form");
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("Das hat leider nicht geklappt")
        );
        drop(held);
    }
    app.store.close().await;
    let r = app
        .sign_up_form(&form("leser@example.org", &["wirtschaft"]))
        .await;
    unavailable(&r, "form");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Das hat leider nicht geklappt")
    );
    let r = app
        .sign_up_json(serde_json::json!({
            "email": "reader@example.org", "topics": ["wirtschaft"], "consent": true,
            "locale": "en"
        }))
        .await;
    unavailable(&r, "JSON");
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"error": "internal error; please try again later"})
    );
    for page in ["/?lang=en", &format!("/confirm/{}?lang=en", "0".repeat(64))] {
        let r = app.http.get(app.url(page)).send().await.unwrap();
        unavailable(&r, page);
        assert!(
            r.text().await.unwrap().contains("Something went wrong"),
            "{page}"
        );
    }
}

/// The sign-up and "send me my link" forms post to an address that names their
/// page's language: a refusal answered before the form is read (another site, a
/// client over its limit) comes in the reader's language, not the browser's.
async fn the_forms_post_in_the_language_of_their_page(backend: Backend) {
    let (app, _sink, _db) = ordered_app(backend, None, |_| {}).await;
    for (path, action) in [
        ("/?lang=en", "/subscribe?lang=en"),
        ("/?lang=de", "/subscribe?lang=de"),
        ("/link?lang=en", "/link?lang=en"),
        ("/link?lang=de", "/link?lang=de"),
    ] {
        let page = app
            .http
            .get(app.url(path))
            .header("accept-language", "fr")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains(&format!("<form method=\"post\" action=\"{action}\"")),
            "{path}: {page}"
        );
    }
}

on_both_backends!(
    the_forms_post_in_the_language_of_their_page,
    an_unreachable_database_answers_503_with_retry_after,
    an_address_with_an_internationalised_domain_gets_its_mail,
    sign_up_confirm_and_export_the_proof,
    english_json_sign_up_gets_an_english_mail,
    responses_do_not_reveal_whether_an_address_is_subscribed,
    thirty_sign_ups_for_one_address_send_at_most_three_mails,
    too_many_sign_ups_from_one_client_are_refused,
    unknown_and_expired_links_get_helpful_pages,
    the_admin_api_manages_topics_behind_the_token,
    sign_ups_see_topic_changes_at_once,
    a_complained_address_without_a_reader_row_is_not_stored_in_its_quiet_period,
    a_permanent_rejection_is_recorded_as_failed,
    cross_site_and_foreign_origin_posts_are_refused_and_send_no_mail,
    same_origin_and_header_less_posts_are_served,
    tagged_and_dotted_variants_of_one_mailbox_get_at_most_three_mails,
    the_per_domain_cap_counts_the_ascii_domain,
    the_global_cap_holds_under_concurrent_sign_ups,
    a_complained_or_bounced_address_gets_the_same_answer_and_no_mail_until_its_quiet_period_ends,
);
