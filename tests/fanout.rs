//! Exactly once at scale, on PostgreSQL: two `serve` processes sharing a database,
//! and a `kill -9` in the middle of a fan-out to 2,000 readers.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{ADMIN_TOKEN, Backend, Serve, SmtpSink, TestDb, free_port, recipient};
use postbote::domain::{
    DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, TopicSlug, Weekdays,
};
use postbote::store::{ImportedSubscriber, Store};

const READERS: usize = 2000;
/// In-flight bound: workers × mails claimed per worker (see docs/ARCHITECTURE.md).
const WORKERS: usize = 4;
const CLAIM_BATCH: usize = 16;

async fn readers(store: &Store, n: usize) {
    let zones = ["Europe/Berlin", "America/New_York", "Asia/Tokyo"];
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..n).step_by(8) {
                let s = ImportedSubscriber {
                    email: EmailAddress::parse(&format!("reader{i:05}@example.org")).unwrap(),
                    topics: vec![TopicSlug::parse("wirtschaft").unwrap()],
                    schedule: DeliverySchedule {
                        time: DeliveryTime::parse(&format!("{:02}:{:02}", i % 24, (i * 7) % 60))
                            .unwrap(),
                        timezone: TimeZone::parse(zones[i % 3]).unwrap(),
                        weekdays: Weekdays::EVERY_DAY,
                    },
                    locale: if i % 2 == 0 { Locale::De } else { Locale::En },
                    consent_at: Utc::now(),
                    consent_ip: None,
                    source: "fanout test".into(),
                };
                store
                    .import_confirmed(&s, Utc::now(), chrono::Duration::hours(24))
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn setup(http: &reqwest::Client, serve: &Serve, db: &TestDb) {
    let r = http
        .post(format!("{}/api/v1/topics", serve.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    readers(&db.store().await, READERS).await;
    let r = http
        .post(format!("{}/api/v1/items", serve.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"topics": ["wirtschaft"], "title": "Eine Meldung für alle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Digests received, counted per recipient.
fn received(sink: &SmtpSink) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for raw in sink.raw_messages() {
        *by.entry(recipient(&raw)).or_insert(0) += 1;
    }
    by
}

async fn wait_for_every_reader(sink: &SmtpSink) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let by = received(sink);
        if by.len() >= READERS {
            // Let stragglers (duplicates) land before counting.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return received(sink);
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {READERS} readers got their digest",
            by.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_send_every_reader_exactly_one_digest() {
    let db = TestDb::new(Backend::Postgres).await;
    let sink = SmtpSink::start();
    let http = reqwest::Client::new();
    let extra = "[digest]\nrun_scheduler = false\n";
    let a = Serve::start(&db, &sink.url(), free_port(), extra);
    a.wait_ready(&http).await;
    let b = Serve::start(&db, &sink.url(), free_port(), extra);
    b.wait_ready(&http).await;
    setup(&http, &a, &db).await;

    // Both instances run a pass for the same instant at the same time.
    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let (ra, rb) = tokio::join!(a.run_pass(&http, &at), b.run_pass(&http, &at));
    let due = ra["due"].as_u64().unwrap() + rb["due"].as_u64().unwrap();
    let enqueued = ra["enqueued"].as_u64().unwrap() + rb["enqueued"].as_u64().unwrap();
    assert_eq!(
        (due, enqueued),
        (READERS as u64, READERS as u64),
        "{ra} {rb}"
    );
    let (ra, rb) = tokio::join!(a.run_pass(&http, &at), b.run_pass(&http, &at));
    assert_eq!(
        (ra["due"].as_u64(), rb["due"].as_u64()),
        (Some(0), Some(0)),
        "nothing is due twice"
    );

    let by = wait_for_every_reader(&sink).await;
    assert_eq!(by.len(), READERS);
    let twice: Vec<_> = by.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "readers with more than one digest: {twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_fan_out_loses_no_digest() {
    let db = TestDb::new(Backend::Postgres).await;
    let sink = SmtpSink::start();
    let http = reqwest::Client::new();
    let port = free_port();
    // A short SMTP timeout keeps the claim lease short, so the restarted process
    // takes over the crashed one's claimed mails within seconds.
    let extra =
        format!("smtp_timeout_ms = 250\nworkers = {WORKERS}\n[digest]\nrun_scheduler = false\n");
    let first = Serve::start(&db, &sink.url(), port, &extra);
    first.wait_ready(&http).await;
    setup(&http, &first, &db).await;

    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let pass = {
        let (http, base) = (http.clone(), first.base.clone());
        let at = at.clone();
        tokio::spawn(async move {
            http.post(format!("{base}/api/v1/digests/run"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&serde_json::json!({"at": at}))
                .send()
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.raw_messages().len() < 50 {
        assert!(Instant::now() < deadline, "the fan-out did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(first); // kill -9
    let at_kill = received(&sink).values().sum::<usize>();
    assert!(
        at_kill < READERS,
        "the fan-out finished before the kill ({at_kill} sent); nothing was interrupted"
    );
    let _ = pass.await;

    let second = Serve::start(&db, &sink.url(), port, &extra);
    second.wait_ready(&http).await;
    // Readers the killed pass had not reached yet are still due.
    second.run_pass(&http, &at).await;
    let by = wait_for_every_reader(&sink).await;
    assert_eq!(by.len(), READERS, "every reader got the digest");
    let duplicates: usize = by.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= WORKERS * CLAIM_BATCH,
        "{duplicates} duplicates exceed the bound of mails in flight ({})",
        WORKERS * CLAIM_BATCH
    );
    assert_eq!(second.run_pass(&http, &at).await["due"], 0);
}
