//! Readers in control and a clean list: preferences and their form tokens, page
//! language, queued digests withdrawn when a reader leaves, erasure, the subscriber
//! list, CSV import and DKIM, on both backends with the real app and a real SMTP
//! server.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use crate::harness::{
    Backend, RefusedPort, SmtpSink, TestApp, TestDb, app_at, delivered, digests, drained,
    find_link, link_key, parse, recipient, run_to_end_async, signed_id, test_config, utc,
};
use base64::Engine;
use mail_auth::DkimResult;
use mail_auth::common::parse::TxtRecordParser;
use postbote::clock::ManualClock;
use postbote::store::EventEffect;

async fn first_digest(app: &TestApp, sink: &SmtpSink, who: &str) -> String {
    let raw = &delivered(app, sink).await[who][0];
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

async fn import(db: &TestDb, file: &str, extra: &[&str]) -> (bool, String) {
    let out = run_to_end_async(
        Command::new(env!("CARGO_BIN_EXE_postbote"))
            .args(["import", file])
            .args(extra)
            .env("POSTBOTE_DATABASE_URL", &db.url)
            .env("POSTBOTE_DATA_DIR", db.dir.path().join("data")),
        None,
    )
    .await;
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
    let (ok, out) = import(&db, file, &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("suppressed 1"), "{out}");
    assert_eq!(
        app.export("erased@example.org").await,
        Err(404),
        "the import did not bring it back"
    );
    let again = db.dir.path().join("again.csv");
    std::fs::write(&again, "email,topics\nerased@example.org,kultur\n").unwrap();
    let (ok, out) = import(&db, again.to_str().unwrap(), &["--send-confirmation"]).await;
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
    let (ok, out) = import(&db, file, &[]).await;
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
    // The import leaves the planner statistics of what it loaded.
    let analyzed = if db.url.starts_with("sqlite://") {
        "SELECT CAST(count(*) > 0 AS TEXT) FROM sqlite_stat1 WHERE tbl = 'subscribers'"
    } else {
        "SELECT CAST(count(*) AS TEXT) FROM pg_stat_user_tables \
         WHERE relname = 'subscribers' AND last_analyze IS NOT NULL"
    };
    assert_eq!(db.text_rows(analyzed, &[]).await, [[Some("1".to_owned())]]);
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

    let (ok, out) = import(&db, file, &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("imported 0, already stored 4"), "{out}");
    let after = app
        .admin(reqwest::Method::GET, "/subscribers?limit=1000", None)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(before, after, "re-importing changes nothing");

    let (ok, out) = import(&db, "/nonexistent.csv", &[]).await;
    assert!(!ok && out.contains("/nonexistent.csv"), "{out}");
}

async fn import_with_confirmation_runs_double_opt_in(backend: Backend) {
    let (app, sink, db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let file = db.dir.path().join("doi.csv");
    std::fs::write(&file, "email,topics\nneu@example.org,kultur\n").unwrap();
    let (ok, out) = import(&db, file.to_str().unwrap(), &["--send-confirmation"]).await;
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

/// SQLite: `postbote import` runs as a process of its own beside `serve`, which
/// takes the write lock for a moment many times a second. Its transactions must
/// wait for the lock, not fail with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_waits_for_a_busy_sqlite_database_instead_of_failing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .upsert_topic(
            &postbote::domain::TopicSlug::parse("wirtschaft").unwrap(),
            "Wirtschaft",
            None,
            utc("2027-05-01T08:00:00Z"),
        )
        .await
        .unwrap();
    let writer = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let busy = tokio::spawn({
        let (writer, stop) = (writer.clone(), stop.clone());
        async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                sqlx::query(
                    "INSERT INTO settings (key, value) VALUES ('busy', $1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(n.to_string())
                .execute(&writer)
                .await
                .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            n
        }
    });
    for round in 0..10 {
        let file = db.dir.path().join(format!("round{round}.csv"));
        let rows: String = (0..5)
            .map(|i| format!("r{round}x{i}@example.org,wirtschaft\n"))
            .collect();
        std::fs::write(&file, format!("email,topics\n{rows}")).unwrap();
        let (ok, out) = import(&db, file.to_str().unwrap(), &[]).await;
        assert!(ok && out.contains("imported 5"), "round {round}: {out}");
    }
    stop.cancel();
    assert!(busy.await.unwrap() > 10, "the other writer kept writing");
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
    let out = run_to_end_async(
        Command::new(env!("CARGO_BIN_EXE_postbote"))
            .args(["check", "--config"])
            .arg(&config)
            .env("POSTBOTE_DATABASE_URL", &db.url),
        None,
    )
    .await;
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

/// The preferences form of `link`, posted with `csrf` as its token: topic Kultur.
async fn save_preferences(app: &TestApp, link: &str, csrf: &str) -> reqwest::StatusCode {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("csrf", csrf),
            ("action", "save"),
            ("topics", "kultur"),
            ("delivery_time", "18:30"),
            ("timezone", "Europe/Berlin"),
            ("weekdays", "mon"),
            ("locale", "de"),
        ])
        .finish();
    app.http
        .post(link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// The form token of the preferences page at `link`, as the clock stands.
async fn form_token(app: &TestApp, link: &str) -> String {
    let html = app
        .http
        .get(link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    hidden(&html, "csrf")
}

async fn a_preferences_form_token_counts_only_when_signed_fresh_and_for_this_reader(
    backend: Backend,
) {
    let (app, sink, _db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    for who in ["leser@example.org", "andere@example.org"] {
        app.reader(
            who,
            &["wirtschaft"],
            "07:00",
            "Europe/Berlin",
            "de",
            utc("2027-05-01T08:00:00Z"),
        )
        .await;
    }
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Erste").await;
    app.run_pass("2027-05-02T05:00:00Z").await;
    let got = delivered(&app, &sink).await;
    let link = |who: &str| {
        find_link(&parse(&got[who][0]).body_text(0).unwrap(), "preferences")
            .expect("a preferences link")
    };
    let (mine, theirs) = (link("leser@example.org"), link("andere@example.org"));

    let fresh = form_token(&app, &mine).await;
    let (issued, mac) = fresh.split_once('.').unwrap();
    assert_eq!(issued, utc("2027-05-01T09:00:00Z").timestamp().to_string());
    let last = if mac.ends_with('0') { '1' } else { '0' };
    let wrong_mac = format!("{issued}.{}{last}", &mac[..mac.len() - 1]);
    let other_readers = form_token(&app, &theirs).await;
    // Signed for this reader by the server itself, but for another time.
    clock.set(utc("2027-05-01T10:00:00Z"));
    let from_the_future = form_token(&app, &mine).await;
    clock.set(utc("2027-04-30T08:00:00Z"));
    let a_day_old = form_token(&app, &mine).await;
    clock.set(utc("2027-05-01T09:00:00Z"));

    let before = app.export("leser@example.org").await.unwrap();
    for (what, csrf) in [
        ("a fresh token with a wrong MAC", wrong_mac),
        (
            "a fresh token with no MAC at all",
            format!("{issued}.{}", "0".repeat(32)),
        ),
        ("another reader's fresh token", other_readers.clone()),
        ("a token issued an hour from now", from_the_future.clone()),
        ("a token issued 25 hours ago", a_day_old),
    ] {
        assert_eq!(save_preferences(&app, &mine, &csrf).await, 403, "{what}");
    }
    assert_eq!(
        app.export("leser@example.org").await.unwrap(),
        before,
        "nothing changed"
    );

    // The refused tokens were good ones, only not here or not now.
    assert_eq!(save_preferences(&app, &theirs, &other_readers).await, 200);
    assert_eq!(
        app.export("andere@example.org").await.unwrap()["topics"],
        serde_json::json!(["kultur"])
    );
    clock.set(utc("2027-05-01T10:00:00Z"));
    assert_eq!(save_preferences(&app, &mine, &from_the_future).await, 200);
    assert_eq!(
        app.export("leser@example.org").await.unwrap()["topics"],
        serde_json::json!(["kultur"])
    );
}

async fn pages_speak_german_unless_the_reader_asks_for_english(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let get = |path: &str, accept: Option<&str>| {
        let mut request = app.http.get(app.url(path));
        if let Some(a) = accept {
            request = request.header("accept-language", a);
        }
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let german =
        |html: &str| html.contains("<html lang=\"de\">") && html.contains("Newsletter abonnieren");
    let english = |html: &str| {
        html.contains("<html lang=\"en\">") && html.contains("Subscribe to the newsletter")
    };
    assert!(german(&get("/", None).await), "German is the default");
    assert!(english(&get("/?lang=en", None).await), "?lang=en");
    assert!(
        english(&get("/", Some("en-US,en;q=0.9")).await),
        "a browser asking for English"
    );
    assert!(
        english(&get("/", Some("fr-FR,fr;q=0.9,en;q=0.8")).await),
        "English as the first language offered"
    );
    assert!(
        german(&get("/", Some("fr-FR,fr;q=0.9")).await),
        "neither: the default"
    );
    assert!(
        german(&get("/?lang=de", Some("en-US,en;q=0.9")).await),
        "?lang= wins over the browser"
    );
    // A page with a token, too: an unknown unsubscribe link.
    let unknown = format!("/unsubscribe/1.{}", "0".repeat(32));
    let de = get(&unknown, None).await;
    let en = get(&unknown, Some("en-US,en;q=0.9")).await;
    assert!(de.contains("Dieser Link ist uns nicht bekannt"), "{de}");
    assert!(en.contains("We do not know this link"), "{en}");
}

/// How a reader leaves while their digest waits in the queue.
#[derive(Debug, Clone, Copy)]
enum Leaving {
    /// The one-click POST of the digest's own `List-Unsubscribe` link.
    OneClick,
    /// A hard-bounce DSN to the reader's VERP address, through `postbote inbound`.
    HardBounce,
}

const BOUNCE_ADDRESS: &str = "bounces+{id}@bounces.example.org";

/// The envelope sender of the digest queued for `email` (a job that refers to the
/// digest's shared body).
async fn queued_digest(db: &TestDb, email: &str) -> String {
    let rows = db
        .text_rows(
            "SELECT envelope_from, CAST(body_id AS TEXT) FROM mail_jobs \
             WHERE recipient = $1 AND kind = 'digest' AND status = 'queued'",
            &[email],
        )
        .await;
    assert_eq!(rows.len(), 1, "one digest queued for {email}");
    assert!(rows[0][1].is_some(), "the digest refers to its body");
    rows[0][0].clone().unwrap()
}

/// The digest in a reader's delivery history.
fn digest_delivery(export: &serde_json::Value) -> serde_json::Value {
    let deliveries = export["deliveries"].as_array().unwrap();
    let digests: Vec<&serde_json::Value> = deliveries
        .iter()
        .filter(|d| d["kind"] == "digest")
        .collect();
    assert_eq!(digests.len(), 1, "{deliveries:?}");
    digests[0].clone()
}

async fn withdrawn_when_leaving(backend: Backend, leaving: Leaving) {
    let db = TestDb::new(backend).await;
    let relay_down = RefusedPort::new();
    let sink = SmtpSink::start();
    let config = |smtp: &str| {
        let mut c = test_config(&db, smtp);
        c.digest.run_scheduler = false;
        c.bounce_address = Some(BOUNCE_ADDRESS.into());
        c
    };
    let clock = ManualClock::new(utc("2027-05-01T08:00:00Z"));
    let app =
        TestApp::spawn_with_clock(config(&relay_down.smtp_url()), Arc::new(clock.clone())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    let mut ids = HashMap::new();
    for who in ["geht@example.org", "bleibt@example.org"] {
        let id = app
            .reader(
                who,
                &["wirtschaft"],
                "07:00",
                "Europe/Berlin",
                "de",
                utc("2027-05-01T08:00:00Z"),
            )
            .await;
        ids.insert(who, id);
    }
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Wartet in der Schlange")
        .await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (2, 2));

    // The relay is down: both digests wait in the queue.
    let envelope = queued_digest(&db, "geht@example.org").await;
    queued_digest(&db, "bleibt@example.org").await;
    let key = link_key(&db).await;
    let verp = format!(
        "bounces+{}@bounces.example.org",
        signed_id(&key, ids["geht@example.org"])
    );
    assert_eq!(envelope, verp, "the VERP sender as documented");

    let withdrawn_because = match leaving {
        Leaving::OneClick => {
            // The reader's part of a digest is added when it is sent: the one-click
            // link it will carry is the reader's signed unsubscribe link.
            let token =
                postbote::domain::LinkKey::new(key.clone()).manage_token(ids["geht@example.org"]);
            let link = &format!("{}/unsubscribe/{}", app.base, token.as_str());
            let r = app
                .http
                .post(link)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("List-Unsubscribe=One-Click")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            "unsubscribed before delivery"
        }
        Leaving::HardBounce => {
            let config = db.dir.path().join("inbound.toml");
            std::fs::write(&config, format!("bounce_address = \"{BOUNCE_ADDRESS}\"\n")).unwrap();
            let dsn = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/inbound/postfix_hard.eml"
            ))
            .unwrap()
            .replace("{{ADDRESS}}", "geht@example.org")
            .replace("{{VERP}}", &verp);
            let out = run_to_end_async(
                Command::new(env!("CARGO_BIN_EXE_postbote"))
                    .args(["inbound", "--config"])
                    .arg(&config)
                    .env("POSTBOTE_DATABASE_URL", &db.url)
                    .env("POSTBOTE_DATA_DIR", db.dir.path().join("data")),
                Some(dsn.into_bytes()),
            )
            .await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.starts_with("hard_bounce"),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            "withdrawn after hard_bounce"
        }
    };
    let gone = app.export("geht@example.org").await.unwrap();
    let digest = digest_delivery(&gone);
    assert_eq!(
        (digest["status"].as_str(), digest["last_error"].as_str()),
        (Some("failed"), Some(withdrawn_because)),
        "{leaving:?}"
    );
    assert_eq!(
        digest_delivery(&app.export("bleibt@example.org").await.unwrap())["status"],
        "queued",
        "the other reader's digest still waits"
    );
    app.stop().await;

    // The relay is back (the same database, served by a process that reaches it):
    // the other reader's digest arrives and the queue empties; the withdrawn one
    // never goes out.
    let app = TestApp::spawn_with_clock(config(&sink.url()), Arc::new(clock.clone())).await;
    let got = delivered(&app, &sink).await;
    assert_eq!(got.get("bleibt@example.org").map(Vec::len), Some(1));
    assert!(
        sink.raw_messages()
            .iter()
            .all(|m| recipient(m) != "geht@example.org"),
        "nothing reached the reader who left"
    );
}

async fn a_queued_digest_is_withdrawn_when_the_reader_unsubscribes(backend: Backend) {
    withdrawn_when_leaving(backend, Leaving::OneClick).await;
}

async fn a_queued_digest_is_withdrawn_when_the_reader_bounces(backend: Backend) {
    withdrawn_when_leaving(backend, Leaving::HardBounce).await;
}

/// `table.column` of every value in the database that contains `needle` (message
/// bodies included).
async fn places_holding(db: &TestDb, backend: Backend, needle: &str) -> Vec<String> {
    let columns = match backend {
        Backend::Sqlite => {
            db.text_rows(
                "SELECT m.name, p.name, lower(p.type) FROM sqlite_master AS m, \
                 pragma_table_info(m.name) AS p WHERE m.type = 'table'",
                &[],
            )
            .await
        }
        Backend::Postgres => {
            db.text_rows(
                "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT), \
                 CAST(data_type AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = 'public'",
                &[],
            )
            .await
        }
    };
    let mut by_table: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for c in columns {
        let [table, column, kind] = [0, 1, 2].map(|i| c[i].clone().unwrap_or_default());
        by_table.entry(table).or_default().push((column, kind));
    }
    let mut found = Vec::new();
    for (table, columns) in by_table {
        for (column, kind) in columns {
            let holds = if backend == Backend::Postgres && kind == "bytea" {
                format!("position(convert_to($1, 'UTF8') in \"{column}\") > 0")
            } else {
                format!("CAST(\"{column}\" AS TEXT) LIKE '%' || $1 || '%'")
            };
            let n = db
                .text_rows(
                    &format!("SELECT CAST(COUNT(*) AS TEXT) FROM \"{table}\" WHERE {holds}"),
                    &[needle],
                )
                .await;
            if n[0][0].as_deref() != Some("0") {
                found.push(format!("{table}.{column}"));
            }
        }
    }
    found.sort();
    found
}

/// `table` for every table whose `subscriber_id` column names `id`.
async fn rows_of_reader(db: &TestDb, backend: Backend, id: i64) -> Vec<String> {
    let tables = match backend {
        Backend::Sqlite => {
            db.text_rows(
                "SELECT m.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p \
                 WHERE m.type = 'table' AND p.name = 'subscriber_id'",
                &[],
            )
            .await
        }
        Backend::Postgres => {
            db.text_rows(
                "SELECT CAST(table_name AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = 'public' AND column_name = 'subscriber_id'",
                &[],
            )
            .await
        }
    };
    let mut found = Vec::new();
    for row in tables {
        let table = row[0].clone().unwrap();
        let n = db
            .text_rows(
                &format!(
                    "SELECT CAST(COUNT(*) AS TEXT) FROM \"{table}\" \
                     WHERE CAST(subscriber_id AS TEXT) = $1"
                ),
                &[&id.to_string()],
            )
            .await;
        if n[0][0].as_deref() != Some("0") {
            found.push(table);
        }
    }
    found.sort();
    found
}

async fn erasing_a_reader_who_got_mail_leaves_only_the_suppressed_hash(backend: Backend) {
    let (app, sink, db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let now = utc("2027-05-01T08:00:00Z");
    let id = app
        .reader(
            "weg@example.org",
            &["wirtschaft"],
            "07:00",
            "Europe/Berlin",
            "de",
            now,
        )
        .await;
    app.reader(
        "bleibt@example.org",
        &["wirtschaft"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    // Two digests on two days; the first one's row folded into the daily history.
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Erste").await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (2, 2));
    delivered(&app, &sink).await;
    clock.set(utc("2027-05-02T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Zweite").await;
    assert_eq!(app.run_pass("2027-05-03T05:00:00Z").await, (2, 2));
    let got = delivered(&app, &sink).await;
    assert_eq!(got["weg@example.org"].len(), 2, "the reader got mail");
    app.store
        .purge_finished_mail(utc("2027-05-02T00:00:00Z"), 1000)
        .await
        .unwrap();
    // A delay warning, recorded.
    app.store
        .record_mail_event(
            id,
            postbote::domain::MailEventKind::SoftBounce,
            "4.2.2 mailbox full",
            Some("<ref@example.org>"),
            EventEffect::Record,
            utc("2027-05-02T10:00:00Z"),
        )
        .await
        .unwrap();
    let export = app.export("weg@example.org").await.unwrap();
    assert_eq!(export["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(export["delivery_days"].as_array().unwrap().len(), 1);
    assert_eq!(export["mail_events"].as_array().unwrap().len(), 1);
    let other = app.export("bleibt@example.org").await.unwrap();
    let before = places_holding(&db, backend, "weg@example.org").await;
    assert!(
        before.contains(&"mail_log.recipient".to_owned())
            && before.contains(&"subscribers.email".to_owned()),
        "the search finds the address where it is: {before:?}"
    );
    assert!(!rows_of_reader(&db, backend, id).await.is_empty());
    // A console test mail to the address: queued for no reader, found by address.
    app.store
        .queue_test_mail(
            &postbote::store::NewMail {
                kind: "test",
                recipient: "weg@example.org".to_owned(),
                envelope_from: "bounces@example.org".to_owned(),
                message: b"Subject: Test\r\n\r\nweg@example.org\r\n".to_vec(),
            },
            utc("2027-05-02T10:00:00Z"),
        )
        .await
        .unwrap();

    let path = "/subscribers/weg@example.org";
    assert_eq!(
        app.admin(reqwest::Method::DELETE, path, None)
            .await
            .status(),
        204
    );
    assert_eq!(app.export("weg@example.org").await, Err(404));
    assert!(app.store.is_suppressed("weg@example.org").await.unwrap());
    assert_eq!(
        places_holding(&db, backend, "weg@example.org").await,
        Vec::<String>::new(),
        "the address is nowhere, mail bodies included"
    );
    assert_eq!(
        rows_of_reader(&db, backend, id).await,
        Vec::<String>::new(),
        "no mail, delivery history, event or setting of the reader is left"
    );
    assert_eq!(
        app.export("bleibt@example.org").await.unwrap(),
        other,
        "the other reader is untouched"
    );

    // An address that was never a reader, with a console test mail: erased too.
    app.store
        .queue_test_mail(
            &postbote::store::NewMail {
                kind: "test",
                recipient: "nie@example.org".to_owned(),
                envelope_from: "bounces@example.org".to_owned(),
                message: b"Subject: Test\r\n\r\nnie@example.org\r\n".to_vec(),
            },
            utc("2027-05-02T10:00:00Z"),
        )
        .await
        .unwrap();
    assert!(
        !places_holding(&db, backend, "nie@example.org")
            .await
            .is_empty()
    );
    let path = "/subscribers/nie@example.org";
    for expected in [204, 404] {
        assert_eq!(
            app.admin(reqwest::Method::DELETE, path, None)
                .await
                .status(),
            expected
        );
    }
    assert_eq!(
        places_holding(&db, backend, "nie@example.org").await,
        Vec::<String>::new(),
        "the test mail to an address without a reader is gone"
    );
}

/// Walks `GET /api/v1/subscribers?{query}` in pages of `limit`; returns the emails in
/// the order received and each page's length.
async fn walk(app: &TestApp, query: &str, limit: usize) -> (Vec<String>, Vec<usize>) {
    let (mut emails, mut pages, mut after) = (Vec::new(), Vec::new(), None::<i64>);
    let mut last_id = 0;
    loop {
        let mut path = format!("/subscribers?limit={limit}&{query}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        let r = app.admin(reqwest::Method::GET, &path, None).await;
        assert_eq!(r.status(), 200, "{path}");
        let page: serde_json::Value = r.json().await.unwrap();
        let rows = page["subscribers"].as_array().unwrap();
        assert!(rows.len() <= limit, "{path}: {}", rows.len());
        for row in rows {
            let id = row["id"].as_i64().unwrap();
            assert!(id > last_id, "in id order");
            last_id = id;
            emails.push(row["email"].as_str().unwrap().to_owned());
        }
        pages.push(rows.len());
        match page["next_after"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), rows.last().map(|r| r["id"].as_i64().unwrap()));
                after = Some(next);
            }
            None => {
                assert!(page["next_after"].is_null());
                return (emails, pages);
            }
        }
        assert!(pages.len() < 100, "the walk ends");
    }
}

async fn the_subscriber_list_pages_through_every_reader_once_and_filters(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let now = utc("2027-05-01T08:00:00Z");
    let mut ids = HashMap::new();
    for (who, topics) in [
        ("a@example.org", &["wirtschaft"][..]),
        ("b@example.org", &["kultur"][..]),
        ("c@example.org", &["wirtschaft", "kultur"][..]),
        ("d@example.org", &["sport"][..]),
        ("e@example.org", &["kultur"][..]),
        ("f@example.org", &["wirtschaft"][..]),
    ] {
        let id = app
            .reader(who, topics, "07:00", "Europe/Berlin", "de", now)
            .await;
        ids.insert(who, id);
    }
    let r = app
        .sign_up_json(
            serde_json::json!({"email": "g@example.org", "topics": ["kultur"], "consent": true}),
        )
        .await;
    assert_eq!(r.status(), 202);
    app.store
        .unsubscribe(ids["b@example.org"], now)
        .await
        .unwrap();
    app.store
        .record_mail_event(
            ids["d@example.org"],
            postbote::domain::MailEventKind::HardBounce,
            "5.1.1",
            None,
            EventEffect::Bounce,
            now,
        )
        .await
        .unwrap();
    let all: Vec<String> = "abcdefg"
        .chars()
        .map(|c| format!("{c}@example.org"))
        .collect();

    // 7 readers in pages of 3 (3, 3, 1), and of 7 and 1 (a full last page is
    // followed by an empty one): each reader once, in id order.
    for (limit, expected_pages) in [(3, vec![3, 3, 1]), (7, vec![7, 0]), (1, vec![1; 7])] {
        let (emails, pages) = walk(&app, "", limit).await;
        assert_eq!(emails, all, "limit {limit}");
        let mut expected_pages = expected_pages;
        if limit == 1 {
            expected_pages.push(0);
        }
        assert_eq!(pages, expected_pages, "limit {limit}");
    }
    for (query, expected) in [
        ("status=confirmed", &["a", "c", "e", "f"][..]),
        ("status=pending", &["g"][..]),
        ("status=unsubscribed", &["b"][..]),
        ("status=bounced", &["d"][..]),
        ("topic=kultur", &["b", "c", "e", "g"][..]),
        ("topic=kultur&status=confirmed", &["c", "e"][..]),
        ("topic=wirtschaft", &["a", "c", "f"][..]),
    ] {
        let expected: Vec<String> = expected
            .iter()
            .map(|c| format!("{c}@example.org"))
            .collect();
        assert_eq!(walk(&app, query, 2).await.0, expected, "{query}");
    }
    for bad in [
        "status=gone",
        "limit=0",
        "limit=1001",
        "topic=Nicht%20g%C3%BCltig",
    ] {
        let r = app
            .admin(reqwest::Method::GET, &format!("/subscribers?{bad}"), None)
            .await;
        assert_eq!(r.status(), 422, "{bad}");
    }
}

on_both_backends!(
    preferences_change_topics_and_time_and_the_next_digest_follows,
    bad_preference_input_is_refused_per_field,
    erasure_leaves_only_a_suppressed_hash_and_import_skips_it,
    import_reports_bad_rows_and_changes_nothing_the_second_time,
    import_with_confirmation_runs_double_opt_in,
    digests_are_dkim_signed_and_verify_against_the_published_keys,
    a_preferences_form_token_counts_only_when_signed_fresh_and_for_this_reader,
    pages_speak_german_unless_the_reader_asks_for_english,
    a_queued_digest_is_withdrawn_when_the_reader_unsubscribes,
    a_queued_digest_is_withdrawn_when_the_reader_bounces,
    erasing_a_reader_who_got_mail_leaves_only_the_suppressed_hash,
    the_subscriber_list_pages_through_every_reader_once_and_filters,
);
