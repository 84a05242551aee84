//! Configuration: a TOML file (`--config` or `POSTBOTE_CONFIG`) overlaid by the
//! `POSTBOTE_*` environment variables, parsed once at start into typed values.
//! Every key is documented in `config/postbote.example.toml`. A bad value stops the
//! start with a [`ConfigError`] naming the key and the problem.
//!
//! This file reads the sources and joins the sections into [`Config`]. Each group
//! of keys has a file of its own, with the keys as written, the settings type and
//! the `resolve` that checks them: the top-level keys in `storage`, `web`, `mail`
//! and `signup` (the groups of the example file), then one file per `[section]`:
//! `http`, `defaults`, `rate_limit`, `delivery`, `digest`, `bounces`, `dkim`,
//! `feeds`, `polling`, `submissions`, `topics`, `webhooks`, `site`.

mod bounces;
mod defaults;
mod delivery;
mod digest;
mod dkim;
mod feeds;
mod http;
mod mail;
mod polling;
mod rate_limit;
mod signup;
mod site;
mod storage;
mod submissions;
#[cfg(test)]
mod tests;
mod topics;
mod web;
mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use lettre::message::Mailbox;
use serde::Deserialize;

pub use bounces::BounceSettings;
pub use defaults::SignUpDefaults;
pub use delivery::Delivery;
pub use digest::DigestSettings;
pub use dkim::DkimSettings;
pub use feeds::FeedSeed;
pub use http::HttpSettings;
pub use mail::{SmtpRelay, SmtpTls, Transport};
pub use polling::PollingSettings;
pub use rate_limit::RateLimits;
pub use site::{AccentColor, LogoWidth, SiteSettings};
pub use submissions::SubmissionSettings;
pub use topics::TopicSeed;
pub use web::{IpNetwork, Secret};
pub use webhooks::{WebhookSecret, WebhookSettings};

/// The type of [`Config::database`]; the store owns it, as it is what the store opens.
pub use crate::store::DatabaseUrl;

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
    http: http::FileHttp,
    confirmation_lifetime_hours: Option<u64>,
    consent_version: Option<String>,
    defaults: defaults::FileDefaults,
    rate_limit: rate_limit::FileRateLimit,
    delivery: delivery::FileDelivery,
    digest: digest::FileDigest,
    bounces: bounces::FileBounces,
    dkim: dkim::FileDkim,
    topics: Vec<topics::FileTopic>,
    feeds: Vec<feeds::FileFeed>,
    polling: polling::FilePolling,
    submissions: submissions::FileSubmissions,
    bounce_address: Option<String>,
    unsubscribe_address: Option<String>,
    webhooks: webhooks::FileWebhooks,
    site: site::FileSite,
}

/// The `POSTBOTE_*` environment variables; a variable wins over its key in the file.
struct Env<'a>(&'a HashMap<String, String>);

/// A value and where it came from (the variable or the file's key), which its
/// error names.
struct Sourced {
    /// The variable or key.
    key: String,
    /// The value as written.
    value: String,
}

impl Env<'_> {
    /// The variable `var` when set, else the file's value of `key`.
    fn pick(&self, var: &str, key: &str, from_file: Option<String>) -> Option<Sourced> {
        let (key, value) = match self.0.get(var) {
            Some(v) => (var, v.clone()),
            None => (key, from_file?),
        };
        Some(Sourced {
            key: key.to_owned(),
            value,
        })
    }

    /// The variable `var` as a path, when set.
    fn path(&self, var: &str) -> Option<PathBuf> {
        self.0.get(var).map(PathBuf::from)
    }
}

impl Sourced {
    /// The value parsed by `parse`; its error becomes a [`ConfigError`] naming the key.
    fn parse<T, E: std::fmt::Display>(
        self,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, ConfigError> {
        parse(&self.value).map_err(|e| ConfigError::new(self.key, e.to_string()))
    }
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
    /// Signed webhooks; `None` when no URL is configured.
    pub webhooks: Option<WebhookSettings>,
    /// Name, logo, accent colour, imprint and privacy links of pages and mails.
    pub site: SiteSettings,
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
        Self::resolve(file, &Env(env))
    }

    /// Checks every group of keys, in the order of the example file; the first bad
    /// value stops it.
    fn resolve(file: FileConfig, env: &Env<'_>) -> Result<Self, ConfigError> {
        let data_dir = storage::data_dir(env, file.data_dir);
        let database = storage::database(env, file.database_url, &data_dir)?;
        let listen = web::listen(env, file.listen)?;
        let public_url = web::public_url(env, file.public_url)?;
        let transport = mail::transport(env, file.smtp_url, file.outbox_dir, &data_dir)?;
        let mail_from = mail::mail_from(env, file.mail_from)?;
        let admin_token = web::admin_token(env, file.admin_token)?;
        let metrics_token = web::metrics_token(env, file.metrics_token)?;
        let trusted_proxies = web::trusted_proxies(file.trusted_proxies)?;
        let http = http::resolve(file.http)?;
        let defaults = defaults::resolve(file.defaults)?;
        let confirmation_lifetime =
            signup::confirmation_lifetime(file.confirmation_lifetime_hours)?;
        let rate_limit = rate_limit::resolve(file.rate_limit)?;
        let delivery = delivery::resolve(file.delivery)?;
        let digest = digest::resolve(file.digest, &mail_from)?;
        let bounce_address = mail::verp_template("bounce_address", file.bounce_address)?;
        let unsubscribe_address =
            mail::verp_template("unsubscribe_address", file.unsubscribe_address)?;
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
            confirmation_lifetime,
            consent_version: signup::consent_version(file.consent_version),
            defaults,
            rate_limit,
            delivery,
            digest,
            bounce_address,
            unsubscribe_address,
            bounces: bounces::resolve(file.bounces)?,
            dkim: dkim::resolve(file.dkim)?,
            feeds: feeds::resolve(file.feeds)?,
            polling: polling::resolve(file.polling),
            submissions: submissions::resolve(file.submissions)?,
            topics: topics::resolve(file.topics)?,
            webhooks: webhooks::resolve(env, file.webhooks)?,
            site: site::resolve(file.site)?,
        })
    }

    /// The public base URL: configured, or `http://` + the bound listen address.
    pub fn public_url_for(&self, bound: SocketAddr) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"))
    }
}
