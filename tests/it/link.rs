//! "Send me my link" (`GET`/`POST /link`) and the weekdays of the sign-up form,
//! end to end: the `postbote` binary or the real app, a real database of each
//! backend and Postfix's smtp-sink; mails are read with mail-parser and their
//! links followed.

use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN_TOKEN, Backend, Serve, SmtpSink, TestApp, TestDb, app_at, delivered, drained, find_link,
    form, parse, recipient,
};

const NOW: &str = "2027-03-01T10:00:00Z";

/// Posts `fields` form-encoded to `url`, with extra request headers.
async fn post(
    http: &reqwest::Client,
    url: &str,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut req = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body).send().await.expect("a POST")
}

/// Asks for the link of `email` on the German page; the answer's status and body.
async fn ask(http: &reqwest::Client, base: &str, email: &str) -> (u16, String) {
    let r = post(
        http,
        &format!("{base}/link"),
        &[("form_locale", "de"), ("email", email)],
        &[],
    )
    .await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The mails to `to` received so far.
fn mails_to(sink: &SmtpSink, to: &str) -> Vec<Vec<u8>> {
    sink.raw_messages()
        .into_iter()
        .filter(|m| recipient(m) == to)
        .collect()
}

/// Waits until `n` mails to `to` have arrived; returns them.
async fn wait_mails_to(sink: &SmtpSink, to: &str, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mails = mails_to(sink, to);
        if mails.len() >= n {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "{n} mails to {to} did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The mails of `kind` the binary's `/api/v1/stats` counts, by status.
async fn mails_of_kind(http: &reqwest::Client, base: &str, kind: &str) -> serde_json::Value {
    let stats: serde_json::Value = http
        .get(format!("{base}/api/v1/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["mails"][kind].clone()
}

/// Waits until `/api/v1/stats` counts `n` sent mails of `kind`.
async fn wait_sent(http: &reqwest::Client, base: &str, kind: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while mails_of_kind(http, base, kind).await["sent"]
        .as_i64()
        .unwrap_or(0)
        < n
    {
        assert!(Instant::now() < deadline, "{n} {kind} mails were not sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An app as `app_at` makes it, with the confirmed German reader
/// `leser@example.org` (topic `kultur`).
async fn app_with_reader(
    backend: Backend,
    tweak: impl FnOnce(&mut postbote::config::Config),
) -> (TestApp, SmtpSink, TestDb) {
    let (app, sink, db, _clock) = app_at(backend, NOW, tweak).await;
    let (email, now) = ("leser@example.org", crate::harness::utc(NOW));
    app.reader(email, &["kultur"], "07:00", "Europe/Berlin", "de", now)
        .await;
    (app, sink, db)
}

/// The body of a GET.
async fn text_of(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(url).send().await.expect("a GET");
    r.text().await.unwrap()
}

async fn only_a_confirmed_reader_gets_the_link_and_every_address_the_same_answer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let extra = "[rate_limit]\nper_client_per_minute = 0\n";
    let serve = Serve::start_on_own_port(&db, &sink.url(), extra).await;
    let http = reqwest::Client::new();
    serve.wait_ready(&http).await;
    let base = serve.base.clone();
    let r = http
        .post(format!("{base}/api/v1/topics"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A confirmed reader who reads English, and a pending one.
    let mut english = form("reader@example.org", &["wirtschaft"]);
    english.retain(|(k, _)| *k != "locale");
    english.push(("locale", "en"));
    for (fields, email) in [
        (english, "reader@example.org"),
        (
            form("pending@example.org", &["wirtschaft"]),
            "pending@example.org",
        ),
    ] {
        let r = post(&http, &format!("{base}/subscribe"), &fields, &[]).await;
        assert_eq!(r.status(), 200, "sign-up of {email}");
    }
    let confirm = wait_mails_to(&sink, "reader@example.org", 1).await;
    let text = parse(&confirm[0]).body_text(0).unwrap().into_owned();
    let link = find_link(&text, "confirm").expect("a confirmation link");
    assert_eq!(http.post(&link).send().await.unwrap().status(), 200);
    wait_mails_to(&sink, "pending@example.org", 1).await;

    let page = http.get(format!("{base}/link")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("action=\"/link?lang=de\"") && html.contains("name=\"email\""),
        "{html}"
    );

    let confirmed = ask(&http, &base, "reader@example.org").await;
    let pending = ask(&http, &base, "pending@example.org").await;
    let unknown = ask(&http, &base, "nobody@example.org").await;
    assert_eq!(confirmed.0, 200);
    assert!(confirmed.1.contains("Bitte sehen Sie in Ihr Postfach"));
    assert_eq!(confirmed, pending, "confirmed and pending: the same bytes");
    assert_eq!(confirmed, unknown, "confirmed and unknown: the same bytes");

    // Only the confirmed reader gets a mail, in their language, with the link
    // digests carry; it opens their preferences.
    wait_sent(&http, &base, "preferences-link", 1).await;
    let mails = wait_mails_to(&sink, "reader@example.org", 2).await;
    let subject = Some("Your link to your newsletter settings");
    let mail = mails
        .iter()
        .map(|m| parse(m))
        .find(|m| m.subject() == subject);
    let mail = mail.expect("the link mail, in the reader's language");
    assert_eq!(
        mail.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-generated")
    );
    let text = mail.body_text(0).unwrap().into_owned();
    let link = find_link(&text, "preferences").expect("a preferences link");
    assert!(mail.body_html(0).unwrap().contains(&link));
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("reader@example.org"),
        "their preferences page"
    );
    assert_eq!(
        mails_to(&sink, "pending@example.org").len(),
        1,
        "only its confirmation"
    );
    assert!(mails_to(&sink, "nobody@example.org").is_empty());
    // Counted when queued, in the requests' transactions: no other was queued.
    let counted = mails_of_kind(&http, &base, "preferences-link").await;
    assert_eq!(
        counted,
        serde_json::json!({"sent": 1}),
        "one mail queued in all"
    );
}

async fn the_mailbox_limit_of_sign_up_holds_and_the_answer_stays_the_same(backend: Backend) {
    let (app, sink, _db) = app_with_reader(backend, |c| {
        c.rate_limit.per_address_per_hour = 3;
    })
    .await;
    let unknown = ask(&app.http, &app.base, "niemand@example.org").await;
    // Four requests, one more than the mailbox's three mails an hour.
    for _ in 0..4 {
        let answer = ask(&app.http, &app.base, "leser@example.org").await;
        assert_eq!(answer, unknown, "over the limit too: the same answer");
    }
    delivered(&app, &sink).await;
    assert_eq!(
        mails_to(&sink, "leser@example.org").len(),
        3,
        "four requests, three mails"
    );
    let stats = app.store.stats().await.unwrap();
    assert_eq!(stats.mails["preferences-link"]["sent"], 3);

    // The sign-up form counts in the same mailbox: it is spent, too.
    let r = app
        .sign_up_form(&form("leser@example.org", &["kultur"]))
        .await;
    assert_eq!(
        r.status(),
        429,
        "sign-up and link requests share the mailbox's limit"
    );
    drained(&app).await;
    assert_eq!(mails_to(&sink, "leser@example.org").len(), 3);
}

async fn a_bad_address_gets_the_form_error_and_a_foreign_site_is_refused(backend: Backend) {
    let (app, sink, _db) = app_with_reader(backend, |_| {}).await;
    let (status, html) = ask(&app.http, &app.base, "kein at-zeichen").await;
    assert_eq!(status, 422);
    assert!(
        html.contains("Das ist keine gültige E-Mail-Adresse"),
        "{html}"
    );
    assert!(html.contains("value=\"kein at-zeichen\""), "shown again");

    let url = app.url("/link");
    let fields = [("email", "leser@example.org")];
    let r = post(
        &app.http,
        &url,
        &fields,
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = post(
        &app.http,
        &url,
        &fields,
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(r.status(), 403);
    drained(&app).await;
    let stats = app.store.stats().await.unwrap();
    assert_eq!(stats.mails.get("preferences-link"), None, "none queued");
    assert!(sink.raw_messages().is_empty());

    let page = text_of(&app.http, &app.url("/link?lang=en")).await;
    assert!(page.contains("Send me the link"), "{page}");
}

async fn the_pages_that_lose_a_reader_offer_the_link(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, NOW, |_| {}).await;
    for path in [
        "/",
        "/preferences/1.0123456789abcdef0123456789abcdef",
        "/confirm/00",
    ] {
        let html = text_of(&app.http, &app.url(path)).await;
        assert!(html.contains("href=\"/link?lang=de\""), "{path}: {html}");
    }
    let html = text_of(&app.http, &app.url("/?lang=en")).await;
    assert!(html.contains("href=\"/link?lang=en\""), "{html}");
}

async fn digests_carry_the_link_page_in_every_footer(backend: Backend) {
    let (app, sink, _db, _clock) = app_at(backend, NOW, |_| {}).await;
    let now = crate::harness::utc(NOW);
    for (email, locale) in [("de@example.org", "de"), ("en@example.org", "en")] {
        app.reader(email, &["kultur"], "07:00", "Europe/Berlin", locale, now)
            .await;
    }
    app.post_item(&["kultur"], "Neue Ausstellung").await;
    app.run_pass("2027-03-02T06:00:00Z").await;
    let digests = delivered(&app, &sink).await;
    let want = app.url("/link");
    for email in ["de@example.org", "en@example.org"] {
        let raw = &digests[email][0];
        let mail = parse(raw);
        let text = mail.body_text(0).unwrap();
        let html = mail.body_html(0).unwrap();
        assert!(
            text.contains(&format!(": {want}\n")),
            "{email} text: {text}"
        );
        assert!(
            html.contains(&format!("href=\"{want}\"")),
            "{email} html: {html}"
        );
    }
}

async fn sign_up_stores_the_ticked_weekdays_and_refuses_none(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, NOW, |_| {}).await;
    let html = text_of(&app.http, &app.url("/")).await;
    for day in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
        let boxed = format!("name=\"weekdays\" value=\"{day}\" checked>");
        assert!(html.contains(&boxed), "{day} is pre-ticked: {html}");
    }

    let mut fields = form("tage@example.org", &["kultur"]);
    fields.extend([("weekdays", ""), ("weekdays", "mon"), ("weekdays", "fri")]);
    assert_eq!(app.sign_up_form(&fields).await.status(), 200);
    let export = app.export("tage@example.org").await.unwrap();
    assert_eq!(
        export["schedule"]["weekdays"],
        serde_json::json!(["Mon", "Fri"])
    );

    // The boxes were there and none was ticked: refused, the boxes shown unticked.
    let mut fields = form("keine@example.org", &["kultur"]);
    fields.push(("weekdays", ""));
    let r = app.sign_up_form(&fields).await;
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Bitte wählen Sie mindestens einen Wochentag."),
        "{html}"
    );
    assert!(!html.contains("value=\"mon\" checked"));
    assert_eq!(app.export("keine@example.org").await, Err(404));

    // JSON: weekdays optional (every day), or named.
    let json = |email: &str, days: Option<&[&str]>| {
        let mut body = serde_json::json!({"email": email, "topics": ["kultur"], "consent": true});
        if let Some(days) = days {
            body["weekdays"] = serde_json::json!(days);
        }
        body
    };
    let r = app.sign_up_json(json("alle@example.org", None)).await;
    assert_eq!(r.status(), 202);
    let export = app.export("alle@example.org").await.unwrap();
    let every = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    assert_eq!(export["schedule"]["weekdays"], serde_json::json!(every));
    let r = app
        .sign_up_json(json("samstag@example.org", Some(&["sat"])))
        .await;
    assert_eq!(r.status(), 202);
    let export = app.export("samstag@example.org").await.unwrap();
    assert_eq!(export["schedule"]["weekdays"], serde_json::json!(["Sat"]));
    let r = app.sign_up_json(json("nie@example.org", Some(&[]))).await;
    assert_eq!(r.status(), 422);
    let errors: serde_json::Value = r.json().await.unwrap();
    assert!(errors["errors"]["weekdays"].is_string(), "{errors}");
}

on_both_backends!(
    only_a_confirmed_reader_gets_the_link_and_every_address_the_same_answer,
    the_mailbox_limit_of_sign_up_holds_and_the_answer_stays_the_same,
    a_bad_address_gets_the_form_error_and_a_foreign_site_is_refused,
    the_pages_that_lose_a_reader_offer_the_link,
    digests_carry_the_link_page_in_every_footer,
    sign_up_stores_the_ticked_weekdays_and_refuses_none,
);
