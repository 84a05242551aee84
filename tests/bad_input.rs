//! Bad input to `POST /subscribe`: each case is a 4xx naming the field, never a 5xx,
//! and no mail is queued or sent.

mod common;

use common::{Backend, SmtpSink, TestApp, TestDb, form, test_config};
use serde_json::{Value, json};

async fn app(backend: Backend) -> (TestApp, SmtpSink, TestDb) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let mut config = test_config(&db, &sink.url());
    config.rate_limit.per_client_per_minute = 0;
    let app = TestApp::spawn(config).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    (app, sink, db)
}

/// Asserts a JSON sign-up is refused with `status` and an error for `field`.
async fn refused_json(app: &TestApp, body: Value, status: u16, field: &str) {
    let r = app.sign_up_json(body.clone()).await;
    assert_eq!(r.status().as_u16(), status, "{body}");
    let errors: Value = r.json().await.unwrap();
    assert!(
        errors["errors"][field].is_string(),
        "{body} → {errors} should name {field}"
    );
}

fn valid() -> Value {
    json!({"email": "ok@example.org", "topics": ["wirtschaft"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true})
}

fn with(field: &str, value: Value) -> Value {
    let mut v = valid();
    v[field] = value;
    v
}

async fn malformed_addresses_are_refused(backend: Backend) {
    let (app, sink, _db) = app(backend).await;
    let long = format!("{}@example.org", "a".repeat(250));
    for email in [
        "victim@example.org\r\nBcc: all@example.org",
        "victim@example.org\nSubject: spam",
        "Anna Muster <anna@example.org>",
        "\"Anna\" <anna@example.org>",
        long.as_str(),
        "anna@example..org",
        "anna@.example.org",
        ".anna@example.org",
        "anna",
        "",
    ] {
        refused_json(&app, with("email", json!(email)), 422, "email").await;
    }
    refused_json(&app, with("email", json!(42)), 422, "email").await;
    assert_no_mail(&app, &sink).await;
}

async fn missing_consent_topics_and_impossible_schedules_are_refused(backend: Backend) {
    let (app, sink, _db) = app(backend).await;
    refused_json(&app, with("consent", json!(false)), 422, "consent").await;
    refused_json(&app, with("consent", Value::Null), 422, "consent").await;
    refused_json(&app, with("topics", json!([])), 422, "topics").await;
    refused_json(&app, with("topics", Value::Null), 422, "topics").await;
    refused_json(
        &app,
        with("topics", json!(["gibt-es-nicht"])),
        422,
        "topics",
    )
    .await;
    refused_json(
        &app,
        with("topics", json!(["wirtschaft", "<script>"])),
        422,
        "topics",
    )
    .await;
    refused_json(&app, with("topics", json!("wirtschaft")), 422, "topics").await;
    for time in ["24:00", "12:60", "7", "morgens", "-1:00"] {
        refused_json(
            &app,
            with("delivery_time", json!(time)),
            422,
            "delivery_time",
        )
        .await;
    }
    for tz in ["Mars/Olympus_Mons", "UTC+25", "../../etc/passwd"] {
        refused_json(&app, with("timezone", json!(tz)), 422, "timezone").await;
    }
    refused_json(&app, with("locale", json!("fr")), 422, "locale").await;
    assert_no_mail(&app, &sink).await;
}

async fn broken_bodies_are_refused(backend: Backend) {
    let (app, sink, _db) = app(backend).await;
    let post = |ct: &'static str, body: Vec<u8>| {
        app.http
            .post(app.url("/subscribe"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = post("application/json", b"{\"email\": ".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["errors"]["body"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    let r = post("application/json", b"[1, 2]".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);

    let huge = format!(
        "email=a%40example.org&topics=wirtschaft&consent=on&x={}",
        "a".repeat(2 * 1024 * 1024)
    );
    let r = post("application/x-www-form-urlencoded", huge.into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("body"));
    let mut big_json = valid();
    big_json["padding"] = json!("x".repeat(2 * 1024 * 1024));
    let r = post("application/json", big_json.to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let r = post("text/plain", b"email=a@example.org".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(r.json::<Value>().await.unwrap()["errors"]["content-type"].is_string());
    assert_no_mail(&app, &sink).await;
}

async fn the_form_is_shown_again_with_values_and_a_message_per_field(backend: Backend) {
    let (app, sink, _db) = app(backend).await;
    let mut fields = form("not-an-address", &["wirtschaft"]);
    fields.retain(|(k, _)| *k != "consent");
    fields.retain(|(k, _)| *k != "delivery_time");
    fields.push(("delivery_time", "25:99"));
    let r = app.sign_up_form(&fields).await;
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("value=\"not-an-address\""),
        "the typed address is kept"
    );
    assert!(
        html.contains("value=\"wirtschaft\" checked"),
        "the chosen topic stays ticked"
    );
    assert!(html.contains("value=\"25:99\""), "the typed time is kept");
    assert!(
        html.contains("keine gültige E-Mail-Adresse"),
        "email message"
    );
    assert!(html.contains("HH:MM"), "delivery time message");
    assert!(html.contains("Kästchen"), "consent message");
    assert!(
        html.contains("<option selected>Europe/Berlin</option>"),
        "the time zone is kept"
    );

    let english = app.sign_up_form(&[("email", "x"), ("locale", "en")]).await;
    assert_eq!(english.status(), 422);
    let html = english.text().await.unwrap();
    assert!(
        html.contains("not a valid email address") && html.contains("choose at least one topic")
    );
    assert_no_mail(&app, &sink).await;
}

async fn assert_no_mail(app: &TestApp, sink: &SmtpSink) {
    assert_eq!(
        app.store.mail_queue_depth().await.unwrap(),
        0,
        "nothing was queued"
    );
    assert!(
        app.export("ok@example.org").await.is_err(),
        "nothing was stored"
    );
    assert!(sink.raw_messages().is_empty(), "nothing was sent");
}

on_both_backends!(
    malformed_addresses_are_refused,
    missing_consent_topics_and_impossible_schedules_are_refused,
    broken_bodies_are_refused,
    the_form_is_shown_again_with_values_and_a_message_per_field,
);
