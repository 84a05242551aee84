//! SMTP over TLS to a real relay: a private Postfix on loopback with a certificate
//! from a CA made for the test by `openssl`, offering STARTTLS on one port and
//! implicit TLS (`smtpd_tls_wrappermode`) on another, and passing every message on
//! to Postfix's `smtp-sink` within the same session (a before-queue proxy filter:
//! the relay says 250 only once the sink has the message, and queues nothing).
//!
//! What it shows: `serve` delivers confirmations and digests over both schemes
//! with the relay's CA named in `smtp_url` (`ca=`); without it the certificate is
//! refused, the mail stays queued at no cost of an attempt, and arrives once the CA
//! is trusted; and one worker sends hundreds of mails over ONE TLS session. How fast
//! is the benchmark's matter (`scripts/bench tls`), not a test's.
//!
//! Needs root (Postfix's master), Postfix and openssl (Debian packages `postfix`,
//! `openssl`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN_TOKEN, Backend, Serve, SmtpSink, TestApp, TestDb, drained, find_link, parse, recipient,
    test_config,
};
use crate::postfix_bounce::{Postfix, assert_root, master_cf, postfix_dir};

/// How postbote reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `smtp://…?tls=required`: plain until `STARTTLS`.
    StartTls,
    /// `smtps://…`: TLS from the first byte.
    Implicit,
}

/// The private Postfix that takes mail over TLS, and the sink behind it.
struct TlsRelay {
    /// The relay; its first port offers STARTTLS, its second implicit TLS.
    postfix: Postfix,
    /// Where the relay hands every message.
    sink: SmtpSink,
    /// The PEM of the CA that signed the relay's certificate.
    ca_file: PathBuf,
}

/// Runs `openssl` with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: cannot run it ({e}); Debian package openssl"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and the relay's key and certificate for 127.0.0.1 signed by it
/// (`relay.key`, `relay.pem`), as an operator of a relay of their own would make
/// them. A self-signed end certificate would not do: it is a CA certificate, which
/// certificate verification refuses as a server's.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca: Vec<&str> = [
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=postbote test CA",
    ]
    .into_iter()
    .chain(ec)
    .chain(["-keyout", "ca.key", "-out", "ca.pem"])
    .collect();
    openssl(dir, &ca);
    let request: Vec<&str> = ["req", "-subj", "/CN=127.0.0.1"]
        .into_iter()
        .chain(ec)
        .chain(["-keyout", "relay.key", "-out", "relay.csr"])
        .collect();
    openssl(dir, &request);
    std::fs::write(
        dir.join("relay.ext"),
        "basicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "relay.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "relay.ext",
            "-out",
            "relay.pem",
        ],
    );
}

impl TlsRelay {
    fn start() -> Self {
        assert_root();
        let sink = SmtpSink::start();
        let dir = postfix_dir();
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        make_certificates(&tls);
        let d = dir.path().display();
        let main_cf = format!(
            "myhostname = relay.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
alias_maps =
alias_database =
smtpd_peername_lookup = no
biff = no
smtpd_tls_cert_file = {d}/tls/relay.pem
smtpd_tls_key_file = {d}/tls/relay.key
smtpd_tls_security_level = may
# One log line per TLS session: the tests count them.
smtpd_tls_loglevel = 1
# Every message goes on to smtp-sink while the client waits; nothing is queued.
smtpd_proxy_filter = 127.0.0.1:{sink}
",
            sink = sink.port
        );
        let postfix = Postfix::launch(dir, &main_cf, 2, |ports| {
            format!(
                "{}127.0.0.1:{} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
tlsmgr     unix  - - n 1000? 1 tlsmgr
",
                master_cf(ports[0], "/bin/false"),
                ports[1]
            )
        });
        let ca_file = postfix.dir().join("tls/ca.pem");
        Self {
            postfix,
            sink,
            ca_file,
        }
    }

    /// `smtp_url` for `scheme`, with the relay's CA named when `trusted`.
    fn url(&self, scheme: Scheme, trusted: bool) -> String {
        let ca = format!("ca={}", self.ca_file.display());
        match (scheme, trusted) {
            (Scheme::StartTls, true) => {
                format!(
                    "smtp://127.0.0.1:{}?tls=required&{ca}",
                    self.postfix.ports[0]
                )
            }
            (Scheme::StartTls, false) => {
                format!("smtp://127.0.0.1:{}?tls=required", self.postfix.ports[0])
            }
            (Scheme::Implicit, true) => format!("smtps://127.0.0.1:{}?{ca}", self.postfix.ports[1]),
            (Scheme::Implicit, false) => format!("smtps://127.0.0.1:{}", self.postfix.ports[1]),
        }
    }

    /// TLS sessions the relay has established so far.
    fn tls_sessions(&self) -> usize {
        self.postfix.log_lines(&["TLS connection established from"])
    }

    /// TLS handshakes the relay saw fail so far.
    fn failed_handshakes(&self) -> usize {
        self.postfix.log_lines(&["SSL_accept error"])
    }
}

/// The relay's own trace in a message: Postfix writes "with ESMTPS" in the
/// `Received:` header it adds when the message came over TLS (smtp-sink adds
/// its own above it).
fn came_over_tls(raw: &[u8]) -> bool {
    String::from_utf8_lossy(raw)
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .any(|l| {
            l.trim_start()
                .starts_with("by relay.test (Postfix) with ESMTPS")
        })
}

async fn admin_post(
    http: &reqwest::Client,
    serve: &Serve,
    path: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    http.post(format!("{}/api/v1{path}", serve.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin request")
}

/// `postbote serve` signs a reader up (confirmation mail), the reader confirms,
/// and a digest pass sends them a digest: both mails reach the sink through the
/// relay over TLS.
async fn serve_delivers_a_confirmation_and_a_digest_over(scheme: Scheme) {
    let relay = TlsRelay::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let serve = Serve::start_on_own_port(&db, &relay.url(scheme, true), "").await;
    let http = reqwest::Client::new();
    serve.wait_ready(&http).await;
    let r = admin_post(
        &http,
        &serve,
        "/topics",
        serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}),
    )
    .await;
    assert_eq!(r.status(), 201);

    let reader = "leserin@example.org";
    let r = http
        .post(format!("{}/subscribe", serve.base))
        .json(&serde_json::json!({"email": reader, "topics": ["wirtschaft"], "consent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mails = relay.sink.wait_for(1).await;
    assert!(
        came_over_tls(&mails[0]),
        "{}",
        String::from_utf8_lossy(&mails[0])
    );
    assert_eq!(recipient(&mails[0]), reader);
    let link = find_link(&parse(&mails[0]).body_text(0).unwrap(), "confirm")
        .expect("the confirmation link");
    assert_eq!(http.post(&link).send().await.unwrap().status(), 200);

    let r = admin_post(
        &http,
        &serve,
        "/items",
        serde_json::json!({"topics": ["wirtschaft"], "title": "Quartalszahlen über TLS"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let at = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let pass = serve.run_pass(&http, &at).await;
    assert_eq!(pass["enqueued"], 1, "{pass}");
    let mails = relay.sink.wait_for(2).await;
    let digest = mails
        .iter()
        .find(|m| String::from_utf8_lossy(m).contains("List-Unsubscribe-Post"))
        .expect("the digest");
    assert!(came_over_tls(digest), "{}", String::from_utf8_lossy(digest));
    assert!(relay.tls_sessions() >= 1, "{}", relay.postfix.maillog());
    assert_eq!(relay.failed_handshakes(), 0, "{}", relay.postfix.maillog());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_delivers_a_confirmation_and_a_digest_over_starttls() {
    serve_delivers_a_confirmation_and_a_digest_over(Scheme::StartTls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_delivers_a_confirmation_and_a_digest_over_implicit_tls() {
    serve_delivers_a_confirmation_and_a_digest_over(Scheme::Implicit).await;
}

/// Without `ca=` the relay's certificate chains to no trusted root: postbote
/// refuses it, sends nothing in clear, and the mail waits as for a relay that is
/// down, without losing an attempt. Named, the same relay gets it, once.
async fn an_untrusted_certificate_is_refused_and_the_mail_waits_for_a_trusted_one(scheme: Scheme) {
    let relay = TlsRelay::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(test_config(&db, &relay.url(scheme, false))).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    let reader = "vorsichtig@example.org";
    let r = app
        .sign_up_json(
            serde_json::json!({"email": reader, "topics": ["wirtschaft"], "consent": true}),
        )
        .await;
    assert_eq!(r.status(), 202);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let export = app.export(reader).await.unwrap();
        let d = &export["deliveries"][0];
        // The relay counts as down: each try is given back with its attempt not
        // counted. A retry in flight shows 1 for a moment (claimed, the previous
        // error still on the row); a counted attempt would climb past it.
        assert!(
            d["attempts"].as_i64() <= Some(1),
            "an attempt was counted: {d}"
        );
        if d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate"))
            && d["attempts"] == 0
        {
            assert_eq!(d["status"], "queued", "{d}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refused certificate seen: {d}\n{}",
            relay.postfix.maillog()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay.tls_sessions(), 0, "{}", relay.postfix.maillog());
    assert!(
        relay.sink.raw_messages().is_empty(),
        "nothing reached the sink"
    );
    app.stop().await;

    // The same database, the relay's CA named: the waiting mail goes out, once.
    let app = TestApp::spawn(test_config(&db, &relay.url(scheme, true))).await;
    let export = app.wait_delivered(reader).await;
    assert_eq!(export["deliveries"][0]["status"], "sent", "{export}");
    let mails = relay.sink.wait_for(1).await;
    assert_eq!(mails.len(), 1);
    assert!(came_over_tls(&mails[0]));
    assert_eq!(recipient(&mails[0]), reader);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_over_starttls_and_the_mail_waits() {
    an_untrusted_certificate_is_refused_and_the_mail_waits_for_a_trusted_one(Scheme::StartTls)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_over_implicit_tls_and_the_mail_waits() {
    an_untrusted_certificate_is_refused_and_the_mail_waits_for_a_trusted_one(Scheme::Implicit)
        .await;
}

/// How many mails one connection carries in the session test.
const SESSION_MAILS: usize = 300;

/// An import queues 300 confirmation mails; then one worker sends them all over
/// one TLS session, each arriving whole and once.
async fn one_worker_sends_hundreds_of_mails_over_one_tls_session(scheme: Scheme) {
    let relay = TlsRelay::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    store
        .upsert_topic(
            &postbote::domain::TopicSlug::parse("wirtschaft").unwrap(),
            "Wirtschaft",
            None,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let readers: Vec<String> = (0..SESSION_MAILS)
        .map(|i| format!("leser{i:03}@example.org"))
        .collect();
    let csv = db.dir.path().join("readers.csv");
    let rows: String = readers
        .iter()
        .map(|r| format!("{r},wirtschaft\n"))
        .collect();
    std::fs::write(&csv, format!("email,topics\n{rows}")).unwrap();
    let out = crate::harness::run_to_end_async(
        Command::new(env!("CARGO_BIN_EXE_postbote"))
            .args(["import", "--send-confirmation"])
            .arg(&csv)
            .env("POSTBOTE_DATABASE_URL", &db.url)
            .env("POSTBOTE_DATA_DIR", db.dir.path().join("data")),
        None,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        store.mail_queue_depth().await.unwrap(),
        SESSION_MAILS as i64
    );

    let mut config = test_config(&db, &relay.url(scheme, true));
    config.delivery.workers = 1;
    let app = TestApp::spawn(config).await;
    drained(&app).await;
    let mails = relay.sink.wait_for(SESSION_MAILS).await;
    let mut got: Vec<String> = mails.iter().map(|m| recipient(m)).collect();
    got.sort();
    assert_eq!(got, readers, "each reader's confirmation, once");
    assert!(mails.iter().all(|m| came_over_tls(m)));
    assert_eq!(
        relay.tls_sessions(),
        1,
        "one session carried them all:\n{}",
        relay.postfix.maillog()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_sends_hundreds_of_mails_over_one_starttls_session() {
    one_worker_sends_hundreds_of_mails_over_one_tls_session(Scheme::StartTls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_sends_hundreds_of_mails_over_one_implicit_tls_session() {
    one_worker_sends_hundreds_of_mails_over_one_tls_session(Scheme::Implicit).await;
}
