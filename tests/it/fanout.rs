//! Exactly once at scale, on PostgreSQL: two `serve` processes sharing a database,
//! and a `kill -9` in the middle of a fan-out to 2,000 readers, followed by a
//! restart or taken over by a second process: either way the dead process's claimed
//! mail goes out within a minute, and at most one mail per worker goes out twice.
//! And the hand-over to a process's own workers (`mail::handoff`), on both stores:
//! digests and sign-up mail are queued already leased to them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::{ADMIN_TOKEN, Backend, Serve, SmtpSink, TestDb, is_complete, recipient};
use chrono::Utc;
use postbote::domain::{
    DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, TopicSlug, Weekdays,
};
use postbote::store::{ImportedSubscriber, Store};

const READERS: usize = 2000;
/// Workers per process: each records a delivery before it sends the next mail, so a
/// `kill -9` can repeat at most one SMTP transaction per worker.
const WORKERS: usize = 4;
/// The longest a dead process's claimed mail may wait (SPEC §8).
const TAKEOVER: Duration = Duration::from_secs(60);

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

async fn setup(http: &reqwest::Client, serve: &Serve, db: &TestDb, n: usize) {
    let r = http
        .post(format!("{}/api/v1/topics", serve.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    readers(&db.store().await, n).await;
    let r = http
        .post(format!("{}/api/v1/items", serve.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"topics": ["wirtschaft"], "title": "Eine Meldung für alle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Digests received whole, counted per recipient.
fn received(sink: &SmtpSink) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for raw in sink.raw_messages().iter().filter(|raw| is_complete(raw)) {
        *by.entry(recipient(raw)).or_insert(0) += 1;
    }
    by
}

/// Waits until every reader has a digest, failing at `deadline`.
async fn wait_for_every_reader(sink: &SmtpSink, deadline: Instant, why: &str) {
    wait_for_readers(sink, READERS, deadline, why).await;
}

/// Waits until `n` readers have a digest, failing at `deadline`.
async fn wait_for_readers(sink: &SmtpSink, n: usize, deadline: Instant, why: &str) {
    loop {
        let by = received(sink);
        if by.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} readers got their digest {why}",
            by.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Mails still queued, and how many of them are leased by a worker right now.
async fn queued_and_leased(store: &Store) -> (i64, i64) {
    let Store::Postgres(pool) = store else {
        unreachable!("fan-out tests run on PostgreSQL")
    };
    sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE locked_until > now()) FROM mail_jobs \
         WHERE status = 'queued'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The digests received per reader once no copy can come any more: nothing is
/// queued (so no worker holds or will claim a digest), and the sink has written
/// every digest the database records as delivered.
async fn settled(sink: &SmtpSink, store: &Store) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while queued_and_leased(store).await.0 > 0 {
        assert!(Instant::now() < deadline, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = store.stats().await.unwrap().digests_sent as usize;
    loop {
        let by = received(sink);
        if by.values().sum::<usize>() >= sent {
            return by;
        }
        assert!(
            Instant::now() < deadline,
            "the sink lacks digests recorded as sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills (`kill -9`) a `serve` process while it is delivering, and returns how many
/// digests the sink had at that moment.
fn kill_mid_delivery(process: Serve, sink: &SmtpSink) -> usize {
    drop(process); // SIGKILL, then reaped
    let at_kill = sink.raw_messages().len();
    assert!(
        (1..READERS).contains(&at_kill),
        "the kill must land mid-delivery, but {at_kill} of {READERS} digests were out"
    );
    at_kill
}

fn duplicates(by: &HashMap<String, usize>) -> usize {
    by.values().map(|n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_send_every_reader_exactly_one_digest() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let sink = SmtpSink::start();
    let http = reqwest::Client::new();
    let extra = "[digest]\nrun_scheduler = false\n";
    // Each process names itself, so the test sees in pg_stat_activity which one
    // is where.
    let named = |name: &str| format!("{}?application_name={name}", db.url);
    let a = Serve::start_on_own_port_with_url(&db, &named("serve-a"), &sink.url(), extra).await;
    a.wait_ready(&http).await;
    let b = Serve::start_on_own_port_with_url(&db, &named("serve-b"), &sink.url(), extra).await;
    b.wait_ready(&http).await;
    setup(&http, &a, &db, READERS).await;

    // Both instances run a pass for the same instant. The mail queue is locked,
    // so each pass stops with its first claimed batches in hand, right before
    // queueing their digests; the lock is let go only once both processes wait
    // there.
    // So the passes provably overlap: both hold claimed readers at one moment.
    let Store::Postgres(pool) = &store else {
        unreachable!("a PostgreSQL test")
    };
    let mut gate = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE mail_jobs IN EXCLUSIVE MODE")
        .execute(&mut *gate)
        .await
        .unwrap();
    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let release = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waiting: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT application_name FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO mail_jobs%' ORDER BY 1",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            if waiting == ["serve-a", "serve-b"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "both passes never held claimed readers at once (waiting: {waiting:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate.rollback().await.unwrap();
    };
    let (ra, rb, ()) = tokio::join!(a.run_pass(&http, &at), b.run_pass(&http, &at), release);
    let count = |r: &serde_json::Value, key: &str| r[key].as_u64().unwrap();
    assert!(
        count(&ra, "enqueued") > 0 && count(&rb, "enqueued") > 0,
        "both passes served readers: {ra} {rb}"
    );
    assert_eq!(
        (
            count(&ra, "due") + count(&rb, "due"),
            count(&ra, "enqueued") + count(&rb, "enqueued")
        ),
        (READERS as u64, READERS as u64),
        "{ra} {rb}"
    );
    let (ra, rb) = tokio::join!(a.run_pass(&http, &at), b.run_pass(&http, &at));
    assert_eq!(
        (ra["due"].as_u64(), rb["due"].as_u64()),
        (Some(0), Some(0)),
        "nothing is due twice"
    );

    wait_for_every_reader(
        &sink,
        Instant::now() + Duration::from_secs(120),
        "from two instances",
    )
    .await;
    let by = settled(&sink, &store).await;
    assert_eq!(by.len(), READERS);
    let twice: Vec<_> = by.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "readers with more than one digest: {twice:?}"
    );
}

/// A pass for `at` through `serve`'s admin API, left running in the background.
fn start_pass(http: &reqwest::Client, serve: &Serve, at: &str) {
    let (http, base, at) = (http.clone(), serve.base.clone(), at.to_owned());
    tokio::spawn(async move {
        let _ = http
            .post(format!("{base}/api/v1/digests/run"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"at": at}))
            .send()
            .await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_fan_out_is_made_good_within_a_minute_of_the_restart() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let sink = SmtpSink::start();
    let http = reqwest::Client::new();
    // The default SMTP timeout (30 s): claimed mail must not wait for anything
    // derived from it. A slowed relay (100 mails/s) keeps the fan-out going for
    // 20 s, so the kill lands while every worker holds a claimed batch.
    let config = |rate: u32| {
        format!("workers = {WORKERS}\nmax_per_second = {rate}\n[digest]\nrun_scheduler = false\n")
    };
    let first = Serve::start_on_own_port(&db, &sink.url(), &config(100)).await;
    first.wait_ready(&http).await;
    setup(&http, &first, &db, READERS).await;

    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    start_pass(&http, &first, &at);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.raw_messages().len() < 200 {
        assert!(Instant::now() < deadline, "the fan-out did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_kill = kill_mid_delivery(first, &sink);
    assert!(
        queued_and_leased(&store).await.1 > 0,
        "the dead process left claimed mail behind"
    );

    let restarted = Instant::now();
    let second = Serve::start_on_own_port(&db, &sink.url(), &config(0)).await;
    second.wait_ready(&http).await;
    // Readers the killed pass had not reached yet are still due.
    second.run_pass(&http, &at).await;
    wait_for_every_reader(
        &sink,
        restarted + TAKEOVER,
        &format!("within a minute of the restart ({at_kill} were out at the kill)"),
    )
    .await;

    eprintln!(
        "every reader served {:?} after the restart",
        restarted.elapsed()
    );
    let by = settled(&sink, &store).await;
    assert_eq!(by.len(), READERS, "every reader got the digest");
    eprintln!("{at_kill} out at the kill, {} duplicates", duplicates(&by));
    assert!(
        duplicates(&by) <= WORKERS,
        "{} duplicates exceed the SMTP transactions in flight ({WORKERS})",
        duplicates(&by)
    );
    assert_eq!(second.run_pass(&http, &at).await["due"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_instance_sends_a_killed_ones_claimed_mail_within_a_minute() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let sink = SmtpSink::start();
    let http = reqwest::Client::new();
    let config = |rate: u32| {
        format!("workers = {WORKERS}\nmax_per_second = {rate}\n[digest]\nrun_scheduler = false\n")
    };
    // The one to die sends 10 mails/s: its claimed batches (16 per worker) take
    // seconds, while the survivor, unpaced, takes everything else at once.
    let doomed = Serve::start_on_own_port(&db, &sink.url(), &config(10)).await;
    doomed.wait_ready(&http).await;
    let survivor = Serve::start_on_own_port(&db, &sink.url(), &config(0)).await;
    survivor.wait_ready(&http).await;
    setup(&http, &doomed, &db, READERS).await;

    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let pass = doomed.run_pass(&http, &at).await;
    assert_eq!(pass["enqueued"], READERS as u64, "{pass}");
    // Wait until the doomed process is delivering and all that is still queued is
    // held by a lease: the survivor has taken everything else.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (queued, leased) = queued_and_leased(&store).await;
        if queued > 0 && queued == leased && !sink.raw_messages().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never only leased mail left ({queued} queued, {leased} leased)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = kill_mid_delivery(doomed, &sink);
    let killed = Instant::now();
    wait_for_every_reader(
        &sink,
        killed + TAKEOVER,
        &format!("within a minute of the kill ({at_kill} were out at the kill)"),
    )
    .await;

    eprintln!("every reader served {:?} after the kill", killed.elapsed());
    let by = settled(&sink, &store).await;
    assert_eq!(by.len(), READERS, "every reader got the digest");
    eprintln!("{at_kill} out at the kill, {} duplicates", duplicates(&by));
    assert!(
        duplicates(&by) <= WORKERS,
        "{} duplicates exceed the SMTP transactions in flight ({WORKERS})",
        duplicates(&by)
    );
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stalled_past_its_lease_sends_none_of_the_mail_taken_over() {
    const FEW: usize = 20;
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let sink = SmtpSink::start();
    let http = reqwest::Client::new();
    // One worker sending one mail a second: it claims 16 of the 20 digests and
    // spends nearly all its time waiting for the next slot, not in SMTP.
    let stalled = Serve::start_on_own_port(
        &db,
        &sink.url(),
        "workers = 1\nmax_per_second = 1\n[digest]\nrun_scheduler = false\n",
    )
    .await;
    stalled.wait_ready(&http).await;
    setup(&http, &stalled, &db, FEW).await;
    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    assert_eq!(stalled.run_pass(&http, &at).await["enqueued"], FEW as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received(&sink).len() < 2 {
        assert!(Instant::now() < deadline, "the stalled worker never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The process stops (a frozen VM, a swap storm) for longer than the lease;
    // meanwhile another instance takes its claimed mail over and sends it.
    stalled.signal("-STOP");
    let mut other = Serve::start_on_own_port(
        &db,
        &sink.url(),
        "workers = 4\n[digest]\nrun_scheduler = false\n",
    )
    .await;
    other.wait_ready(&http).await;
    wait_for_readers(
        &sink,
        FEW,
        Instant::now() + TAKEOVER,
        "from the instance that took over",
    )
    .await;
    other.signal("-TERM");
    other.child.wait().unwrap();

    // The stalled worker wakes up with a batch another instance has sent. The
    // mail it is given next (a confirmation, queued after it woke) goes out only
    // once it has gone through that batch, so when it arrives the worker has
    // decided about every stale mail.
    stalled.signal("-CONT");
    // A fresh client: connections kept from before the stop may have been closed.
    let r = reqwest::Client::new()
        .post(format!("{}/subscribe", stalled.base))
        .json(&serde_json::json!({
            "email": "marker@example.net", "topics": ["wirtschaft"], "consent": true
        }))
        .send()
        .await
        .expect("sign-up at the woken instance");
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !received(&sink).contains_key("marker@example.net") {
        assert!(
            Instant::now() < deadline,
            "the woken worker never got to new mail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by = received(&sink);
    let twice: Vec<_> = by.iter().filter(|(_, n)| **n > 1).collect();
    // At most the one SMTP transaction the stop may have caught in flight.
    assert!(
        duplicates(&by) <= 1,
        "the stalled worker sent mail it had lost: {twice:?}"
    );
    assert_eq!(queued_and_leased(&store).await.0, 0);
}

/// A relay that accepts connections and never says a word; counts them.
fn silent_relay() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let port = crate::harness::RefusedPort::new();
    let url = port.smtp_url();
    let listener = port.listen();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (url, accepted)
}

/// A pass inside `serve` hands its digests to the process's own workers
/// (`mail::handoff`): as many as they have room for (32 per worker) are queued
/// already leased, in batches of a worker's claim, and the rest is queued for a
/// claim. Seen with a relay that accepts connections and never greets, and the only
/// worker stuck on a sign-up's mail before the pass: it claims nothing, yet right
/// after the pass 32 digests are leased to one holder (per lane of the pass).
async fn a_pass_in_serve_queues_its_digests_leased_to_its_own_workers(backend: Backend) {
    const FEW: usize = 100;
    let db = TestDb::new(backend).await;
    let (relay, connections) = silent_relay();
    let http = reqwest::Client::new();
    let serve = Serve::start_on_own_port(
        &db,
        &relay,
        "workers = 1\n[digest]\nrun_scheduler = false\n",
    )
    .await;
    serve.wait_ready(&http).await;
    setup(&http, &serve, &db, FEW).await;
    let r = serve
        .api(&http)
        .sign_up_form(&crate::harness::form("vorher@example.org", &["wirtschaft"]))
        .await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while connections.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the worker never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    assert_eq!(serve.run_pass(&http, &at).await["enqueued"], FEW as u64);

    let rows = db
        .text_rows(
            "SELECT CAST(lease_owner AS TEXT), CAST(attempts AS TEXT) FROM mail_jobs \
             WHERE kind = 'digest' AND status = 'queued'",
            &[],
        )
        .await;
    assert_eq!(rows.len(), FEW, "every digest still queued");
    // PostgreSQL runs two lanes side by side; each may lease the room it saw.
    let lanes = if backend == Backend::Postgres { 2 } else { 1 };
    let leased: Vec<&Vec<Option<String>>> = rows.iter().filter(|r| r[0].is_some()).collect();
    assert!(
        (32..=32 * lanes).contains(&leased.len()),
        "leased: the stuck worker's room of 32 (per lane): {rows:?}"
    );
    let mut per_owner: HashMap<&Option<String>, usize> = HashMap::new();
    for r in &leased {
        *per_owner.entry(&r[0]).or_default() += 1;
    }
    assert!(
        per_owner.len() <= lanes,
        "one holder per lane: {per_owner:?}"
    );
    assert!(
        per_owner.values().all(|n| *n <= 32),
        "32 mails per holder: {per_owner:?}"
    );
    assert!(
        leased.iter().all(|r| r[1].as_deref() == Some("1")),
        "the first attempt, as a claim counts it"
    );
    assert!(
        rows.iter()
            .filter(|r| r[0].is_none())
            .all(|r| r[1].as_deref() == Some("0")),
        "the rest queued for a claim"
    );
}

/// A sign-up's confirmation mail goes the same way: queued already leased, each
/// under its own holder, while the only worker is stuck with the first.
async fn sign_up_mail_is_queued_leased_to_the_workers_of_the_process(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (relay, _connections) = silent_relay();
    let http = reqwest::Client::new();
    let serve = Serve::start_on_own_port(&db, &relay, "workers = 1\n").await;
    serve.wait_ready(&http).await;
    let api = serve.api(&http);
    api.create_topic("wirtschaft", "Wirtschaft").await;
    for who in ["a@example.org", "b@example.org", "c@example.org"] {
        let r = api
            .sign_up_form(&crate::harness::form(who, &["wirtschaft"]))
            .await;
        assert_eq!(r.status(), 200, "sign-up of {who}");
    }
    let rows = db
        .text_rows(
            "SELECT CAST(lease_owner AS TEXT) FROM mail_jobs WHERE kind = 'confirm' AND status = 'queued'",
            &[],
        )
        .await;
    assert_eq!(rows.len(), 3, "the three confirmation mails wait");
    assert!(
        rows.iter().all(|r| r[0].is_some()),
        "confirmation mails queued without a lease, for a claim: {rows:?}"
    );
    let owners: std::collections::HashSet<&Option<String>> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(owners.len(), 3, "each under its own holder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_mail_is_queued_leased_to_the_workers_of_the_process_on_postgres() {
    sign_up_mail_is_queued_leased_to_the_workers_of_the_process(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_mail_is_queued_leased_to_the_workers_of_the_process_on_sqlite() {
    sign_up_mail_is_queued_leased_to_the_workers_of_the_process(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_in_serve_queues_its_digests_leased_to_its_own_workers_on_postgres() {
    a_pass_in_serve_queues_its_digests_leased_to_its_own_workers(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_in_serve_queues_its_digests_leased_to_its_own_workers_on_sqlite() {
    a_pass_in_serve_queues_its_digests_leased_to_its_own_workers(Backend::Sqlite).await;
}

/// A pass offers each body it rendered and stored to its process's workers, ready to
/// go out: they need not read it back from the database nor encode it again. The
/// pass here is a `Digester` of the test's own with a body cache of its own (the
/// app's workers fill only theirs), so only the pass can have put the bodies there.
async fn a_pass_offers_the_bodies_it_stored_to_the_workers(backend: Backend) {
    use postbote::mail::delivery::BodyCache;
    use postbote::services::{Schema, Services};
    use std::sync::Arc;

    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let mut config = crate::harness::test_config(&db, &sink.url());
    config.digest.run_scheduler = false;
    let app = crate::harness::TestApp::spawn(config.clone()).await;
    let now = Utc::now();
    app.create_topic("wirtschaft", "Wirtschaft").await;
    app.create_topic("kultur", "Kultur").await;
    for (email, topics, locale) in [
        ("a@example.org", &["wirtschaft"][..], "de"),
        ("b@example.org", &["kultur"], "de"),
        ("c@example.org", &["wirtschaft", "kultur"], "en"),
    ] {
        app.reader(email, topics, "07:00", "Europe/Berlin", locale, now)
            .await;
    }
    app.post_item(&["wirtschaft"], "Zahlen").await;
    app.post_item(&["kultur"], "Premiere").await;

    let services = Services::open(&config, Schema::Migrate).await.unwrap();
    let bodies = Arc::new(BodyCache::default());
    let digester = postbote::digest::Digester {
        store: app.store.clone(),
        composer: services.composer(&config, app.base.clone()).await.unwrap(),
        settings: config.digest.clone(),
        clock: Arc::new(postbote::clock::SystemClock),
        mail_wake: Arc::new(tokio::sync::Notify::new()),
        handoff: None,
        bodies: Some(bodies.clone()),
    };
    let outcome = digester
        .run_pass(now + chrono::Duration::days(2))
        .await
        .unwrap();
    assert_eq!(outcome.enqueued, 3, "{outcome:?}");
    let ids = db
        .text_rows(
            "SELECT DISTINCT CAST(body_id AS TEXT) FROM mail_jobs WHERE body_id IS NOT NULL",
            &[],
        )
        .await;
    assert_eq!(ids.len(), 3, "three distinct bodies: {ids:?}");
    for row in ids {
        let id: i64 = row[0].as_deref().unwrap().parse().unwrap();
        assert!(bodies.holds(id), "body {id} offered to the workers");
    }
    // And the app's workers send them, from their own cache or the database.
    sink.wait_for(3).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_offers_the_bodies_it_stored_to_the_workers_on_postgres() {
    a_pass_offers_the_bodies_it_stored_to_the_workers(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_offers_the_bodies_it_stored_to_the_workers_on_sqlite() {
    a_pass_offers_the_bodies_it_stored_to_the_workers(Backend::Sqlite).await;
}
