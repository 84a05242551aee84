//! Where mail goes: the outbox folder (one `.eml` per message, the default) or an
//! SMTP relay over a kept-open connection.
//!
//! lettre 0.11 never sets `TCP_NODELAY` and writes the final `.` of a message as
//! its own small packet, so on a socket lettre opened every message waits ~40 ms for
//! a delayed ACK (about 23 mails/s per connection). So we open the socket ourselves,
//! with `TCP_NODELAY`, for every scheme and hand it to lettre: plain SMTP as it is;
//! `STARTTLS` through lettre's own upgrade of that very stream; implicit TLS
//! (`smtps://`) by a tokio-rustls handshake over it first ([`TlsSocket`]). Both TLS
//! schemes trust the same certificates as lettre's defaults, plus the relay's
//! `ca=` file ([`Trust`]).
//!
//! The relay's own answer can condemn a reader's address: a smarthost refuses a dead
//! mailbox at `RCPT TO` instead of sending a DSN later. To tell that apart from a
//! refusal of our sender or of the message, the SMTP transaction is spoken command
//! by command ([`transaction`]) rather than through lettre's `send`, whose error
//! does not say which command was refused; [`refusal`] sorts the 5xx replies.

use std::error::Error as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::Address;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

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
    /// The open SMTP connection, and when it was last used.
    conn: Option<(AsyncSmtpConnection, Instant)>,
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
        }
    }

    /// Delivers one mail.
    ///
    /// # Errors
    /// [`SendError`] saying whether a later attempt may succeed.
    pub async fn send(&mut self, mail: &ClaimedMail) -> Result<(), SendError> {
        match &self.transport {
            Transport::Outbox(dir) => write_outbox(dir, mail).await,
            Transport::Smtp(relay) => {
                let relay = relay.clone();
                self.send_smtp(&relay, mail).await
            }
        }
    }

    async fn send_smtp(&mut self, relay: &SmtpRelay, mail: &ClaimedMail) -> Result<(), SendError> {
        let from: Address = mail
            .envelope_from
            .parse()
            .map_err(|e| SendError::Permanent(format!("sender: {e}")))?;
        // A relay without SMTPUTF8 still takes an internationalised domain in its
        // ASCII form.
        let to: Address = crate::domain::ascii_address(&mail.recipient)
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient: {e}")))?;

        let reused =
            matches!(&self.conn, Some((c, used)) if !c.has_broken() && used.elapsed() < MAX_IDLE);
        if !reused {
            self.close().await;
        }
        let result = self.try_send(relay, &from, &to, &mail.message).await;
        match result {
            // A kept-open connection may have died unseen; one fresh try decides.
            Err(SendError::Transient(_) | SendError::Relay(_)) if reused => {
                self.close().await;
                self.try_send(relay, &from, &to, &mail.message).await
            }
            other => other,
        }
    }

    async fn try_send(
        &mut self,
        relay: &SmtpRelay,
        from: &Address,
        to: &Address,
        message: &[u8],
    ) -> Result<(), SendError> {
        let mut conn = match self.conn.take() {
            Some((c, _)) => c,
            None => tokio::time::timeout(self.timeout, connect(relay, self.timeout))
                .await
                .map_err(|_| {
                    SendError::Relay(format!(
                        "connecting to {}:{}: timed out",
                        relay.host, relay.port
                    ))
                })??,
        };
        match tokio::time::timeout(self.timeout, transaction(&mut conn, from, to, message)).await {
            Ok(Ok(())) => {
                self.conn = Some((conn, Instant::now()));
                Ok(())
            }
            Ok(Err(e)) => {
                conn.abort().await;
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
        if let Some((mut conn, _)) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.quit()).await;
        }
    }
}

/// The command of an SMTP transaction a reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `MAIL FROM`: the reply is about our envelope sender (or the session).
    MailFrom,
    /// `RCPT TO`: the reply is about the reader's address, unless it names our
    /// sender instead.
    RcptTo,
    /// `DATA`, before the message.
    Data,
    /// The reply after the message's final dot: about the message as a whole.
    EndOfData,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MailFrom => "MAIL FROM",
            Self::RcptTo => "RCPT TO",
            Self::Data => "DATA",
            Self::EndOfData => "the message",
        })
    }
}

/// One SMTP transaction for one recipient, command by command, as lettre's
/// `AsyncSmtpConnection::send` would speak it (without pipelining, with `SMTPUTF8`
/// and `BODY=8BITMIME` when needed), but knowing which command a refusal answered:
/// lettre's error carries the reply code and text, never the command.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    from: &Address,
    to: &Address,
    message: &[u8],
) -> Result<(), SendError> {
    let (sender, recipient): (&str, &str) = (from.as_ref(), to.as_ref());
    let failed = |step: Step, e: lettre::transport::smtp::Error| match e.status() {
        Some(code) if e.is_permanent() => {
            let text = e.source().map(ToString::to_string).unwrap_or_default();
            refusal(step, &code.to_string(), &text, sender, recipient)
        }
        _ => SendError::Transient(format!("{step}: {e}")),
    };
    let mut options = Vec::new();
    if !sender.is_ascii() || !recipient.is_ascii() {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(SendError::Permanent(
                "a non-ASCII address, and the relay does not offer SMTPUTF8".into(),
            ));
        }
        options.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(SendError::Permanent(
                "a non-ASCII message, and the relay does not offer 8BITMIME".into(),
            ));
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(Some(from.clone()), options))
        .await
        .map_err(|e| failed(Step::MailFrom, e))?;
    conn.command(Rcpt::new(to.clone(), Vec::new()))
        .await
        .map_err(|e| failed(Step::RcptTo, e))?;
    conn.command(Data)
        .await
        .map_err(|e| failed(Step::Data, e))?;
    conn.message(message)
        .await
        .map_err(|e| failed(Step::EndOfData, e))?;
    Ok(())
}

/// Most of a relay's reply kept with the mail and the reader's history.
const MAX_REPLY_CHARS: usize = 500;

/// Sorts a 5xx reply (`code`, then the reply's text) to `step` of the transaction
/// from `sender` to `recipient`. The reader's address is dead only when both hold:
///
/// - the reply answered `RCPT TO`, unless it names our sender and not the reader (a
///   relay that checks the sender only once a recipient is known, as Postfix does by
///   default, refuses the sender at `RCPT TO`); or it answered `DATA` or the message
///   and names the reader's address;
/// - its enhanced status code says the destination address is bad: 5.1.1 (no such
///   mailbox), 5.1.2 (no such domain), 5.1.3 (not a valid address), 5.1.6 (moved,
///   no forwarding address) or 5.1.10 (the domain takes no mail, null MX).
///
/// Everything else fails this mail only: any refusal of `MAIL FROM` (our sender, our
/// fault), the sender's codes 5.1.7 and 5.1.8, 5.1.0 (unspecified; Postfix uses it
/// for unknown senders), policy (5.7.x: a spam filter or DMARC said no to this
/// mail), size (5.3.4, 552: our message), and a reply without an enhanced code,
/// which does not say whose fault it is.
fn refusal(step: Step, code: &str, text: &str, sender: &str, recipient: &str) -> SendError {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REPLY_CHARS)
        .collect();
    let reason = format!("relay refused {step}: {code} {}", text.trim());
    let lower = text.to_lowercase();
    let names = |address: &str| lower.contains(&address.to_lowercase());
    let about_reader = match step {
        Step::MailFrom => false,
        Step::RcptTo => names(recipient) || !names(sender),
        Step::Data | Step::EndOfData => names(recipient),
    };
    let bad_address = text
        .split_whitespace()
        .next()
        .and_then(|word| word.strip_prefix("5.1."))
        .is_some_and(|detail| matches!(detail, "1" | "2" | "3" | "6" | "10"));
    if code.starts_with('5') && about_reader && bad_address {
        SendError::RecipientRefused(reason)
    } else {
        SendError::Permanent(reason)
    }
}

/// Opens an SMTP session to `relay`: our own socket with `TCP_NODELAY` for every
/// scheme, TLS over it from the first byte (`smtps://`) or after `STARTTLS`, then
/// authentication when the URL carries credentials.
async fn connect(relay: &SmtpRelay, timeout: Duration) -> Result<AsyncSmtpConnection, SendError> {
    let transient =
        |e: String| SendError::Relay(format!("connecting to {}:{}: {e}", relay.host, relay.port));
    let hello = ClientId::default();
    let trust = match relay.tls {
        SmtpTls::None => None,
        SmtpTls::StartTls | SmtpTls::Implicit => Some(Trust::load(relay).map_err(transient)?),
    };
    let socket = tokio::time::timeout(
        timeout,
        TcpStream::connect((relay.host.as_str(), relay.port)),
    )
    .await
    .map_err(|_| transient("timed out".into()))?
    .map_err(|e| transient(e.to_string()))?;
    socket
        .set_nodelay(true)
        .map_err(|e| transient(e.to_string()))?;
    let stream: Box<dyn AsyncTokioStream> = match (&trust, relay.tls) {
        (Some(trust), SmtpTls::Implicit) => Box::new(
            tokio::time::timeout(timeout, trust.wrap(&relay.host, socket))
                .await
                .map_err(|_| transient("no TLS handshake".into()))?
                .map_err(|e| transient(format!("TLS: {e}")))?,
        ),
        _ => Box::new(socket),
    };
    let mut conn = tokio::time::timeout(
        timeout,
        AsyncSmtpConnection::connect_with_transport(stream, &hello),
    )
    .await
    .map_err(|_| transient("no greeting".into()))?
    .map_err(|e| transient(e.to_string()))?;
    if let (Some(trust), SmtpTls::StartTls) = (&trust, relay.tls) {
        // lettre upgrades the stream it was handed: the socket keeps TCP_NODELAY.
        let tls = trust
            .lettre_parameters(&relay.host)
            .map_err(|e| transient(format!("TLS: {e}")))?;
        conn.starttls(tls, &hello)
            .await
            .map_err(|e| transient(e.to_string()))?;
    }
    if let Some((user, pass)) = &relay.credentials {
        let mechanisms = lettre::transport::smtp::authentication::DEFAULT_MECHANISMS;
        conn.auth(mechanisms, &Credentials::new(user.clone(), pass.clone()))
            .await
            .map_err(|e| {
                // Even a 535 is the relay's matter (a rotated password), never the
                // mail's: failing the queue for it would lose it.
                transient(format!("authentication: {e}"))
            })?;
    }
    Ok(conn)
}

/// What a relay's certificate must chain to: the public roots lettre's
/// `tokio1-rustls-tls` trusts by default (webpki-roots, Mozilla's list), plus those
/// of the relay's `ca=` file. One set for both schemes, so STARTTLS (verified by
/// lettre) and implicit TLS (verified here) accept exactly the same relays.
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

    /// lettre's own TLS settings for `STARTTLS`: its default root store and
    /// verifier, with our extra certificates added.
    fn lettre_parameters(
        &self,
        host: &str,
    ) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        self.extra
            .iter()
            .try_fold(TlsParameters::builder(host.to_owned()), |builder, der| {
                Ok(builder.add_root_certificate(Certificate::from_der(der.to_vec())?))
            })?
            .build_rustls()
    }

    /// The client configuration lettre's `build_rustls` makes from the same
    /// settings: TLS 1.2 or 1.3, the default crypto provider (ring unless the
    /// process installed another), these roots, no client certificate.
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

    /// Implicit TLS: the handshake with `host` over our socket, before lettre reads
    /// the greeting through it.
    async fn wrap(&self, host: &str, socket: TcpStream) -> std::io::Result<TlsSocket> {
        let config = self.rustls_config().map_err(std::io::Error::other)?;
        let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, socket)
            .await?;
        Ok(TlsSocket(stream))
    }
}

/// A TLS session over our own socket, handed to lettre as the stream it speaks
/// SMTP over (lettre's own implicit TLS would open a socket without `TCP_NODELAY`).
#[derive(Debug)]
struct TlsSocket(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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

    const SENDER: &str = "bounces+7-0123456789abcdef@bounces.example.org";
    const READER: &str = "reader@example.net";

    fn sort(step: Step, reply: &str) -> SendError {
        let (code, text) = reply.split_once(' ').unwrap();
        refusal(step, code, text, SENDER, READER)
    }

    fn condemns_the_address(step: Step, reply: &str) -> bool {
        matches!(sort(step, reply), SendError::RecipientRefused(_))
    }

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

    #[test]
    fn only_a_refused_destination_address_condemns_the_reader() {
        for reply in [
            "550 5.1.1 <reader@example.net>: Recipient address rejected: User unknown",
            "550 5.1.1 The email account that you tried to reach does not exist.",
            "550 5.1.2 Host unknown (Name server: example.net: host not found)",
            "556 5.1.10 <reader@example.net>: Recipient address rejected: Domain example.net does not accept mail (nullMX)",
        ] {
            assert!(condemns_the_address(Step::RcptTo, reply), "{reply}");
        }
        for reply in [
            "550 5.7.1 <reader@example.net>: Recipient address rejected: Access denied",
            "554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org",
            "552 5.3.4 Message size exceeds fixed limit",
            "552 Message size exceeds fixed limit",
            "550 Requested action not taken: mailbox unavailable",
            "550 5.1.0 <bounces+7-0123456789abcdef@bounces.example.org>: Sender address rejected: User unknown",
            "553 5.1.8 <bounces+7-0123456789abcdef@bounces.example.org>: Sender address rejected: Domain not found",
            "550 5.1.7 Invalid sender",
            // A sender check at RCPT time wrapped in a mailbox code names our sender.
            "550 5.1.1 <bounces+7-0123456789abcdef@bounces.example.org>: Sender address rejected: undeliverable address",
        ] {
            assert!(!condemns_the_address(Step::RcptTo, reply), "{reply}");
        }
    }

    #[test]
    fn a_refusal_of_our_sender_fails_the_mail_only() {
        for reply in [
            "550 5.1.1 <bounces+7-0123456789abcdef@bounces.example.org>: Sender address rejected: User unknown",
            "553 5.1.8 Domain of sender address does not exist",
            "550 5.1.1 User unknown",
        ] {
            let sorted = sort(Step::MailFrom, reply);
            assert!(
                matches!(sorted, SendError::Permanent(_)),
                "{reply}: {sorted:?}"
            );
        }
    }

    #[test]
    fn after_data_only_a_reply_naming_the_reader_condemns_the_address() {
        let named = "550 5.1.1 <Reader@Example.net>... User unknown";
        assert!(condemns_the_address(Step::EndOfData, named));
        assert!(condemns_the_address(Step::Data, named));
        assert!(!condemns_the_address(
            Step::EndOfData,
            "550 5.1.1 User unknown"
        ));
        assert!(!condemns_the_address(
            Step::EndOfData,
            "554 5.7.1 <reader@example.net>: message rejected as spam"
        ));
    }

    #[test]
    fn the_recorded_reason_names_the_command_on_one_capped_line() {
        let SendError::RecipientRefused(reason) = sort(
            Step::RcptTo,
            "550 5.1.1 <reader@example.net>: Recipient address rejected:\r\nUser unknown",
        ) else {
            panic!("a refused mailbox");
        };
        assert_eq!(
            reason,
            "relay refused RCPT TO: 550 5.1.1 <reader@example.net>: Recipient address rejected:  User unknown"
        );
        let long = format!("550 5.7.1 {}", "x".repeat(5000));
        let SendError::Permanent(reason) = sort(Step::EndOfData, &long) else {
            panic!("a policy refusal");
        };
        assert!(reason.starts_with("relay refused the message: 550 5.7.1 xxx"));
        assert!(
            reason.chars().count() < MAX_REPLY_CHARS + 40,
            "{}",
            reason.len()
        );
    }
}
