//! The bounce loop end to end with a real Postfix on loopback: `postbote serve`
//! sends a digest through Postfix to an address Postfix cannot deliver, Postfix
//! writes its own RFC 3464 bounce to the VERP envelope sender, its pipe transport
//! hands that bounce to `postbote inbound`, and the reader ends up "bounced".
//! And the relay's own word: Postfix refusing a reader's mailbox at `RCPT TO`, as a
//! smarthost does, bounces that reader too; a refusal by policy fails the mail only.
//!
//! The Postfix instance is private: its own configuration, queue and log in a
//! temporary folder (`postfix -c DIR`), so the machine's /etc/postfix is neither
//! read nor changed. Needs root (Postfix's master runs as root; the pipe runs
//! `postbote inbound` as `nobody`). The DSN loop needs PostgreSQL over TCP
//! (`POSTBOTE_TEST_PG_URL`), because the inbound process runs as `nobody` and must
//! reach the database; the relay's refusals run on both backends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN_TOKEN, Backend, TestApp, TestDb, drained, free_port, listens_on, test_config, utc,
    wait_listening,
};
use chrono::Utc;
use postbote::clock::ManualClock;
use postbote::domain::{
    DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, TopicSlug, Weekdays,
};
use postbote::store::ImportedSubscriber;

/// Where the VERP bounces go; Postfix's transport map sends it to the pipe.
const BOUNCE_DOMAIN: &str = "bounces.test";
/// A domain Postfix delivers locally, where no such user exists.
const READER: &str = "gone.reader@undeliverable.test";
/// Refused by Postfix at `RCPT TO` as a mailbox that does not exist (5.1.1).
const NO_SUCH_MAILBOX: &str = "refused@undeliverable.test";
/// Refused by Postfix at `RCPT TO` by policy (5.7.1): nothing wrong with the address.
const REFUSED_BY_POLICY: &str = "policy@undeliverable.test";
/// A domain whose mail Postfix accepts and discards: delivered, as far as we know.
const INBOX_DOMAIN: &str = "inbox.test";

fn postfix_bin(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

/// Runs a Postfix command for the instance; panics with its output on failure.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run it ({e}); Debian package postfix, scripts/test installs it")
    });
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private Postfix: SMTP on 127.0.0.1:`port`, `undeliverable.test` delivered
/// locally (unknown users accepted, then bounced) except for two addresses refused
/// at `RCPT TO`, `inbox.test` discarded, `bounces.test` piped into
/// `postbote inbound`. Or, through [`Postfix::launch`], any other configuration.
pub(crate) struct Postfix {
    dir: tempfile::TempDir,
    /// The ports of master.cf's smtpd services, in their order; `smtp_url` names
    /// the first.
    pub(crate) ports: Vec<u16>,
}

/// Postfix's master.cf: smtpd on `port`, the services a queue needs, and the
/// pipe to `postbote inbound` (`pipe_argv`, run as `nobody`).
pub(crate) fn master_cf(port: u16, pipe_argv: &str) -> String {
    format!(
        "127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
postbote   unix  - n n -     - pipe
  flags=Rq user=nobody argv={pipe_argv}
"
    )
}

impl Postfix {
    /// Writes main.cf and master.cf and starts the instance. `pipe_argv` is the
    /// `argv=` of the pipe service, run as `nobody`.
    fn start(dir: tempfile::TempDir, pipe_argv: &str) -> Self {
        let root = dir.path();
        let etc = root.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let d = root.display();
        let main_cf = format!(
            "myhostname = mail.test
mydomain = mail.test
myorigin = mail.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination = mail.test, undeliverable.test
# Accept mail for unknown local users and bounce it afterwards, as a remote MX does.
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
smtpd_peername_lookup = no
smtputf8_enable = no
biff = no
transport_maps = texthash:{d}/etc/transport
# Refuse two addresses while the client waits, as a smarthost does.
smtpd_recipient_restrictions = check_recipient_access texthash:{d}/etc/rcpt_access,
  permit_mynetworks, reject_unauth_destination
# One recipient per pipe call: the command line carries it.
postbote_destination_recipient_limit = 1
"
        );
        std::fs::write(
            etc.join("transport"),
            format!("{BOUNCE_DOMAIN} postbote:\n{INBOX_DOMAIN} discard:\n"),
        )
        .unwrap();
        // Postfix puts "<address>: Recipient address rejected:" before the text.
        std::fs::write(
            etc.join("rcpt_access"),
            format!(
                "{NO_SUCH_MAILBOX} 550 5.1.1 User unknown\n\
                 {REFUSED_BY_POLICY} 550 5.7.1 Refused by local policy\n"
            ),
        )
        .unwrap();
        Self::launch(dir, &main_cf, 1, |ports| master_cf(ports[0], pipe_argv))
    }

    /// Writes main.cf (the instance's own folders, then `main_cf`) and the master.cf
    /// that `master_cf` makes for `ports` ports (its smtpd services' ports, in
    /// order), and starts the instance in `dir`.
    pub(crate) fn launch(
        dir: tempfile::TempDir,
        main_cf: &str,
        ports: usize,
        master_cf: impl Fn(&[u16]) -> String,
    ) -> Self {
        let etc = dir.path().join("etc");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(dir.path().join("queue")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        // Postfix's master takes its lock in data_directory as the mail owner.
        run(
            Command::new("chown").arg("postfix").arg(&data),
            "chown postfix data",
        );
        let d = dir.path().display();
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
# A service whose process failed (on a loaded machine) is not taken away for
# Postfix's default minute: the tests wait for seconds.
service_throttle_time = 1s
{main_cf}"
            ),
        )
        .unwrap();
        // A port chosen by the OS is free only until someone binds it: when Postfix
        // cannot bind one, its master exits and the instance starts again on others.
        let mut pf = Self {
            dir,
            ports: Vec::new(),
        };
        for _ in 0..5 {
            pf.ports = (0..ports).map(|_| free_port()).collect();
            std::fs::write(etc.join("master.cf"), master_cf(&pf.ports)).unwrap();
            run(&mut pf.postfix(&["check"]), "postfix check");
            run(&mut pf.postfix(&["start"]), "postfix start");
            if pf.master_listens(Instant::now() + Duration::from_secs(20)) {
                return pf;
            }
        }
        panic!("Postfix could not bind a port in five tries");
    }

    /// Whether Postfix's master process itself listens on this instance's ports
    /// (false when it exited instead, e.g. because a port was taken).
    fn master_listens(&self, deadline: Instant) -> bool {
        let pid_file = self.dir.path().join("queue/pid/master.pid");
        loop {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                if self.ports.iter().all(|port| listens_on(pid, *port)) {
                    return true;
                }
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return false;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Postfix does not listen on {:?}\n{}",
                self.ports,
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn postfix(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(postfix_bin("postfix"));
        cmd.arg("-c").arg(self.dir.path().join("etc")).args(args);
        cmd
    }

    fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.ports[0])
    }

    /// The instance's folder (configuration in `etc/`, the log in `maillog`).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The instance's log so far.
    pub(crate) fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Lines of the log that contain every one of `needles`.
    pub(crate) fn log_lines(&self, needles: &[&str]) -> usize {
        self.maillog()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until `n` lines of the log contain every one of `needles` (Postfix
    /// logs through its own daemon, a moment after the fact).
    pub(crate) async fn wait_log_lines(&self, needles: &[&str], n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_lines(needles) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines with {needles:?} in the Postfix log:\n{}",
                self.maillog()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&self) {
        let _ = self.postfix(&["stop"]).output();
        // `postfix status` fails once the master no longer holds its lock.
        let deadline = Instant::now() + Duration::from_secs(15);
        while self
            .postfix(&["status"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Postfix maillog ---\n{}", self.maillog());
        }
        self.stop();
    }
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The postbote binary at a path `nobody` can execute: the build output when its
/// folders are open to all, else a copy in `dir`.
fn binary_for_nobody(dir: &Path) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_postbote"));
    let reachable = Command::new("runuser")
        .args(["-u", "nobody", "--", "test", "-x"])
        .arg(&built)
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        return built;
    }
    let copy = dir.join("postbote");
    std::fs::copy(&built, &copy).expect("copy the postbote binary");
    copy
}

pub(crate) fn assert_root() {
    let whoami = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout).trim(),
        "0",
        "this test starts a private Postfix and must run as root"
    );
}

/// The folder for a Postfix instance. Everything the pipe's `nobody` reads lives in
/// it, so it is open to all.
pub(crate) fn postfix_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("postbote-postfix-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_bounces_a_digest_and_its_pipe_marks_the_reader_bounced() {
    let started = Instant::now();
    // Fails with a clear message when POSTBOTE_TEST_PG_URL is not set.
    let db = TestDb::new(Backend::Postgres).await;
    assert_root();

    let dir = postfix_dir();
    let binary = binary_for_nobody(dir.path());
    let config = dir.path().join("postbote.toml");

    // postbote inbound, as nobody, reads this config file and nothing else.
    let pipe_argv = format!(
        "{} inbound --config {} --recipient ${{original_recipient}}",
        binary.display(),
        config.display()
    );
    let postfix = Postfix::start(dir, &pipe_argv);
    std::fs::write(
        &config,
        format!(
            r#"database_url = "{db_url}"
smtp_url = "{smtp}"
admin_token = "{ADMIN_TOKEN}"
data_dir = "{data}"
mail_from = "News <news@example.org>"
bounce_address = "bounces+{{id}}@{BOUNCE_DOMAIN}"

[delivery]
poll_interval_ms = 100
retry_base_ms = 200
retry_max_ms = 500

[digest]
run_scheduler = false
"#,
            db_url = db.url,
            smtp = postfix.smtp_url(),
            data = db.dir.path().join("data").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    // `nobody` can run the binary and read the config: an empty message is refused
    // as unparseable (65), not as a configuration problem (75).
    let probe = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&binary)
        .args(["inbound", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("runuser (util-linux)");
    assert_eq!(
        probe.status.code(),
        Some(65),
        "postbote inbound as nobody: {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // serve binds the port it is given; when someone took it first, serve exits
    // and is started again on another.
    let (serve, listen) = (0..5)
        .find_map(|_| {
            let listen = free_port();
            let mut serve = Killed(
                Command::new(&binary)
                    .args(["serve", "--config"])
                    .arg(&config)
                    .env("POSTBOTE_LISTEN", format!("127.0.0.1:{listen}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start postbote serve"),
            );
            wait_listening(&mut serve.0, listen, Duration::from_secs(30)).then_some((serve, listen))
        })
        .expect("serve could not bind a port in five tries");
    let base = format!("http://127.0.0.1:{listen}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let r = http
        .post(format!("{base}/api/v1/topics"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "wirtschaft", "name": "Wirtschaft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let store = db.store().await;
    store
        .import_confirmed(
            &ImportedSubscriber {
                email: EmailAddress::parse(READER).unwrap(),
                topics: vec![TopicSlug::parse("wirtschaft").unwrap()],
                schedule: DeliverySchedule {
                    time: DeliveryTime::parse("07:00").unwrap(),
                    timezone: TimeZone::parse("Europe/Berlin").unwrap(),
                    weekdays: Weekdays::EVERY_DAY,
                },
                locale: Locale::De,
                consent_at: Utc::now(),
                consent_ip: None,
                source: "postfix bounce test".into(),
            },
            Utc::now(),
            chrono::Duration::hours(24),
        )
        .await
        .unwrap()
        .expect("a new reader");
    let r = http
        .post(format!("{base}/api/v1/items"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"topics": ["wirtschaft"], "title": "Eine Meldung"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let r = http
        .post(format!("{base}/api/v1/digests/run"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"at": at}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pass: serde_json::Value = r.json().await.unwrap();
    assert_eq!(pass["enqueued"], 1, "{pass}");

    // Postfix accepts the digest, bounces it, and pipes its bounce into postbote.
    let deadline = Instant::now() + Duration::from_secs(60);
    let export = loop {
        let export: serde_json::Value = http
            .get(format!("{base}/api/v1/subscribers/{READER}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if export["status"] == "bounced" {
            break export;
        }
        assert!(
            Instant::now() < deadline,
            "the reader is not bounced within 60 s: {export}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert_eq!(export["deliveries"][0]["status"], "sent", "{export}");
    let events = export["mail_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let hard: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "hard_bounce")
        .collect();
    assert_eq!(hard.len(), 1, "{export}");
    let detail = hard[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("failed") && detail.contains("5.1.1"),
        "Postfix's local delivery reports an unknown user: {detail}"
    );
    assert!(store.is_suppressed(READER).await.unwrap());

    // And it went the way it should: the digest bounced by Postfix's local delivery
    // agent, Postfix's bounce delivered to the VERP address by the pipe service.
    let log = postfix.maillog();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the Postfix log:\n{log}"))
            .to_owned()
    };
    // The digest: VERP envelope sender, refused by the local delivery agent.
    let digest_from = line(&format!("@{BOUNCE_DOMAIN}>, size="));
    let verp = digest_from
        .split("from=<")
        .nth(1)
        .and_then(|r| r.split('>').next())
        .unwrap()
        .to_owned();
    assert!(verp.starts_with("bounces+"), "{digest_from}");
    let refused = line(&format!("to=<{READER}>, relay=local"));
    assert!(
        refused.contains("dsn=5.1.1, status=bounced (unknown user"),
        "{refused}"
    );
    // Postfix's bounce: null sender, to the VERP address, delivered by the pipe.
    let notice = line("sender non-delivery notification: ");
    let dsn_id = notice.rsplit(' ').next().unwrap();
    assert!(
        log.contains(&format!("{dsn_id}: from=<>, ")),
        "the bounce {dsn_id} has the null sender:\n{log}"
    );
    let piped = line(&format!("{dsn_id}: to=<{verp}>, relay=postbote"));
    assert!(piped.contains("status=sent"), "{piped}");
    drop(serve);
    drop(postfix);
    eprintln!("postfix bounce round trip: {:?}", started.elapsed());
}

/// The reader's mail events of one kind.
fn events<'a>(export: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    export["mail_events"]
        .as_array()
        .map(|events| events.iter().filter(|e| e["kind"] == kind).collect())
        .unwrap_or_default()
}

/// The reader's mails: (status, last error), oldest first.
fn deliveries(export: &serde_json::Value) -> Vec<(String, String)> {
    export["deliveries"]
        .as_array()
        .map(|mails| {
            mails
                .iter()
                .map(|m| {
                    (
                        m["status"].as_str().unwrap_or_default().to_owned(),
                        m["last_error"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A smarthost says "no such mailbox" while we wait, instead of a DSN later: that
/// reader is bounced and suppressed and gets no further digest. A refusal by policy
/// (5.7.1) fails that one digest and leaves the reader as they were.
async fn a_relay_refusing_a_mailbox_bounces_its_reader_and_a_policy_refusal_fails_the_mail_only(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    assert_root();
    // Nothing is piped here: the refusals are answered while postbote waits.
    let postfix = Postfix::start(postfix_dir(), "/bin/false");
    let mut config = test_config(&db, &postfix.smtp_url());
    config.digest.run_scheduler = false;
    let now = utc("2027-01-14T12:00:00Z");
    let clock = ManualClock::new(now);
    let app = TestApp::spawn_with_clock(config, Arc::new(clock.clone())).await;
    app.create_topic("wirtschaft", "Wirtschaft").await;
    let delivered = format!("reader@{INBOX_DOMAIN}");
    for reader in [NO_SUCH_MAILBOX, REFUSED_BY_POLICY, delivered.as_str()] {
        app.reader(reader, &["wirtschaft"], "07:00", "Europe/Berlin", "de", now)
            .await;
    }
    clock.set(utc("2027-01-14T13:00:00Z"));
    app.post_item(&["wirtschaft"], "Quartalszahlen").await;

    // Day one: three digests, one refused as a bad mailbox, one by policy.
    assert_eq!(app.run_pass("2027-01-15T06:00:00Z").await, (3, 3));
    let deadline = Instant::now() + Duration::from_secs(20);
    let gone = loop {
        let export = app.export(NO_SUCH_MAILBOX).await.expect("export");
        if export["status"] == "bounced" {
            break export;
        }
        assert!(
            Instant::now() < deadline,
            "the refused reader is not bounced within 20 s: {export}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drained(&app).await;
    let hard = events(&gone, "hard_bounce");
    assert_eq!(hard.len(), 1, "{gone}");
    let detail = hard[0]["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        format!(
            "relay refused RCPT TO: 550 5.1.1 <{NO_SUCH_MAILBOX}>: Recipient address rejected: User unknown"
        ),
        "the detail says the relay refused it while we waited"
    );
    let gone_mails = deliveries(&gone);
    assert_eq!(gone_mails.len(), 1, "{gone}");
    assert_eq!(gone_mails[0].0, "failed");
    assert!(gone_mails[0].1.contains("550 5.1.1"), "{gone}");
    assert!(app.store.is_suppressed(NO_SUCH_MAILBOX).await.unwrap());

    let policy = app.export(REFUSED_BY_POLICY).await.expect("export");
    assert_eq!(policy["status"], "confirmed", "{policy}");
    assert_eq!(policy["mail_events"], serde_json::json!([]), "{policy}");
    assert_eq!(
        deliveries(&policy),
        [(
            "failed".to_owned(),
            format!(
                "relay refused RCPT TO: 550 5.7.1 <{REFUSED_BY_POLICY}>: Recipient address rejected: Refused by local policy"
            )
        )]
    );
    assert!(!app.store.is_suppressed(REFUSED_BY_POLICY).await.unwrap());

    let fine = app.export(&delivered).await.expect("export");
    assert_eq!(fine["status"], "confirmed", "{fine}");
    assert_eq!(deliveries(&fine), [("sent".to_owned(), String::new())]);
    let accepted = format!("to=<{delivered}>");
    postfix.wait_log_lines(&[&accepted, "status=sent"], 1).await;

    // Day two: the bounced reader is not due; the policy-refused reader still is.
    clock.set(utc("2027-01-15T13:00:00Z"));
    app.post_item(&["wirtschaft"], "Nachtrag").await;
    assert_eq!(app.run_pass("2027-01-16T06:00:00Z").await, (2, 2));
    drained(&app).await;
    postfix.wait_log_lines(&[&accepted, "status=sent"], 2).await;
    let policy_refusals = format!("to=<{REFUSED_BY_POLICY}>");
    postfix
        .wait_log_lines(&["reject: RCPT", &policy_refusals], 2)
        .await;
    let gone_refusals = format!("to=<{NO_SUCH_MAILBOX}>");
    assert_eq!(
        postfix.log_lines(&["reject: RCPT", &gone_refusals]),
        1,
        "the bad mailbox was offered one digest, never again:\n{}",
        postfix.maillog()
    );
    assert_eq!(postfix.log_lines(&[&gone_refusals]), 1);

    let gone = app.export(NO_SUCH_MAILBOX).await.expect("export");
    assert_eq!(gone["status"], "bounced");
    assert_eq!(deliveries(&gone).len(), 1, "{gone}");
    let policy = app.export(REFUSED_BY_POLICY).await.expect("export");
    assert_eq!(policy["status"], "confirmed", "{policy}");
    assert_eq!(policy["mail_events"], serde_json::json!([]), "{policy}");
    let policy_mails = deliveries(&policy);
    assert_eq!(policy_mails.len(), 2, "{policy}");
    assert!(
        policy_mails
            .iter()
            .all(|(status, error)| status == "failed" && error.contains("550 5.7.1")),
        "{policy}"
    );
    let fine = app.export(&delivered).await.expect("export");
    assert_eq!(
        deliveries(&fine),
        [
            ("sent".to_owned(), String::new()),
            ("sent".to_owned(), String::new())
        ]
    );
    app.stop().await;
    drop(postfix);
}

on_both_backends!(
    a_relay_refusing_a_mailbox_bounces_its_reader_and_a_policy_refusal_fails_the_mail_only
);
