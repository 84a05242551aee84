//! Where mail goes: the outbox folder (one `.eml` per message, the default) or an
//! SMTP relay over a kept-open connection.
//!
//! lettre 0.11 never sets `TCP_NODELAY` and writes the final `.` of a message as
//! its own small packet, so every message waits ~40 ms for a delayed ACK. For plain
//! SMTP we open the socket ourselves with `TCP_NODELAY` and hand it to lettre; with
//! TLS, lettre opens the connection (no upgrade of a foreign stream is possible).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

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
        let envelope = Envelope::new(
            Some(
                mail.envelope_from
                    .parse()
                    .map_err(|e| SendError::Permanent(format!("sender: {e}")))?,
            ),
            vec![
                mail.recipient
                    .parse()
                    .map_err(|e| SendError::Permanent(format!("recipient: {e}")))?,
            ],
        )
        .map_err(|e| SendError::Permanent(e.to_string()))?;

        let reused =
            matches!(&self.conn, Some((c, used)) if !c.has_broken() && used.elapsed() < MAX_IDLE);
        if !reused {
            self.close().await;
        }
        let result = self.try_send(relay, &envelope, &mail.message).await;
        match result {
            // A kept-open connection may have died unseen; one fresh try decides.
            Err(SendError::Transient(_) | SendError::Relay(_)) if reused => {
                self.close().await;
                self.try_send(relay, &envelope, &mail.message).await
            }
            other => other,
        }
    }

    async fn try_send(
        &mut self,
        relay: &SmtpRelay,
        envelope: &Envelope,
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
        match tokio::time::timeout(self.timeout, conn.send(envelope, message)).await {
            Ok(Ok(_)) => {
                self.conn = Some((conn, Instant::now()));
                Ok(())
            }
            Ok(Err(e)) => {
                conn.abort().await;
                Err(if e.is_permanent() {
                    SendError::Permanent(e.to_string())
                } else {
                    SendError::Transient(e.to_string())
                })
            }
            Err(_) => Err(SendError::Transient(format!(
                "no answer from the relay within {:?}",
                self.timeout
            ))),
        }
    }

    /// Ends the SMTP session politely, if one is open.
    pub async fn close(&mut self) {
        if let Some((mut conn, _)) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.quit()).await;
        }
    }
}

async fn connect(relay: &SmtpRelay, timeout: Duration) -> Result<AsyncSmtpConnection, SendError> {
    let transient =
        |e: String| SendError::Relay(format!("connecting to {}:{}: {e}", relay.host, relay.port));
    let hello = ClientId::default();
    let tls =
        |host: &str| TlsParameters::new(host.to_owned()).map_err(|e| transient(e.to_string()));
    let mut conn = match relay.tls {
        SmtpTls::None => {
            let stream = tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((relay.host.as_str(), relay.port)),
            )
            .await
            .map_err(|_| transient("timed out".into()))?
            .map_err(|e| transient(e.to_string()))?;
            stream
                .set_nodelay(true)
                .map_err(|e| transient(e.to_string()))?;
            tokio::time::timeout(
                timeout,
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello),
            )
            .await
            .map_err(|_| transient("no greeting".into()))?
            .map_err(|e| transient(e.to_string()))?
        }
        SmtpTls::Implicit | SmtpTls::StartTls => {
            let implicit = (relay.tls == SmtpTls::Implicit)
                .then(|| tls(&relay.host))
                .transpose()?;
            let mut conn = AsyncSmtpConnection::connect_tokio1(
                (relay.host.as_str(), relay.port),
                Some(timeout),
                &hello,
                implicit,
                None,
            )
            .await
            .map_err(|e| transient(e.to_string()))?;
            if relay.tls == SmtpTls::StartTls {
                conn.starttls(tls(&relay.host)?, &hello)
                    .await
                    .map_err(|e| transient(e.to_string()))?;
            }
            conn
        }
    };
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
