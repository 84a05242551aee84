//! Bad input to `POST /subscribe`: each case is a 4xx naming the field, never a 5xx,
//! and no mail is queued or sent. [`open_internet`]: the HTTP surface as an attacker
//! meets it (tokens, headers, slow clients, forged `X-Forwarded-For`).

use crate::harness::{Backend, SmtpSink, TestApp, TestDb, form, test_config};
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

/// The HTTP surface on the open internet (issue 9, points 6 to 8): `/metrics`
/// behind a token, the security headers on every response, slow and half-open
/// clients cut off, `X-Forwarded-For` believed only from trusted proxies, and
/// configurations that would leak a password refused.
mod open_internet {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use postbote::config::{Config, IpNetwork, Secret};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::harness::{
        ADMIN_TOKEN, Backend, SmtpSink, TestApp, TestDb, find_link, form, parse, test_config,
    };

    const METRICS_TOKEN: &str = "metrics-token-0123456789";

    /// The app with `change` applied to its configuration; no topic, no request
    /// made yet.
    async fn app_with(
        backend: Backend,
        change: impl FnOnce(&mut Config),
    ) -> (TestApp, SmtpSink, TestDb) {
        let db = TestDb::new(backend).await;
        let sink = SmtpSink::start();
        let mut config = test_config(&db, &sink.url());
        config.rate_limit.per_client_per_minute = 0;
        change(&mut config);
        let app = TestApp::spawn(config).await;
        (app, sink, db)
    }

    fn addr(app: &TestApp) -> SocketAddr {
        app.base
            .trim_start_matches("http://")
            .parse()
            .expect("the app's address")
    }

    async fn metrics_need_the_admin_or_the_metrics_token(backend: Backend) {
        let (app, _sink, _db) = app_with(backend, |c| {
            c.metrics_token = Some(Secret::new(METRICS_TOKEN));
        })
        .await;
        let get = |auth: Option<&'static str>| {
            let mut r = app.http.get(app.url("/metrics"));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send()
        };
        for auth in [
            None,
            Some("Bearer wrong-token-0123456789"),
            Some("Bearer "),
            Some("Bearer metrics-token-012345678"),
            Some("Basic dGVzdDp0ZXN0"),
            Some("metrics-token-0123456789"),
        ] {
            let r = get(auth).await.unwrap();
            assert_eq!(r.status(), 401, "{auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer", "{auth:?}");
            assert!(
                !r.text().await.unwrap().contains("postbote_"),
                "no numbers without the token"
            );
        }
        for token in [ADMIN_TOKEN, METRICS_TOKEN] {
            let r = app
                .http
                .get(app.url("/metrics"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{token}");
            assert!(
                r.text()
                    .await
                    .unwrap()
                    .contains("# TYPE postbote_subscribers gauge")
            );
        }
        let r = app
            .http
            .get(app.url("/api/v1/stats"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "the metrics token opens only /metrics");
    }

    /// Asserts the headers every response carries; returns the response.
    fn assert_hardened(what: &str, r: &reqwest::Response) {
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["referrer-policy"], "same-origin", "{what}");
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{what}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    }

    async fn every_response_carries_the_security_headers(backend: Backend) {
        let (app, sink, _db) = app_with(backend, |_| {}).await;
        app.create_topic("wirtschaft", "Wirtschaft").await;
        let item = app.post_item(&["wirtschaft"], "Werk eröffnet").await;
        let item_path = format!("/items/{item}");
        let r = app
            .sign_up_form(&form("anna@example.org", &["wirtschaft"]))
            .await;
        assert_eq!(r.status(), 200);
        assert_hardened("POST /subscribe", &r);
        let raw = sink.wait_for(1).await;
        let mail = parse(&raw[0]).body_text(0).unwrap().into_owned();
        let confirm = find_link(&mail, "confirm").expect("a confirmation link");
        let confirm_path = confirm.trim_start_matches(&app.base).to_owned();

        let pages = [
            ("/", 200, false),
            ("/?lang=en", 200, false),
            (confirm_path.as_str(), 200, true),
            ("/confirm/x", 404, true),
            ("/preferences/x", 404, true),
            ("/unsubscribe/x", 404, true),
            (item_path.as_str(), 200, false),
            ("/items/999999", 404, false),
            ("/no-such-page", 404, false),
            ("/healthz", 200, false),
            ("/readyz", 200, false),
            ("/metrics", 401, false),
            ("/assets/timezone.js", 200, false),
            ("/assets/postbote.css", 200, false),
        ];
        for (path, status, token_page) in &pages {
            let r = app.http.get(app.url(path)).send().await.unwrap();
            assert_eq!(r.status().as_u16(), *status, "{path}");
            assert_hardened(path, &r);
            let cache = r
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap().to_owned());
            if *token_page {
                assert_eq!(cache.as_deref(), Some("no-store"), "{path}");
            } else {
                assert_ne!(cache.as_deref(), Some("no-store"), "{path}");
            }
            // Nothing inline that the policy would block: no <style>, no style=,
            // no event handler attributes, every script from a file.
            let body = r.text().await.unwrap();
            if body.starts_with("<!DOCTYPE html>") {
                let lower = body.to_lowercase();
                assert!(
                    !lower.contains("<style") && !lower.contains(" style="),
                    "{path}"
                );
                assert!(
                    !lower.contains(" onload=") && !lower.contains(" onclick="),
                    "{path}"
                );
                for script in lower.split("<script").skip(1) {
                    assert!(script.trim_start().starts_with("src=\"/assets/"), "{path}");
                }
            }
        }
        for (method, path) in [
            (reqwest::Method::GET, "/api/v1/stats"),
            (reqwest::Method::GET, "/api/v1/no-such-route"),
            (reqwest::Method::DELETE, "/healthz"),
        ] {
            let r = app
                .http
                .request(method.clone(), app.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert_hardened(&format!("{method} {path}"), &r);
        }
        let r = app
            .http
            .post(app.url("/subscribe"))
            .header("content-type", "application/json")
            .body(vec![b' '; 200 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert_hardened("413", &r);

        let page = app.http.get(app.url("/")).send().await.unwrap();
        let html = page.text().await.unwrap();
        // The script under its content-hashed name (timezone.<10 hex digits>.js),
        // kept for a year like the stylesheet.
        let src = html
            .split("<script src=\"")
            .nth(1)
            .and_then(|s| s.split_once("\" defer></script>"))
            .map(|(src, _)| src.to_owned())
            .expect("a script tag");
        let hash = src
            .strip_prefix("/assets/timezone.")
            .and_then(|s| s.strip_suffix(".js"))
            .unwrap_or_else(|| panic!("{src}"));
        assert!(
            hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{src}"
        );
        assert!(
            html.contains("<option selected>Europe/Berlin</option>"),
            "without JavaScript the configured time zone is chosen"
        );
        let script = app.http.get(app.url(&src)).send().await.unwrap();
        assert_eq!(
            script.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let old = app.http.get(app.url("/assets/timezone.js")).send().await;
        let old = old.unwrap().text().await.unwrap();
        assert_eq!(
            app.http
                .get(app.url("/assets/timezone.0000000000.js"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        assert!(
            script.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        let body = script.text().await.unwrap();
        assert!(body.contains("resolvedOptions().timeZone"));
        assert_eq!(old, body, "the old name keeps working");
    }

    /// Reads until the server closes the connection; the instant it did, or
    /// `None` when the deadline came first.
    async fn closed_by_server(mut socket: TcpStream, deadline: Instant) -> Option<Instant> {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline.into(), socket.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_open_connections_are_cut_off_while_healthz_answers() {
        let (app, _sink, _db) = app_with(Backend::Sqlite, |_| {}).await;
        let opened = Instant::now();
        let deadline = opened + Duration::from_secs(40);
        let closed = Arc::new(AtomicUsize::new(0));
        let mut hanging = tokio::task::JoinSet::new();
        for i in 0..200 {
            let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
            // Half the clients stop inside the request line, half inside the headers.
            let partial: &[u8] = if i % 2 == 0 {
                b"GET /healthz HT"
            } else {
                b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"
            };
            socket.write_all(partial).await.unwrap();
            let closed = closed.clone();
            hanging.spawn(async move {
                let at = closed_by_server(socket, deadline).await;
                closed.fetch_add(1, Ordering::SeqCst);
                at
            });
        }
        // Fresh connections keep being served while the 200 hang.
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut answered_while_all_hung = 0;
        while closed.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
            let all_hanging = closed.load(Ordering::SeqCst) == 0;
            let r = fresh.get(app.url("/healthz")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            if all_hanging {
                answered_while_all_hung += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            answered_while_all_hung >= 10,
            "/healthz answered {answered_while_all_hung} times while all 200 hung"
        );
        let mut last = opened;
        while let Some(at) = hanging.join_next().await {
            let at = at
                .unwrap()
                .expect("a half-open connection was closed within 40 s");
            last = last.max(at);
        }
        assert!(
            last - opened <= Duration::from_secs(40),
            "{:?}",
            last - opened
        );
        let r = fresh.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_sent_too_slowly_is_cut_off() {
        let (app, sink, _db) = app_with(Backend::Sqlite, |c| {
            c.http.body_timeout = Duration::from_secs(2);
        })
        .await;
        let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
        socket
            .write_all(
                b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                  Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n\
                  email=slow%40example.org",
            )
            .await
            .unwrap();
        let started = Instant::now();
        let at = closed_by_server(socket, started + Duration::from_secs(20))
            .await
            .expect("the slow body was cut off");
        assert!(at - started < Duration::from_secs(20));
        assert_eq!(app.store.mail_queue_depth().await.unwrap(), 0);
        assert!(sink.raw_messages().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_cap_wait_for_a_free_slot() {
        let (app, _sink, _db) = app_with(Backend::Sqlite, |c| {
            c.http.max_connections = 2;
            c.http.header_timeout = Duration::from_secs(2);
        })
        .await;
        // Two silent clients take both slots; the server closes them after the
        // header timeout.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut idle = Vec::new();
        for _ in 0..2 {
            let s = TcpStream::connect(addr(&app)).await.unwrap();
            idle.push(tokio::spawn(closed_by_server(s, deadline)));
        }
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let asked = Instant::now();
        let r = fresh.get(app.url("/healthz")).send().await.unwrap();
        let answered = Instant::now();
        assert_eq!(r.status(), 200);
        let mut first_freed = None::<Instant>;
        for h in idle {
            let at = h.await.unwrap().expect("idle connections are closed");
            first_freed = Some(first_freed.map_or(at, |f| f.min(at)));
        }
        // (The socket that freed the slot is seen closed by another task of this
        // test, a moment after the server closed it: hence the tolerance.)
        assert!(
            answered + Duration::from_millis(250) >= first_freed.unwrap(),
            "a third connection was served only after a slot was freed"
        );
        assert!(
            answered - asked >= Duration::from_millis(1500),
            "it waited for the header timeout of a silent client: {:?}",
            answered - asked
        );
    }

    async fn forwarded_for_counts_over_all_lines_from_trusted_proxies(backend: Backend) {
        let (app, _sink, _db) = app_with(backend, |c| {
            c.rate_limit.per_client_per_minute = 2;
            c.trust_proxy_headers = true;
            c.trusted_proxies = vec![
                IpNetwork::parse("127.0.0.1/32").unwrap(),
                IpNetwork::parse("10.0.0.0/8").unwrap(),
            ];
        })
        .await;
        app.create_topic("wirtschaft", "Wirtschaft").await;
        // The client writes its own X-Forwarded-For line; the outer proxy appends
        // the client's real address on a line of its own, the inner proxy (our
        // peer, 127.0.0.1) appends the outer one's.
        let post = |forged: &'static str, client: &'static str| {
            app.http
                .post(app.url("/subscribe"))
                .header("x-forwarded-for", forged)
                .header("x-forwarded-for", client)
                .header("x-forwarded-for", "10.0.0.2")
                .json(&json!({}))
                .send()
        };
        let first = post("1.1.1.1", "198.51.100.7").await.unwrap();
        assert_eq!(first.status(), 422);
        assert_eq!(post("2.2.2.2", "198.51.100.7").await.unwrap().status(), 422);
        let third = post("3.3.3.3", "198.51.100.7").await.unwrap();
        assert_eq!(
            third.status(),
            429,
            "the same client, whatever it claims for itself"
        );
        assert!(third.headers().contains_key("retry-after"));
        assert_eq!(
            post("3.3.3.3", "198.51.100.8").await.unwrap().status(),
            422,
            "another client has its own limit"
        );
    }

    async fn forwarded_for_from_an_untrusted_peer_is_ignored(backend: Backend) {
        let (app, _sink, _db) = app_with(backend, |c| {
            c.rate_limit.per_client_per_minute = 2;
            c.trust_proxy_headers = true;
            c.trusted_proxies = vec![IpNetwork::parse("10.0.0.0/8").unwrap()];
        })
        .await;
        let post = |claimed: &'static str| {
            app.http
                .post(app.url("/subscribe"))
                .header("x-forwarded-for", claimed)
                .json(&json!({}))
                .send()
        };
        assert_eq!(post("198.51.100.1").await.unwrap().status(), 422);
        assert_eq!(post("198.51.100.2").await.unwrap().status(), 422);
        assert_eq!(
            post("198.51.100.3").await.unwrap().status(),
            429,
            "a client that is no trusted proxy cannot pick its address"
        );
    }

    #[test]
    fn plain_text_smtp_auth_to_a_remote_relay_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_postbote"))
            .current_dir(dir.path())
            .arg("check")
            .env(
                "POSTBOTE_SMTP_URL",
                "smtp://mailer:hunter2-secret@mail.example.org:587",
            )
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run postbote");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("POSTBOTE_SMTP_URL") && err.contains("smtp_url"),
            "{err}"
        );
        assert!(err.contains("plain text"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the password is not repeated: {err}"
        );
        assert!(!dir.path().join("data").exists(), "nothing was created");
    }

    on_both_backends!(
        metrics_need_the_admin_or_the_metrics_token,
        every_response_carries_the_security_headers,
        forwarded_for_counts_over_all_lines_from_trusted_proxies,
        forwarded_for_from_an_untrusted_peer_is_ignored,
    );
}
