//! Double opt-in end to end: the real app, a real database of each backend and a
//! real SMTP server; mails are read with mail-parser and their links followed.

mod common;

use std::sync::Arc;

use chrono::{Duration, Utc};
use common::{Backend, SmtpSink, TestApp, TestDb, find_link, form, parse, test_config};
use mail_parser::MimeHeaders;
use postbote::clock::ManualClock;

async fn app_with_topics(backend: Backend) -> (TestApp, SmtpSink, TestDb) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let app = TestApp::spawn(test_config(&db, &sink.url())).await;
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
    let export = app.wait_delivered("target@example.org").await;
    assert_eq!(export["deliveries"].as_array().unwrap().len(), 3);
    sink.wait_for(3).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        sink.raw_messages().len(),
        3,
        "no more than three mails reached the relay"
    );
}

async fn too_many_sign_ups_from_one_client_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
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
}

async fn unknown_and_expired_links_get_helpful_pages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
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

async fn a_permanent_rejection_is_recorded_as_failed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_on(common::free_port(), &["-f", "RCPT"]);
    let app = TestApp::spawn(test_config(&db, &sink.url())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.sign_up_form(&form("rejected@example.org", &["wirtschaft"]))
        .await;
    let export = app.wait_delivered("rejected@example.org").await;
    let d = &export["deliveries"][0];
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"], 1, "a 5xx is not retried");
    assert!(
        d["last_error"].as_str().unwrap().contains("permanent")
            || d["last_error"].as_str().unwrap().contains('5')
    );
}

on_both_backends!(
    sign_up_confirm_and_export_the_proof,
    english_json_sign_up_gets_an_english_mail,
    responses_do_not_reveal_whether_an_address_is_subscribed,
    thirty_sign_ups_for_one_address_send_at_most_three_mails,
    too_many_sign_ups_from_one_client_are_refused,
    unknown_and_expired_links_get_helpful_pages,
    the_admin_api_manages_topics_behind_the_token,
    a_permanent_rejection_is_recorded_as_failed,
);
