//! The operator's console under `/admin`, over HTTP against the real app on both
//! backends: login, session cookie and expiry, CSRF, logout, the dashboard after a
//! real digest pass, the subscriber search, erasure with its confirmation step,
//! and a CSV export that `postbote import` reads back.

use std::process::Command;

use postbote::clock::Clock;

use crate::harness::{
    ADMIN_TOKEN, Backend, TestApp, app_at, delivered, find_link, parse, run_to_end_async, utc,
};

/// A signed-in console: the session cookie and the CSRF token its pages carry.
pub(crate) struct Console {
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

async fn login_with(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .post(app.url("/admin/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 64].to_owned()
}

pub(crate) async fn login(app: &TestApp) -> Console {
    let r = login_with(app, ADMIN_TOKEN).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let html = get(app, Some(&cookie), "/admin")
        .await
        .text()
        .await
        .unwrap();
    Console {
        csrf: csrf_of(&html),
        cookie,
    }
}

pub(crate) async fn get(app: &TestApp, cookie: Option<&str>, path: &str) -> reqwest::Response {
    let mut req = app.http.get(app.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

pub(crate) async fn post(
    app: &TestApp,
    c: &Console,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .header("cookie", &c.cookie)
        .form(fields)
        .send()
        .await
        .unwrap()
}

async fn a_wrong_token_is_refused_and_login_is_throttled(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    for _ in 0..5 {
        let r = login_with(&app, "wrong-token").await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
        let html = r.text().await.unwrap();
        assert!(html.contains("name=\"token\""), "the form again: {html}");
    }
    let r = login_with(&app, ADMIN_TOKEN).await;
    assert_eq!(
        r.status(),
        429,
        "the sixth attempt in a minute is throttled"
    );
    assert!(r.headers().contains_key("retry-after"));
    app.stop().await;
}

async fn login_sets_a_strict_session_cookie_and_pages_need_it(backend: Backend) {
    let (app, _sink, db, _clock) = app_at(backend, "2027-01-14T12:00:00Z", |c| {
        c.public_url = Some("https://news.example.org".into());
    })
    .await;
    for path in [
        "/admin",
        "/admin/subscribers",
        "/admin/subscribers/1",
        "/admin/subscribers.csv",
    ] {
        let r = get(&app, None, path).await;
        assert_eq!(r.status(), 303, "{path} without a session");
        assert_eq!(r.headers()["location"], "/admin/login");
    }
    let r = get(
        &app,
        Some("postbote_console=0000000000000000000000000000000000000000000000000000000000000000"),
        "/admin",
    )
    .await;
    assert_eq!(r.status(), 303, "an unknown session");
    let r = login_with(&app, ADMIN_TOKEN).await;
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Secure"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    let token = set
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let stored = db.text_rows("SELECT csrf FROM admin_sessions", &[]).await;
    assert_eq!(stored.len(), 1);
    assert!(!format!("{stored:?}").contains(&token));
    let hash = postbote::domain::Token::from_path(&token).unwrap().hash();
    let now = utc("2027-01-14T12:00:00Z");
    assert!(
        app.store
            .console_session(&hash, now)
            .await
            .unwrap()
            .is_some(),
        "the table stores the token's hash"
    );
    let cookie = set.split(';').next().unwrap();
    let r = get(&app, Some(cookie), "/admin").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    app.stop().await;
}

async fn forms_without_the_csrf_token_are_refused_and_change_nothing(backend: Backend) {
    let (app, _sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    let id = app
        .reader(
            "anna@example.org",
            &["kultur"],
            "07:00",
            "Europe/Berlin",
            "de",
            clock.now(),
        )
        .await;
    let c = login(&app).await;
    for fields in [vec![], vec![("csrf", "f".repeat(64))]] {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut with_confirm = fields.clone();
        with_confirm.push(("confirm", "yes"));
        for (path, f) in [
            (format!("/admin/subscribers/{id}/unsubscribe"), &fields),
            (format!("/admin/subscribers/{id}/erase"), &with_confirm),
            ("/admin/logout".to_owned(), &fields),
        ] {
            let r = post(&app, &c, &path, f).await;
            assert_eq!(r.status(), 403, "{path} with {f:?}");
        }
    }
    let export = app.export("anna@example.org").await.expect("still there");
    assert_eq!(export["status"], "confirmed");
    assert_eq!(
        get(&app, Some(&c.cookie), "/admin").await.status(),
        200,
        "still signed in"
    );
    app.stop().await;
}

async fn logout_ends_the_session_and_an_expired_one_is_refused(backend: Backend) {
    let (app, _sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    let c = login(&app).await;
    let r = post(&app, &c, "/admin/logout", &[("csrf", &c.csrf)]).await;
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        get(&app, Some(&c.cookie), "/admin").await.status(),
        303,
        "the old cookie is dead"
    );

    let c = login(&app).await;
    clock.set(utc("2027-01-14T23:59:00Z"));
    assert_eq!(
        get(&app, Some(&c.cookie), "/admin").await.status(),
        200,
        "within 12 hours"
    );
    clock.set(utc("2027-01-15T00:00:01Z"));
    assert_eq!(
        get(&app, Some(&c.cookie), "/admin").await.status(),
        303,
        "after 12 hours"
    );
    app.stop().await;
}

async fn the_dashboard_shows_a_real_digest_pass(backend: Backend) {
    let (app, sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    let r = app
        .sign_up_json(serde_json::json!({"email": "berlin@example.org", "topics": ["wirtschaft"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true}))
        .await;
    assert_eq!(r.status(), 202);
    let raw = sink.wait_for(1).await;
    let text = parse(&raw[0]).body_text(0).unwrap().into_owned();
    let link = find_link(&text, "confirm").unwrap();
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    app.sign_up_json(serde_json::json!({"email": "pending@example.org", "topics": ["kultur"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true}))
        .await;
    clock.set(utc("2027-01-14T13:00:00Z"));
    app.post_item(&["wirtschaft"], "Quartalszahlen").await;
    clock.set(utc("2027-01-15T06:00:00Z"));
    assert_eq!(app.run_pass("2027-01-15T06:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    assert!(got.contains_key("berlin@example.org"));

    let c = login(&app).await;
    let r = get(&app, Some(&c.cookie), "/admin?lang=en").await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("<svg"), "charts are drawn");
    assert!(html.contains("<html lang=\"en\""));
    // Yesterday: two sign-ups, one confirmation; today: one digest sent.
    assert!(
        html.contains("<tr><th scope=\"row\">2027-01-14</th><td>2</td><td>1</td><td>0</td><td>0</td><td>0</td><td>0</td><td>0</td><td>0</td></tr>"),
        "{html}"
    );
    assert!(
        html.contains("<tr><th scope=\"row\">2027-01-15</th><td>0</td><td>0</td><td>0</td><td>0</td><td>0</td><td>0</td><td>1</td><td>0</td></tr>"),
        "{html}"
    );
    assert!(
        html.contains("<th scope=\"row\">confirmed</th><td>1</td>"),
        "{html}"
    );
    assert!(
        html.contains("<th scope=\"row\">pending</th><td>1</td>"),
        "{html}"
    );
    assert!(html.contains("50.00 %"), "confirmation rate: {html}");
    // The reader is due again tomorrow 07:00 Berlin = 06:00 UTC, hour 24 from now: not in
    // the window; today 06:00 is the current hour and was served.
    assert!(
        html.contains("<th scope=\"row\">2027-01-15 06:00</th><td>0</td>"),
        "{html}"
    );
    let de = get(&app, Some(&c.cookie), "/admin?lang=de")
        .await
        .text()
        .await
        .unwrap();
    assert!(de.contains("Übersicht") && de.contains("Bestätigungsquote"));
    app.stop().await;
}

async fn search_by_prefix_status_and_topic_then_erase_after_confirmation(backend: Backend) {
    let (app, _sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    let now = clock.now();
    let anna = app
        .reader(
            "anna@example.org",
            &["kultur"],
            "07:00",
            "Europe/Berlin",
            "de",
            now,
        )
        .await;
    app.reader(
        "anton@example.org",
        &["sport"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    app.reader(
        "bob@example.org",
        &["kultur"],
        "07:00",
        "Europe/Berlin",
        "en",
        now,
    )
    .await;
    app.reader(
        "a_b@example.org",
        &["kultur"],
        "07:00",
        "Europe/Berlin",
        "en",
        now,
    )
    .await;
    let c = login(&app).await;
    let found = |html: &str| -> Vec<String> {
        ["anna@", "anton@", "bob@", "a_b@"]
            .iter()
            .filter(|e| html.contains(&format!(">{e}example.org<")))
            .map(|e| (*e).to_owned())
            .collect()
    };
    let page = |q: &'static str| {
        let app = &app;
        let cookie = c.cookie.clone();
        async move {
            get(app, Some(&cookie), &format!("/admin/subscribers?{q}"))
                .await
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        found(&page("q=AN").await),
        ["anna@", "anton@"],
        "prefix, any case"
    );
    assert_eq!(
        found(&page("q=a_").await),
        ["a_b@"],
        "a wildcard is taken literally"
    );
    assert_eq!(found(&page("q=a&topic=kultur").await), ["anna@", "a_b@"]);
    assert_eq!(found(&page("status=pending").await), Vec::<String>::new());
    assert_eq!(
        found(&page("status=confirmed&topic=sport").await),
        ["anton@"]
    );
    let r = get(&app, Some(&c.cookie), "/admin/subscribers?status=nonsense").await;
    assert_eq!(r.status(), 400);

    let detail = get(&app, Some(&c.cookie), &format!("/admin/subscribers/{anna}")).await;
    assert_eq!(detail.status(), 200);
    assert!(detail.text().await.unwrap().contains("consents"));
    // Without the confirmation step nothing is erased.
    let r = post(
        &app,
        &c,
        &format!("/admin/subscribers/{anna}/erase"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        format!("/admin/subscribers/{anna}/erase")
    );
    assert!(app.export("anna@example.org").await.is_ok());
    let form = get(
        &app,
        Some(&c.cookie),
        &format!("/admin/subscribers/{anna}/erase"),
    )
    .await;
    assert!(
        form.text()
            .await
            .unwrap()
            .contains("name=\"confirm\" value=\"yes\"")
    );
    let r = post(
        &app,
        &c,
        &format!("/admin/subscribers/{anna}/erase"),
        &[("csrf", &c.csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        app.export("anna@example.org").await.unwrap_err(),
        404,
        "gone"
    );
    assert_eq!(found(&page("q=an").await), ["anton@"]);
    app.stop().await;
}

async fn unsubscribe_and_resend_from_the_detail_page(backend: Backend) {
    let (app, sink, _db, clock) = app_at(backend, "2027-01-14T12:00:00Z", |_| {}).await;
    let r = app
        .sign_up_json(serde_json::json!({"email": "pending@example.org", "topics": ["kultur"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "en", "consent": true}))
        .await;
    assert_eq!(r.status(), 202);
    sink.wait_for(1).await;
    let pending = app
        .store
        .subscriber_id("pending@example.org")
        .await
        .unwrap()
        .unwrap();
    let reader = app
        .reader(
            "anna@example.org",
            &["kultur"],
            "07:00",
            "Europe/Berlin",
            "de",
            clock.now(),
        )
        .await;
    let c = login(&app).await;
    let r = post(
        &app,
        &c,
        &format!("/admin/subscribers/{pending}/resend"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let mails = sink.wait_for(2).await;
    let text = parse(&mails[1]).body_text(0).unwrap().into_owned();
    let link = find_link(&text, "confirm").expect("a new confirmation link");
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    assert_eq!(
        app.export("pending@example.org").await.unwrap()["status"],
        "confirmed"
    );
    let r = post(
        &app,
        &c,
        &format!("/admin/subscribers/{reader}/resend"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 404, "only a pending reader gets one");

    let r = post(
        &app,
        &c,
        &format!("/admin/subscribers/{reader}/unsubscribe"),
        &[("csrf", &c.csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        app.export("anna@example.org").await.unwrap()["status"],
        "unsubscribed"
    );
    app.stop().await;
}

async fn the_csv_export_is_read_back_by_postbote_import(backend: Backend) {
    // `import` checks consent times against the real clock: a past instant.
    let (app, _sink, _db, clock) = app_at(backend, "2025-06-01T12:00:00Z", |_| {}).await;
    let now = clock.now();
    app.reader(
        "anna@example.org",
        &["kultur", "sport"],
        "06:30",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    app.reader(
        "bob@example.org",
        &["wirtschaft"],
        "18:00",
        "America/New_York",
        "en",
        now,
    )
    .await;
    app.sign_up_json(serde_json::json!({"email": "pending@example.org", "topics": ["kultur"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true}))
        .await;
    let c = login(&app).await;
    let r = get(
        &app,
        Some(&c.cookie),
        "/admin/subscribers.csv?q=&status=&topic=",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = r.text().await.unwrap();
    assert!(
        csv.starts_with("email,topics,delivery_time,timezone,locale,consent_at,consent_ip\n"),
        "{csv}"
    );
    assert!(!csv.contains("pending@"), "only confirmed readers: {csv}");
    app.stop().await;

    // Into a fresh installation with the same topics.
    let (other, _sink2, other_db, _clock2) = app_at(backend, "2025-06-01T12:00:00Z", |_| {}).await;
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
        out.status.success() && said.contains("imported 2"),
        "{said}"
    );
    let anna = other.export("anna@example.org").await.unwrap();
    assert_eq!(anna["status"], "confirmed");
    assert_eq!(anna["topics"], serde_json::json!(["kultur", "sport"]));
    assert_eq!(anna["schedule"]["delivery_time"], "06:30");
    let bob = other.export("bob@example.org").await.unwrap();
    assert_eq!(bob["schedule"]["timezone"], "America/New_York");
    assert_eq!(bob["schedule"]["locale"], "en");
    other.stop().await;
}

on_both_backends!(
    a_wrong_token_is_refused_and_login_is_throttled,
    login_sets_a_strict_session_cookie_and_pages_need_it,
    forms_without_the_csrf_token_are_refused_and_change_nothing,
    logout_ends_the_session_and_an_expired_one_is_refused,
    the_dashboard_shows_a_real_digest_pass,
    search_by_prefix_status_and_topic_then_erase_after_confirmation,
    unsubscribe_and_resend_from_the_detail_page,
    the_csv_export_is_read_back_by_postbote_import,
);
