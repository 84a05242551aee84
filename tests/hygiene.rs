//! Readers in control and a clean list: preferences, erasure, CSV import and DKIM,
//! on both backends with the real app and a real SMTP server.

mod common;

use std::collections::HashMap;
use std::process::Command;

use base64::Engine;
use common::{Backend, SmtpSink, TestApp, TestDb, app_at, digests, drained, find_link, parse, utc};
use mail_auth::DkimResult;
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

async fn verify(raw: &[u8], published: &Published) -> Vec<DkimResult> {
    let authenticator = mail_auth::MessageAuthenticator::new_cloudflare().unwrap();
    let message = mail_auth::AuthenticatedMessage::parse(raw).expect("parseable");
    let params = mail_auth::Parameters::new(&message).with_txt_cache(published);
    authenticator
        .verify_dkim(params)
        .await
        .iter()
        .map(|o| o.result().clone())
        .collect()
}

/// Both signatures (RSA and ed25519) present and explicitly failed: not "not
/// passed", not missing.
fn both_fail(results: &[DkimResult]) -> bool {
    results.len() == 2 && results.iter().all(|r| matches!(r, DkimResult::Fail(_)))
}

/// The header block, folded lines joined.
fn unfolded_headers(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            break;
        }
        match lines.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => lines.push(line.to_owned()),
        }
    }
    lines
}

/// The `h=` tag of each `DKIM-Signature` header, lower-cased and split on `:`.
fn signed_header_lists(text: &str) -> Vec<Vec<String>> {
    unfolded_headers(text)
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .map(|l| {
            let tags = &l["dkim-signature:".len()..];
            let h = tags
                .split(';')
                .find_map(|tag| tag.trim().strip_prefix("h="))
                .expect("an h= tag");
            h.split(':')
                .map(|name| {
                    name.split_whitespace()
                        .collect::<String>()
                        .to_ascii_lowercase()
                })
                .collect()
        })
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

    // The RSA key as a SubjectPublicKeyInfo, the form `opendkim-genkey` publishes
    // (`openssl rsa -pubout`), not a bare PKCS#1 RSAPublicKey.
    let p = stdout
        .split("k=rsa; p=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("an RSA record");
    let spki = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
    // SEQUENCE (long form, 2 length bytes) { SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }, BIT STRING …
    assert_eq!(spki[..2], [0x30, 0x82], "an outer SEQUENCE");
    assert_eq!(
        usize::from(u16::from_be_bytes([spki[2], spki[3]])),
        spki.len() - 4,
        "the whole record is the SEQUENCE"
    );
    assert_eq!(
        spki[4..19],
        [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00
        ],
        "AlgorithmIdentifier rsaEncryption"
    );
    assert_eq!(spki[19], 0x03, "a BIT STRING follows");
    let openssl = std::fs::read_to_string(format!("{keys}/rsa.pub.pem")).unwrap();
    let openssl: String = openssl
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert_eq!(
        p, openssl,
        "what `openssl rsa -pubout` gives for the same key"
    );

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
    // What a reader sees is over-signed: listed once more than the mail has it,
    // so no such header can be added on the way.
    let lists = signed_header_lists(&text);
    assert_eq!(lists.len(), 2);
    let headers = unfolded_headers(&text);
    let occurrences = |name: &str| {
        headers
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .count()
    };
    for h in &lists {
        let listed = |name: &str| h.iter().filter(|n| *n == name).count();
        for name in ["from", "to", "subject", "date", "list-unsubscribe"] {
            assert_eq!(occurrences(name), 1, "{name} once in the mail");
            assert_eq!(listed(name), 2, "{name} over-signed: {h:?}");
        }
        for name in [
            "mime-version",
            "content-type",
            "message-id",
            "list-id",
            "list-unsubscribe-post",
        ] {
            assert!(listed(name) >= 1, "{name} signed: {h:?}");
        }
    }
    assert_eq!(
        verify(&raw, &published).await,
        [DkimResult::Pass, DkimResult::Pass]
    );

    // A relay refolds a header: relaxed canonicalisation keeps the signatures valid.
    let refolded = text.replacen(
        "\nTo: signed@example.org",
        "\nTo:\r\n\t signed@example.org",
        1,
    );
    assert_ne!(refolded, text);
    assert_eq!(
        verify(refolded.as_bytes(), &published).await,
        [DkimResult::Pass, DkimResult::Pass]
    );
    // A changed body: the body hash does not verify (reported as neutral, the way
    // Gmail and OpenDKIM say "neutral (body hash did not verify)").
    let tampered = text.replacen("Signierte Meldung", "Gefaelschte Meldung", 1);
    let body_hash_mismatch = DkimResult::Neutral(mail_auth::Error::Dkim(
        mail_auth::dkim::DkimError::FailedBodyHashMatch,
    ));
    assert_eq!(
        verify(tampered.as_bytes(), &published).await,
        [body_hash_mismatch.clone(), body_hash_mismatch]
    );
    // A changed Subject: both signatures fail.
    let subject = headers
        .iter()
        .find(|l| l.starts_with("Subject:"))
        .unwrap()
        .clone();
    let changed = text.replacen(&subject, "Subject: Ihr Konto wird gesperrt", 1);
    assert_ne!(changed, text);
    assert!(both_fail(&verify(changed.as_bytes(), &published).await));
    // A second header added above the signed one: a verifier reads the signed
    // instance from the bottom, so only over-signing covers the added one.
    for added in [
        "From: Bank <konto@bank.example>",
        "To: jemand@example.net",
        "Subject: Ihr Konto wird gesperrt",
        "Date: Mon, 1 Jan 2035 00:00:00 +0000",
        "List-Unsubscribe: <https://attacker.example/u>",
    ] {
        let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let forged = format!("{added}{eol}{text}");
        let results = verify(forged.as_bytes(), &published).await;
        assert!(both_fail(&results), "{added}: {results:?}");
    }
}

on_both_backends!(
    preferences_change_topics_and_time_and_the_next_digest_follows,
    bad_preference_input_is_refused_per_field,
    erasure_leaves_only_a_suppressed_hash_and_import_skips_it,
    import_reports_bad_rows_and_changes_nothing_the_second_time,
    import_with_confirmation_runs_double_opt_in,
    digests_are_dkim_signed_and_verify_against_the_published_keys,
);
