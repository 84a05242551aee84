//! Readers in control and a clean list: preferences, erasure, CSV import and DKIM,
//! on both backends with the real app and a real SMTP server.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{Backend, SmtpSink, TestApp, TestDb, app_at, digests, drained, find_link, parse, utc};
use mail_auth::common::parse::TxtRecordParser;

async fn first_digest(app: &TestApp, sink: &SmtpSink, who: &str) -> String {
    drained(app).await;
    let raw = &digests(sink)[who][0];
    sink.wait_for(1).await;
    parse(raw).body_text(0).unwrap().into_owned()
}

fn hidden(html: &str, name: &str) -> String {
    let needle = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} field"))
        + needle.len();
    html[at..].split('"').next().unwrap().to_owned()
}

async fn preferences_change_topics_and_time_and_the_next_digest_follows(backend: Backend) {
    let (app, sink, _db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.reader(
        "leser@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Erste").await;
    app.run_pass("2027-05-02T05:00:00Z").await;
    let link = find_link(
        &first_digest(&app, &sink, "leser@example.org").await,
        "preferences",
    )
    .expect("a preferences link");

    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("value=\"wirtschaft\" checked") && html.contains("value=\"07:00\""));
    let csrf = hidden(&html, "csrf");

    let form = |csrf: &str| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("csrf", csrf),
                ("action", "save"),
                ("topics", "kultur"),
                ("delivery_time", "18:30"),
                ("timezone", "Europe/Berlin"),
                ("weekdays", "mon"),
                ("weekdays", "tue"),
                ("weekdays", "wed"),
                ("weekdays", "thu"),
                ("weekdays", "fri"),
                ("locale", "en"),
            ])
            .finish()
    };
    let post = |body: String, extra: Option<(&'static str, &'static str)>| {
        let mut r = app
            .http
            .post(&link)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };
    // Without a form token, with a forged one, or from another site: refused.
    assert_eq!(post(form(""), None).await.unwrap().status(), 403);
    assert_eq!(
        post(form("1800000000.00000000000000000000000000000000"), None)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(form(&csrf), Some(("sec-fetch-site", "cross-site")))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        app.export("leser@example.org").await.unwrap()["topics"],
        serde_json::json!(["wirtschaft"]),
        "nothing changed"
    );

    let saved = post(form(&csrf), None).await.unwrap();
    assert_eq!(saved.status(), 200);
    assert!(
        saved
            .text()
            .await
            .unwrap()
            .contains("Your changes are saved")
    );
    let export = app.export("leser@example.org").await.unwrap();
    assert_eq!(export["topics"], serde_json::json!(["kultur"]));
    assert_eq!(export["schedule"]["delivery_time"], "18:30");
    assert_eq!(
        export["schedule"]["weekdays"],
        serde_json::json!(["Mon", "Tue", "Wed", "Thu", "Fri"])
    );
    assert_eq!(export["schedule"]["locale"], "en");
    let change = &export["preference_changes"][0];
    assert_eq!(
        (change["topics"].as_str(), change["changed_at"].as_str()),
        (Some("kultur"), Some("2027-05-01T09:00:00Z"))
    );

    // The next digest follows: at 18:30 Berlin (16:30 UTC) on a weekday, only Kultur.
    clock.set(utc("2027-05-02T10:00:00Z"));
    app.post_item(&["wirtschaft"], "Nicht mehr gewählt").await;
    app.post_item(&["kultur"], "Neu gewählt").await;
    assert_eq!(
        app.run_pass("2027-05-03T16:29:00Z").await,
        (0, 0),
        "not before 18:30 local"
    );
    assert_eq!(app.run_pass("2027-05-03T16:30:00Z").await, (1, 1));
    drained(&app).await;
    let mails = &digests(&sink)["leser@example.org"];
    let text = parse(&mails[1]).body_text(0).unwrap().into_owned();
    assert!(text.contains("Neu gewählt") && !text.contains("Nicht mehr gewählt"));
    assert!(
        parse(&mails[1])
            .subject()
            .unwrap()
            .starts_with("Your news of 3 May 2027"),
        "English now"
    );
    // Weekdays only: after Friday's slot, Saturday and Sunday pass without one.
    assert_eq!(app.run_pass("2027-05-07T16:30:00Z").await.0, 1, "Friday");
    assert_eq!(app.run_pass("2027-05-08T16:30:00Z").await.0, 0, "Saturday");
    assert_eq!(app.run_pass("2027-05-09T16:30:00Z").await.0, 0, "Sunday");
    assert_eq!(app.run_pass("2027-05-10T16:30:00Z").await.0, 1, "Monday");

    // "Unsubscribe from everything" on the same page.
    let html = app
        .http
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&html, "csrf");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf", csrf.as_str()), ("action", "unsubscribe")])
        .finish();
    assert_eq!(post(body, None).await.unwrap().status(), 200);
    assert_eq!(
        app.export("leser@example.org").await.unwrap()["status"],
        "unsubscribed"
    );
}

async fn bad_preference_input_is_refused_per_field(backend: Backend) {
    let (app, sink, _db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.reader(
        "leser@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Erste").await;
    app.run_pass("2027-05-02T05:00:00Z").await;
    let link = find_link(
        &first_digest(&app, &sink, "leser@example.org").await,
        "preferences",
    )
    .unwrap();
    let csrf = hidden(
        &app.http
            .get(&link)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "csrf",
    );
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("csrf", csrf.as_str()),
            ("action", "save"),
            ("topics", "gibt-es-nicht"),
            ("delivery_time", "99:99"),
            ("timezone", "Nowhere/City"),
            ("locale", "de"),
        ])
        .finish();
    let r = app
        .http
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    for msg in ["gibt-es-nicht", "HH:MM", "Zeitzone", "Wochentag"] {
        assert!(html.contains(msg), "message about {msg}");
    }
    assert_eq!(
        app.export("leser@example.org").await.unwrap()["schedule"]["delivery_time"],
        "07:00"
    );
    assert_eq!(
        app.http
            .get(format!("{}/preferences/1.{}", app.base, "0".repeat(32)))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

fn import(db: &TestDb, file: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postbote"))
        .args(["import", file])
        .args(extra)
        .env("POSTBOTE_DATABASE_URL", &db.url)
        .env("POSTBOTE_DATA_DIR", db.dir.path().join("data"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn erasure_leaves_only_a_suppressed_hash_and_import_skips_it(backend: Backend) {
    let (app, sink, db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.reader(
        "erased@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    let path = "/subscribers/erased@example.org";
    assert_eq!(
        app.admin(reqwest::Method::DELETE, path, None)
            .await
            .status(),
        204
    );
    assert_eq!(app.export("erased@example.org").await, Err(404));
    assert_eq!(
        app.admin(reqwest::Method::DELETE, path, None)
            .await
            .status(),
        404
    );
    assert!(app.store.is_suppressed("erased@example.org").await.unwrap());

    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/import/readers.csv"
    );
    let (ok, out) = import(&db, file, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("suppressed 1"), "{out}");
    assert_eq!(
        app.export("erased@example.org").await,
        Err(404),
        "the import did not bring it back"
    );
    let again = db.dir.path().join("again.csv");
    std::fs::write(&again, "email,topics\nerased@example.org,kultur\n").unwrap();
    let (ok, out) = import(&db, again.to_str().unwrap(), &["--send-confirmation"]);
    assert!(
        ok && out.contains("suppressed 1"),
        "an import never mails it: {out}"
    );
    assert_eq!(app.export("erased@example.org").await, Err(404));

    // Through double opt-in the reader is welcome back.
    let r = app.sign_up_json(serde_json::json!({"email": "erased@example.org", "topics": ["kultur"], "consent": true})).await;
    assert_eq!(r.status(), 202);
    let raw = sink.wait_for(1).await;
    let link = find_link(&parse(&raw[0]).body_text(0).unwrap(), "confirm").unwrap();
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    assert_eq!(
        app.export("erased@example.org").await.unwrap()["status"],
        "confirmed"
    );
    assert!(!app.store.is_suppressed("erased@example.org").await.unwrap());
}

async fn import_reports_bad_rows_and_changes_nothing_the_second_time(backend: Backend) {
    let (app, _sink, db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/import/readers.csv"
    );
    let (ok, out) = import(&db, file, &[]);
    assert!(ok, "{out}");
    for (line, field) in [
        (5, "email"),
        (6, "topics"),
        (7, "delivery_time"),
        (8, "timezone"),
        (9, "consent_at"),
        (10, "locale"),
        (11, "email"),
        (12, "topics"),
        (14, "email"),
        (15, "consent_at"),
    ] {
        assert!(
            out.contains(&format!("line {line}: {field}")),
            "line {line} ({field}) reported:\n{out}"
        );
    }
    assert!(
        out.contains("imported 4, already stored 0, suppressed 0, rejected 10"),
        "{out}"
    );
    let anna = app.export("anna@example.org").await.unwrap();
    assert_eq!(anna["status"], "confirmed");
    assert_eq!(anna["topics"], serde_json::json!(["kultur", "wirtschaft"]));
    assert_eq!(anna["schedule"]["delivery_time"], "06:30");
    assert_eq!(anna["consents"][0]["ip"], "192.0.2.10");
    assert_eq!(anna["consents"][0]["given_at"], "2024-05-01T07:30:00Z");
    assert_eq!(
        app.export("carla@example.net").await.unwrap()["schedule"]["timezone"],
        "Europe/Berlin",
        "defaults fill empty cells"
    );
    let before = app
        .admin(reqwest::Method::GET, "/subscribers?limit=1000", None)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();

    let (ok, out) = import(&db, file, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("imported 0, already stored 4"), "{out}");
    let after = app
        .admin(reqwest::Method::GET, "/subscribers?limit=1000", None)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(before, after, "re-importing changes nothing");

    let (ok, out) = import(&db, "/nonexistent.csv", &[]);
    assert!(!ok && out.contains("/nonexistent.csv"), "{out}");
}

async fn import_with_confirmation_runs_double_opt_in(backend: Backend) {
    let (app, sink, db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let file = db.dir.path().join("doi.csv");
    std::fs::write(&file, "email,topics\nneu@example.org,kultur\n").unwrap();
    let (ok, out) = import(&db, file.to_str().unwrap(), &["--send-confirmation"]);
    assert!(ok, "{out}");
    assert!(out.contains("imported 1"), "{out}");
    assert_eq!(
        app.export("neu@example.org").await.unwrap()["status"],
        "pending"
    );
    // The running app delivers the queued confirmation.
    let raw = sink.wait_for(1).await;
    assert!(find_link(&parse(&raw[0]).body_text(0).unwrap(), "confirm").is_some());
}

/// A TXT-record cache for mail-auth's verifier, filled with what `postbote check` printed.
struct Published(std::sync::Mutex<HashMap<Box<str>, mail_auth::Txt>>);

impl mail_auth::ResolverCache<Box<str>, mail_auth::Txt> for Published {
    fn get<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }
    fn insert(&self, key: Box<str>, value: mail_auth::Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

async fn verify(raw: &[u8], published: &Published) -> Vec<String> {
    let authenticator = mail_auth::MessageAuthenticator::new_cloudflare().unwrap();
    let message = mail_auth::AuthenticatedMessage::parse(raw).expect("parseable");
    let params = mail_auth::Parameters::new(&message).with_txt_cache(published);
    authenticator
        .verify_dkim(params)
        .await
        .iter()
        .map(|o| format!("{:?}", o.result()))
        .collect()
}

async fn digests_are_dkim_signed_and_verify_against_the_published_keys(backend: Backend) {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dkim");
    let dkim = postbote::config::DkimSettings {
        domain: "example.org".into(),
        selector: "postbote".into(),
        rsa_key: format!("{keys}/rsa.pem").into(),
        ed25519: Some(("postbote-ed".into(), format!("{keys}/ed25519.pem").into())),
    };
    let (app, sink, db, clock) =
        app_at(backend, "2027-05-01T08:00:00Z", |c| c.dkim = Some(dkim)).await;

    // What an operator publishes: the records `postbote check` prints.
    let config = db.dir.path().join("dkim.toml");
    std::fs::write(&config, format!("[dkim]\ndomain = \"example.org\"\nselector = \"postbote\"\nrsa_key = \"{keys}/rsa.pem\"\ned25519_selector = \"postbote-ed\"\ned25519_key = \"{keys}/ed25519.pem\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postbote"))
        .args(["check", "--config"])
        .arg(&config)
        .env("POSTBOTE_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published = Published(std::sync::Mutex::new(HashMap::new()));
    for line in stdout.lines().filter(|l| l.contains("._domainkey.")) {
        let (name, rest) = line.split_once(" IN TXT ").unwrap();
        let value = rest.trim().trim_matches('"');
        let record = mail_auth::common::verify::DomainKey::parse(value.as_bytes())
            .expect("a valid DKIM record");
        published
            .0
            .lock()
            .unwrap()
            .insert(format!("{name}.").into(), record.into());
    }
    assert_eq!(published.0.lock().unwrap().len(), 2, "{stdout}");

    app.reader(
        "signed@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        utc("2027-05-01T08:00:00Z"),
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Signierte Meldung").await;
    app.run_pass("2027-05-02T05:00:00Z").await;
    drained(&app).await;
    let raw = digests(&sink)["signed@example.org"][0].clone();
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(
        text.matches("DKIM-Signature:").count(),
        2,
        "RSA and ed25519"
    );
    assert!(
        text.contains("a=rsa-sha256")
            && text.contains("a=ed25519-sha256")
            && text.contains("c=relaxed/relaxed")
    );
    for header in [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ] {
        assert!(
            text.to_ascii_lowercase()
                .contains(&header.to_ascii_lowercase()),
            "{header} signed"
        );
    }
    assert_eq!(verify(&raw, &published).await, ["Pass", "Pass"]);

    // A relay refolds a header: relaxed canonicalisation keeps the signatures valid.
    let refolded = text.replacen(
        "\nTo: signed@example.org",
        "\nTo:\r\n\t signed@example.org",
        1,
    );
    assert_ne!(refolded, text);
    assert_eq!(
        verify(refolded.as_bytes(), &published).await,
        ["Pass", "Pass"]
    );
    // A changed body does not verify.
    let tampered = text.replacen("Signierte Meldung", "Gefaelschte Meldung", 1);
    assert!(
        verify(tampered.as_bytes(), &published)
            .await
            .iter()
            .all(|r| r != "Pass")
    );
}

on_both_backends!(
    preferences_change_topics_and_time_and_the_next_digest_follows,
    bad_preference_input_is_refused_per_field,
    erasure_leaves_only_a_suppressed_hash_and_import_skips_it,
    import_reports_bad_rows_and_changes_nothing_the_second_time,
    import_with_confirmation_runs_double_opt_in,
    digests_are_dkim_signed_and_verify_against_the_published_keys,
);
