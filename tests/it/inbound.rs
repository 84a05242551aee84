//! `postbote inbound` as an MTA's pipe transport runs it: one message on stdin, the
//! real binary, on both backends. The messages are hand-written in the shape Postfix,
//! Exim, Exchange Online and feedback-loop senders give them
//! (`tests/fixtures/inbound/`); `{{ADDRESS}}` (the reader), `{{VERP}}` (the envelope
//! sender postbote used), `{{FORWARD}}` and `{{UNSUBSCRIBE}}` are filled in per test.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{Backend, TestDb, free_port};
use chrono::Utc;
use postbote::config::Config;
use postbote::domain::{DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, Weekdays};
use postbote::store::{ImportedSubscriber, Store};

/// The address DSNs reach when the envelope sender was no VERP address (or an MTA
/// ignored it): it matches no reader by itself.
const PLAIN_BOUNCE: &str = "bounces@bounces.example.org";

const CONFIG: &str = r#"mail_from = "Presse Newsletter <news@example.org>"
public_url = "https://news.example.org"
bounce_address = "bounces+{id}@bounces.example.org"
unsubscribe_address = "unsubscribe+{id}@bounces.example.org"

[bounces]
soft_threshold = 2
soft_window_days = 14
"#;

/// A migrated database with readers, the config file the binary reads, and the
/// installation's link key, with which the tests sign return addresses and tokens
/// themselves (written out below from the documented scheme, not with the code
/// that verifies them, so a change of scheme on either side fails here).
struct Inbox {
    db: TestDb,
    store: Store,
    key: Vec<u8>,
    config: PathBuf,
}

/// HMAC-SHA256 under the link key, cut to 128 bits, as hex.
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one run of `postbote inbound` did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Inbox {
    async fn new(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let config_path = db.dir.path().join("postbote.toml");
        std::fs::write(&config_path, CONFIG).unwrap();
        let env: HashMap<String, String> = [
            ("POSTBOTE_DATABASE_URL".to_owned(), db.url.clone()),
            ("POSTBOTE_DATA_DIR".to_owned(), data_dir(&db)),
        ]
        .into();
        Config::from_sources(Some(&config_path), &env).expect("test config");
        // The key is made on first use and kept in `settings`.
        store.link_key().await.expect("link key");
        let key: String = match backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                sqlx::query_scalar("SELECT value FROM settings WHERE key = 'link_key'")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query_scalar("SELECT value FROM settings WHERE key = 'link_key'")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        Self {
            db,
            store,
            key: key.into_bytes(),
            config: config_path,
        }
    }

    /// A confirmed reader, stored as an import stores them.
    async fn reader(&self, email: &str) -> i64 {
        let now = Utc::now();
        let reader = ImportedSubscriber {
            email: EmailAddress::parse(email).unwrap(),
            topics: Vec::new(),
            schedule: DeliverySchedule {
                time: DeliveryTime::parse("07:00").unwrap(),
                timezone: TimeZone::parse("Europe/Berlin").unwrap(),
                weekdays: Weekdays::EVERY_DAY,
            },
            locale: Locale::parse("de").unwrap(),
            consent_at: now,
            consent_ip: Some("192.0.2.1".into()),
            source: "tests".into(),
        };
        self.store
            .import_confirmed(&reader, now, chrono::Duration::hours(24))
            .await
            .unwrap()
            .expect("a new reader")
    }

    /// `<id>-<MAC>`: the signed part of a reader's return addresses (64 bits of
    /// HMAC-SHA256 over "verp:<id>").
    fn verp_id(&self, id: i64) -> String {
        let mac = mac(&self.key, &[b"verp", b":", id.to_string().as_bytes()]);
        format!("{id}-{}", &mac[..16])
    }

    /// The envelope sender of mail to the reader.
    fn verp(&self, id: i64) -> String {
        format!("bounces+{}@bounces.example.org", self.verp_id(id))
    }

    /// `<id>.<MAC>`: the token of the reader's unsubscribe and preferences links.
    fn manage_token(&self, id: i64) -> String {
        format!(
            "{id}.{}",
            mac(&self.key, &[b"postbote-manage:", &id.to_be_bytes()])
        )
    }

    /// The `mailto:` unsubscribe address in the reader's `List-Unsubscribe`.
    fn unsubscribe_address(&self, id: i64) -> String {
        format!("unsubscribe+{}@bounces.example.org", self.verp_id(id))
    }

    async fn status(&self, email: &str) -> String {
        self.export(email).await.status.to_string()
    }

    /// `(kind, detail)` of the reader's recorded mail events, oldest first.
    async fn events(&self, email: &str) -> Vec<(String, String)> {
        self.export(email)
            .await
            .mail_events
            .into_iter()
            .map(|e| (e.kind.to_string(), e.detail))
            .collect()
    }

    async fn export(&self, email: &str) -> postbote::store::SubscriberExport {
        self.store
            .export_subscriber(&EmailAddress::parse(email).unwrap())
            .await
            .unwrap()
            .expect("the reader is stored")
    }

    async fn suppressed(&self, email: &str) -> bool {
        self.store.is_suppressed(email).await.unwrap()
    }

    /// `postbote inbound` on this database.
    async fn run(&self, message: Vec<u8>, recipient: Option<&str>) -> Run {
        self.run_on(&self.db.url.clone(), message, recipient).await
    }

    /// `postbote inbound` with `POSTBOTE_DATABASE_URL` set to `database_url`.
    async fn run_on(&self, database_url: &str, message: Vec<u8>, recipient: Option<&str>) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_postbote"));
        command
            .arg("inbound")
            .arg("--config")
            .arg(&self.config)
            .env("POSTBOTE_DATABASE_URL", database_url)
            .env("POSTBOTE_DATA_DIR", data_dir(&self.db))
            .env_remove("POSTBOTE_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(r) = recipient {
            command.args(["--recipient", r]);
        }
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("start postbote inbound");
            // Dropping stdin after the write is the end of the message.
            child
                .stdin
                .take()
                .unwrap()
                .write_all(&message)
                .expect("hand the message over");
            let out = child.wait_with_output().expect("postbote inbound");
            Run {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .unwrap()
    }
}

fn data_dir(db: &TestDb) -> String {
    db.dir.path().join("data").display().to_string()
}

/// A fixture with its `{{NAME}}` placeholders filled in; every placeholder must be.
pub(crate) fn fixture(name: &str, values: &[(&str, &str)]) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inbound")
        .join(name);
    let mut text = std::fs::read_to_string(&path).expect("fixture");
    for (placeholder, value) in values {
        text = text.replace(&format!("{{{{{placeholder}}}}}"), value);
    }
    assert!(
        !text.contains("{{"),
        "{name}: a placeholder is not filled in"
    );
    text.into_bytes()
}

fn assert_handled(run: &Run, event: &str) {
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with(event), "expected {event}: {run:?}");
}

fn assert_ignored(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.starts_with("ignored"),
        "expected ignored: {run:?}"
    );
}

async fn a_postfix_hard_bounce_to_the_verp_address_marks_the_reader_bounced_and_suppresses_the_address(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    inbox.reader("nachbar@example.com").await;

    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "leser@example.com"), ("VERP", &inbox.verp(id))],
    );
    assert_handled(&inbox.run(dsn, None).await, "hard_bounce");

    assert_eq!(inbox.status("leser@example.com").await, "bounced");
    assert!(inbox.suppressed("leser@example.com").await);
    let events = inbox.events("leser@example.com").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "hard_bounce");
    assert!(events[0].1.contains("5.1.1"), "{events:?}");
    // Nobody else is touched.
    assert_eq!(inbox.status("nachbar@example.com").await, "confirmed");
    assert!(!inbox.suppressed("nachbar@example.com").await);
}

async fn a_forged_dsn_to_a_plain_address_of_the_bounce_domain_changes_nobody(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    inbox.reader("leser@example.com").await;

    // Anybody can write this report: nothing in it was signed by postbote.
    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "leser@example.com"), ("VERP", PLAIN_BOUNCE)],
    );
    for to in [None, Some(PLAIN_BOUNCE), Some("fbl@bounces.example.org")] {
        let run = inbox.run(dsn.clone(), to).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.starts_with("unverified"), "{run:?}");
    }

    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert!(!inbox.suppressed("leser@example.com").await);
    // Recorded for the operator to see, as unverified.
    let events = inbox.events("leser@example.com").await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|(kind, detail)| kind == "unverified_report"
                && detail.starts_with("hard_bounce")
                && detail.contains("5.1.1")),
        "{events:?}"
    );
    let stats = inbox.store.stats().await.unwrap();
    assert_eq!(stats.mail_events.get("unverified_report"), Some(&3));
    assert_eq!(stats.mail_events.get("hard_bounce"), None);
}

async fn a_dsn_to_the_attackers_own_verp_address_naming_a_victim_bounces_only_the_attacker(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let attacker = inbox.reader("angreifer@example.net").await;
    inbox.reader("opfer@example.com").await;
    let verp = inbox.verp(attacker);

    // A genuine VERP address (the attacker's own) and the victim as the failed
    // recipient, in the report and in the returned original.
    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "opfer@example.com"), ("VERP", &verp)],
    );
    assert_handled(&inbox.run(dsn, Some(&verp)).await, "hard_bounce");

    assert_eq!(inbox.status("opfer@example.com").await, "confirmed");
    assert!(!inbox.suppressed("opfer@example.com").await);
    assert!(inbox.events("opfer@example.com").await.is_empty());
    // The only reader the signed address names is the one who forged it.
    assert_eq!(inbox.status("angreifer@example.net").await, "bounced");
    let events = inbox.events("angreifer@example.net").await;
    assert!(events[0].1.contains("names another reader"), "{events:?}");
}

async fn an_arf_report_to_the_attackers_verp_address_with_the_victim_in_the_attached_to_spares_the_victim(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let attacker = inbox.reader("angreifer@example.net").await;
    inbox.reader("opfer@mail.example.net").await;
    let verp = inbox.verp(attacker);

    let report = fixture(
        "arf_headers.eml",
        &[("ADDRESS", "opfer@mail.example.net"), ("VERP", &verp)],
    );
    assert_handled(&inbox.run(report, Some(&verp)).await, "complaint");

    assert_eq!(inbox.status("opfer@mail.example.net").await, "confirmed");
    assert!(!inbox.suppressed("opfer@mail.example.net").await);
    assert!(inbox.events("opfer@mail.example.net").await.is_empty());
    assert_eq!(inbox.status("angreifer@example.net").await, "unsubscribed");
}

/// An ARF report of a feedback loop (sent to a fixed address, the original
/// envelope sender not kept) with the returned headers of our digest: only the
/// signed `List-Unsubscribe` token names the reader.
fn fbl_report(to: &str, unsubscribe_url: &str) -> Vec<u8> {
    let report = String::from_utf8(fixture(
        "arf_headers.eml",
        &[("ADDRESS", to), ("VERP", "newsletter@example.org")],
    ))
    .unwrap();
    let fake = "https://news.example.org/unsubscribe/7.4b1f0c2e9d8a7b6c5d4e3f2a1b0c9d8e";
    assert!(report.contains(fake));
    report.replace(fake, unsubscribe_url).into_bytes()
}

fn unsubscribe_url(inbox: &Inbox, id: i64) -> String {
    format!(
        "https://news.example.org/unsubscribe/{}",
        inbox.manage_token(id)
    )
}

async fn an_arf_report_to_a_plain_address_carrying_our_signed_list_unsubscribe_unsubscribes_that_reader(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@mail.example.net").await;
    inbox.reader("nachbar@mail.example.net").await;

    // The recipient is redacted, as Yahoo and Microsoft do.
    let report = fbl_report("redacted@mail.example.net", &unsubscribe_url(&inbox, id));
    assert_handled(
        &inbox.run(report, Some("fbl@bounces.example.org")).await,
        "complaint",
    );
    assert_eq!(inbox.status("leser@mail.example.net").await, "unsubscribed");
    assert!(inbox.suppressed("leser@mail.example.net").await);
    assert_eq!(inbox.status("nachbar@mail.example.net").await, "confirmed");

    // The same report with a token whose MAC is made up, naming the neighbour in
    // the returned To: changes nobody.
    let neighbour = inbox
        .store
        .subscriber_id("nachbar@mail.example.net")
        .await
        .unwrap()
        .unwrap();
    let forged = format!(
        "https://news.example.org/unsubscribe/{neighbour}.{}",
        "ab".repeat(16)
    );
    let report = fbl_report("nachbar@mail.example.net", &forged);
    let run = inbox.run(report, Some("fbl@bounces.example.org")).await;
    assert!(run.stdout.starts_with("unverified"), "{run:?}");
    assert_eq!(inbox.status("nachbar@mail.example.net").await, "confirmed");
    assert!(!inbox.suppressed("nachbar@mail.example.net").await);
}

async fn a_signed_token_inside_wins_over_the_verp_address_only_when_it_verifies(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let verp_reader = inbox.reader("verp@mail.example.net").await;
    let token_reader = inbox.reader("token@mail.example.net").await;
    let verp = inbox.verp(verp_reader);

    // A made-up token for the other reader: the VERP reader is the one.
    let forged = format!(
        "https://news.example.org/unsubscribe/{token_reader}.{}",
        "cd".repeat(16)
    );
    let report = fbl_report("token@mail.example.net", &forged);
    assert_handled(&inbox.run(report, Some(&verp)).await, "complaint");
    assert_eq!(inbox.status("verp@mail.example.net").await, "unsubscribed");
    assert_eq!(inbox.status("token@mail.example.net").await, "confirmed");

    // A genuine token: the returned mail was the other reader's.
    let report = fbl_report(
        "token@mail.example.net",
        &unsubscribe_url(&inbox, token_reader),
    );
    assert_handled(&inbox.run(report, Some(&verp)).await, "complaint");
    assert_eq!(inbox.status("token@mail.example.net").await, "unsubscribed");
}

async fn an_exim_bounce_for_a_forwarded_address_finds_the_reader_by_the_verp_envelope_recipient(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let verp = inbox.verp(id);

    // The reader's mail was forwarded; the DSN names only the forwarding target,
    // which postbote never heard of. The pipe transport passes the envelope
    // recipient, and the message carries no delivery headers of its own.
    let dsn = fixture(
        "exim_hard.eml",
        &[
            ("ADDRESS", "leser@example.com"),
            ("FORWARD", "l.leser@mail.example.net"),
            ("VERP", &verp),
        ],
    );
    // Without the envelope recipient only the returned original's To: names the
    // reader: no evidence, so it is recorded as unverified and changes nothing.
    let run = inbox.run(dsn.clone(), None).await;
    assert!(run.stdout.starts_with("unverified"), "{run:?}");
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");

    assert_handled(&inbox.run(dsn, Some(&verp)).await, "hard_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "bounced");
    assert!(inbox.suppressed("leser@example.com").await);
    let events = inbox.events("leser@example.com").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "unverified_report");
    assert_eq!(events[1].0, "hard_bounce");
    assert!(events[1].1.contains("5.0.0"), "{events:?}");
}

async fn an_exchange_bounce_with_no_verp_address_is_recorded_as_unverified_and_changes_nobody(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    inbox.reader("leser@contoso.com").await;

    // Final-Recipient is the tenant's internal routing address; only
    // Original-Recipient names the reader, and that is no evidence.
    let ndr = fixture(
        "exchange_hard.eml",
        &[("ADDRESS", "leser@contoso.com"), ("VERP", PLAIN_BOUNCE)],
    );
    let run = inbox.run(ndr, None).await;
    assert!(run.stdout.starts_with("unverified"), "{run:?}");

    assert_eq!(inbox.status("leser@contoso.com").await, "confirmed");
    assert!(!inbox.suppressed("leser@contoso.com").await);
    let events = inbox.events("leser@contoso.com").await;
    assert_eq!(events[0].0, "unverified_report", "{events:?}");
    assert!(events[0].1.contains("5.1.10"), "{events:?}");
}

async fn delay_warnings_are_soft_bounces_counted_once_per_message_and_the_second_message_within_the_window_marks_the_reader_bounced(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    // A warning about one of our mails, named by its Message-ID.
    let warning = |message: &str| {
        String::from_utf8(fixture(
            "delayed.eml",
            &[("ADDRESS", "leser@example.com"), ("VERP", &inbox.verp(id))],
        ))
        .unwrap()
        .replace("3f9a1c27e4b05d8812aa09c1d7e6f340", message)
        .into_bytes()
    };

    assert_handled(&inbox.run(warning("digest-1"), None).await, "soft_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert!(!inbox.suppressed("leser@example.com").await);
    // The MTA warns again about the same message: still one soft bounce.
    assert_handled(&inbox.run(warning("digest-1"), None).await, "soft_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");

    // soft_threshold = 2: a second message with trouble condemns the address.
    assert_handled(&inbox.run(warning("digest-2"), None).await, "soft_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "bounced");
    assert!(inbox.suppressed("leser@example.com").await);
    let kinds: Vec<String> = inbox
        .events("leser@example.com")
        .await
        .into_iter()
        .map(|(kind, detail)| {
            assert!(detail.contains("4.4.1"), "{detail}");
            kind
        })
        .collect();
    assert_eq!(kinds, ["soft_bounce", "soft_bounce", "soft_bounce"]);
}

async fn a_5_7_1_policy_rejection_is_recorded_but_leaves_the_reader_subscribed(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@gmail.example").await;

    let dsn = fixture(
        "policy_571.eml",
        &[
            ("ADDRESS", "leser@gmail.example"),
            ("VERP", &inbox.verp(id)),
        ],
    );
    assert_handled(&inbox.run(dsn, None).await, "policy_bounce");

    assert_eq!(inbox.status("leser@gmail.example").await, "confirmed");
    assert!(!inbox.suppressed("leser@gmail.example").await);
    let events = inbox.events("leser@gmail.example").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "policy_bounce");
    assert!(events[0].1.contains("5.7.1"), "{events:?}");
}

async fn an_arf_complaint_with_the_original_headers_unsubscribes_and_suppresses_the_reader(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@mail.example.net").await;
    inbox.reader("nachbar@mail.example.net").await;

    // No Original-Rcpt-To: only the returned headers' To names the reader.
    let report = fixture(
        "arf_headers.eml",
        &[
            ("ADDRESS", "leser@mail.example.net"),
            ("VERP", &inbox.verp(id)),
        ],
    );
    assert_handled(&inbox.run(report, None).await, "complaint");

    assert_eq!(inbox.status("leser@mail.example.net").await, "unsubscribed");
    assert!(inbox.suppressed("leser@mail.example.net").await);
    let events = inbox.events("leser@mail.example.net").await;
    assert_eq!(events[0].0, "complaint");
    assert!(events[0].1.contains("abuse"), "{events:?}");
    assert_eq!(inbox.status("nachbar@mail.example.net").await, "confirmed");
}

async fn an_arf_complaint_with_the_full_original_unsubscribes_and_suppresses_the_reader(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@webmail.example.com").await;

    let report = fixture(
        "arf_full.eml",
        &[
            ("ADDRESS", "leser@webmail.example.com"),
            ("VERP", &inbox.verp(id)),
            ("UNSUBSCRIBE", &inbox.unsubscribe_address(id)),
        ],
    );
    assert_handled(&inbox.run(report, None).await, "complaint");

    assert_eq!(
        inbox.status("leser@webmail.example.com").await,
        "unsubscribed"
    );
    assert!(inbox.suppressed("leser@webmail.example.com").await);
}

async fn a_reply_to_the_mailto_unsubscribe_address_unsubscribes_the_reader(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let address = inbox.unsubscribe_address(id);

    let reply = fixture(
        "unsubscribe_reply.eml",
        &[("ADDRESS", "leser@example.com"), ("UNSUBSCRIBE", &address)],
    );
    assert_handled(&inbox.run(reply, Some(&address)).await, "unsubscribe_reply");

    assert_eq!(inbox.status("leser@example.com").await, "unsubscribed");
    // An unsubscribe is no reason to refuse the address a later sign-up.
    assert!(!inbox.suppressed("leser@example.com").await);
}

async fn a_reply_to_an_unsubscribe_address_with_a_bad_signature_changes_nothing(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let forged = format!("unsubscribe+{id}-0123456789abcdef@bounces.example.org");
    assert_ne!(forged, inbox.unsubscribe_address(id));

    let reply = fixture(
        "unsubscribe_reply.eml",
        &[
            ("ADDRESS", "angreifer@example.net"),
            ("UNSUBSCRIBE", &forged),
        ],
    );
    assert_ignored(&inbox.run(reply, Some(&forged)).await);

    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert!(inbox.events("leser@example.com").await.is_empty());
}

async fn a_forged_verp_address_does_not_bounce_the_reader_it_names(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let attacker = inbox.reader("angreifer@example.net").await;
    let victim = inbox.reader("opfer@example.com").await;
    // The attacker's own, genuine signature, with the victim's id put in front.
    let own = inbox.verp_id(attacker);
    let (_, mac) = own.split_once('-').unwrap();
    let forged = format!("bounces+{victim}-{mac}@bounces.example.org");
    assert_ne!(forged, inbox.verp(victim));

    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "niemand@example.net"), ("VERP", &forged)],
    );
    assert_ignored(&inbox.run(dsn.clone(), None).await);
    assert_ignored(&inbox.run(dsn, Some(&forged)).await);

    for who in ["opfer@example.com", "angreifer@example.net"] {
        assert_eq!(inbox.status(who).await, "confirmed", "{who}");
        assert!(!inbox.suppressed(who).await, "{who}");
        assert!(inbox.events(who).await.is_empty(), "{who}");
    }
}

async fn a_bounce_for_an_unknown_address_is_ignored(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    inbox.reader("leser@example.com").await;

    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "niemand@example.net"), ("VERP", PLAIN_BOUNCE)],
    );
    assert_ignored(&inbox.run(dsn, None).await);

    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert!(inbox.events("leser@example.com").await.is_empty());
    assert!(!inbox.suppressed("niemand@example.net").await);
}

async fn garbage_and_empty_input_are_refused_as_unparseable(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let verp = inbox.verp(id);
    let garbage = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound/garbage.bin"),
    )
    .unwrap();
    assert!(garbage.contains(&0) && garbage.contains(&0xff));

    for (what, input) in [
        ("garbage", garbage),
        ("empty input", Vec::new()),
        ("blank lines", b"\r\n\r\n".to_vec()),
    ] {
        let run = inbox.run(input, Some(&verp)).await;
        assert_eq!(run.code, Some(65), "{what}: {run:?}");
    }
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert!(inbox.events("leser@example.com").await.is_empty());
}

async fn an_unreachable_database_makes_the_mta_retry(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let unreachable = match backend {
        Backend::Postgres => format!("postgres://postbote@127.0.0.1:{}/postbote", free_port()),
        Backend::Sqlite => {
            // A regular file where the database's folder should be.
            let occupied = inbox.db.dir.path().join("occupied");
            std::fs::write(&occupied, b"not a folder").unwrap();
            format!("sqlite://{}", occupied.join("postbote.db").display())
        }
    };

    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "leser@example.com"), ("VERP", &inbox.verp(id))],
    );
    let run = inbox.run_on(&unreachable, dsn, None).await;
    assert_eq!(run.code, Some(75), "{run:?}");
    assert!(run.stderr.contains("error"), "{run:?}");

    // The MTA keeps the message; nothing happened yet.
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
}

async fn a_forged_verp_address_cannot_bounce_the_reader_named_inside_the_report(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let victim = inbox.reader("opfer@example.com").await;
    // A VERP-shaped address with a made-up signature, and the victim as the failed
    // recipient: the report is forged and must not fall back to Final-Recipient.
    let forged = format!("bounces+{victim}-0123456789abcdef@bounces.example.org");
    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "opfer@example.com"), ("VERP", &forged)],
    );
    assert_ignored(&inbox.run(dsn.clone(), None).await);
    assert_ignored(&inbox.run(dsn, Some(&forged)).await);
    assert_eq!(inbox.status("opfer@example.com").await, "confirmed");
    assert!(!inbox.suppressed("opfer@example.com").await);
}

async fn feedback_reports_that_are_no_complaints_change_nothing(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@mail.example.net").await;
    for kind in ["not-spam", "auth-failure"] {
        let report = String::from_utf8(fixture(
            "arf_headers.eml",
            &[
                ("ADDRESS", "leser@mail.example.net"),
                ("VERP", &inbox.verp(id)),
            ],
        ))
        .unwrap()
        .replace("Feedback-Type: abuse", &format!("Feedback-Type: {kind}"));
        assert_ignored(&inbox.run(report.into_bytes(), None).await);
    }
    assert_eq!(inbox.status("leser@mail.example.net").await, "confirmed");
    assert!(!inbox.suppressed("leser@mail.example.net").await);
}

async fn a_complaint_with_a_redacted_recipient_is_matched_by_the_verp_address(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@mail.example.net").await;
    let verp = inbox.verp(id);
    let report = fixture(
        "arf_headers.eml",
        &[("ADDRESS", "redacted@mail.example.net"), ("VERP", &verp)],
    );
    assert_handled(&inbox.run(report, Some(&verp)).await, "complaint");
    assert_eq!(inbox.status("leser@mail.example.net").await, "unsubscribed");
    assert!(inbox.suppressed("leser@mail.example.net").await);
}

async fn a_feedback_loop_report_with_a_redacted_recipient_is_matched_by_original_mail_from(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@mail.example.net").await;
    // Delivered to the provider's fixed feedback address, recipient redacted: only
    // Original-Mail-From (our signed VERP sender) names the reader.
    let report = fixture(
        "arf_headers.eml",
        &[
            ("ADDRESS", "redacted@mail.example.net"),
            ("VERP", &inbox.verp(id)),
        ],
    );
    assert_handled(
        &inbox.run(report, Some("fbl@bounces.example.org")).await,
        "complaint",
    );
    assert_eq!(inbox.status("leser@mail.example.net").await, "unsubscribed");
    assert!(inbox.suppressed("leser@mail.example.net").await);
}

/// Hostile messages through the real binary: each one is handled (0) or refused
/// as unparseable (65), never a panic (75) or a crash; the reader is untouched.
/// Time and memory per message are measured by `scripts/bench inbound`.
async fn hostile_messages_are_handled_or_refused_never_crash(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let verp = inbox.verp(id);
    for (what, message) in hostile_messages(&inbox.verp(id)) {
        let run = inbox.run(message, Some(&verp)).await;
        assert!(matches!(run.code, Some(0 | 65)), "{what}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{what}: {run:?}");
    }
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
}

/// A 10 MB report, 2,000 nested multiparts, a 1 MB header, 20,000 headers.
fn hostile_messages(verp: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut big = fixture(
        "delayed.eml",
        &[("ADDRESS", "leser@example.com"), ("VERP", verp)],
    );
    big.extend(std::iter::repeat_n(b'a', 10 << 20));
    let mut nested = String::from("From: someone@example.net\r\nSubject: deep\r\n");
    for i in 0..2000 {
        nested.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\ninnermost\r\n");
    let long_header = format!(
        "From: someone@example.net\r\nSubject: {}\r\n\r\nbody\r\n",
        "x".repeat(1 << 20)
    );
    let mut many = String::from("From: someone@example.net\r\nSubject: many\r\n");
    for i in 0..20_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\nbody\r\n");
    vec![
        ("10 MB report", big),
        ("nested multiparts", nested.into_bytes()),
        ("1 MB header", long_header.into_bytes()),
        ("20,000 headers", many.into_bytes()),
    ]
}

/// What real MTAs and providers send (`tests/fixtures/inbound/mta/`, one row of
/// `expected.tsv` each), delivered to the reader's VERP address: each is graded
/// as the table says, and only the hard ones end the subscription.
async fn what_real_mtas_send_is_graded_as_expected(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let table = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inbound/mta/expected.tsv"),
    )
    .unwrap();
    let mut wrong = Vec::new();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    assert!(rows.len() >= 20, "{} rows", rows.len());
    for (n, row) in rows.iter().enumerate() {
        let [file, event, detail, ..] = row[..] else {
            panic!("bad row {row:?}");
        };
        let address = format!("leser{n}@example.com");
        let id = inbox.reader(&address).await;
        let verp = inbox.verp(id);
        let message = fixture(
            &format!("mta/{file}"),
            &[
                ("ADDRESS", address.as_str()),
                ("VERP", verp.as_str()),
                ("UNSUBSCRIBE_URL", unsubscribe_url(&inbox, id).as_str()),
            ],
        );
        let run = inbox.run(message, Some(&verp)).await;
        let events = inbox.events(&address).await;
        let status = inbox.status(&address).await;
        let expected_status = if event == "hard_bounce" {
            "bounced"
        } else {
            "confirmed"
        };
        let ok = run.code == Some(0)
            && run.stdout.starts_with(event)
            && status == expected_status
            && match event {
                "ignored" => events.is_empty(),
                _ => events.len() == 1 && events[0].0 == event && events[0].1.contains(detail),
            };
        if !ok {
            wrong.push(format!("{file}: expected {event} ({detail}), got {run:?}, status {status}, events {events:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

async fn two_delay_warnings_from_two_hosts_about_one_message_count_once(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let verp = inbox.verp(id);
    for file in ["mta/delayed_twice_a.eml", "mta/delayed_twice_b.eml"] {
        let message = fixture(
            file,
            &[
                ("ADDRESS", "leser@example.com"),
                ("VERP", verp.as_str()),
                ("UNSUBSCRIBE_URL", unsubscribe_url(&inbox, id).as_str()),
            ],
        );
        assert_handled(&inbox.run(message, Some(&verp)).await, "soft_bounce");
    }
    // soft_threshold = 2, but both warnings are about the same digest.
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert_eq!(inbox.events("leser@example.com").await.len(), 2);
}

async fn a_fraud_report_is_a_complaint(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@mail.example.net").await;
    let verp = inbox.verp(id);
    let report = String::from_utf8(fixture(
        "arf_headers.eml",
        &[("ADDRESS", "leser@mail.example.net"), ("VERP", &verp)],
    ))
    .unwrap()
    .replace("Feedback-Type: abuse", "Feedback-Type: fraud");
    assert_handled(
        &inbox.run(report.into_bytes(), Some(&verp)).await,
        "complaint",
    );
    assert_eq!(inbox.status("leser@mail.example.net").await, "unsubscribed");
    assert!(inbox.suppressed("leser@mail.example.net").await);
    let events = inbox.events("leser@mail.example.net").await;
    assert!(events[0].1.contains("fraud"), "{events:?}");
}

async fn soft_bounces_older_than_the_window_do_not_count(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    // A soft bounce 15 days ago (soft_window_days = 14), written as inbound writes it.
    let old = Utc::now() - chrono::Duration::days(15);
    let insert = "INSERT INTO mail_events (subscriber_id, at, kind, detail, message_ref) \
                  VALUES ($1, $2, 'soft_bounce', 'delayed 4.4.1', '<old@example.org>')";
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&inbox.db.url).await.unwrap();
            sqlx::query(insert)
                .bind(id)
                .bind(old)
                .execute(&pool)
                .await
                .unwrap();
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&inbox.db.url).await.unwrap();
            sqlx::query(insert)
                .bind(id)
                .bind(old)
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    let warning = |message: &str| {
        String::from_utf8(fixture(
            "delayed.eml",
            &[("ADDRESS", "leser@example.com"), ("VERP", &inbox.verp(id))],
        ))
        .unwrap()
        .replace("3f9a1c27e4b05d8812aa09c1d7e6f340", message)
        .into_bytes()
    };
    // Threshold 2: the old one and this one would be two, but the old one is out.
    assert_handled(&inbox.run(warning("new-1"), None).await, "soft_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert_handled(&inbox.run(warning("new-2"), None).await, "soft_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "bounced");
}

on_both_backends!(
    a_fraud_report_is_a_complaint,
    soft_bounces_older_than_the_window_do_not_count,
    what_real_mtas_send_is_graded_as_expected,
    two_delay_warnings_from_two_hosts_about_one_message_count_once,
    hostile_messages_are_handled_or_refused_never_crash,
    a_feedback_loop_report_with_a_redacted_recipient_is_matched_by_original_mail_from,
    a_forged_verp_address_cannot_bounce_the_reader_named_inside_the_report,
    feedback_reports_that_are_no_complaints_change_nothing,
    a_complaint_with_a_redacted_recipient_is_matched_by_the_verp_address,
    a_postfix_hard_bounce_to_the_verp_address_marks_the_reader_bounced_and_suppresses_the_address,
    a_forged_dsn_to_a_plain_address_of_the_bounce_domain_changes_nobody,
    a_dsn_to_the_attackers_own_verp_address_naming_a_victim_bounces_only_the_attacker,
    an_arf_report_to_the_attackers_verp_address_with_the_victim_in_the_attached_to_spares_the_victim,
    an_arf_report_to_a_plain_address_carrying_our_signed_list_unsubscribe_unsubscribes_that_reader,
    a_signed_token_inside_wins_over_the_verp_address_only_when_it_verifies,
    an_exim_bounce_for_a_forwarded_address_finds_the_reader_by_the_verp_envelope_recipient,
    an_exchange_bounce_with_no_verp_address_is_recorded_as_unverified_and_changes_nobody,
    delay_warnings_are_soft_bounces_counted_once_per_message_and_the_second_message_within_the_window_marks_the_reader_bounced,
    a_5_7_1_policy_rejection_is_recorded_but_leaves_the_reader_subscribed,
    an_arf_complaint_with_the_original_headers_unsubscribes_and_suppresses_the_reader,
    an_arf_complaint_with_the_full_original_unsubscribes_and_suppresses_the_reader,
    a_reply_to_the_mailto_unsubscribe_address_unsubscribes_the_reader,
    a_reply_to_an_unsubscribe_address_with_a_bad_signature_changes_nothing,
    a_forged_verp_address_does_not_bounce_the_reader_it_names,
    a_bounce_for_an_unknown_address_is_ignored,
    garbage_and_empty_input_are_refused_as_unparseable,
    an_unreachable_database_makes_the_mta_retry,
);
