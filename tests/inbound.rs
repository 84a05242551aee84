//! `postbote inbound` as an MTA's pipe transport runs it: one message on stdin, the
//! real binary, on both backends. The messages are hand-written in the shape Postfix,
//! Exim, Exchange Online and feedback-loop senders give them
//! (`tests/fixtures/inbound/`); `{{ADDRESS}}` (the reader), `{{VERP}}` (the envelope
//! sender postbote used), `{{FORWARD}}` and `{{UNSUBSCRIBE}}` are filled in per test.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::Utc;
use common::{Backend, TestDb, free_port};
use postbote::config::Config;
use postbote::domain::{DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, Weekdays};
use postbote::mail::compose::Composer;
use postbote::mail::templates::Templates;
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

/// A migrated database with readers, the config file the binary reads, and a
/// composer that makes the return addresses exactly as the binary checks them.
struct Inbox {
    db: TestDb,
    store: Store,
    composer: Composer,
    config: PathBuf,
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
        let config = Config::from_sources(Some(&config_path), &env).expect("test config");
        let composer = Composer::from_config(
            &config,
            Arc::new(Templates::load(None).expect("built-in templates")),
            store.link_key().await.expect("link key"),
            config.public_url_for(config.listen),
        );
        Self {
            db,
            store,
            composer,
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

    /// The envelope sender of mail to the reader.
    fn verp(&self, id: i64) -> String {
        self.composer.envelope_from(id)
    }

    /// The `mailto:` unsubscribe address in the reader's `List-Unsubscribe`.
    fn unsubscribe_address(&self, id: i64) -> String {
        let template = self.composer.addresses().unsubscribe.as_deref().unwrap();
        template.replace("{id}", &self.composer.verp_id(id))
    }

    async fn status(&self, email: &str) -> String {
        self.export(email).await.status
    }

    /// `(kind, detail)` of the reader's recorded mail events, oldest first.
    async fn events(&self, email: &str) -> Vec<(String, String)> {
        self.export(email)
            .await
            .mail_events
            .into_iter()
            .map(|e| (e.kind, e.detail))
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
fn fixture(name: &str, values: &[(&str, &str)]) -> Vec<u8> {
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

async fn a_hard_bounce_without_a_verp_address_is_matched_by_final_recipient(backend: Backend) {
    let inbox = Inbox::new(backend).await;
    inbox.reader("leser@example.com").await;

    let dsn = fixture(
        "postfix_hard.eml",
        &[("ADDRESS", "leser@example.com"), ("VERP", PLAIN_BOUNCE)],
    );
    assert_handled(&inbox.run(dsn, None).await, "hard_bounce");

    assert_eq!(inbox.status("leser@example.com").await, "bounced");
    assert!(inbox.suppressed("leser@example.com").await);
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
    // Without the envelope recipient the DSN names nobody postbote knows.
    assert_ignored(&inbox.run(dsn.clone(), None).await);
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");

    assert_handled(&inbox.run(dsn, Some(&verp)).await, "hard_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "bounced");
    assert!(inbox.suppressed("leser@example.com").await);
    let events = inbox.events("leser@example.com").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "hard_bounce");
    assert!(events[0].1.contains("5.0.0"), "{events:?}");
}

async fn an_exchange_bounce_with_no_verp_address_is_matched_by_original_recipient(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    inbox.reader("leser@contoso.com").await;

    // Final-Recipient is the tenant's internal routing address; only
    // Original-Recipient names the reader.
    let ndr = fixture(
        "exchange_hard.eml",
        &[("ADDRESS", "leser@contoso.com"), ("VERP", PLAIN_BOUNCE)],
    );
    assert_handled(&inbox.run(ndr, None).await, "hard_bounce");

    assert_eq!(inbox.status("leser@contoso.com").await, "bounced");
    assert!(inbox.suppressed("leser@contoso.com").await);
    let events = inbox.events("leser@contoso.com").await;
    assert!(events[0].1.contains("5.1.10"), "{events:?}");
}

async fn delay_warnings_are_soft_bounces_and_the_second_within_the_window_marks_the_reader_bounced(
    backend: Backend,
) {
    let inbox = Inbox::new(backend).await;
    let id = inbox.reader("leser@example.com").await;
    let warning = || {
        fixture(
            "delayed.eml",
            &[("ADDRESS", "leser@example.com"), ("VERP", &inbox.verp(id))],
        )
    };

    assert_handled(&inbox.run(warning(), None).await, "soft_bounce");
    assert_eq!(inbox.status("leser@example.com").await, "confirmed");
    assert!(!inbox.suppressed("leser@example.com").await);

    // soft_threshold = 2
    assert_handled(&inbox.run(warning(), None).await, "soft_bounce");
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
    assert_eq!(kinds, ["soft_bounce", "soft_bounce"]);
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
    let own = inbox.composer.verp_id(attacker);
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

on_both_backends!(
    a_feedback_loop_report_with_a_redacted_recipient_is_matched_by_original_mail_from,
    a_forged_verp_address_cannot_bounce_the_reader_named_inside_the_report,
    feedback_reports_that_are_no_complaints_change_nothing,
    a_complaint_with_a_redacted_recipient_is_matched_by_the_verp_address,
    a_postfix_hard_bounce_to_the_verp_address_marks_the_reader_bounced_and_suppresses_the_address,
    a_hard_bounce_without_a_verp_address_is_matched_by_final_recipient,
    an_exim_bounce_for_a_forwarded_address_finds_the_reader_by_the_verp_envelope_recipient,
    an_exchange_bounce_with_no_verp_address_is_matched_by_original_recipient,
    delay_warnings_are_soft_bounces_and_the_second_within_the_window_marks_the_reader_bounced,
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
