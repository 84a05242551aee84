//! The mail keys at the top of the file: how mail leaves (`smtp_url`, else
//! `outbox_dir`), its `From:` (`mail_from`), and the VERP address templates
//! (`bounce_address`, `unsubscribe_address`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lettre::message::Mailbox;

use super::{ConfigError, Env};

/// `POSTBOTE_SMTP_URL` or `smtp_url` when set and not blank, else the outbox
/// folder (`POSTBOTE_OUTBOX_DIR`, `outbox_dir`, default `data_dir/outbox`).
pub(super) fn transport(
    env: &Env<'_>,
    smtp_url: Option<String>,
    outbox_dir: Option<PathBuf>,
    data_dir: &Path,
) -> Result<Transport, ConfigError> {
    match env.pick("POSTBOTE_SMTP_URL", "smtp_url", smtp_url) {
        Some(url) if !url.value.trim().is_empty() => url.parse(parse_smtp_url).map(Transport::Smtp),
        _ => Ok(Transport::Outbox(
            env.path("POSTBOTE_OUTBOX_DIR")
                .or(outbox_dir)
                .unwrap_or_else(|| data_dir.join("outbox")),
        )),
    }
}

/// `POSTBOTE_MAIL_FROM` or `mail_from`; default `Newsletter <newsletter@localhost>`.
pub(super) fn mail_from(env: &Env<'_>, from_file: Option<String>) -> Result<Mailbox, ConfigError> {
    match env.pick("POSTBOTE_MAIL_FROM", "mail_from", from_file) {
        Some(v) => v.parse(|v| {
            v.parse::<Mailbox>()
                .map_err(|e| format!("{e}: expected e.g. Newsletter <news@example.org>"))
        }),
        None => Ok("Newsletter <newsletter@localhost>"
            .parse()
            .expect("default From parses")),
    }
}

/// An address template with `{id}` in its local part (`bounce_address`,
/// `unsubscribe_address`), when set.
pub(super) fn verp_template(
    key: &str,
    value: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let sample = v.replace("{id}", "1-0123456789abcdef");
    if !v.contains("{id}") || sample.parse::<lettre::Address>().is_err() {
        return Err(ConfigError::new(
            key,
            "must be an address with {id} in its local part, e.g. bounces+{id}@example.org",
        ));
    }
    Ok(Some(v))
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

/// Parses `smtp://` or `smtps://` with optional `user:password@` and `?tls=`;
/// a password goes only over TLS, or in plain text to a relay on loopback.
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
