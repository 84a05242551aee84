//! Property tests: whatever bytes arrive, reading a message never panics, and
//! everything derived from it (report fields, plain-text grading, signed evidence,
//! authentication results) is computed without panicking either.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::domain::LinkKey;
use crate::mail::compose::ReturnAddresses;
use crate::mail::templates::Templates;

/// Real bounces and reports, placeholders filled in.
const FIXTURES: &[&str] = &[
    include_str!("../../tests/fixtures/inbound/postfix_hard.eml"),
    include_str!("../../tests/fixtures/inbound/exim_hard.eml"),
    include_str!("../../tests/fixtures/inbound/exchange_hard.eml"),
    include_str!("../../tests/fixtures/inbound/delayed.eml"),
    include_str!("../../tests/fixtures/inbound/policy_571.eml"),
    include_str!("../../tests/fixtures/inbound/arf_full.eml"),
    include_str!("../../tests/fixtures/inbound/arf_headers.eml"),
    include_str!("../../tests/fixtures/inbound/unsubscribe_reply.eml"),
];

fn fixture(i: usize) -> Vec<u8> {
    FIXTURES[i % FIXTURES.len()]
        .replace("{{ADDRESS}}", "leser@example.org")
        .replace("{{VERP}}", "bounces+1-0123456789abcdef@bounces.example.org")
        .replace("{{FORWARD}}", "weiter@example.net")
        .replace(
            "{{UNSUBSCRIBE}}",
            "unsubscribe+1-0123456789abcdef@bounces.example.org",
        )
        .into_bytes()
}

fn composer() -> Composer {
    Composer::new(
        Arc::new(Templates::load(None).expect("built-in templates")),
        "News <news@example.org>".parse().expect("mailbox"),
        "https://news.example.org".into(),
        chrono::Duration::days(7),
        LinkKey::new(vec![1; 32]),
        "news.example.org".into(),
        ReturnAddresses {
            bounce: Some("bounces+{id}@bounces.example.org".into()),
            unsubscribe: Some("unsubscribe+{id}@bounces.example.org".into()),
        },
    )
}

/// Everything inbound derives from a message without the store.
fn examine(raw: &[u8], composer: &Composer) {
    let Ok(inbound) = classify(raw) else {
        return;
    };
    let _ = plain::classify(&inbound.signals);
    let _ = evidence::signed_reader(
        &inbound.returned.texts,
        inbound.returned.original_mail_from.as_deref(),
        composer,
    );
    let results = inbound.content.auth_results();
    let _ = submission::authenticated_by_results(&results, "mx.example.org", "example.org");
    if let Kind::Dsn(recipients) = &inbound.kind {
        for r in recipients {
            let _ = r.is_failure();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        examine(&raw, &composer());
    }

    #[test]
    fn truncated_real_bounces_never_panic(i in 0usize..64, cut in any::<prop::sample::Index>()) {
        let raw = fixture(i);
        examine(&raw[..cut.index(raw.len() + 1)], &composer());
    }

    #[test]
    fn mutated_real_bounces_never_panic(
        i in 0usize..64,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..40),
    ) {
        let mut raw = fixture(i);
        for (at, byte, op) in edits {
            let at = at.index(raw.len() + 1);
            match op {
                0 if at < raw.len() => raw[at] = byte,
                1 => raw.insert(at, byte),
                _ if at < raw.len() => {
                    raw.remove(at);
                }
                _ => {}
            }
        }
        examine(&raw, &composer());
    }

    #[test]
    fn report_fields_of_any_text_never_panic(text in ".{0,2000}") {
        let _ = report::delivery_status(text.as_bytes());
        let _ = report::status_code(&text);
        let _ = plain::own_text(&text);
    }
}

#[test]
fn deeply_nested_multiparts_huge_headers_and_huge_bodies_are_read() {
    let composer = composer();
    // 2,000 nested multiparts.
    let depth = 2000;
    let mut nested = String::from("From: a@example.org\r\nSubject: deep\r\n");
    for i in 0..depth {
        nested.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\ninnermost\r\n");
    examine(nested.as_bytes(), &composer);
    // A 1 MB header and 20,000 headers.
    let mut headers = format!(
        "From: a@example.org\r\nSubject: {}\r\n",
        "x".repeat(1 << 20)
    );
    for i in 0..20_000 {
        headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    headers.push_str("\r\nbody\r\n");
    examine(headers.as_bytes(), &composer);
    // A 10 MB body in a report.
    let mut big = fixture(0);
    big.extend(std::iter::repeat_n(b'a', 10 << 20));
    examine(&big, &composer);
}
