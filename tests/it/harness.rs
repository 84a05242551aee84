//! Test harness: the real application on port 0, against a fresh database of either
//! backend and a real SMTP server (Postfix's `smtp-sink`) on loopback.
//!
//! PostgreSQL tests need `POSTBOTE_TEST_PG_URL` (a superuser URL of a throwaway
//! cluster); `scripts/test` starts one and sets it. Every test gets its own database.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_parser::{Message, MessageParser};
use postbote::app::App;
use postbote::clock::{Clock, SystemClock};
use postbote::config::{Config, DatabaseUrl};
use postbote::store::Store;
use rand::RngCore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await
                }
            )*
        }
    };
}

/// A fresh, empty database of one backend, with the folder that holds its files.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("postbote.db").display()),
            Backend::Postgres => {
                let admin = std::env::var("POSTBOTE_TEST_PG_URL").expect(
                    "POSTBOTE_TEST_PG_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
                );
                let name = format!("postbote_test_{}", random_hex(8));
                let pool = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("connect to the test cluster");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .expect("create the test database");
                pool.close().await;
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        };
        Self { url, dir }
    }

    pub fn database_url(&self) -> DatabaseUrl {
        if self.url.starts_with("sqlite://") {
            DatabaseUrl::Sqlite(PathBuf::from(self.url.trim_start_matches("sqlite://")))
        } else {
            DatabaseUrl::Postgres(self.url.clone())
        }
    }

    /// A store on this database, migrated.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.database_url()).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

impl TestDb {
    /// The rows `sql` selects, each column as text (the query casts what is not), with
    /// `params` bound as text: for looking at what a command left in the database.
    pub async fn text_rows(&self, sql: &str, params: &[&str]) -> Vec<Vec<Option<String>>> {
        use sqlx::Row;
        fn texts<R: Row>(rows: Vec<R>) -> Vec<Vec<Option<String>>>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get(i).expect("a text column"))
                        .collect()
                })
                .collect()
        }
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        if self.url.starts_with("sqlite://") {
            let pool = sqlx::SqlitePool::connect(&self.url).await.expect("connect");
            let mut query = sqlx::query(sql);
            for p in params {
                query = query.bind(*p);
            }
            let rows = query.fetch_all(&pool).await.expect("query");
            pool.close().await;
            texts(rows)
        } else {
            let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
            let mut query = sqlx::query(sql);
            for p in params {
                query = query.bind(*p);
            }
            let rows = query.fetch_all(&pool).await.expect("query");
            pool.close().await;
            texts(rows)
        }
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A port nobody listens on right now, chosen by the OS.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A loopback port that refuses every connection for as long as this value lives:
/// its socket is bound but never listens, so a client gets "connection refused"
/// and nothing else can take the port meanwhile.
pub struct RefusedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl RefusedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a loopback port");
        let port = socket.local_addr().expect("its address").port();
        Self {
            port,
            _socket: socket,
        }
    }

    /// Starts listening on the reserved port: the service that was down is up, and
    /// no other process can have taken the port meanwhile.
    pub fn listen(self) -> tokio::net::TcpListener {
        self._socket
            .listen(128)
            .expect("listen on the reserved port")
    }

    /// `smtp://` to this port: a relay that is down.
    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Reserves `port` again after the relay on it was stopped, so it stays down
    /// and nothing else takes it. The stopped relay's connections linger in
    /// TIME_WAIT, so the socket needs `SO_REUSEADDR`; it still never listens.
    pub fn again(port: u16) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap_or_else(|e| panic!("reserve port {port} again: {e}"));
        Self {
            port,
            _socket: socket,
        }
    }
}

/// Whether process `pid` itself listens on `127.0.0.1:port`: its open files hold
/// the listening socket that `/proc/net/tcp` shows for that address. A port found
/// by connecting may belong to someone else who took it first.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A = LISTEN), inode.
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| format!("socket:[{}]", fields.get(9).unwrap_or(&"")))
        })
        .collect();
    !inodes.is_empty()
        && std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(Result::ok)
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            })
            .unwrap_or(false)
}

/// Waits until `child` listens on `port` (true) or exits (false, e.g. because the
/// port was taken between choosing and binding it); fails the test at `timeout`.
pub fn wait_listening(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if listens_on(child.id(), port) {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not listen on {port} within {timeout:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Postfix's `smtp-sink`, writing every received message to its own file.
pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    /// smtp-sink's running counters (`-c`), kept apart from the messages.
    counters: tempfile::NamedTempFile,
    child: Child,
}

impl SmtpSink {
    /// Starts on a port of its own (see [`SmtpSink::start_with`]).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with `extra` flags on a port of its own: a port chosen by the OS is
    /// free only until someone binds it, so when this sink cannot bind the one it
    /// was given, it is started again on another (at most five times).
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..5 {
            if let Some(sink) = Self::try_start_on(free_port(), extra) {
                return sink;
            }
        }
        panic!("smtp-sink could not bind a port in five tries");
    }

    /// Starts on the port `down` kept refusing: the relay comes back where the
    /// application looks for it. The port is let go only right before.
    pub fn start_in_place_of(down: RefusedPort, extra: &[&str]) -> Self {
        let port = down.port;
        drop(down);
        Self::try_start_on(port, extra)
            .unwrap_or_else(|| panic!("smtp-sink could not bind port {port} again"))
    }

    /// Starts on `port` and waits until this very process listens there; `None`
    /// when it exited instead (the port was taken).
    fn try_start_on(port: u16, extra: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        // smtp-sink drops root privileges to nobody, who must be able to write here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let template = format!("{}/%Y%m%d%H%M%S.", dir.path().display());
        let counters = tempfile::NamedTempFile::new().expect("counters file");
        let mut child = Command::new(smtp_sink_path())
            .args(["-u", "nobody", "-c", "-d", &template])
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(counters.reopen().expect("counters file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink (Debian package postfix; scripts/test installs it)");
        wait_listening(&mut child, port, Duration::from_secs(10)).then_some(Self {
            port,
            dir,
            counters,
            child,
        })
    }

    /// The SMTP sessions that have ended so far, as smtp-sink counts them (its `-c`
    /// line `sess=N quit=N msg=N`, rewritten after each).
    pub fn sessions_ended(&self) -> u64 {
        let text = std::fs::read_to_string(self.counters.path()).unwrap_or_default();
        text.rsplit('\r')
            .find_map(|line| line.strip_prefix("sess="))
            .and_then(|rest| rest.split(' ').next())
            .map_or(0, |n| n.parse().expect("smtp-sink's session count"))
    }

    /// The transactions in progress, as the time since each last wrote: smtp-sink
    /// opens a message's file at `MAIL FROM`, so these are files of messages that
    /// have not arrived whole (yet, or ever, when cut off).
    pub fn in_progress(&self) -> Vec<Duration> {
        std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
                let raw = std::fs::read(p).ok()?;
                (!is_complete(&raw)).then(|| modified.elapsed().unwrap_or_default())
            })
            .collect()
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every file smtp-sink has written so far, oldest first, whole or not.
    fn files(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        // Each file's time read once: a file still being written changes its time,
        // and a key that changes during the sort breaks its order (std panics).
        files.sort_by_cached_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    }

    /// The messages received whole so far, oldest first. smtp-sink writes a
    /// message's file while its DATA arrives, so a file still being written (or one
    /// left behind by a cut-off transaction) is not a message yet: see [`is_complete`].
    pub fn raw_messages(&self) -> Vec<Vec<u8>> {
        self.files()
            .into_iter()
            .filter(|m| is_complete(m))
            .collect()
    }

    /// Waits until at least `n` messages have arrived whole and none is still being
    /// written; returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let files = self.files();
            let msgs: Vec<Vec<u8>> = files.iter().filter(|m| is_complete(m)).cloned().collect();
            if msgs.len() >= n && msgs.len() == files.len() {
                return msgs;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} mails, got {} within 20 s",
                msgs.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn smtp_sink_path() -> &'static str {
    if Path::new("/usr/sbin/smtp-sink").exists() {
        "/usr/sbin/smtp-sink"
    } else {
        "smtp-sink"
    }
}

/// Whether a file of smtp-sink holds a whole message. smtp-sink writes the file in
/// 8 KiB blocks while the DATA arrives and, at its end, adds an empty line after the
/// message's last line; a multipart message must also have its closing boundary
/// (a transaction cut off by a kill may leave part of one behind).
pub fn is_complete(raw: &[u8]) -> bool {
    if !raw.ends_with(b"\n\n") {
        return false;
    }
    let text = String::from_utf8_lossy(raw);
    let Some(start) = text.find("boundary=\"") else {
        return true;
    };
    let rest = &text[start + 10..];
    let boundary = &rest[..rest.find('"').unwrap_or(0)];
    text.contains(&format!("--{boundary}--"))
}

pub fn parse(raw: &[u8]) -> Message<'_> {
    MessageParser::default()
        .parse(raw)
        .expect("a parseable mail")
}

/// The first `{base}/{route}/<token>` link in a text (confirm tokens are 64 hex
/// digits, unsubscribe and preferences tokens `<id>.<32 hex digits>`).
pub fn find_link(text: &str, route: &str) -> Option<String> {
    let needle = format!("/{route}/");
    let at = text.find(&needle)?;
    let start = text[..at].rfind("http").unwrap_or(at);
    let token: String = text[at + needle.len()..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '.')
        .collect();
    (token.len() >= 34).then(|| format!("{}{}{}", &text[start..at], needle, token))
}

/// Settings every test app gets; a test may change the config before spawning.
pub fn test_config(db: &TestDb, smtp_url: &str) -> Config {
    let env: HashMap<String, String> = [
        ("POSTBOTE_DATABASE_URL", db.url.clone()),
        ("POSTBOTE_LISTEN", "127.0.0.1:0".into()),
        ("POSTBOTE_SMTP_URL", smtp_url.into()),
        ("POSTBOTE_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        (
            "POSTBOTE_DATA_DIR",
            db.dir.path().join("data").display().to_string(),
        ),
        (
            "POSTBOTE_MAIL_FROM",
            "Presse Newsletter <news@example.org>".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut config = Config::from_sources(None, &env).expect("test config");
    config.delivery.poll_interval = Duration::from_millis(100);
    config.delivery.retry_base = Duration::from_millis(200);
    config.delivery.retry_max = Duration::from_millis(500);
    config.delivery.smtp_timeout = Duration::from_secs(5);
    config
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The running application.
pub struct TestApp {
    pub base: String,
    pub store: Store,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(config: Config) -> Self {
        Self::spawn_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn spawn_with_clock(config: Config, clock: Arc<dyn Clock>) -> Self {
        let app = App::build(config, clock).await.expect("build the app");
        let base = format!("http://{}", app.local_addr());
        let store = app.store().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            base,
            store,
            http,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the app gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("app task").expect("app run");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Its HTTP interface (the helpers below are [`Api`]'s).
    pub fn api(&self) -> Api<'_> {
        Api {
            base: &self.base,
            http: &self.http,
        }
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        self.api().admin(method, path, body).await
    }

    pub async fn create_topic(&self, slug: &str, name: &str) {
        self.api().create_topic(slug, name).await
    }

    /// Posts the sign-up form.
    pub async fn sign_up_form(&self, fields: &[(&str, &str)]) -> reqwest::Response {
        self.api().sign_up_form(fields).await
    }

    pub async fn sign_up_json(&self, body: serde_json::Value) -> reqwest::Response {
        self.api().sign_up_json(body).await
    }

    /// The export of an address, or the status when there is none.
    pub async fn export(&self, email: &str) -> Result<serde_json::Value, u16> {
        self.api().export(email).await
    }

    /// Waits until every mail of the address has a final status; returns the export.
    pub async fn wait_delivered(&self, email: &str) -> serde_json::Value {
        self.api().wait_delivered(email).await
    }
}

/// The HTTP interface of a running postbote, in process ([`TestApp::api`]) or the
/// `serve` binary ([`Serve::api`]): the admin API with the admin token, and sign-up.
#[derive(Clone, Copy)]
pub struct Api<'a> {
    pub base: &'a str,
    pub http: &'a reqwest::Client,
}

impl Api<'_> {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, self.url(&format!("/api/v1{path}")))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("admin request")
    }

    pub async fn create_topic(&self, slug: &str, name: &str) {
        let r = self
            .admin(
                reqwest::Method::POST,
                "/topics",
                Some(serde_json::json!({"slug": slug, "name": name})),
            )
            .await;
        assert_eq!(r.status(), 201, "create topic {slug}");
    }

    /// Posts the sign-up form.
    pub async fn sign_up_form(&self, fields: &[(&str, &str)]) -> reqwest::Response {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.http
            .post(self.url("/subscribe"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("user-agent", "postbote-tests/1.0")
            .body(body)
            .send()
            .await
            .expect("sign-up request")
    }

    pub async fn sign_up_json(&self, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url("/subscribe"))
            .json(&body)
            .send()
            .await
            .expect("sign-up request")
    }

    /// The export of an address, or the status when there is none.
    pub async fn export(&self, email: &str) -> Result<serde_json::Value, u16> {
        let r = self
            .admin(reqwest::Method::GET, &format!("/subscribers/{email}"), None)
            .await;
        if r.status() == 200 {
            Ok(r.json().await.unwrap())
        } else {
            Err(r.status().as_u16())
        }
    }

    /// Waits until every mail of the address has a final status; returns the export.
    pub async fn wait_delivered(&self, email: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let export = self.export(email).await.expect("export");
            let deliveries = export["deliveries"].as_array().cloned().unwrap_or_default();
            if !deliveries.is_empty() && deliveries.iter().all(|d| d["status"] != "queued") {
                return export;
            }
            assert!(
                Instant::now() < deadline,
                "mails to {email} still queued: {deliveries:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs a scheduling pass as of `at` through the admin API; returns (due, enqueued).
    pub async fn run_pass(&self, at: &str) -> (u64, u64) {
        let r = self
            .admin(
                reqwest::Method::POST,
                "/digests/run",
                Some(serde_json::json!({"at": at})),
            )
            .await;
        assert_eq!(r.status(), 200, "digest pass at {at}");
        let v: serde_json::Value = r.json().await.unwrap();
        (v["due"].as_u64().unwrap(), v["enqueued"].as_u64().unwrap())
    }

    /// Posts an item; returns its id.
    pub async fn post_item(&self, topics: &[&str], title: &str) -> i64 {
        let r = self
            .admin(reqwest::Method::POST, "/items", Some(serde_json::json!({"topics": topics, "title": title, "summary": format!("Zusammenfassung: {title}")})))
            .await;
        assert_eq!(r.status(), 201, "post item {title}");
        r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The standard sign-up form for `email` and the given topics.
pub fn form<'a>(email: &'a str, topics: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![("email", email)];
    f.extend(topics.iter().map(|t| ("topics", *t)));
    f.extend([
        ("delivery_time", "07:30"),
        ("timezone", "Europe/Berlin"),
        ("locale", "de"),
        ("consent", "on"),
    ]);
    f
}

impl TestApp {
    /// Runs a scheduling pass as of `at` through the admin API; returns (due, enqueued).
    pub async fn run_pass(&self, at: &str) -> (u64, u64) {
        self.api().run_pass(at).await
    }

    /// Posts an item; returns its id.
    pub async fn post_item(&self, topics: &[&str], title: &str) -> i64 {
        self.api().post_item(topics, title).await
    }

    /// A confirmed reader, stored as an import would store them.
    pub async fn reader(
        &self,
        email: &str,
        topics: &[&str],
        time: &str,
        zone: &str,
        locale: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> i64 {
        use postbote::domain::*;
        let s = postbote::store::ImportedSubscriber {
            email: EmailAddress::parse(email).unwrap(),
            topics: topics
                .iter()
                .map(|t| TopicSlug::parse(t).unwrap())
                .collect(),
            schedule: DeliverySchedule {
                time: DeliveryTime::parse(time).unwrap(),
                timezone: TimeZone::parse(zone).unwrap(),
                weekdays: Weekdays::EVERY_DAY,
            },
            locale: Locale::parse(locale).unwrap(),
            consent_at: now,
            consent_ip: Some("192.0.2.1".into()),
            source: "tests".into(),
        };
        self.store
            .import_confirmed(&s, now, chrono::Duration::hours(24))
            .await
            .unwrap()
            .expect("a new reader")
    }
}

/// The envelope recipient smtp-sink recorded for a captured message.
pub fn recipient(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(2048)]);
    text.lines()
        .find_map(|l| l.strip_prefix("X-Rcpt-Args: "))
        .map(|r| {
            r.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
        .unwrap_or_default()
}

/// How long a `postbote` command in a test may take before it is killed and the
/// test fails with what it printed.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// A child process whose stdout and stderr are collected while it runs, so a test
/// can wait for a line it prints, and one that hangs is killed at a deadline and
/// shown with what it said so far. Killed when dropped.
pub struct Spawned {
    child: Child,
    stdout: Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Spawned {
    /// Starts `command` with its output piped; `stdin`, when given, is written to it
    /// and closed (the end of the input), else stdin is empty.
    pub fn start(command: &mut Command, stdin: Option<Vec<u8>>) -> Self {
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the child process");
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A child that stops reading early must not block the test.
            std::thread::spawn(move || {
                let _ = std::io::Write::write_all(&mut pipe, &input);
            });
        }
        let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the process printed so far, for a failure message.
    pub fn output_so_far(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.stdout.lock().unwrap()),
            String::from_utf8_lossy(&self.stderr.lock().unwrap())
        )
    }

    /// Waits until stderr (the log) holds a line containing `needle` and returns that
    /// line; fails the test at `timeout` or when the process exits first.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let line = String::from_utf8_lossy(&self.stderr.lock().unwrap())
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned);
            if let Some(line) = line {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the process exited ({status}) before logging {needle:?}\n{}",
                    self.output_so_far()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line with {needle:?} within {timeout:?}\n{}",
                    self.output_so_far()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit; at `timeout` it is killed and the test fails
    /// with its output so far.
    pub fn wait(mut self, timeout: Duration) -> std::process::Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the process did not exit within {timeout:?}; killed\n{}",
                    self.output_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The pipes close with the process: the readers have everything.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        std::process::Output {
            status,
            stdout: std::mem::take(&mut *self.stdout.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
        }
    }

    /// [`Spawned::wait`] off the async runtime, so the app in the test keeps running.
    pub async fn wait_async(self, timeout: Duration) -> std::process::Output {
        tokio::task::spawn_blocking(move || self.wait(timeout))
            .await
            .expect("waiting for the child")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
    into: Arc<std::sync::Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// Runs `command` to its end within [`PROCESS_DEADLINE`] (killed and failing the
/// test after it), with `stdin` as its input.
pub fn run_to_end(command: &mut Command, stdin: Option<Vec<u8>>) -> std::process::Output {
    Spawned::start(command, stdin).wait(PROCESS_DEADLINE)
}

/// [`run_to_end`] off the async runtime, so the app in the test keeps running.
pub async fn run_to_end_async(
    command: &mut Command,
    stdin: Option<Vec<u8>>,
) -> std::process::Output {
    Spawned::start(command, stdin)
        .wait_async(PROCESS_DEADLINE)
        .await
}

/// The installation's link key as `postbote` keeps it (table `settings`), made on
/// first use.
pub async fn link_key(db: &TestDb) -> Vec<u8> {
    db.store().await.link_key().await.expect("link key");
    let sql = "SELECT value FROM settings WHERE key = 'link_key'";
    let key: String = if db.url.starts_with("sqlite://") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        let key = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        key
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let key = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        key
    };
    key.into_bytes()
}

/// `<id>-<MAC>`, the signed part of a reader's VERP and `mailto:` unsubscribe
/// addresses, written out from the documented scheme (HMAC-SHA256 under the link
/// key over `verp:<id>`, its first 64 bits as hex), not with the code that checks it.
pub fn signed_id(key: &[u8], id: i64) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("verp:{id}").as_bytes());
    let hex: String = mac.finalize().into_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{id}-{hex}")
}

/// `postbote serve` as a child process, with test-friendly delivery settings.
pub struct Serve {
    pub child: std::process::Child,
    pub base: String,
}

impl Serve {
    /// Starts serve on `port`; `extra` is appended to its TOML config file.
    pub fn start(db: &TestDb, smtp_url: &str, port: u16, extra: &str) -> Self {
        Self::start_with_url(db, &db.url, smtp_url, port, extra)
    }

    /// Starts serve on `port` with `database_url` instead of the test database's
    /// own URL (e.g. with an `application_name`, to tell two processes apart in
    /// `pg_stat_activity`).
    pub fn start_with_url(
        db: &TestDb,
        database_url: &str,
        smtp_url: &str,
        port: u16,
        extra: &str,
    ) -> Self {
        Self::spawn(db, database_url, smtp_url, port, extra, None)
    }

    /// Starts serve on `port`; with `public_host`, its `public_url` is
    /// `http://<public_host>:<port>` (the browser reaches it by that name).
    fn spawn(
        db: &TestDb,
        database_url: &str,
        smtp_url: &str,
        port: u16,
        extra: &str,
        public_host: Option<&str>,
    ) -> Self {
        let config = db.dir.path().join(format!("postbote-{port}.toml"));
        std::fs::write(
            &config,
            format!("[delivery]\npoll_interval_ms = 100\nretry_base_ms = 200\nretry_max_ms = 500\n{extra}"),
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_postbote"));
        if let Some(host) = public_host {
            command.env("POSTBOTE_PUBLIC_URL", format!("http://{host}:{port}"));
        }
        let child = command
            .args(["serve", "--config"])
            .arg(&config)
            .env("POSTBOTE_DATABASE_URL", database_url)
            .env("POSTBOTE_LISTEN", format!("127.0.0.1:{port}"))
            .env("POSTBOTE_SMTP_URL", smtp_url)
            .env("POSTBOTE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("POSTBOTE_DATA_DIR", db.dir.path().join("data"))
            .env("POSTBOTE_MAIL_FROM", "News <news@example.org>")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postbote serve");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Starts serve on a port of its own and waits until this very process listens
    /// there: a port chosen by the OS is free only until someone binds it, so when
    /// serve exits instead (the port was taken), it is started again on another
    /// (at most five times).
    pub async fn start_on_own_port(db: &TestDb, smtp_url: &str, extra: &str) -> Self {
        Self::start_on_own_port_with_url(db, &db.url, smtp_url, extra).await
    }

    /// [`Serve::start_on_own_port`] with `database_url` (see [`Serve::start_with_url`]).
    pub async fn start_on_own_port_with_url(
        db: &TestDb,
        database_url: &str,
        smtp_url: &str,
        extra: &str,
    ) -> Self {
        Self::start_on_own_port_as(db, database_url, smtp_url, extra, None).await
    }

    /// [`Serve::start_on_own_port`] with `public_url` `http://<public_host>:<port>`:
    /// a deployment on plain HTTP under a name, which a browser does not treat as
    /// a secure context (as it does 127.0.0.1).
    pub async fn start_on_own_port_at_host(
        db: &TestDb,
        smtp_url: &str,
        extra: &str,
        public_host: &str,
    ) -> Self {
        Self::start_on_own_port_as(db, &db.url, smtp_url, extra, Some(public_host)).await
    }

    async fn start_on_own_port_as(
        db: &TestDb,
        database_url: &str,
        smtp_url: &str,
        extra: &str,
        public_host: Option<&str>,
    ) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let mut serve = Self::spawn(db, database_url, smtp_url, port, extra, public_host);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if listens_on(serve.child.id(), port) {
                    return serve;
                }
                if let Ok(Some(_)) = serve.child.try_wait() {
                    break;
                }
                assert!(Instant::now() < deadline, "serve did not listen on {port}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("serve exited before listening, five times");
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "serve did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Its HTTP interface, through `http`.
    pub fn api<'a>(&'a self, http: &'a reqwest::Client) -> Api<'a> {
        Api {
            base: &self.base,
            http,
        }
    }

    /// Runs a digest pass through this process's admin API.
    pub async fn run_pass(&self, http: &reqwest::Client, at: &str) -> serde_json::Value {
        let r = http
            .post(format!("{}/api/v1/digests/run", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"at": at}))
            .send()
            .await
            .expect("digest pass request");
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An instant written as RFC 3339.
pub fn utc(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().expect("an RFC 3339 instant")
}

/// An app whose clock stands at `now`, whose passes run only when a test says,
/// without a per-client limit, with the topics wirtschaft, kultur and sport.
pub async fn app_at(
    backend: Backend,
    now: &str,
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, SmtpSink, TestDb, postbote::clock::ManualClock) {
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start();
    let mut config = test_config(&db, &sink.url());
    config.digest.run_scheduler = false;
    config.rate_limit.per_client_per_minute = 0;
    tweak(&mut config);
    let clock = postbote::clock::ManualClock::new(utc(now));
    let app = TestApp::spawn_with_clock(config, Arc::new(clock.clone())).await;
    for (slug, name) in [
        ("wirtschaft", "Wirtschaft"),
        ("kultur", "Kultur"),
        ("sport", "Sport"),
    ] {
        app.create_topic(slug, name).await;
    }
    (app, sink, db, clock)
}

/// Digests received so far, by recipient.
pub fn digests(sink: &SmtpSink) -> HashMap<String, Vec<Vec<u8>>> {
    let mut by = HashMap::<String, Vec<Vec<u8>>>::new();
    for raw in sink.raw_messages() {
        if String::from_utf8_lossy(&raw).contains("List-Unsubscribe-Post") {
            by.entry(recipient(&raw)).or_default().push(raw);
        }
    }
    by
}

/// Waits until no mail is queued.
pub async fn drained(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.store.mail_queue_depth().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the queue is drained and every sent mail has arrived; returns the
/// digests received, by recipient.
pub async fn delivered(app: &TestApp, sink: &SmtpSink) -> HashMap<String, Vec<Vec<u8>>> {
    drained(app).await;
    let sent: i64 = app
        .store
        .stats()
        .await
        .unwrap()
        .mails
        .values()
        .map(|m| m.get("sent").copied().unwrap_or(0))
        .sum();
    sink.wait_for(sent as usize).await;
    digests(sink)
}

/// A day of a real installation that runs on the real clock (e.g. [`Serve`]), made
/// through its HTTP interface: the topics wirtschaft and kultur; a reader who signed
/// up for wirtschaft and confirmed with the link from their mail; one who signed up
/// for kultur and did not confirm; an item; and a digest pass two days ahead (the
/// reader is due then, whatever the time now) whose digest smtp-sink received.
/// Returns the address of the confirmed reader.
pub async fn a_day_with_a_digest(api: Api<'_>, sink: &SmtpSink) -> &'static str {
    let reader = "berlin@example.org";
    api.create_topic("wirtschaft", "Wirtschaft").await;
    api.create_topic("kultur", "Kultur").await;
    let r = api
        .sign_up_json(serde_json::json!({"email": reader, "topics": ["wirtschaft"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true}))
        .await;
    assert_eq!(r.status(), 202);
    let raw = sink.wait_for(1).await;
    let text = parse(&raw[0]).body_text(0).unwrap().into_owned();
    let link = find_link(&text, "confirm").expect("a confirmation link");
    assert_eq!(api.http.post(&link).send().await.unwrap().status(), 200);
    let r = api
        .sign_up_json(serde_json::json!({"email": "pending@example.org", "topics": ["kultur"], "delivery_time": "07:00", "timezone": "Europe/Berlin", "locale": "de", "consent": true}))
        .await;
    assert_eq!(r.status(), 202);
    api.post_item(&["wirtschaft"], "Quartalszahlen").await;
    let at = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    assert_eq!(api.run_pass(&at).await, (1, 1));
    api.wait_delivered(reader).await;
    // Two confirmation mails and the digest.
    sink.wait_for(3).await;
    reader
}

/// Runs `sql` (one or more statements) on `store`'s database, whichever it is:
/// for rows a test writes straight into the tables (thousands of API calls would
/// only slow it down, or the state cannot be reached through the product).
pub async fn execute_sql(store: &Store, sql: String) {
    match store {
        Store::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await
                .unwrap();
        }
        Store::Sqlite(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await
                .unwrap();
        }
    }
}
