//! Configuration: a TOML file (`--config` or `POSTBOTE_CONFIG`) overlaid by the
//! `POSTBOTE_*` environment variables, parsed once at start into typed values.
//! Every key is documented in `config/postbote.example.toml`. A bad value stops the
//! start with a [`ConfigError`] naming the key and the problem.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use crate::domain::{DeliveryTime, Locale, TimeZone, TopicSlug};

/// A configuration problem, naming the key (or environment variable) at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {key}: {problem}")]
pub struct ConfigError {
    /// The TOML key or environment variable.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    database_url: Option<String>,
    listen: Option<String>,
    public_url: Option<String>,
    smtp_url: Option<String>,
    outbox_dir: Option<PathBuf>,
    mail_from: Option<String>,
    admin_token: Option<String>,
    metrics_token: Option<String>,
    data_dir: Option<PathBuf>,
    templates_dir: Option<PathBuf>,
    trust_proxy_headers: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    http: FileHttp,
    confirmation_lifetime_hours: Option<u64>,
    consent_version: Option<String>,
    defaults: FileDefaults,
    rate_limit: FileRateLimit,
    delivery: FileDelivery,
    digest: FileDigest,
    bounces: FileBounces,
    dkim: FileDkim,
    topics: Vec<FileTopic>,
    feeds: Vec<FileFeed>,
    polling: FilePolling,
    submissions: FileSubmissions,
    bounce_address: Option<String>,
    unsubscribe_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFeed {
    url: String,
    topic: String,
    schedule: String,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FilePolling {
    tick_ms: Option<u64>,
    timeout_secs: Option<u64>,
    max_bytes: Option<usize>,
    concurrency: Option<usize>,
    max_new_items: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileHttp {
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileSubmissions {
    address: Option<String>,
    allowed_senders: Vec<String>,
    authserv_id: Option<String>,
    verify_dkim: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileBounces {
    soft_threshold: Option<u32>,
    soft_window_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileDkim {
    domain: Option<String>,
    selector: Option<String>,
    rsa_key: Option<PathBuf>,
    ed25519_selector: Option<String>,
    ed25519_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileDigest {
    max_items: Option<usize>,
    lookback_hours: Option<u64>,
    list_id: Option<String>,
    pass_interval_secs: Option<u64>,
    run_scheduler: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileDefaults {
    locale: Option<String>,
    delivery_time: Option<String>,
    timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileRateLimit {
    per_client_per_minute: Option<u32>,
    per_address_per_hour: Option<u32>,
    per_domain_per_hour: Option<u32>,
    global_per_hour: Option<u32>,
    suppressed_quiet_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileDelivery {
    workers: Option<usize>,
    poll_interval_ms: Option<u64>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    max_attempts: Option<u32>,
    max_per_second: Option<u32>,
    smtp_timeout_ms: Option<u64>,
    keep_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTopic {
    slug: String,
    name: String,
    description: Option<String>,
}

/// Which database, parsed from `POSTBOTE_DATABASE_URL`. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://…`: the reference store; several instances may share it.
    Postgres(String),
    /// `sqlite://PATH`: the zero-setup default; one instance.
    Sqlite(PathBuf),
}

/// How mail leaves postbote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// One `.eml` file per message in this folder (the default).
    Outbox(PathBuf),
    /// An SMTP relay.
    Smtp(SmtpRelay),
}

/// An SMTP relay, parsed from `POSTBOTE_SMTP_URL`. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpRelay {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// `user:password` from the URL, if any.
    pub credentials: Option<(String, String)>,
    /// PEM file of further certificates to trust for this relay (`?ca=PATH`), e.g. the
    /// self-signed one of a relay of one's own; the public roots stay trusted too.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&redact_url_password(url))
                .finish(),
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
        }
    }
}

/// The URL with its password (in the authority or a `password=` parameter) replaced.
fn redact_url_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(unparseable, hidden)".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

impl std::fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpRelay")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .finish()
    }
}

/// A secret from the configuration (a bearer token): its `Debug` shows none of it,
/// so a logged or printed configuration gives nothing away.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`), e.g. a trusted proxy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    /// The first address of the network (host bits zero).
    addr: IpAddr,
    /// Leading bits that must match.
    prefix: u8,
}

impl IpNetwork {
    /// Parses `ADDRESS/PREFIX`, or a bare address (one host). IPv4-mapped IPv6
    /// networks (`::ffff:10.0.0.0/104`) become their IPv4 form.
    ///
    /// # Errors
    /// What is wrong, for a [`ConfigError`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let hint = "expected a network like 10.0.0.0/8 or ::1/128";
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: {hint}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
            None => max,
        };
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => (
                IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
                prefix - 96,
            ),
            other => (other, prefix),
        };
        let net = Self { addr, prefix };
        if net.masked(addr) != addr {
            return Err(format!(
                "{s:?} has bits set after the prefix: write the network's first address, or /{max} for one host"
            ));
        }
        Ok(net)
    }

    /// `ip` with the bits after this network's prefix cleared.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 form) lies in
    /// this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

/// Limits of the HTTP server against slow clients and too many of them.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request line and its headers, and how
    /// long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
}

/// Transport security towards the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP: for a relay on the same host or network.
    None,
    /// STARTTLS, required (`?tls=required`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// Defaults offered on the sign-up page.
#[derive(Debug, Clone)]
pub struct SignUpDefaults {
    /// Page and mail language when the reader chooses none.
    pub locale: Locale,
    /// Pre-filled delivery time.
    pub delivery_time: DeliveryTime,
    /// Pre-filled time zone (JavaScript replaces it by the browser's).
    pub timezone: TimeZone,
}

/// Abuse limits on `POST /subscribe`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Sign-up requests one client address may make per minute; 0 disables the limit.
    pub per_client_per_minute: u32,
    /// Mails one mailbox (`+tags` and Gmail dots do not make a new one) may be sent
    /// per hour by sign-ups; 0 disables the limit.
    pub per_address_per_hour: u32,
    /// Sign-up mails per hour to one (ASCII) domain; 0 disables the cap.
    pub per_domain_per_hour: u32,
    /// Sign-up mails per hour in total; 0 disables the cap.
    pub global_per_hour: u32,
    /// Days after a hard bounce or complaint in which the form sends the address no
    /// confirmation mail; 0 disables the quiet period.
    pub suppressed_quiet_days: u32,
}

/// How the delivery workers behave.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Concurrent SMTP connections (one worker each).
    pub workers: usize,
    /// How often idle workers look for due mail (other instances' work, retries).
    pub poll_interval: Duration,
    /// First retry delay after a temporary failure; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts before a temporarily failing mail is given up as failed.
    pub max_attempts: u32,
    /// Timeout for connecting (greeting, TLS, authentication included) and for
    /// sending one whole message.
    pub smtp_timeout: Duration,
    /// Mails per second over all workers of this process; 0 means no limit.
    pub max_per_second: u32,
    /// Days finished (sent or failed) mail rows are kept before the retention task
    /// folds them into each reader's daily delivery counts and deletes them.
    pub keep_days: u32,
}

/// How digests are made.
#[derive(Debug, Clone)]
pub struct DigestSettings {
    /// Items listed in one digest at most; the rest is counted ("… and 12 more").
    pub max_items: usize,
    /// How far before their confirmation a reader's first digest reaches back.
    pub lookback: chrono::Duration,
    /// The `List-Id` header value, e.g. `Presse-Newsletter <news.example.org>`.
    pub list_id: String,
    /// How often `serve` runs a scheduling pass.
    pub pass_interval: Duration,
    /// Whether `serve` runs passes by itself (tests that choose the instants of
    /// passes turn this off and call `POST /api/v1/digests/run`).
    pub run_scheduler: bool,
}

/// A feed declared in the file.
#[derive(Debug, Clone)]
pub struct FeedSeed {
    /// Unique name (default: derived from the URL).
    pub name: String,
    /// The feed's URL.
    pub url: String,
    /// The topic its items go to.
    pub topic: TopicSlug,
    /// Cron schedule, as written.
    pub schedule: String,
}

/// How feeds are fetched.
#[derive(Debug, Clone, Copy)]
pub struct PollingSettings {
    /// How often the poller looks for due feeds.
    pub tick: Duration,
    /// Time limit for one fetch, body included.
    pub timeout: Duration,
    /// Largest feed body read.
    pub max_bytes: usize,
    /// Feeds fetched at the same time.
    pub concurrency: usize,
    /// New items one feed may add in one poll; the rest wait for the next poll.
    pub max_new_items: usize,
}

/// Items mailed in.
#[derive(Debug, Clone, Default)]
pub struct SubmissionSettings {
    /// Address template with `{topic}`, e.g. `presse+{topic}@example.org`.
    pub address: Option<String>,
    /// Senders allowed to submit: full addresses or `@domain`.
    pub allowed_senders: Vec<String>,
    /// The authserv-id of our own MTA's `Authentication-Results` headers: only
    /// those count as proof that the sender's domain passed DMARC or DKIM.
    pub authserv_id: Option<String>,
    /// Whether postbote verifies DKIM signatures itself (DNS through the system
    /// resolver) when the MTA's results do not authenticate the sender.
    pub verify_dkim: bool,
}

impl SubmissionSettings {
    /// Whether `from` (lower-cased) is an allowed sender: listed, or of a listed
    /// `@domain`.
    pub fn allows(&self, from: &str) -> bool {
        !from.is_empty()
            && self.allowed_senders.iter().any(|a| {
                if a.starts_with('@') {
                    from.ends_with(a.as_str())
                } else {
                    a == from
                }
            })
    }
}

/// What bounces do.
#[derive(Debug, Clone, Copy)]
pub struct BounceSettings {
    /// Soft bounces (4.x.x, delayed) within the window that condemn an address.
    pub soft_threshold: u32,
    /// The window soft bounces are counted in.
    pub soft_window: chrono::Duration,
}

/// DKIM signing, when configured.
#[derive(Debug, Clone)]
pub struct DkimSettings {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The RSA key's selector (`s=`).
    pub selector: String,
    /// PEM file of the RSA private key (PKCS#1 or PKCS#8).
    pub rsa_key: PathBuf,
    /// Optional second, ed25519 signature: selector and PKCS#8 PEM/DER key file.
    pub ed25519: Option<(String, PathBuf)>,
}

/// A topic declared in the file, created or updated at start.
#[derive(Debug, Clone)]
pub struct TopicSeed {
    /// Stable key.
    pub slug: TopicSlug,
    /// Display name.
    pub name: String,
    /// Optional longer text.
    pub description: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the data lives.
    pub database: DatabaseUrl,
    /// HTTP listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Base of every link in mails and pages, without a trailing slash.
    pub public_url: Option<String>,
    /// How mail is delivered.
    pub transport: Transport,
    /// The `From:` of every mail.
    pub mail_from: Mailbox,
    /// Bearer token for `/api/v1`; `None` → generated into `data_dir/admin-token`.
    pub admin_token: Option<Secret>,
    /// A second bearer token that opens only `/metrics` (for Prometheus).
    pub metrics_token: Option<Secret>,
    /// Folder for the generated admin token (and the default database and outbox).
    pub data_dir: PathBuf,
    /// Operator's template folder replacing the built-in templates.
    pub templates_dir: Option<PathBuf>,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_proxy_headers: bool,
    /// The proxies whose `X-Forwarded-For` entries count: the TCP peer must be one
    /// of them, and the client is the first address from the right that is not.
    pub trusted_proxies: Vec<IpNetwork>,
    /// Connection cap and timeouts of the HTTP server.
    pub http: HttpSettings,
    /// How long a confirmation link is valid; pending sign-ups are purged after it.
    pub confirmation_lifetime: chrono::Duration,
    /// Version label of the consent text, stored with every sign-up.
    pub consent_version: String,
    /// Pre-filled sign-up values.
    pub defaults: SignUpDefaults,
    /// Abuse limits.
    pub rate_limit: RateLimits,
    /// Delivery worker settings.
    pub delivery: Delivery,
    /// Digest settings.
    pub digest: DigestSettings,
    /// Envelope sender template with `{id}` (VERP), e.g. `bounces+{id}@example.org`.
    pub bounce_address: Option<String>,
    /// `mailto:` unsubscribe address template with `{id}`.
    pub unsubscribe_address: Option<String>,
    /// What bounces do.
    pub bounces: BounceSettings,
    /// DKIM signing; `None` sends unsigned mail.
    pub dkim: Option<DkimSettings>,
    /// Feeds declared in the file.
    pub feeds: Vec<FeedSeed>,
    /// How feeds are fetched.
    pub polling: PollingSettings,
    /// Items mailed in.
    pub submissions: SubmissionSettings,
    /// Topics declared in the file.
    pub topics: Vec<TopicSeed>,
}

impl Config {
    /// Reads the file (if any) and overlays the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and the problem.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("POSTBOTE_"))
            .collect();
        Self::from_sources(path, &env)
    }

    /// Reads the file (if any) and overlays the given variables.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and the problem.
    pub fn from_sources(
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| env.get("POSTBOTE_CONFIG").map(PathBuf::from));
        let file = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new("--config", format!("cannot read {}: {e}", p.display()))
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::new(p.display().to_string(), e.to_string()))?
            }
            None => FileConfig::default(),
        };
        Self::resolve(file, env)
    }

    fn resolve(file: FileConfig, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        // An environment variable wins over the file; the error names whichever was used.
        let pick = |var: &str, key: &str, from_file: Option<String>| -> Option<(String, String)> {
            env.get(var)
                .map(|v| (var.to_owned(), v.clone()))
                .or_else(|| from_file.map(|v| (key.to_owned(), v)))
        };
        let data_dir = env
            .get("POSTBOTE_DATA_DIR")
            .map(PathBuf::from)
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));

        let database = match pick("POSTBOTE_DATABASE_URL", "database_url", file.database_url) {
            Some((key, url)) => parse_database_url(&url).map_err(|p| ConfigError::new(key, p))?,
            None => DatabaseUrl::Sqlite(data_dir.join("postbote.db")),
        };
        let listen = match pick("POSTBOTE_LISTEN", "listen", file.listen) {
            Some((key, v)) => v.parse::<SocketAddr>().map_err(|e| {
                ConfigError::new(key, format!("{e}: expected an address like 127.0.0.1:8080"))
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let public_url = match pick("POSTBOTE_PUBLIC_URL", "public_url", file.public_url) {
            Some((key, v)) => Some(parse_public_url(&v).map_err(|p| ConfigError::new(key, p))?),
            None => None,
        };
        let transport = match pick("POSTBOTE_SMTP_URL", "smtp_url", file.smtp_url) {
            Some((key, v)) if !v.trim().is_empty() => {
                Transport::Smtp(parse_smtp_url(&v).map_err(|p| ConfigError::new(key, p))?)
            }
            _ => Transport::Outbox(
                env.get("POSTBOTE_OUTBOX_DIR")
                    .map(PathBuf::from)
                    .or(file.outbox_dir)
                    .unwrap_or_else(|| data_dir.join("outbox")),
            ),
        };
        let mail_from = match pick("POSTBOTE_MAIL_FROM", "mail_from", file.mail_from) {
            Some((key, v)) => v.parse::<Mailbox>().map_err(|e| {
                ConfigError::new(
                    key,
                    format!("{e}: expected e.g. Newsletter <news@example.org>"),
                )
            })?,
            None => "Newsletter <newsletter@localhost>"
                .parse()
                .expect("default From parses"),
        };
        let token = |(key, v): (String, String)| {
            if v.len() < 16 {
                Err(ConfigError::new(key, "must be at least 16 characters"))
            } else {
                Ok(Secret::new(v))
            }
        };
        let admin_token = pick("POSTBOTE_ADMIN_TOKEN", "admin_token", file.admin_token)
            .map(token)
            .transpose()?;
        let metrics_token = pick(
            "POSTBOTE_METRICS_TOKEN",
            "metrics_token",
            file.metrics_token,
        )
        .map(token)
        .transpose()?;
        let trusted_proxies = match file.trusted_proxies {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    IpNetwork::parse(v)
                        .map_err(|p| ConfigError::new(format!("trusted_proxies[{i}]"), p))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => ["127.0.0.1/32", "::1/128"]
                .iter()
                .map(|n| IpNetwork::parse(n).expect("valid"))
                .collect(),
        };
        let http = HttpSettings {
            max_connections: file.http.max_connections.unwrap_or(1024),
            header_timeout: Duration::from_secs(file.http.header_timeout_secs.unwrap_or(30)),
            body_timeout: Duration::from_secs(file.http.body_timeout_secs.unwrap_or(30)),
        };
        if !(1..=65_536).contains(&http.max_connections) {
            return Err(ConfigError::new(
                "http.max_connections",
                "must be between 1 and 65536",
            ));
        }
        for (key, value) in [
            ("http.header_timeout_secs", http.header_timeout),
            ("http.body_timeout_secs", http.body_timeout),
        ] {
            if !(1..=3600).contains(&value.as_secs()) {
                return Err(ConfigError::new(key, "must be between 1 and 3600"));
            }
        }

        let defaults = SignUpDefaults {
            locale: opt_parse("defaults.locale", file.defaults.locale, Locale::parse)?
                .unwrap_or_default(),
            delivery_time: opt_parse(
                "defaults.delivery_time",
                file.defaults.delivery_time,
                DeliveryTime::parse,
            )?
            .unwrap_or_else(|| DeliveryTime::parse("07:00").expect("valid")),
            timezone: opt_parse("defaults.timezone", file.defaults.timezone, TimeZone::parse)?
                .unwrap_or_else(|| TimeZone::parse("Europe/Berlin").expect("valid")),
        };

        let lifetime_hours = file.confirmation_lifetime_hours.unwrap_or(7 * 24);
        if !(1..=24 * 365).contains(&lifetime_hours) {
            return Err(ConfigError::new(
                "confirmation_lifetime_hours",
                "must be between 1 and 8760",
            ));
        }

        let quiet_days = file.rate_limit.suppressed_quiet_days.unwrap_or(30);
        if quiet_days > 3650 {
            return Err(ConfigError::new(
                "rate_limit.suppressed_quiet_days",
                "must be between 0 and 3650",
            ));
        }

        let d = file.delivery;
        let delivery = Delivery {
            workers: d.workers.unwrap_or(4),
            poll_interval: Duration::from_millis(d.poll_interval_ms.unwrap_or(1000)),
            retry_base: Duration::from_millis(d.retry_base_ms.unwrap_or(30_000)),
            retry_max: Duration::from_millis(d.retry_max_ms.unwrap_or(3_600_000)),
            max_attempts: d.max_attempts.unwrap_or(25),
            smtp_timeout: Duration::from_millis(d.smtp_timeout_ms.unwrap_or(30_000)),
            max_per_second: d.max_per_second.unwrap_or(0),
            keep_days: d.keep_days.unwrap_or(90),
        };
        if !(1..=256).contains(&delivery.workers) {
            return Err(ConfigError::new(
                "delivery.workers",
                "must be between 1 and 256",
            ));
        }
        for (key, value) in [
            ("delivery.poll_interval_ms", delivery.poll_interval),
            ("delivery.retry_base_ms", delivery.retry_base),
            ("delivery.retry_max_ms", delivery.retry_max),
            ("delivery.smtp_timeout_ms", delivery.smtp_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if !(1..=36_500).contains(&delivery.keep_days) {
            return Err(ConfigError::new(
                "delivery.keep_days",
                "must be between 1 and 36500",
            ));
        }
        if delivery.max_attempts == 0 {
            return Err(ConfigError::new(
                "delivery.max_attempts",
                "must be at least 1",
            ));
        }

        let digest = DigestSettings {
            max_items: file.digest.max_items.unwrap_or(50),
            lookback: match file.digest.lookback_hours.unwrap_or(24) {
                h @ 0..=8760 => chrono::Duration::hours(h as i64),
                _ => {
                    return Err(ConfigError::new(
                        "digest.lookback_hours",
                        "must be at most 8760",
                    ));
                }
            },
            list_id: match file.digest.list_id {
                Some(id) if id.chars().any(char::is_control) || !id.contains('<') => {
                    return Err(ConfigError::new(
                        "digest.list_id",
                        "must look like Name <list.example.org>, on one line",
                    ));
                }
                Some(id) => id,
                None => format!("Newsletter <newsletter.{}>", mail_from.email.domain()),
            },
            pass_interval: Duration::from_secs(file.digest.pass_interval_secs.unwrap_or(60)),
            run_scheduler: file.digest.run_scheduler.unwrap_or(true),
        };
        if !(1..=1000).contains(&digest.max_items) {
            return Err(ConfigError::new(
                "digest.max_items",
                "must be between 1 and 1000",
            ));
        }
        if digest.lookback > chrono::Duration::days(365) {
            return Err(ConfigError::new(
                "digest.lookback_hours",
                "must be at most 8760",
            ));
        }
        if digest.pass_interval.is_zero() {
            return Err(ConfigError::new(
                "digest.pass_interval_secs",
                "must be greater than 0",
            ));
        }

        let address_template = |key: &str,
                                value: Option<String>|
         -> Result<Option<String>, ConfigError> {
            let Some(v) = value else { return Ok(None) };
            let sample = v.replace("{id}", "1-0123456789abcdef");
            if !v.contains("{id}") || sample.parse::<lettre::Address>().is_err() {
                return Err(ConfigError::new(
                    key,
                    "must be an address with {id} in its local part, e.g. bounces+{id}@example.org",
                ));
            }
            Ok(Some(v))
        };
        let bounce_address = address_template("bounce_address", file.bounce_address)?;
        let unsubscribe_address =
            address_template("unsubscribe_address", file.unsubscribe_address)?;
        let bounces = BounceSettings {
            soft_threshold: file.bounces.soft_threshold.unwrap_or(3),
            soft_window: chrono::Duration::days(i64::from(
                file.bounces.soft_window_days.unwrap_or(14),
            )),
        };
        if bounces.soft_threshold == 0 {
            return Err(ConfigError::new(
                "bounces.soft_threshold",
                "must be at least 1",
            ));
        }
        let d = file.dkim;
        let dkim = match (d.domain, d.selector, d.rsa_key) {
            (None, None, None) if d.ed25519_key.is_none() => None,
            (Some(domain), Some(selector), Some(rsa_key)) => Some(DkimSettings {
                domain,
                selector,
                rsa_key,
                ed25519: match (d.ed25519_selector, d.ed25519_key) {
                    (Some(s), Some(k)) => Some((s, k)),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::new(
                            "dkim.ed25519_selector",
                            "ed25519_selector and ed25519_key go together",
                        ));
                    }
                },
            }),
            _ => {
                return Err(ConfigError::new(
                    "dkim",
                    "domain, selector and rsa_key are all needed to sign",
                ));
            }
        };

        let mut feeds = Vec::with_capacity(file.feeds.len());
        for (i, f) in file.feeds.into_iter().enumerate() {
            let key = |field: &str| format!("feeds[{i}].{field}");
            let url =
                url::Url::parse(&f.url).map_err(|e| ConfigError::new(key("url"), e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    key("url"),
                    "must be an http:// or https:// URL",
                ));
            }
            let topic = TopicSlug::parse(&f.topic)
                .map_err(|e| ConfigError::new(key("topic"), e.to_string()))?;
            crate::feeds::parse_schedule(&f.schedule)
                .map_err(|e| ConfigError::new(key("schedule"), e))?;
            let name = f
                .name
                .unwrap_or_else(|| format!("{}{}", url.host_str().unwrap_or_default(), url.path()));
            if feeds.iter().any(|x: &FeedSeed| x.name == name) {
                return Err(ConfigError::new(
                    key("name"),
                    format!("{name:?} is used twice"),
                ));
            }
            feeds.push(FeedSeed {
                name,
                url: f.url,
                topic,
                schedule: f.schedule,
            });
        }
        let p = file.polling;
        let polling = PollingSettings {
            tick: Duration::from_millis(p.tick_ms.unwrap_or(1000).max(10)),
            timeout: Duration::from_secs(p.timeout_secs.unwrap_or(20).clamp(1, 300)),
            max_bytes: p.max_bytes.unwrap_or(5 * 1024 * 1024),
            concurrency: p.concurrency.unwrap_or(4).clamp(1, 64),
            max_new_items: p.max_new_items.unwrap_or(200).clamp(1, 10_000),
        };
        let submissions = SubmissionSettings {
            address: match file.submissions.address {
                Some(a)
                    if !a.contains("{topic}")
                        || a.replace("{topic}", "x")
                            .parse::<lettre::Address>()
                            .is_err() =>
                {
                    return Err(ConfigError::new(
                        "submissions.address",
                        "must be an address with {topic}, e.g. presse+{topic}@example.org",
                    ));
                }
                other => other,
            },
            allowed_senders: file
                .submissions
                .allowed_senders
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
            authserv_id: match file.submissions.authserv_id {
                Some(id) if id.trim().is_empty() || id.contains([';', ' ', '\t']) => {
                    return Err(ConfigError::new(
                        "submissions.authserv_id",
                        "must be the authserv-id your MTA writes into Authentication-Results, e.g. mx.example.org",
                    ));
                }
                other => other.map(|id| id.trim().to_owned()),
            },
            verify_dkim: file.submissions.verify_dkim.unwrap_or(true),
        };

        let mut topics = Vec::with_capacity(file.topics.len());
        for (i, t) in file.topics.into_iter().enumerate() {
            let slug = TopicSlug::parse(&t.slug)
                .map_err(|e| ConfigError::new(format!("topics[{i}].slug"), e.to_string()))?;
            if t.name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("topics[{i}].name"),
                    "must not be empty",
                ));
            }
            topics.push(TopicSeed {
                slug,
                name: t.name,
                description: t.description,
            });
        }

        Ok(Self {
            database,
            listen,
            public_url,
            transport,
            mail_from,
            admin_token,
            metrics_token,
            data_dir,
            templates_dir: file.templates_dir,
            trust_proxy_headers: file.trust_proxy_headers.unwrap_or(false),
            trusted_proxies,
            http,
            confirmation_lifetime: chrono::Duration::hours(lifetime_hours as i64),
            consent_version: file.consent_version.unwrap_or_else(|| "1".to_owned()),
            defaults,
            rate_limit: RateLimits {
                per_client_per_minute: file.rate_limit.per_client_per_minute.unwrap_or(20),
                per_address_per_hour: file.rate_limit.per_address_per_hour.unwrap_or(3),
                per_domain_per_hour: file.rate_limit.per_domain_per_hour.unwrap_or(50),
                global_per_hour: file.rate_limit.global_per_hour.unwrap_or(1000),
                suppressed_quiet_days: quiet_days,
            },
            delivery,
            digest,
            bounce_address,
            unsubscribe_address,
            bounces,
            dkim,
            feeds,
            polling,
            submissions,
            topics,
        })
    }

    /// The public base URL: configured, or `http://` + the bound listen address.
    pub fn public_url_for(&self, bound: SocketAddr) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"))
    }
}

fn opt_parse<T, E: std::fmt::Display>(
    key: &str,
    value: Option<String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, ConfigError> {
    value
        .map(|v| parse(&v).map_err(|e| ConfigError::new(key, e.to_string())))
        .transpose()
}

fn parse_database_url(url: &str) -> Result<DatabaseUrl, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(DatabaseUrl::Postgres(url.to_owned()));
    }
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err("sqlite URL needs a file path, e.g. sqlite://data/postbote.db".into());
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    Err("must start with postgres:// or sqlite://".into())
}

fn parse_public_url(v: &str) -> Result<String, String> {
    let url =
        url::Url::parse(v).map_err(|e| format!("{e}: expected e.g. https://news.example.org"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(v.trim_end_matches('/').to_owned())
}

fn parse_smtp_url(v: &str) -> Result<SmtpRelay, String> {
    let url = url::Url::parse(v).map_err(|e| format!("{e}: expected smtp://host:port"))?;
    let implicit = match url.scheme() {
        "smtp" => false,
        "smtps" => true,
        other => return Err(format!("unknown scheme {other:?}: use smtp:// or smtps://")),
    };
    let host = url
        .host_str()
        .ok_or("needs a host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let mut tls = if implicit {
        SmtpTls::Implicit
    } else {
        SmtpTls::None
    };
    let mut ca_file = None;
    for (k, val) in url.query_pairs() {
        match (k.as_ref(), val.as_ref()) {
            ("tls", "required") if !implicit => tls = SmtpTls::StartTls,
            ("tls", "none") if !implicit => tls = SmtpTls::None,
            ("tls", other) => return Err(format!("tls={other} is not supported here")),
            ("ca", path) if !path.is_empty() => ca_file = Some(PathBuf::from(path)),
            (other, _) => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if ca_file.is_some() && tls == SmtpTls::None {
        return Err("ca= names certificates for TLS: use smtps:// or add ?tls=required".into());
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = (!url.username().is_empty()).then(|| {
        (
            decode(url.username()),
            decode(url.password().unwrap_or_default()),
        )
    });
    let port = url.port().unwrap_or(if implicit { 465 } else { 25 });
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    if credentials.is_some() && tls == SmtpTls::None && !loopback {
        return Err(format!(
            "smtp_url carries a password but no TLS: SMTP AUTH would send it in plain text to {host}; \
             use smtps://…:465 or add ?tls=required (plain smtp:// with a password only to a relay on loopback)"
        ));
    }
    Ok(SmtpRelay {
        host,
        port,
        tls,
        credentials,
        ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn zero_configuration_gives_the_documented_defaults() {
        let c = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(
            c.database,
            DatabaseUrl::Sqlite(PathBuf::from("data/postbote.db"))
        );
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.transport, Transport::Outbox(PathBuf::from("data/outbox")));
        assert_eq!(c.mail_from.to_string(), "Newsletter <newsletter@localhost>");
        assert_eq!(c.public_url_for(c.listen), "http://127.0.0.1:8080");
        assert_eq!(c.confirmation_lifetime, chrono::Duration::days(7));
        assert!(c.admin_token.is_none());
        let r = c.rate_limit;
        assert_eq!(
            (
                r.per_address_per_hour,
                r.per_domain_per_hour,
                r.global_per_hour
            ),
            (3, 50, 1000)
        );
        assert_eq!(r.suppressed_quiet_days, 30);
    }

    #[test]
    fn environment_overrides_and_parses_smtp_urls() {
        let c = Config::from_sources(
            None,
            &env(&[
                (
                    "POSTBOTE_SMTP_URL",
                    "smtps://user%40x:p%2Bw@mail.example.org",
                ),
                ("POSTBOTE_DATABASE_URL", "postgres://localhost/postbote"),
                ("POSTBOTE_PUBLIC_URL", "https://news.example.org/"),
            ]),
        )
        .unwrap();
        let Transport::Smtp(relay) = c.transport else {
            panic!("smtp expected")
        };
        assert_eq!(relay.port, 465);
        assert_eq!(relay.tls, SmtpTls::Implicit);
        assert_eq!(relay.credentials, Some(("user@x".into(), "p+w".into())));
        assert_eq!(c.public_url.as_deref(), Some("https://news.example.org"));
        let c = Config::from_sources(
            None,
            &env(&[("POSTBOTE_SMTP_URL", "smtp://127.0.0.1:2525?tls=required")]),
        )
        .unwrap();
        let Transport::Smtp(relay) = c.transport else {
            panic!("smtp expected")
        };
        assert_eq!((relay.port, relay.tls), (2525, SmtpTls::StartTls));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("POSTBOTE_LISTEN", "nonsense"),
            ("POSTBOTE_DATABASE_URL", "mysql://x"),
            ("POSTBOTE_SMTP_URL", "http://x"),
            ("POSTBOTE_MAIL_FROM", "not an address"),
            ("POSTBOTE_PUBLIC_URL", "news.example.org"),
            ("POSTBOTE_ADMIN_TOKEN", "short"),
        ];
        for (key, value) in cases {
            let err = Config::from_sources(None, &env(&[(key, value)])).unwrap_err();
            assert_eq!(err.key, key, "{value}");
        }
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[defaults]\ntimezone = \"Mars/Base\"\n").unwrap();
        let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(err.key, "defaults.timezone");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        std::fs::write(&path, "[[topics]]\nslug = \"Bad Slug\"\nname = \"x\"\n").unwrap();
        let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(err.key, "topics[0].slug");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("dkim.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nS3CRET-KEY-BYTES\n").unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "admin_token = \"admin-S3CRET-0123456789\"\n\
                 metrics_token = \"metrics-S3CRET-0123456789\"\n\
                 [dkim]\ndomain = \"example.org\"\nselector = \"s\"\nrsa_key = {:?}\n",
                key.display().to_string()
            ),
        )
        .unwrap();
        let c = Config::from_sources(
            Some(&path),
            &env(&[
                (
                    "POSTBOTE_SMTP_URL",
                    "smtps://mailer:smtp-S3CRET-pw@mail.example.org",
                ),
                (
                    "POSTBOTE_DATABASE_URL",
                    "postgres://postbote:db-S3CRET-pw@db.example.org/postbote?password=db-S3CRET-2",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.admin_token.as_ref().map(Secret::expose),
            Some("admin-S3CRET-0123456789")
        );
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("S3CRET"), "{shown}");
        assert!(
            shown.contains("mail.example.org") && shown.contains("mailer"),
            "the rest is still shown"
        );
    }

    #[test]
    fn an_smtp_password_never_travels_in_plain_text_beyond_loopback() {
        for url in [
            "smtp://user:pw@mail.example.org:587",
            "smtp://user:pw@192.0.2.1",
            "smtp://user:pw@mail.example.org?tls=none",
        ] {
            let err = Config::from_sources(None, &env(&[("POSTBOTE_SMTP_URL", url)])).unwrap_err();
            assert_eq!(err.key, "POSTBOTE_SMTP_URL", "{url}");
            assert!(
                err.problem.contains("smtp_url") && err.problem.contains("plain text"),
                "{err}"
            );
        }
        for url in [
            "smtp://user:pw@127.0.0.1:25",
            "smtp://user:pw@localhost",
            "smtp://user:pw@[::1]:25",
            "smtp://user:pw@mail.example.org?tls=required",
            "smtps://user:pw@mail.example.org",
            "smtp://mail.example.org",
        ] {
            assert!(
                Config::from_sources(None, &env(&[("POSTBOTE_SMTP_URL", url)])).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn a_relay_ca_file_comes_with_tls_only() {
        let relay =
            |url: &str| match Config::from_sources(None, &env(&[("POSTBOTE_SMTP_URL", url)])) {
                Ok(Config {
                    transport: Transport::Smtp(relay),
                    ..
                }) => Ok(relay),
                Ok(_) => panic!("smtp expected"),
                Err(e) => Err(e.problem),
            };
        let starttls = relay("smtp://relay.lan:587?tls=required&ca=/etc/postbote/relay%20ca.pem");
        let starttls = starttls.unwrap();
        assert_eq!(
            (starttls.tls, starttls.ca_file),
            (
                SmtpTls::StartTls,
                Some(PathBuf::from("/etc/postbote/relay ca.pem"))
            )
        );
        let implicit = relay("smtps://relay.lan?ca=/etc/postbote/ca.pem").unwrap();
        assert_eq!(
            implicit.ca_file,
            Some(PathBuf::from("/etc/postbote/ca.pem"))
        );
        assert_eq!(relay("smtps://mail.example.org").unwrap().ca_file, None);
        let plain = relay("smtp://127.0.0.1:25?ca=/etc/postbote/ca.pem").unwrap_err();
        assert!(plain.contains("ca="), "{plain}");
    }

    #[test]
    fn trusted_proxies_are_networks_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n",
        )
        .unwrap();
        let c = Config::from_sources(Some(&path), &env(&[])).unwrap();
        let trusted = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            c.trusted_proxies.iter().any(|n| n.contains(ip))
        };
        assert!(trusted("10.1.2.3") && trusted("::ffff:10.1.2.3"));
        assert!(trusted("2001:db8:ffff::1") && trusted("192.0.2.7"));
        assert!(!trusted("11.0.0.1") && !trusted("192.0.2.8") && !trusted("2001:db9::1"));
        let defaults = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(
            defaults.trusted_proxies,
            vec![
                IpNetwork::parse("127.0.0.1").unwrap(),
                IpNetwork::parse("::1/128").unwrap()
            ]
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "proxy.example.org",
            "10.0.0.0/x",
        ] {
            std::fs::write(&path, format!("trusted_proxies = [\"::1/128\", {bad:?}]\n")).unwrap();
            let err = Config::from_sources(Some(&path), &env(&[])).unwrap_err();
            assert_eq!(err.key, "trusted_proxies[1]", "{bad}");
            assert!(err.problem.contains(bad), "{err}");
        }
        assert_eq!(
            IpNetwork::parse("::ffff:10.0.0.0/104").unwrap(),
            IpNetwork::parse("10.0.0.0/8").unwrap()
        );
        assert!(
            IpNetwork::parse("0.0.0.0/0")
                .unwrap()
                .contains("203.0.113.1".parse().unwrap())
        );
    }
}
