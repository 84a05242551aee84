//! Nothing is lost while the relay is down, however often it goes down, across a
//! crash of `serve`, or when `serve` is stopped in the middle of sending; temporary
//! refusals are retried with back-off up to `delivery.max_attempts`; without a relay
//! every mail is one whole file in the outbox; and no item is skipped or repeated
//! when items arrive while a digest pass runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN_TOKEN, Backend, RefusedPort, Serve, SmtpSink, TestApp, TestDb, find_link, form, parse,
    recipient, test_config, utc,
};
use chrono::{DateTime, Utc};
use postbote::clock::ManualClock;

/// A row of the mail queue, as these tests look at it.
#[derive(Debug, Clone)]
struct Job {
    id: i64,
    kind: String,
    recipient: String,
    status: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
}

type JobRow = (
    i64,
    String,
    String,
    String,
    i32,
    DateTime<Utc>,
    Option<String>,
);

/// Every mail, oldest first: the queued ones in the queue, the sent and failed
/// ones in the mail log (migration 0020), whose `next_attempt_at` is when they
/// finished.
async fn jobs(db: &TestDb) -> Vec<Job> {
    const SQL: &str = "SELECT id, kind, recipient, status, attempts, next_attempt_at, last_error \
                       FROM mail_jobs UNION ALL \
                       SELECT id, kind, recipient, status, attempts, finished_at, last_error \
                       FROM mail_log ORDER BY 1";
    let rows: Vec<JobRow> = if db.url.starts_with("sqlite://") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.expect("connect");
        let rows = sqlx::query_as(SQL)
            .fetch_all(&pool)
            .await
            .expect("the queue");
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
        let rows = sqlx::query_as(SQL)
            .fetch_all(&pool)
            .await
            .expect("the queue");
        pool.close().await;
        rows
    };
    rows.into_iter()
        .map(
            |(id, kind, recipient, status, attempts, next_attempt_at, last_error)| Job {
                id,
                kind,
                recipient,
                status,
                attempts,
                next_attempt_at,
                last_error,
            },
        )
        .collect()
}

/// Waits until the queue is as `done` wants it; returns it. Fails after 60 s (a
/// mail leased by a killed process waits out its 30 s lease), showing the queue.
async fn queue_until(db: &TestDb, what: &str, done: impl Fn(&[Job]) -> bool) -> Vec<Job> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = jobs(db).await;
        if done(&jobs) {
            return jobs;
        }
        assert!(Instant::now() < deadline, "{what}: {jobs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How often each recipient got a whole message, over all the given relays.
fn deliveries<'a>(sinks: impl IntoIterator<Item = &'a SmtpSink>) -> HashMap<String, usize> {
    let mut got = HashMap::new();
    for raw in sinks.into_iter().flat_map(SmtpSink::raw_messages) {
        *got.entry(recipient(&raw)).or_default() += 1;
    }
    got
}

fn once_each(readers: &[String]) -> HashMap<String, usize> {
    readers.iter().map(|r| (r.clone(), 1)).collect()
}

async fn a_sign_up_made_while_the_relay_is_down_is_delivered_when_it_is_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let down = RefusedPort::new();
    let app = TestApp::spawn(test_config(&db, &down.smtp_url())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    assert_eq!(
        app.sign_up_form(&form("patient@example.org", &["wirtschaft"]))
            .await
            .status(),
        200
    );

    // The relay refuses connections: the mail stays queued, and the outage costs
    // it no attempt, however long it lasts.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let export = app.export("patient@example.org").await.unwrap();
        let d = &export["deliveries"][0];
        if d["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connecting"))
            && d["attempts"] == 0
        {
            assert_eq!(d["status"], "queued");
            break;
        }
        assert!(Instant::now() < deadline, "no retries seen: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sink = SmtpSink::start_in_place_of(down, &[]);
    let raw = sink.wait_for(1).await;
    let link =
        find_link(&parse(&raw[0]).body_text(0).unwrap(), "confirm").expect("the confirmation link");
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    let export = app.wait_delivered("patient@example.org").await;
    assert_eq!(export["deliveries"][0]["status"], "sent");
    assert_eq!(export["status"], "confirmed");
    assert_eq!(sink.raw_messages().len(), 1, "delivered once");
}

async fn a_relay_that_goes_down_again_and_again_loses_no_mail_and_repeats_at_most_the_one_in_flight(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let mut down = RefusedPort::new();
    let port = down.port;
    let mut config = test_config(&db, &down.smtp_url());
    // One worker, so one transaction at a time: an outage can be timed to cut it.
    config.delivery.workers = 1;
    config.rate_limit.per_client_per_minute = 0;
    let app = TestApp::spawn(config).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    let readers: Vec<String> = (1..=7).map(|i| format!("leser{i}@example.org")).collect();
    for reader in &readers {
        let r = app.sign_up_form(&form(reader, &["wirtschaft"])).await;
        assert_eq!(r.status(), 200, "{reader}");
    }

    // Down from the start: every mail waits, and the outage costs none an attempt.
    queue_until(&db, "the relay tried and found down", |jobs| {
        jobs.len() == readers.len()
            && jobs.iter().all(|j| {
                j.status == "queued"
                    && j.attempts == 0
                    && j.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("connecting"))
            })
    })
    .await;

    // Twice: up, two mails delivered, and down again in the middle of the third
    // transaction. The relay answers DATA a second late and goes down within half a
    // second of that transaction's MAIL FROM (when smtp-sink opens its file), so
    // the message itself was never sent: it must come later, once.
    let mut gone = Vec::new();
    for round in 1..=2 {
        let mut sink = SmtpSink::start_in_place_of(down, &["-w", "1"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let whole = sink.raw_messages().len();
            let open = sink.in_progress();
            if whole >= 2 && open.len() == 1 && open[0] < Duration::from_millis(500) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {whole} mails whole, in progress since {open:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sink.stop();
        down = RefusedPort::again(port);
        gone.push(sink);
    }

    // Up for good: the rest arrives.
    let sink = SmtpSink::start_in_place_of(down, &["-w", "1"]);
    let queue = queue_until(&db, "every mail delivered", |jobs| {
        jobs.iter().all(|j| j.status == "sent")
    })
    .await;
    assert_eq!(queue.len(), readers.len());
    sink.wait_for(1).await;
    for dead in &gone {
        assert_eq!(
            dead.in_progress().len(),
            1,
            "each outage cut a transaction short"
        );
        assert!(dead.raw_messages().len() >= 2);
    }
    // Every mail arrived. A mail went out twice only when the outage caught the
    // relay after it had the message whole but before it said so: its "250"
    // waits in the relay's output while it answers the next mail's envelope,
    // which went out with that message's final dot. That is the outage's
    // transaction in flight, the last whole message of a dead relay, at most one
    // per outage. No message the relay never had whole is sent twice.
    let got = deliveries(gone.iter().chain([&sink]));
    let readers_got: BTreeSet<&String> = got.keys().collect();
    assert_eq!(readers_got, readers.iter().collect(), "every mail arrived");
    let in_flight: Vec<String> = gone
        .iter()
        .map(|dead| recipient(dead.raw_messages().last().unwrap()))
        .collect();
    let twice: Vec<&String> = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(r, _)| r)
        .collect();
    for reader in &twice {
        assert_eq!(got[*reader], 2, "{reader}: {got:?}");
        assert!(
            in_flight.contains(reader),
            "{reader} went out twice but was not in flight at an outage ({in_flight:?})"
        );
    }
    assert!(twice.len() <= gone.len(), "{got:?}");
}

async fn mail_queued_before_a_crash_is_sent_after_the_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let down = RefusedPort::new();
    let smtp = down.smtp_url();
    let http = reqwest::Client::new();

    let first = Serve::start_on_own_port(&db, &smtp, "").await;
    first.wait_ready(&http).await;
    let r = http
        .post(format!("{}/api/v1/topics", first.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{}/subscribe", first.base))
        .json(&serde_json::json!({"email": "durable@example.org", "topics": ["wirtschaft"], "consent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Wait until the first instance has tried and failed at least once.
    queue_until(&db, "a delivery attempt", |jobs| {
        jobs.len() == 1 && jobs[0].last_error.is_some() && jobs[0].status == "queued"
    })
    .await;
    let first_base = first.base.clone();
    drop(first); // SIGKILL: no chance to clean up.

    let sink = SmtpSink::start_in_place_of(down, &[]);
    let second = Serve::start_on_own_port(&db, &smtp, "").await;
    second.wait_ready(&http).await;
    // Killed between two tries, the first left the mail free; killed while it
    // held the mail for another try, the mail waits for that lease to end (30 s).
    queue_until(&db, "the mail sent by the second instance", |jobs| {
        jobs.len() == 1 && jobs[0].status == "sent"
    })
    .await;
    let raw = sink.wait_for(1).await;
    let mail = parse(&raw[0]);
    assert_eq!(recipient(&raw[0]), "durable@example.org");
    // The mail goes out as it was queued, with the first instance's address (each
    // instance here has its own port); its token works at the second.
    let link = find_link(&mail.body_text(0).unwrap(), "confirm").unwrap();
    let token = link
        .strip_prefix(&format!("{}/confirm/", first_base))
        .expect("a link to the first instance");
    let confirm = format!("{}/confirm/{token}", second.base);
    assert_eq!(http.post(&confirm).send().await.unwrap().status(), 200);
}

/// Waits for `serve` to exit after a signal; fails the test after 30 s.
async fn exit_within_30_s(serve: &mut Serve) -> std::process::ExitStatus {
    let signalled = Instant::now();
    loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "serve did not stop within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sigterm_stops_serve_gracefully_and_quickly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&[]);
    let http = reqwest::Client::new();
    let mut serve = Serve::start_on_own_port(&db, &sink.url(), "").await;
    serve.wait_ready(&http).await;
    serve.signal("-TERM");
    let status = exit_within_30_s(&mut serve).await;
    assert!(status.success(), "exit status {status}");
}

async fn sigterm_in_the_middle_of_sends_finishes_them_and_leaves_the_rest_queued(backend: Backend) {
    let db = TestDb::new(backend).await;
    // A slow relay: it answers DATA two seconds late, so the signal comes while
    // sends are in progress.
    let sink = SmtpSink::start_with(&["-w", "2"]);
    let http = reqwest::Client::new();
    let mut serve = Serve::start_on_own_port(&db, &sink.url(), "workers = 2\n").await;
    serve.wait_ready(&http).await;
    let r = http
        .post(format!("{}/api/v1/topics", serve.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sign_up = |email: &str| {
        let request = http
            .post(format!("{}/subscribe", serve.base))
            .json(&serde_json::json!({"email": email, "topics": ["wirtschaft"], "consent": true}));
        async move {
            assert_eq!(request.send().await.unwrap().status(), 202);
        }
    };
    let readers: Vec<String> = (1..=6).map(|i| format!("leser{i}@example.org")).collect();
    // One mail for each of the two workers, each in the middle of its transaction…
    for (n, reader) in readers[..2].iter().enumerate() {
        sign_up(reader).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while sink.in_progress().len() < n + 1 {
            assert!(Instant::now() < deadline, "no send of {reader} started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // …and four more waiting behind them.
    for reader in &readers[2..] {
        sign_up(reader).await;
    }
    assert_eq!(jobs(&db).await.len(), 6);
    assert_eq!(sink.in_progress().len(), 2, "two sends in progress");

    serve.signal("-TERM");
    let status = exit_within_30_s(&mut serve).await;
    assert!(status.success(), "exit status {status}");

    // The sends in progress were finished, not cut off, and recorded; the others
    // are still queued, not even tried.
    let queue = jobs(&db).await;
    let sent: BTreeSet<&str> = queue
        .iter()
        .filter(|j| j.status == "sent")
        .map(|j| j.recipient.as_str())
        .collect();
    assert_eq!(
        sent,
        readers[..2].iter().map(String::as_str).collect(),
        "{queue:#?}"
    );
    for j in queue.iter().filter(|j| j.status != "sent") {
        assert_eq!((j.status.as_str(), j.attempts), ("queued", 0), "{j:?}");
    }
    assert!(sink.in_progress().is_empty(), "no transaction was cut off");
    assert_eq!(deliveries([&sink]), once_each(&readers[..2]));

    // After a restart the rest goes out, and nothing twice.
    let mut second = Serve::start_on_own_port(&db, &sink.url(), "workers = 2\n").await;
    queue_until(&db, "every mail delivered after the restart", |jobs| {
        jobs.iter().all(|j| j.status == "sent")
    })
    .await;
    sink.wait_for(readers.len()).await;
    assert_eq!(deliveries([&sink]), once_each(&readers));
    second.signal("-TERM");
    assert!(exit_within_30_s(&mut second).await.success());
}

/// A confirmed reader of Wirtschaft with one new item, served by a pass: one
/// digest queued.
async fn one_digest_queued(app: &TestApp, email: &str, now: DateTime<Utc>) {
    digests_queued(app, &[email], now).await;
}

/// Confirmed readers of Wirtschaft with one new item, served by a pass: a digest
/// queued for each.
async fn digests_queued(app: &TestApp, emails: &[&str], now: DateTime<Utc>) {
    app.create_topic("wirtschaft", "Wirtschaft").await;
    for email in emails {
        app.reader(email, &["wirtschaft"], "07:00", "Europe/Berlin", "de", now)
            .await;
    }
    app.post_item(&["wirtschaft"], "Neue Meldung").await;
    let at = (now + chrono::Duration::days(2)).to_rfc3339();
    let n = emails.len() as u64;
    assert_eq!(app.run_pass(&at).await, (n, n));
}

async fn a_mail_the_relay_keeps_deferring_fails_after_max_attempts_and_the_reader_stays(
    backend: Backend,
) {
    // The relay answers 450 to RCPT TO, or to DATA, every time.
    for command in ["RCPT", "DATA"] {
        let db = TestDb::new(backend).await;
        let sink = SmtpSink::start_with(&["-r", command]);
        let mut config = test_config(&db, &sink.url());
        config.delivery.max_attempts = 3;
        config.digest.run_scheduler = false;
        let app = TestApp::spawn(config).await;
        let now = Utc::now();
        one_digest_queued(&app, "geduldig@example.org", now).await;

        let queue = queue_until(&db, "the digest given up", |jobs| {
            jobs.len() == 1 && jobs[0].status != "queued"
        })
        .await;
        let step = if command == "RCPT" { "RCPT TO" } else { "DATA" };
        let digest = &queue[0];
        assert_eq!(
            (digest.status.as_str(), digest.attempts),
            ("failed", 3),
            "{command}: {digest:?}"
        );
        assert_eq!(
            digest.last_error.as_deref(),
            Some(
                format!(
                    "gave up after 3 attempts: {step}: transient error (450): 4.3.0 Error: command failed"
                )
                .as_str()
            ),
            "{command}"
        );

        // A temporary refusal says nothing against the address: the reader is
        // neither bounced nor suppressed, and the next pass serves them again.
        let export = app.export("geduldig@example.org").await.unwrap();
        assert_eq!(export["status"], "confirmed", "{command}");
        assert_eq!(export["mail_events"], serde_json::json!([]), "{command}");
        assert!(
            !app.store
                .is_suppressed("geduldig@example.org")
                .await
                .unwrap()
        );
        app.post_item(&["wirtschaft"], "Noch eine Meldung").await;
        let later = (now + chrono::Duration::days(4)).to_rfc3339();
        assert_eq!(app.run_pass(&later).await, (1, 1), "{command}");
    }
}

async fn a_deferred_mail_waits_retry_base_then_twice_as_long_up_to_retry_max(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&["-r", "RCPT"]);
    let mut config = test_config(&db, &sink.url());
    config.delivery.workers = 1;
    config.delivery.retry_base = Duration::from_secs(60);
    config.delivery.retry_max = Duration::from_secs(200);
    config.delivery.max_attempts = 10;
    config.digest.run_scheduler = false;
    config.rate_limit.per_client_per_minute = 0;
    let t0 = utc("2027-05-03T06:00:00Z");
    let clock = ManualClock::new(t0);
    let app = TestApp::spawn_with_clock(config, Arc::new(clock.clone())).await;
    one_digest_queued(&app, "geduldig@example.org", t0).await;
    let digest = |jobs: &[Job]| jobs.iter().find(|j| j.kind == "digest").cloned();
    let seconds = chrono::Duration::seconds;

    // The first attempt at once; the next one retry_base later.
    let queue = queue_until(&db, "the first attempt", |jobs| {
        digest(jobs).is_some_and(|d| d.attempts == 1 && d.last_error.is_some())
    })
    .await;
    let first = digest(&queue).unwrap();
    assert_eq!(first.status, "queued");
    assert_eq!(first.next_attempt_at, t0 + seconds(60));

    // A second before that, a mail queued now is tried, and the digest is not: with
    // one worker, a due digest would have been claimed with it, or before it.
    clock.set(t0 + seconds(59));
    assert_eq!(
        app.sign_up_form(&form("neu@example.org", &["wirtschaft"]))
            .await
            .status(),
        200
    );
    let queue = queue_until(&db, "the confirmation mail tried", |jobs| {
        jobs.iter()
            .any(|j| j.kind == "confirm" && j.attempts == 1 && j.last_error.is_some())
    })
    .await;
    assert_eq!(
        digest(&queue).unwrap().attempts,
        1,
        "not tried before its time"
    );

    // Then each wait doubles, up to retry_max: 60 s, 120 s, 200 s (not 240), 200 s.
    let mut at = t0 + seconds(60);
    for (attempt, wait) in [(2, 120), (3, 200), (4, 200)] {
        clock.set(at);
        let queue = queue_until(&db, &format!("attempt {attempt}"), |jobs| {
            digest(jobs).is_some_and(|d| d.attempts == attempt && d.next_attempt_at > at)
        })
        .await;
        let next = digest(&queue).unwrap().next_attempt_at;
        assert_eq!(next, at + seconds(wait), "after attempt {attempt}");
        at = next;
    }
    assert!(sink.raw_messages().is_empty());
}

/// Whether an `.eml` file holds a whole multipart message: its last line closes
/// the outermost boundary.
fn whole_eml(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some(start) = text.find("boundary=\"") else {
        return false;
    };
    let rest = &text[start + 10..];
    let boundary = &rest[..rest.find('"').unwrap_or(0)];
    !boundary.is_empty() && text.trim_end().ends_with(&format!("--{boundary}--"))
}

async fn without_an_smtp_url_every_mail_is_one_whole_eml_file_in_the_outbox(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db, "");
    let outbox = match &config.transport {
        postbote::config::Transport::Outbox(dir) => dir.clone(),
        other => panic!("no SMTP URL, yet {other:?}"),
    };
    assert_eq!(outbox, db.dir.path().join("data").join("outbox"));
    config.digest.run_scheduler = false;
    config.rate_limit.per_client_per_minute = 0;
    let now = Utc::now();
    let app = TestApp::spawn(config).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;

    // Whoever reads the folder while mail is written there sees whole messages
    // only: every visible file is read as soon as it appears, until it was seen
    // whole once.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (outbox, stop) = (outbox.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut whole = BTreeSet::new();
            let mut partial = std::collections::BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(200));
                let Ok(entries) = std::fs::read_dir(&outbox) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') || whole.contains(&name) {
                        continue;
                    }
                    if let Ok(raw) = std::fs::read(entry.path()) {
                        if whole_eml(&raw) {
                            whole.insert(name);
                        } else {
                            partial.entry(name).or_insert(raw.len());
                        }
                    }
                }
            }
            (whole, partial)
        })
    };

    // Digests of 40 items with long summaries (about 100 KB each) for 30 readers,
    // and 10 confirmation mails.
    for n in 0..30 {
        let email = format!("leser{n}@example.org");
        app.reader(&email, &["wirtschaft"], "07:00", "Europe/Berlin", "de", now)
            .await;
    }
    for n in 0..40 {
        let r = app
            .admin(
                reqwest::Method::POST,
                "/items",
                Some(serde_json::json!({"topics": ["wirtschaft"], "title": format!("Meldung {n}"), "summary": format!("{n} ").repeat(300)})),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    let at = (now + chrono::Duration::days(2)).to_rfc3339();
    assert_eq!(app.run_pass(&at).await, (30, 30));
    for n in 0..10 {
        let email = format!("neu{n}@example.org");
        let r = app.sign_up_form(&form(&email, &["wirtschaft"])).await;
        assert_eq!(r.status(), 200);
    }
    let queue = queue_until(&db, "every mail written", |jobs| {
        jobs.len() == 40 && jobs.iter().all(|j| j.status == "sent")
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (seen_whole, partial) = watcher.await.unwrap();
    assert!(
        partial.is_empty(),
        "files seen before they were whole (name, size): {partial:?}"
    );

    // One file per mail, named after its queue id, nothing else left behind.
    let names: BTreeSet<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = queue.iter().map(|j| format!("{:012}.eml", j.id)).collect();
    assert_eq!(names, expected);
    assert_eq!(seen_whole, names, "the watcher saw every file");
    for job in &queue {
        let raw = std::fs::read(outbox.join(format!("{:012}.eml", job.id))).unwrap();
        assert!(whole_eml(&raw), "{}", job.id);
        let mail = parse(&raw);
        let to = mail
            .to()
            .and_then(|to| to.first())
            .and_then(|a| a.address());
        assert_eq!(to, Some(job.recipient.as_str()));
        let text = mail.body_text(0).unwrap();
        match job.kind.as_str() {
            "digest" => {
                assert!(mail.header("List-Unsubscribe").is_some());
                assert!(text.contains("* Meldung 39") && text.contains("* Meldung 0"));
            }
            "confirm" => assert!(find_link(&text, "confirm").is_some(), "{text}"),
            other => panic!("unexpected mail {other}"),
        }
    }
}

/// A relay that refuses readers' addresses keeps its session with the worker: after
/// each refusal the transaction is reset (`RSET`) and the next reader's digest goes
/// over the same connection. Through a smarthost a new session costs a TLS handshake
/// and a login. smtp-sink here refuses every `RCPT TO`, and counts the sessions.
async fn refused_readers_share_one_session_with_the_relay(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_with(&["-f", "RCPT"]);
    let mut config = test_config(&db, &sink.url());
    config.delivery.workers = 1;
    config.digest.run_scheduler = false;
    let app = TestApp::spawn(config).await;
    let readers = [
        "erste@example.org",
        "zweite@example.org",
        "dritte@example.org",
        "vierte@example.org",
    ];
    digests_queued(&app, &readers, Utc::now()).await;

    let queue = queue_until(&db, "every digest refused", |jobs| {
        jobs.iter().filter(|j| j.status == "failed").count() == readers.len()
    })
    .await;
    for job in &queue {
        assert_eq!(job.attempts, 1, "{job:?}");
        assert_eq!(
            job.last_error.as_deref(),
            Some("relay refused RCPT TO: 500 5.3.0 Error: command failed"),
            "{job:?}"
        );
    }
    // The worker ends its session once idle: then it is the only one there was.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.sessions_ended() == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker never ended its session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sink.sessions_ended(),
        1,
        "one session for all refused readers"
    );
}

on_both_backends!(
    refused_readers_share_one_session_with_the_relay,
    a_sign_up_made_while_the_relay_is_down_is_delivered_when_it_is_back,
    a_relay_that_goes_down_again_and_again_loses_no_mail_and_repeats_at_most_the_one_in_flight,
    mail_queued_before_a_crash_is_sent_after_the_restart,
    sigterm_stops_serve_gracefully_and_quickly,
    sigterm_in_the_middle_of_sends_finishes_them_and_leaves_the_rest_queued,
    a_mail_the_relay_keeps_deferring_fails_after_max_attempts_and_the_reader_stays,
    a_deferred_mail_waits_retry_base_then_twice_as_long_up_to_retry_max,
    without_an_smtp_url_every_mail_is_one_whole_eml_file_in_the_outbox,
);

/// One item as the inserting tasks stored it, and when.
struct Inserted {
    n: usize,
    topics: &'static [&'static str],
    sent: Instant,
    answered: Instant,
}

/// The topics of item `n`: nobody reads sport.
fn item_topics(n: usize) -> &'static [&'static str] {
    match n % 4 {
        0 => &["wirtschaft"],
        1 => &["kultur"],
        2 => &["wirtschaft", "kultur"],
        _ => &["sport"],
    }
}

/// The topics of reader `i`.
fn reader_topics(i: usize) -> &'static [&'static str] {
    match i % 3 {
        0 => &["wirtschaft"],
        1 => &["kultur"],
        _ => &["wirtschaft", "kultur"],
    }
}

/// The digest's date line and the numbers of the items it lists.
fn digest_items(raw: &[u8]) -> (String, BTreeSet<usize>) {
    let text = parse(raw).body_text(0).unwrap().into_owned();
    let date = text
        .lines()
        .find(|l| l.starts_with("Ihre Meldungen vom "))
        .unwrap_or_default()
        .to_owned();
    let items = text
        .lines()
        .filter_map(|l| l.strip_prefix("* Meldung "))
        .map(|n| n.trim().parse().expect("an item number"))
        .collect();
    (date, items)
}

/// Posts item number `n` with `topics` (and the title `Meldung {n}`), and records
/// when the request went out and when it was answered.
async fn post_numbered_item(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    topics: &'static [&'static str],
    extra_topics: &[&str],
) -> Inserted {
    let all: Vec<&str> = topics.iter().chain(extra_topics).copied().collect();
    let sent = Instant::now();
    let r = http
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"topics": all, "title": format!("Meldung {n}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "item {n}");
    Inserted {
        n,
        topics,
        sent,
        answered: Instant::now(),
    }
}

/// How many sessions of the test database wait for a lock.
async fn waiting_for_locks(monitor: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(monitor)
    .await
    .unwrap()
}

/// On PostgreSQL ids are drawn at insert time but become visible at commit, in any
/// order: a pass that took the largest committed id as its watermark while an item
/// with a smaller id was still being stored would skip that item for good. Here,
/// while four tasks post items through the API, one item's transaction is held up
/// right after its id was drawn (a row lock on its third topic, which nobody
/// reads, stalls the foreign-key check of that topic's link), items after it
/// commit, and a pass for 1,000 readers starts; the hold is let go when the pass
/// finishes or when another session waits for a lock (the watermark waiting for
/// the stalled item). Posting goes on during the pass and after it; a second pass
/// follows. Every item is in exactly one of the two digests of every reader of its
/// topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_item_is_skipped_or_repeated_when_items_arrive_while_a_pass_runs_on_postgres() {
    use sqlx::Connection;
    const READERS: usize = 1000;
    const MOST_ITEMS: usize = 800;
    let (app, sink, db, clock) =
        crate::harness::app_at(Backend::Postgres, "2027-05-03T06:00:00Z", |c| {
            c.digest.max_items = 1000;
        })
        .await;
    app.create_topic("stau", "Stau").await;
    let now = postbote::clock::Clock::now(&clock);
    let readers: Vec<postbote::store::ImportedSubscriber> = (0..READERS)
        .map(|i| {
            use postbote::domain::*;
            postbote::store::ImportedSubscriber {
                email: EmailAddress::parse(&format!("leser{i:04}@example.org")).unwrap(),
                topics: reader_topics(i)
                    .iter()
                    .map(|t| TopicSlug::parse(t).unwrap())
                    .collect(),
                schedule: DeliverySchedule {
                    time: DeliveryTime::parse("07:00").unwrap(),
                    timezone: TimeZone::parse("Europe/Berlin").unwrap(),
                    weekdays: Weekdays::EVERY_DAY,
                },
                locale: Locale::De,
                consent_at: now,
                consent_ip: None,
                source: "tests".into(),
            }
        })
        .collect();
    app.store
        .import_batch(&readers, now, chrono::Duration::hours(24))
        .await
        .unwrap();

    let items_url = app.url("/api/v1/items");
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(std::sync::Mutex::new(Vec::<Inserted>::new()));
    let mut inserters = Vec::new();
    for _ in 0..4 {
        let (next, stop, inserted) = (next.clone(), stop.clone(), inserted.clone());
        let (http, url) = (app.http.clone(), items_url.clone());
        inserters.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= MOST_ITEMS {
                    break;
                }
                let item = post_numbered_item(&http, &url, n, item_topics(n), &[]).await;
                inserted.lock().unwrap().push(item);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let count = |pred: &dyn Fn(&Inserted) -> bool| {
        inserted.lock().unwrap().iter().filter(|i| pred(i)).count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let wait_for_items = |n: usize, what: &str| {
        let what = what.to_owned();
        let count = &count;
        async move {
            while count(&|_| true) < n {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {} items",
                    count(&|_| true)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_items(10, "items before the stalled one").await;

    // The stalled item: its id is drawn, its Wirtschaft and Kultur links are
    // written, and its link to Stau waits for the row lock held here.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut hold = holder.begin().await.unwrap();
    sqlx::query("SELECT id FROM topics WHERE slug = 'stau' FOR UPDATE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let stalled_n = next.fetch_add(1, Ordering::SeqCst);
    let stalled = {
        let (http, url) = (app.http.clone(), items_url.clone());
        tokio::spawn(async move {
            post_numbered_item(&http, &url, stalled_n, &["wirtschaft", "kultur"], &["stau"]).await
        })
    };
    let mut monitor = sqlx::PgConnection::connect(&db.url).await.unwrap();
    while waiting_for_locks(&mut monitor).await < 1 {
        assert!(Instant::now() < deadline, "the item did not stall");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before_stall = count(&|_| true);
    wait_for_items(before_stall + 10, "items committed after the stalled one").await;

    let pass_started = Instant::now();
    let first_pass = {
        let (http, url) = (app.http.clone(), app.url("/api/v1/digests/run"));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&serde_json::json!({"at": "2027-05-04T05:00:00Z"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let answer = r.json::<serde_json::Value>().await.unwrap();
            (answer, Instant::now())
        })
    };
    // Let the stalled item go once the pass is done or waits for it.
    let release_deadline = Instant::now() + Duration::from_secs(10);
    while !first_pass.is_finished()
        && waiting_for_locks(&mut monitor).await < 2
        && Instant::now() < release_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hold.commit().await.unwrap();
    let (answer, pass_ended) = first_pass.await.unwrap();
    assert_eq!(
        (answer["due"].as_u64(), answer["enqueued"].as_u64()),
        (Some(READERS as u64), Some(READERS as u64))
    );
    let last = stalled.await.unwrap();
    inserted.lock().unwrap().push(last);
    while count(&|i| i.sent > pass_ended) < 20 {
        assert!(
            Instant::now() < deadline,
            "too few items stored after the pass: {} in all",
            count(&|_| true)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in inserters {
        task.await.unwrap();
    }
    let before = count(&|i| i.answered < pass_started);
    let during = count(&|i| i.sent > pass_started && i.answered < pass_ended);
    let after = count(&|i| i.sent > pass_ended);
    eprintln!(
        "items stored before the pass: {before}, during it: {during}, after it: {after}; the pass took {:?}",
        pass_ended - pass_started
    );
    assert!(
        during >= 1,
        "no item was stored while the pass ran ({:?})",
        pass_ended - pass_started
    );

    assert_eq!(
        app.run_pass("2027-05-05T05:00:00Z").await,
        (READERS as u64, READERS as u64)
    );
    let got = crate::harness::delivered(&app, &sink).await;
    let stored = inserted.lock().unwrap();
    for (i, subscriber) in readers.iter().enumerate() {
        let email = subscriber.email.as_str();
        let digests = got.get(email).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(digests.len(), 2, "{email}: one digest per pass");
        let mut by_date: Vec<(String, BTreeSet<usize>)> =
            digests.iter().map(|raw| digest_items(raw)).collect();
        by_date.sort();
        let [(first_date, first), (second_date, second)] = &by_date[..] else {
            unreachable!()
        };
        assert_eq!(
            (first_date.as_str(), second_date.as_str()),
            (
                "Ihre Meldungen vom 04.05.2027",
                "Ihre Meldungen vom 05.05.2027"
            ),
            "{email}"
        );
        let expected: BTreeSet<usize> = stored
            .iter()
            .filter(|item| item.topics.iter().any(|t| reader_topics(i).contains(t)))
            .map(|item| item.n)
            .collect();
        assert!(
            first.is_disjoint(second),
            "{email}: in both digests: {:?}",
            first.intersection(second).collect::<Vec<_>>()
        );
        let listed: BTreeSet<usize> = first.union(second).copied().collect();
        assert_eq!(
            listed,
            expected,
            "{email}: skipped {:?}, foreign {:?} (the stalled item is {stalled_n})",
            expected.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&expected).collect::<Vec<_>>()
        );
    }
}
