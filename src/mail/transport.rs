//! Where mail goes: the outbox folder (one `.eml` per message, the default) or an
//! SMTP relay over a kept-open connection.
//!
//! The socket is our own, with `TCP_NODELAY`, for every scheme (lettre's client
//! never set it, so each message waited ~40 ms for a delayed ACK): plain SMTP as it
//! is, `STARTTLS` by a tokio-rustls handshake over it after the relay's go-ahead,
//! implicit TLS (`smtps://`) by the same handshake before the greeting. Both TLS
//! schemes trust the same certificates: the public roots (webpki-roots, Mozilla's
//! list) plus the relay's `ca=` file ([`Trust`]). The session itself, pipelined
//! where the relay allows it, is [`super::smtp`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::Address;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::smtp::{Session, Stream};
use crate::config::{SmtpRelay, SmtpTls, Transport};
use crate::store::ClaimedMail;

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later: a 4xx, a connection failure, a timeout, a full disk.
    #[error("temporary: {0}")]
    Transient(String),
    /// Never try again: the relay answered 5xx, or the mail cannot be sent at all.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The relay refused the reader's address for good (a 5.1.x reply to `RCPT TO`
    /// such as "550 5.1.1 user unknown"): as with a hard-bounce DSN, the address is
    /// dead, not only this mail.
    #[error("recipient refused: {0}")]
    RecipientRefused(String),
    /// The relay cannot be reached or refuses us (connection, greeting, TLS,
    /// authentication): no fault of this mail, so it costs the mail no attempt.
    #[error("relay unavailable: {0}")]
    Relay(String),
}

/// A connection kept open longer than this is replaced rather than trusted:
/// relays close idle sessions, and a dead socket would cost an attempt.
const MAX_IDLE: Duration = Duration::from_secs(20);

/// One delivery channel: each worker owns one.
pub struct Sender {
    /// Where to deliver.
    transport: Transport,
    /// Timeout for connecting and for each whole message.
    timeout: Duration,
    /// The open SMTP session, and when it was last used.
    conn: Option<(Session<Box<dyn Stream>>, Instant)>,
    /// The envelope of the mail named as the next one (its id, sender and
    /// recipient), parsed once for its announcement and its own transaction.
    next: Option<(i64, Address, Address)>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender for `transport`; connects lazily.
    pub fn new(transport: Transport, timeout: Duration) -> Self {
        Self {
            transport,
            timeout,
            conn: None,
            next: None,
        }
    }

    /// Delivers one mail. `next` is the mail the caller will send right after it,
    /// if it knows it: over SMTP its envelope goes ahead (`smtp::Session::send`).
    ///
    /// # Errors
    /// [`SendError`] saying whether a later attempt may succeed.
    pub async fn send(
        &mut self,
        mail: &ClaimedMail,
        next: Option<&ClaimedMail>,
    ) -> Result<(), SendError> {
        match &self.transport {
            Transport::Outbox(dir) => write_outbox(dir, mail).await,
            Transport::Smtp(relay) => {
                let relay = relay.clone();
                self.send_smtp(&relay, mail, next).await
            }
        }
    }

    async fn send_smtp(
        &mut self,
        relay: &SmtpRelay,
        mail: &ClaimedMail,
        next: Option<&ClaimedMail>,
    ) -> Result<(), SendError> {
        let (from, to) = match self.next.take() {
            Some((id, from, to)) if id == mail.id => (from, to),
            _ => envelope(mail)?,
        };
        let parsed = next.and_then(|next| Some((next.id, envelope(next).ok()?)));
        let next = parsed
            .as_ref()
            .map(|(_, (from, to))| (from.as_ref(), to.as_ref()));

        // A session waiting for another mail's message than this one (the mail
        // announced was not sent after all) is ended rather than used.
        let reused = matches!(&self.conn, Some((session, used))
            if used.elapsed() < MAX_IDLE && session.expects(from.as_ref(), to.as_ref(), &mail.message));
        if !reused {
            self.close().await;
        }
        let result = self.try_send(relay, &from, &to, &mail.message, next).await;
        let result = match result {
            // A kept-open connection may have died unseen; one fresh try decides.
            // (A session still open answered: the relay deferred this mail.)
            Err(SendError::Transient(_) | SendError::Relay(_)) if reused && !self.is_open() => {
                self.close().await;
                self.try_send(relay, &from, &to, &mail.message, next).await
            }
            other => other,
        };
        self.next = parsed.map(|(id, (from, to))| (id, from, to));
        result
    }

    async fn try_send(
        &mut self,
        relay: &SmtpRelay,
        from: &Address,
        to: &Address,
        message: &[u8],
        next: Option<(&str, &str)>,
    ) -> Result<(), SendError> {
        let mut conn = match self.conn.take() {
            Some((c, _)) => c,
            None => tokio::time::timeout(self.timeout, connect(relay))
                .await
                .map_err(|_| {
                    SendError::Relay(format!(
                        "connecting to {}:{}: timed out",
                        relay.host, relay.port
                    ))
                })??,
        };
        let transaction = conn.send(from.as_ref(), to.as_ref(), message, next);
        match tokio::time::timeout(self.timeout, transaction).await {
            Ok(Ok(())) => {
                self.conn = Some((conn, Instant::now()));
                Ok(())
            }
            // A refusal the session recovered from leaves it ready for the next
            // mail. Any other failure leaves it in no known state: it is dropped,
            // and the next mail opens a new one.
            Ok(Err(e)) => {
                if conn.recovered() {
                    self.conn = Some((conn, Instant::now()));
                }
                Err(e)
            }
            Err(_) => Err(SendError::Transient(format!(
                "no answer from the relay within {:?}",
                self.timeout
            ))),
        }
    }

    /// Whether an SMTP session is open.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Ends the SMTP session politely, if one is open.
    pub async fn close(&mut self) {
        if let Some((mut session, _)) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), session.quit()).await;
        }
    }
}

/// A mail's envelope sender and recipient as SMTP carries them.
fn envelope(mail: &ClaimedMail) -> Result<(Address, Address), SendError> {
    let from: Address = mail
        .envelope_from
        .parse()
        .map_err(|e| SendError::Permanent(format!("sender: {e}")))?;
    // A relay without SMTPUTF8 still takes an internationalised domain in its
    // ASCII form.
    let to: Address = crate::domain::ascii_address(&mail.recipient)
        .parse()
        .map_err(|e| SendError::Permanent(format!("recipient: {e}")))?;
    Ok((from, to))
}

/// Opens an SMTP session to `relay`: our own socket with `TCP_NODELAY` for every
/// scheme, TLS over it from the first byte (`smtps://`) or after `STARTTLS`, then
/// authentication when the URL carries credentials. The caller bounds the time.
async fn connect(relay: &SmtpRelay) -> Result<Session<Box<dyn Stream>>, SendError> {
    let unavailable =
        |e: String| SendError::Relay(format!("connecting to {}:{}: {e}", relay.host, relay.port));
    let hello = client_name();
    let trust = match relay.tls {
        SmtpTls::None => None,
        SmtpTls::StartTls | SmtpTls::Implicit => Some(Trust::load(relay).map_err(unavailable)?),
    };
    let socket = TcpStream::connect((relay.host.as_str(), relay.port))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    socket
        .set_nodelay(true)
        .map_err(|e| unavailable(e.to_string()))?;
    let tls = |e: std::io::Error| unavailable(format!("TLS: {e}"));
    let mut session = match (trust, relay.tls) {
        (Some(trust), SmtpTls::Implicit) => {
            let stream = trust.wrap(&relay.host, socket).await.map_err(tls)?;
            Session::greet(Box::new(stream) as Box<dyn Stream>, &hello).await
        }
        (Some(trust), SmtpTls::StartTls) => {
            let plain = Session::greet(socket, &hello).await;
            let socket = plain.map_err(unavailable)?.starttls().await;
            let socket = socket.map_err(unavailable)?;
            let stream = trust.wrap(&relay.host, socket).await.map_err(tls)?;
            Session::resume(Box::new(stream) as Box<dyn Stream>, &hello).await
        }
        _ => Session::greet(Box::new(socket) as Box<dyn Stream>, &hello).await,
    }
    .map_err(unavailable)?;
    if let Some((user, password)) = &relay.credentials {
        session
            .authenticate(user, password)
            .await
            // Even a 535 is the relay's matter (a rotated password), never the
            // mail's: failing the queue for it would lose it.
            .map_err(|e| unavailable(format!("authentication: {e}")))?;
    }
    Ok(session)
}

/// The name we give in `EHLO`: this machine's host name, `localhost` when it has
/// none that is printable ASCII.
fn client_name() -> String {
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What a relay's certificate must chain to: the public roots (webpki-roots,
/// Mozilla's list), plus those of the relay's `ca=` file. One set for both schemes,
/// so STARTTLS and implicit TLS accept exactly the same relays.
struct Trust {
    /// The certificates of the `ca=` file, empty without one.
    extra: Vec<CertificateDer<'static>>,
}

impl Trust {
    /// Reads the relay's `ca=` file, if any. It is read for every new connection,
    /// so a renewed certificate is trusted without a restart.
    fn load(relay: &SmtpRelay) -> Result<Self, String> {
        let Some(path) = &relay.ca_file else {
            return Ok(Self { extra: Vec::new() });
        };
        let problem = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
        let extra = CertificateDer::pem_file_iter(path)
            .map_err(|e| problem(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| problem(&e))?;
        if extra.is_empty() {
            return Err(problem(&"no PEM certificate in it"));
        }
        Ok(Self { extra })
    }

    /// The client configuration: TLS 1.2 or 1.3, the default crypto provider (ring
    /// unless the process installed another), these roots, no client certificate.
    fn rustls_config(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in &self.extra {
            roots.add(der.clone())?;
        }
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// The TLS handshake with `host` over our socket: before the greeting
    /// (implicit TLS) or after the go-ahead for `STARTTLS`.
    async fn wrap(
        &self,
        host: &str,
        socket: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = self.rustls_config().map_err(std::io::Error::other)?;
        let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, socket)
            .await
    }
}

/// Writes the mail as `<id>.eml`, atomically: a reader of the folder never sees half
/// a message, and a repeated delivery of the same mail replaces its own file.
async fn write_outbox(dir: &Path, mail: &ClaimedMail) -> Result<(), SendError> {
    let transient =
        |e: std::io::Error| SendError::Transient(format!("outbox {}: {e}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(transient)?;
    let path: PathBuf = dir.join(format!("{:012}.eml", mail.id));
    let tmp = dir.join(format!(".{:012}.eml.tmp", mail.id));
    tokio::fs::write(&tmp, &mail.message)
        .await
        .map_err(transient)?;
    tokio::fs::rename(&tmp, &path).await.map_err(transient)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let relay = |ca_file: Option<PathBuf>| SmtpRelay {
            host: "relay.lan".into(),
            port: 465,
            tls: SmtpTls::Implicit,
            credentials: None,
            ca_file,
        };
        assert!(Trust::load(&relay(None)).unwrap().extra.is_empty());
        let missing = dir.path().join("missing.pem");
        let err = Trust::load(&relay(Some(missing.clone()))).err().unwrap();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let key_only = dir.path().join("key.pem");
        std::fs::write(
            &key_only,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = Trust::load(&relay(Some(key_only))).err().unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
