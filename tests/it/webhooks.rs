//! Signed webhooks, with the real `postbote serve` and `postbote inbound` on both
//! backends and a receiver on loopback that checks every request the way an
//! integration would: Standard Webhooks' HMAC-SHA256 over `{id}.{timestamp}.{body}`
//! under the decoded `whsec_` secret, written out here from the specification (not
//! with postbote's code), a timestamp no older than five minutes, and a 401 for
//! anything that does not verify. The events come from the real actions: a
//! confirmation link, the one-click unsubscribe, a DSN and a complaint through
//! `postbote inbound`, an erasure through the admin API.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::Mac as _;
use serde_json::Value;

use crate::harness::{
    ADMIN_TOKEN, Backend, RefusedPort, Serve, SmtpSink, TestDb, find_link, form, link_key, parse,
    run_to_end_async, signed_id,
};
use crate::inbound::{fixture, mac};

/// The secret the receivers and `serve` share (32 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";
/// A secret of the same shape that postbote does not know.
const OTHER_SECRET: &str = "whsec_c2VjcmV0LW9mLXNvbWVib2R5LWVsc2UtMzItYnl0ZXM=";
/// Oldest timestamp a receiver accepts, as the specification recommends.
const TOLERANCE_SECS: i64 = 300;

/// `postbote inbound`'s configuration: the return addresses it recognises.
const INBOUND_CONFIG: &str = r#"mail_from = "News <news@example.org>"
bounce_address = "bounces+{id}@bounces.example.org"
unsubscribe_address = "unsubscribe+{id}@bounces.example.org"
"#;

/// One request as a receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// The receiver's check, from the Standard Webhooks specification: every
/// `v1,<base64>` of the space-separated header is a candidate; one must equal the
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` under the base64-decoded secret, and the
/// timestamp must be recent.
fn verify(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let Ok(timestamp) = r.timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - timestamp).abs() > TOLERANCE_SECS {
        return false;
    }
    let mut hmac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    hmac.update(r.id.as_bytes());
    hmac.update(b".");
    hmac.update(r.timestamp.as_bytes());
    hmac.update(b".");
    hmac.update(&r.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac.finalize().into_bytes());
    r.signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// What a receiver has accepted (verified requests only).
type Inbox = Arc<Mutex<Vec<Received>>>;

/// A webhook receiver on loopback: answers 204 to a request that verifies with
/// [`SECRET`], 401 to any other.
pub struct Receiver {
    /// Where `serve` sends (`http://127.0.0.1:<port>/hooks`).
    pub url: String,
    accepted: Inbox,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let r = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
    };
    if !verify(SECRET, &r) {
        return StatusCode::UNAUTHORIZED;
    }
    inbox.lock().unwrap().push(r);
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// A receiver on a loopback port of its own.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener)
    }

    fn on(listener: tokio::net::TcpListener) -> Self {
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let accepted = Inbox::default();
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(accepted.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> Vec<Received> {
        self.accepted.lock().unwrap().clone()
    }

    /// Waits (polling) until at least `n` requests were accepted.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} webhooks, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `[webhooks]` for `serve`, sending to `url`, retrying quickly.
pub fn webhooks_config(url: &str) -> String {
    format!(
        "[webhooks]\nurls = [\"{url}\"]\nsecret = \"{SECRET}\"\npoll_interval_ms = 100\n\
         retry_base_ms = 200\nretry_max_ms = 500\ntimeout_ms = 5000\n"
    )
}

/// A running `serve` with webhooks to `url`, a topic, and its SMTP sink.
struct Setup {
    db: TestDb,
    sink: SmtpSink,
    serve: Serve,
    http: reqwest::Client,
}

impl Setup {
    async fn start(backend: Backend, url: &str) -> Self {
        let db = TestDb::new(backend).await;
        let sink = SmtpSink::start();
        let serve = Serve::start_on_own_port(&db, &sink.url(), &webhooks_config(url)).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        serve.wait_ready(&http).await;
        let r = http
            .post(format!("{}/api/v1/topics", serve.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"slug": "kultur", "name": "Kultur"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        Self {
            db,
            sink,
            serve,
            http,
        }
    }

    /// Signs `emails` up through the form and confirms each through the link in
    /// its mail; returns their ids.
    async fn confirmed_readers(&self, emails: &[&str]) -> Vec<i64> {
        for email in emails {
            let r = self
                .http
                .post(format!("{}/subscribe", self.serve.base))
                .form(&form(email, &["kultur"]))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
        let mails = self.sink.wait_for(emails.len()).await;
        for raw in &mails {
            let text = parse(raw).body_text(0).unwrap().into_owned();
            let link = find_link(&text, "confirm").expect("a confirmation link");
            let r = self.http.post(&link).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
        let store = self.db.store().await;
        let mut ids = Vec::new();
        for email in emails {
            ids.push(store.subscriber_id(email).await.unwrap().expect("stored"));
        }
        ids
    }

    /// A console page, signed in with the admin token.
    async fn console(&self, path: &str) -> String {
        let r = self
            .http
            .post(format!("{}/admin/login", self.serve.base))
            .form(&[("token", ADMIN_TOKEN)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let r = self
            .http
            .get(format!("{}{path}", self.serve.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// `postbote inbound` with a fixture, its placeholders filled in.
    async fn inbound(&self, name: &str, values: &[(&str, &str)]) {
        let config = self.db.dir.path().join("inbound.toml");
        std::fs::write(&config, INBOUND_CONFIG).unwrap();
        let out = run_to_end_async(
            Command::new(env!("CARGO_BIN_EXE_postbote"))
                .arg("inbound")
                .arg("--config")
                .arg(&config)
                .env("POSTBOTE_DATABASE_URL", &self.db.url)
                .env("POSTBOTE_DATA_DIR", self.db.dir.path().join("data"))
                .env_remove("POSTBOTE_CONFIG"),
            Some(fixture(name, values)),
        )
        .await;
        assert!(out.status.success(), "{out:?}");
    }
}

/// `(type, email)` of each request, sorted.
fn events(received: &[Received]) -> Vec<(String, String)> {
    let mut events: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let body = r.json();
            (
                body["type"].as_str().unwrap().to_owned(),
                body["data"]["email"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    events.sort();
    events
}

async fn each_event_reaches_the_receiver_signed_after_the_real_action(backend: Backend) {
    let receiver = Receiver::start().await;
    let s = Setup::start(backend, &receiver.url).await;
    let emails = [
        "anna@example.com",
        "bert@example.com",
        "cora@example.com",
        "dora@example.com",
    ];
    let ids = s.confirmed_readers(&emails).await;
    let key = link_key(&s.db).await;

    // Anna leaves through the one-click unsubscribe link of her mails.
    let token = format!(
        "{}.{}",
        ids[0],
        mac(&key, &[b"postbote-manage:", &ids[0].to_be_bytes()])
    );
    let r = s
        .http
        .post(format!("{}/unsubscribe/{token}", s.serve.base))
        .form(&[("List-Unsubscribe", "One-Click")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // Bert's mailbox does not exist: a DSN to his VERP address.
    let verp = |id: i64| format!("bounces+{}@bounces.example.org", signed_id(&key, id));
    s.inbound(
        "postfix_hard.eml",
        &[("ADDRESS", emails[1]), ("VERP", &verp(ids[1]))],
    )
    .await;
    // Cora marks a digest as spam: the provider's feedback report.
    let unsubscribe = format!(
        "unsubscribe+{}@bounces.example.org",
        signed_id(&key, ids[2])
    );
    s.inbound(
        "arf_full.eml",
        &[
            ("ADDRESS", emails[2]),
            ("VERP", &verp(ids[2])),
            ("UNSUBSCRIBE", &unsubscribe),
        ],
    )
    .await;
    // Dora asks to be forgotten.
    let r = s
        .http
        .delete(format!("{}/api/v1/subscribers/{}", s.serve.base, emails[3]))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let received = receiver.wait_for(8).await;
    let mut expected: Vec<(String, String)> = emails
        .iter()
        .map(|e| ("subscriber.confirmed".to_owned(), (*e).to_owned()))
        .collect();
    expected.extend([
        ("subscriber.unsubscribed".to_owned(), emails[0].to_owned()),
        ("subscriber.bounced".to_owned(), emails[1].to_owned()),
        ("subscriber.complained".to_owned(), emails[2].to_owned()),
        ("subscriber.erased".to_owned(), emails[3].to_owned()),
    ]);
    expected.sort();
    assert_eq!(events(&received), expected);
    for r in &received {
        assert!(r.id.starts_with("msg_"), "{r:?}");
        let body = r.json();
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
        assert!(body["data"]["subscriber_id"].is_i64(), "{body}");
    }
    let bounced = received
        .iter()
        .find(|r| r.json()["type"] == "subscriber.bounced")
        .unwrap();
    assert_eq!(bounced.json()["data"]["mail_event"], "hard_bounce");
    let ids: std::collections::HashSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 8, "every event has its own webhook-id");

    // Delivered once each, recorded, and the payload (with the address) dropped.
    let store = s.db.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = store.recent_webhook_deliveries(50).await.unwrap();
        if rows.len() == 8 && rows.iter().all(|d| d.status == "delivered") {
            assert!(
                rows.iter()
                    .all(|d| d.attempts == 1 && d.last_status == Some(204))
            );
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The console lists them.
    let html = s.console("/admin/webhooks").await;
    assert!(
        html.contains("subscriber.erased") && html.contains("delivered"),
        "{html}"
    );
    assert!(!html.contains(emails[3]), "the page shows no address");

    let left =
        s.db.text_rows(
            "SELECT payload FROM webhook_deliveries WHERE payload IS NOT NULL",
            &[],
        )
        .await;
    assert!(left.is_empty(), "{left:?}");
}

async fn a_receiver_that_is_down_gets_the_events_once_it_is_up(backend: Backend) {
    let down = RefusedPort::new();
    let url = format!("http://127.0.0.1:{}/hooks", down.port);
    let s = Setup::start(backend, &url).await;
    s.confirmed_readers(&["eva@example.com"]).await;

    // Attempts fail (connection refused) and are recorded for the console…
    let store = s.db.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let rows = store.recent_webhook_deliveries(10).await.unwrap();
        if let Some(d) = rows.first().filter(|d| d.attempts >= 2) {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.status, "queued");
    assert!(first.last_error.is_some(), "{first:?}");
    assert_eq!(first.last_status, None);

    // …and the event arrives once the receiver listens on that port.
    let receiver = Receiver::on(down.listen());
    let received = receiver.wait_for(1).await;
    assert_eq!(
        events(&received),
        [(
            "subscriber.confirmed".to_owned(),
            "eva@example.com".to_owned()
        )]
    );
    assert_eq!(
        received[0].id, first.message_id,
        "the same webhook-id on every attempt"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.recent_webhook_deliveries(10).await.unwrap()[0].status != "delivered" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_forged_signature_is_what_the_receiver_rejects(backend: Backend) {
    let receiver = Receiver::start().await;
    let s = Setup::start(backend, &receiver.url).await;
    s.confirmed_readers(&["fritz@example.com"]).await;
    let genuine = receiver.wait_for(1).await.remove(0);
    assert!(verify(SECRET, &genuine));

    // Under another secret, with the body, id or timestamp altered, or with no v1
    // signature, the same request does not verify.
    let altered_body = String::from_utf8(genuine.body.clone())
        .unwrap()
        .replace("fritz@", "mallory@");
    let forgeries = [
        (OTHER_SECRET, genuine.clone()),
        (
            SECRET,
            Received {
                body: altered_body.into_bytes(),
                ..genuine.clone()
            },
        ),
        (
            SECRET,
            Received {
                id: "msg_forged".into(),
                ..genuine.clone()
            },
        ),
        (
            SECRET,
            Received {
                timestamp: (genuine.timestamp.parse::<i64>().unwrap() + 1).to_string(),
                ..genuine.clone()
            },
        ),
        (
            SECRET,
            Received {
                signature: genuine.signature.replacen("v1,", "v2,", 1),
                ..genuine.clone()
            },
        ),
    ];
    for (secret, forged) in &forgeries {
        assert!(!verify(secret, forged), "{forged:?}");
    }
    // Sent to the receiver, every forgery is refused and nothing is accepted.
    for (_, forged) in forgeries.iter().skip(1) {
        let r = s
            .http
            .post(&receiver.url)
            .header("webhook-id", &forged.id)
            .header("webhook-timestamp", &forged.timestamp)
            .header("webhook-signature", &forged.signature)
            .body(forged.body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(receiver.accepted().len(), 1);
}

on_both_backends!(
    each_event_reaches_the_receiver_signed_after_the_real_action,
    a_receiver_that_is_down_gets_the_events_once_it_is_up,
    a_forged_signature_is_what_the_receiver_rejects,
);
