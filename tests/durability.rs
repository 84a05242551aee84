//! Nothing is lost while the relay is down, across a crash of `serve`, and a
//! SIGTERM stops `serve` gracefully.

mod common;

use common::Serve;
use std::time::{Duration, Instant};

use common::{
    ADMIN_TOKEN, Backend, SmtpSink, TestApp, TestDb, find_link, form, free_port, parse, test_config,
};

async fn a_sign_up_made_while_the_relay_is_down_is_delivered_when_it_is_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let relay_port = free_port();
    let app = TestApp::spawn(test_config(&db, &format!("smtp://127.0.0.1:{relay_port}"))).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    assert_eq!(
        app.sign_up_form(&form("patient@example.org", &["wirtschaft"]))
            .await
            .status(),
        200
    );

    // The relay refuses connections: the mail stays queued, and the outage costs
    // it no attempt, however long it lasts.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let export = app.export("patient@example.org").await.unwrap();
        let d = &export["deliveries"][0];
        if d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connecting"))
        {
            assert_eq!(d["status"], "queued");
            assert_eq!(d["attempts"], 0, "{d}");
            break;
        }
        assert!(Instant::now() < deadline, "no retries seen: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sink = SmtpSink::start_on(relay_port, &[]);
    let raw = sink.wait_for(1).await;
    let link =
        find_link(&parse(&raw[0]).body_text(0).unwrap(), "confirm").expect("the confirmation link");
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    let export = app.wait_delivered("patient@example.org").await;
    assert_eq!(export["deliveries"][0]["status"], "sent");
    assert_eq!(export["status"], "confirmed");
    assert_eq!(sink.raw_messages().len(), 1, "delivered once");
}

async fn mail_queued_before_a_crash_is_sent_after_the_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let relay_port = free_port();
    let smtp = format!("smtp://127.0.0.1:{relay_port}");
    let http = reqwest::Client::new();

    let port = free_port();
    let first = Serve::start(&db, &smtp, port, "");
    first.wait_ready(&http).await;
    let r = http
        .post(format!("{}/api/v1/topics", first.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{}/subscribe", first.base))
        .json(&serde_json::json!({"email": "durable@example.org", "topics": ["wirtschaft"], "consent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Wait until the first instance has tried and failed at least once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let export: serde_json::Value = http
            .get(format!(
                "{}/api/v1/subscribers/durable@example.org",
                first.base
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if export["deliveries"][0]["last_error"].is_string() {
            assert_eq!(export["deliveries"][0]["status"], "queued");
            break;
        }
        assert!(Instant::now() < deadline, "no delivery attempt seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first); // SIGKILL: no chance to clean up.

    let sink = SmtpSink::start_on(relay_port, &[]);
    let second = Serve::start(&db, &smtp, port, "");
    second.wait_ready(&http).await;
    let raw = sink.wait_for(1).await;
    let mail = parse(&raw[0]);
    assert!(
        mail.header_raw("X-Rcpt-Args")
            .unwrap()
            .contains("durable@example.org")
    );
    let link = find_link(&mail.body_text(0).unwrap(), "confirm").unwrap();
    assert!(link.starts_with(&second.base));
    assert_eq!(http.post(&link).send().await.unwrap().status(), 200);
}

async fn sigterm_stops_serve_gracefully_and_quickly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let http = reqwest::Client::new();
    let mut serve = Serve::start(&db, &sink.url(), free_port(), "");
    serve.wait_ready(&http).await;
    let started = Instant::now();
    serve.signal("-TERM");
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not stop within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

on_both_backends!(
    a_sign_up_made_while_the_relay_is_down_is_delivered_when_it_is_back,
    mail_queued_before_a_crash_is_sent_after_the_restart,
    sigterm_stops_serve_gracefully_and_quickly,
);
