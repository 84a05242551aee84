//! The client side of an SMTP session with the relay, spoken over a stream
//! [`super::transport`] opened and secured: the greeting, `EHLO`, `STARTTLS`,
//! `AUTH PLAIN` or `AUTH LOGIN`, and one transaction per mail.
//!
//! A transaction is pipelined when the relay offers `PIPELINING` (RFC 2920):
//! `MAIL FROM`, `RCPT TO` and `DATA` go out in one write and their replies are read
//! together, then the message with its final dot in a second write. That is two
//! round trips per mail where command by command takes four, and two writes where
//! lettre's client made five. When the caller already knows the next mail of the
//! session, its `MAIL FROM`, `RCPT TO` and `DATA` follow the final dot in the same
//! write (RFC 2920 §3.1: the message may open a group, and `DATA` ends one), so a
//! run of mails takes one round trip and one write each: the relay answers the dot
//! and the next envelope together, and the next message goes out once it has been
//! accepted. Only the envelope goes ahead, never a message: a mail is accepted only
//! after the one before it was, and recorded. Each reply is still matched to its command, so a
//! refusal says which command it answered ([`Step`], [`refusal`]): the relay's
//! answer to `RCPT TO` can condemn a reader's address, its answer to `MAIL FROM`
//! never does.
//!
//! The relay is not trusted to be well-behaved: a reply is read through a cap on
//! its line length and line count, and bytes that arrive with the go-ahead for
//! `STARTTLS`, before TLS protects anything, end the session instead of being read
//! as the relay's later replies.

use base64::Engine as _;
use std::io::IoSlice;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::transport::SendError;

/// A byte stream an SMTP session runs over: a TCP socket, or TLS over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The longest reply line read, CRLF included; RFC 5321 allows 512.
const MAX_LINE: u64 = 4096;

/// The most lines one reply may have (an `EHLO` reply has one per extension).
const MAX_LINES: usize = 128;

/// Most of a relay's reply kept with the mail and the reader's history.
const MAX_REPLY_CHARS: usize = 500;

/// A reply of the relay: its code and the text of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// Whether the code is of class `class` (2: done, 3: go on, 4: try later, 5: no).
    fn is(&self, class: u16) -> bool {
        self.code / 100 == class
    }

    /// The lines' text on one line, the first [`MAX_REPLY_CHARS`] of it, control
    /// characters as spaces: it goes into logs, errors and the mail's history.
    fn text(&self) -> String {
        self.lines
            .join(" ")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REPLY_CHARS)
            .collect()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text().trim())
    }
}

/// The SMTP extensions of the relay this session uses, from its `EHLO` reply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Extensions {
    pipelining: bool,
    smtputf8: bool,
    eight_bit_mime: bool,
    starttls: bool,
    auth_plain: bool,
    auth_login: bool,
}

impl Extensions {
    /// The extensions an `EHLO` reply names, one per line after the first.
    fn of(ehlo: &Reply) -> Self {
        let mut found = Self::default();
        for line in ehlo.lines.iter().skip(1) {
            // `AUTH=PLAIN LOGIN` is the pre-standard spelling some relays still use.
            let mut words = line.split([' ', '=']).filter(|w| !w.is_empty());
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => found.pipelining = true,
                "SMTPUTF8" => found.smtputf8 = true,
                "8BITMIME" => found.eight_bit_mime = true,
                "STARTTLS" => found.starttls = true,
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => found.auth_plain = true,
                            "LOGIN" => found.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        found
    }
}

/// The command of an SMTP transaction a reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
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

/// An SMTP session in the state for a next transaction.
pub struct Session<S> {
    io: BufReader<S>,
    extensions: Extensions,
    /// The bytes of the next write, kept to spare an allocation per mail.
    out: Vec<u8>,
    /// The reply line being read.
    line: Vec<u8>,
    /// Sender and recipient of the envelope written after the last mail's final
    /// dot, for the next mail, announced as ASCII: its replies are still to be
    /// read, and the relay waits for that message.
    announced: Option<(String, String)>,
    /// Whether the last mail's refusal left the session ready for another
    /// ([`Session::recovered`]).
    recovered: bool,
}

impl<S: Stream> Session<S> {
    fn new(stream: S) -> Self {
        Self {
            io: BufReader::new(stream),
            extensions: Extensions::default(),
            out: Vec::new(),
            line: Vec::new(),
            announced: None,
            recovered: false,
        }
    }

    /// Reads the relay's greeting and introduces us as `hello` (`EHLO`, or `HELO`
    /// to a relay that does not know `EHLO`).
    ///
    /// # Errors
    /// What went wrong, for the caller to report as the relay's fault.
    pub async fn greet(stream: S, hello: &str) -> Result<Self, String> {
        let mut session = Self::new(stream);
        let greeting = session
            .reply()
            .await
            .map_err(|e| format!("greeting: {e}"))?;
        if !greeting.is(2) {
            return Err(format!("greeting: {greeting}"));
        }
        session.hello(hello).await?;
        Ok(session)
    }

    /// Continues over `stream`, the TLS session begun after `STARTTLS`: the relay
    /// sends no second greeting, and what it offers is asked again (RFC 3207).
    ///
    /// # Errors
    /// As [`Session::greet`].
    pub async fn resume(stream: S, hello: &str) -> Result<Self, String> {
        let mut session = Self::new(stream);
        session.hello(hello).await?;
        Ok(session)
    }

    async fn hello(&mut self, hello: &str) -> Result<(), String> {
        let ehlo = self.command(&format!("EHLO {hello}\r\n")).await?;
        if ehlo.is(2) {
            self.extensions = Extensions::of(&ehlo);
            return Ok(());
        }
        if !ehlo.is(5) {
            return Err(format!("EHLO: {ehlo}"));
        }
        let helo = self.command(&format!("HELO {hello}\r\n")).await?;
        if !helo.is(2) {
            return Err(format!("HELO: {helo}"));
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    /// Asks the relay to begin TLS and hands back the stream to run it over.
    ///
    /// # Errors
    /// When the relay does not offer `STARTTLS` or refuses it, or sent anything after
    /// its go-ahead: such bytes came before TLS, from anyone on the path, and would
    /// otherwise be read as replies that came over TLS.
    pub async fn starttls(mut self) -> Result<S, String> {
        if !self.extensions.starttls {
            return Err("the relay does not offer STARTTLS".into());
        }
        let reply = self.command("STARTTLS\r\n").await?;
        if reply.code != 220 {
            return Err(format!("STARTTLS: {reply}"));
        }
        if !self.io.buffer().is_empty() {
            return Err("the relay sent more after its go-ahead for STARTTLS, \
                        before TLS began; the session is ended"
                .into());
        }
        Ok(self.io.into_inner())
    }

    /// Logs in as `user` with `password`: `AUTH PLAIN` when the relay offers it,
    /// else `AUTH LOGIN`. Neither is ever written to a log or an error.
    ///
    /// # Errors
    /// When the relay offers neither or refuses the credentials.
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), String> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let reply = if self.extensions.auth_plain {
            let token = base64.encode(format!("\0{user}\0{password}"));
            self.command(&format!("AUTH PLAIN {token}\r\n")).await?
        } else if self.extensions.auth_login {
            let mut reply = self.command("AUTH LOGIN\r\n").await?;
            for secret in [user, password] {
                if !reply.is(3) {
                    break;
                }
                reply = self
                    .command(&format!("{}\r\n", base64.encode(secret)))
                    .await?;
            }
            reply
        } else {
            return Err("the relay offers neither AUTH PLAIN nor AUTH LOGIN".into());
        };
        if reply.is(2) {
            Ok(())
        } else {
            Err(reply.to_string())
        }
    }

    /// One mail from `from` to `to`; `next`, the sender and recipient of the mail
    /// the caller will send next on this session, if it knows them. With
    /// `PIPELINING`, that mail's envelope follows this one's final dot in the same
    /// write (see the module's documentation), and [`Session::send`] for it reads
    /// the replies. After an error the session is in no known state, and the caller
    /// drops it, unless [`Session::recovered`] says otherwise.
    ///
    /// # Errors
    /// [`SendError`]: a refusal sorted by the command it answered ([`refusal`]),
    /// or [`SendError::Transient`] for a deferral or a lost connection, or when
    /// the envelope written ahead was for another mail.
    pub async fn send(
        &mut self,
        from: &str,
        to: &str,
        message: &[u8],
        next: Option<(&str, &str)>,
    ) -> Result<(), SendError> {
        self.recovered = false;
        let ascii = message.is_ascii();
        let lost = |step: Step, e: String| SendError::Transient(format!("{step}: {e}"));
        // The envelope to write now: none when it went ahead with the last mail.
        let envelope = if self.announced.is_some() {
            if !self.announced_for(from, to, ascii) {
                // Kept: the relay still waits for that message, so no QUIT either.
                return Err(SendError::Transient(
                    "the envelope sent ahead was for another mail; the session is ended".into(),
                ));
            }
            self.announced = None;
            String::new()
        } else {
            let envelope = self.envelope(from, to, ascii)?;
            self.unasked()?;
            if self.extensions.pipelining {
                write_all(self.io.get_mut(), envelope.as_bytes())
                    .await
                    .map_err(|e| lost(Step::MailFrom, e))?;
            }
            envelope
        };
        let refused = |step: Step, reply: Reply| {
            if reply.is(5) {
                refusal(step, &reply.code.to_string(), &reply.text(), from, to)
            } else {
                let kind = if reply.is(4) {
                    "transient error"
                } else {
                    "unexpected reply"
                };
                SendError::Transient(format!("{step}: {kind} ({}): {}", reply.code, reply.text()))
            }
        };
        // Without `PIPELINING` nothing went ahead: each command waits for its reply.
        let mut commands = envelope.split_inclusive("\r\n");
        for step in [Step::MailFrom, Step::RcptTo, Step::Data] {
            if let Some(command) = commands.next().filter(|_| !self.extensions.pipelining) {
                self.write(command.as_bytes())
                    .await
                    .map_err(|e| lost(step, e))?;
            }
            let reply = self.reply().await.map_err(|e| lost(step, e))?;
            let expected = if step == Step::Data { 3 } else { 2 };
            if !reply.is(expected) {
                let refusal = refused(step, reply);
                self.recover(step).await;
                return Err(refusal);
            }
        }
        // The relay waits for the message now and has nothing more to say.
        self.unasked()?;
        // The next mail's envelope, when it can go ahead: its message is not built
        // yet, so it is announced as ASCII (a digest always is); should it not be,
        // the envelopes differ and the session is ended instead.
        let ahead = next
            .filter(|_| self.extensions.pipelining)
            .and_then(|(from, to)| Some(((from, to), self.envelope(from, to, true).ok()?)));
        let ahead_bytes = ahead.as_ref().map_or(&b""[..], |(_, e)| e.as_bytes());
        self.out.clear();
        // A message already as the DATA phase carries it (a digest: see
        // `compose::quoted_printable_into`) goes out without a copy.
        if wire_ready(message) {
            self.out.extend_from_slice(b".\r\n");
            self.out.extend_from_slice(ahead_bytes);
            write_all_two(self.io.get_mut(), message, &self.out).await
        } else {
            stuff(message, &mut self.out);
            self.out.extend_from_slice(ahead_bytes);
            self.write_out().await
        }
        .map_err(|e| lost(Step::EndOfData, e))?;
        let reply = self.reply().await.map_err(|e| lost(Step::EndOfData, e))?;
        if reply.is(2) {
            self.announced = ahead.map(|((from, to), _)| (from.to_owned(), to.to_owned()));
            Ok(())
        } else {
            let refusal = refused(Step::EndOfData, reply);
            // An envelope that went ahead has replies of its own still to come, and
            // may have put the relay in its DATA phase: not recovered then.
            if ahead.is_none() {
                self.recover(Step::EndOfData).await;
            }
            Err(refusal)
        }
    }

    /// Whether the last [`Session::send`] failed with a refusal after which the
    /// session is ready for another mail: the relay answered every command of the
    /// transaction and then `RSET` with `250`. A fan-out through a relay that
    /// refuses some readers' addresses then keeps its connection instead of opening
    /// (over TLS: negotiating, and logging in) a new one for each refused reader.
    #[must_use]
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// After the relay refused the transaction at `failed`: reads the replies to the
    /// commands that went out after it in the same group (with `PIPELINING`), then
    /// resets the transaction. Sets [`Session::recovered`] when all went as it
    /// should; a relay that took `DATA` after all waits for a message, and only a
    /// lost connection ends that without a mail, so the session is not recovered.
    async fn recover(&mut self, failed: Step) {
        self.recovered = self.reset_after(failed).await.is_ok();
    }

    async fn reset_after(&mut self, failed: Step) -> Result<(), String> {
        let pending = match failed {
            _ if !self.extensions.pipelining => 0,
            Step::MailFrom => 2,
            Step::RcptTo => 1,
            Step::Data | Step::EndOfData => 0,
        };
        for _ in 0..pending {
            let reply = self.reply().await?;
            if reply.is(3) {
                return Err(format!(
                    "the relay went on to DATA after a refusal: {reply}"
                ));
            }
        }
        self.unasked().map_err(|e| e.to_string())?;
        let reply = self.command("RSET\r\n").await?;
        if reply.code == 250 {
            Ok(())
        } else {
            Err(format!("RSET: {reply}"))
        }
    }

    /// Whether this session can take the mail from `from` to `to` next: nothing
    /// was announced ahead, or exactly its envelope.
    pub fn expects(&self, from: &str, to: &str, message: &[u8]) -> bool {
        self.announced.is_none() || self.announced_for(from, to, message.is_ascii())
    }

    /// Whether the envelope sent ahead is that of a mail from `from` to `to` whose
    /// message is ASCII or not (it was announced as ASCII).
    fn announced_for(&self, from: &str, to: &str, ascii: bool) -> bool {
        self.announced
            .as_ref()
            .is_some_and(|(f, t)| ascii && f == from && t == to)
    }

    /// Fails when a reply nobody asked for waits: it would be read as the answer
    /// to our next command, and could condemn a reader's address that was never
    /// refused.
    fn unasked(&self) -> Result<(), SendError> {
        if self.io.buffer().is_empty() {
            Ok(())
        } else {
            Err(SendError::Transient(
                "the relay sent a reply nobody asked for; the session is ended".into(),
            ))
        }
    }

    /// `MAIL FROM`, `RCPT TO` and `DATA` for a mail from `from` to `to` whose
    /// message is ASCII or not, each with its CRLF.
    fn envelope(&self, from: &str, to: &str, ascii: bool) -> Result<String, SendError> {
        let mut parameters = String::new();
        if !from.is_ascii() || !to.is_ascii() {
            if !self.extensions.smtputf8 {
                return Err(SendError::Permanent(
                    "a non-ASCII address, and the relay does not offer SMTPUTF8".into(),
                ));
            }
            parameters.push_str(" SMTPUTF8");
        }
        if !ascii {
            if !self.extensions.eight_bit_mime {
                return Err(SendError::Permanent(
                    "a non-ASCII message, and the relay does not offer 8BITMIME".into(),
                ));
            }
            parameters.push_str(" BODY=8BITMIME");
        }
        for address in [from, to] {
            if address.chars().any(|c| c.is_control() || " <>".contains(c)) {
                return Err(SendError::Permanent(format!(
                    "an address SMTP cannot carry: {address:?}"
                )));
            }
        }
        Ok(format!(
            "MAIL FROM:<{from}>{parameters}\r\nRCPT TO:<{to}>\r\nDATA\r\n"
        ))
    }

    /// Ends the session politely, or, while the relay waits for the message of
    /// an envelope sent ahead, by closing the connection: in the DATA phase `QUIT`
    /// would be taken as the message's text, and only a lost connection ends it
    /// without a mail.
    pub async fn quit(&mut self) {
        if self.announced.is_none() {
            let _ = self.command("QUIT\r\n").await;
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.write(line.as_bytes()).await?;
        self.reply().await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        write_all(self.io.get_mut(), bytes).await
    }

    /// Writes the pending bytes in `out`.
    async fn write_out(&mut self) -> Result<(), String> {
        write_all(self.io.get_mut(), &self.out).await
    }

    /// Reads one reply, all its lines.
    async fn reply(&mut self) -> Result<Reply, String> {
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            self.line.clear();
            let read = (&mut self.io)
                .take(MAX_LINE)
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|e| e.to_string())?;
            if self.line.last() != Some(&b'\n') {
                return Err(if read as u64 == MAX_LINE {
                    format!("a reply line longer than {MAX_LINE} bytes")
                } else {
                    "the relay closed the connection".to_owned()
                });
            }
            let line = String::from_utf8_lossy(&self.line);
            let (this, more, text) = reply_line(line.trim_end_matches(['\r', '\n']))?;
            if code.is_some_and(|code| code != this) {
                return Err(format!(
                    "a reply whose lines disagree on the code: {line:?}"
                ));
            }
            code = Some(this);
            if lines.len() == MAX_LINES {
                return Err(format!("a reply of more than {MAX_LINES} lines"));
            }
            lines.push(text.to_owned());
            if !more {
                return Ok(Reply { code: this, lines });
            }
        }
    }
}

/// Writes `bytes` to `stream` and flushes them (through TLS, too).
async fn write_all<S: Stream>(stream: &mut S, bytes: &[u8]) -> Result<(), String> {
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Writes `first`, then `second`, to `stream` (in one system call where the stream
/// takes both at once) and flushes them.
async fn write_all_two<S: Stream>(
    stream: &mut S,
    first: &[u8],
    second: &[u8],
) -> Result<(), String> {
    let (mut first, mut second) = (first, second);
    while !first.is_empty() || !second.is_empty() {
        let written = stream
            .write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
            .await
            .map_err(|e| e.to_string())?;
        if written == 0 {
            return Err("the connection takes no more bytes".into());
        }
        let of_first = written.min(first.len());
        first = &first[of_first..];
        second = &second[written - of_first..];
    }
    stream.flush().await.map_err(|e| e.to_string())
}

/// Whether `message` is already as the DATA phase carries it (but the final dot):
/// every line, the last one too, ends in CRLF, there is no other CR or LF, and no
/// line begins with a dot. [`stuff`] would copy such a message unchanged.
pub(crate) fn wire_ready(message: &[u8]) -> bool {
    if message.first() == Some(&b'.') || !message.ends_with(b"\r\n") {
        return false;
    }
    // Every LF follows a CR and no dot follows it; then as many CRs as LFs leaves
    // no CR without its LF (the CRs are counted in one vectorised pass).
    let mut lines = 0;
    for at in memchr::memchr_iter(b'\n', message) {
        if at == 0 || message[at - 1] != b'\r' || message.get(at + 1) == Some(&b'.') {
            return false;
        }
        lines += 1;
    }
    memchr::memchr_iter(b'\r', message).count() == lines
}

/// A reply line's code, whether more lines follow, and its text.
fn reply_line(line: &str) -> Result<(u16, bool, &str), String> {
    let malformed = || {
        let shown: String = line.chars().take(80).collect();
        format!("not an SMTP reply: {shown:?}")
    };
    let code = line
        .get(..3)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u16>().ok())
        .filter(|code| (200..600).contains(code))
        .ok_or_else(malformed)?;
    match line.as_bytes().get(3) {
        None => Ok((code, false, "")),
        Some(b' ') => Ok((code, false, &line[4..])),
        Some(b'-') => Ok((code, true, &line[4..])),
        Some(_) => Err(malformed()),
    }
}

/// Appends `message` as the DATA phase carries it, final dot included: every line
/// ends in CRLF (a bare LF or a bare CR becomes CRLF, so no relay can see a line
/// break, or an end of data, that another would not: SMTP smuggling), and a line
/// that begins with a dot gets a second one (RFC 5321 §4.5.2), which the relay takes
/// off again.
fn stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 32 + 5);
    // The bytes between line breaks are copied as they are, in one go each; the
    // breaks are found with one scan for CR and LF over the whole message.
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut copied = 0;
    // The LF of a CRLF is found by the scan right after its CR: it is skipped.
    let mut taken_lf = None;
    for at in memchr::memchr2_iter(b'\r', b'\n', message) {
        if taken_lf == Some(at) {
            continue;
        }
        out.extend_from_slice(&message[copied..at]);
        out.extend_from_slice(b"\r\n");
        // A bare CR is a line break too: some relays end the data at `CR . CR`.
        copied = if message[at] == b'\r' && message.get(at + 1) == Some(&b'\n') {
            taken_lf = Some(at + 1);
            at + 2
        } else {
            at + 1
        };
        if message.get(copied) == Some(&b'.') {
            out.push(b'.');
        }
    }
    if copied < message.len() {
        out.extend_from_slice(&message[copied..]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

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

    /// How a test relay answers a command.
    type Answer = fn(&str) -> &'static str;

    /// A relay for one test, on the other end of `io`: greets, answers `EHLO` with
    /// `ehlo` and every other command with `answer(command)`, takes a message after
    /// a 354 (answered as `answer(".")`), and returns each chunk it read.
    async fn relay(
        mut io: tokio::io::DuplexStream,
        ehlo: &'static str,
        answer: Answer,
    ) -> Vec<String> {
        let mut chunks = Vec::new();
        let (mut pending, mut in_data) = (String::new(), false);
        let mut buf = vec![0; 1 << 16];
        io.write_all(b"220 relay.test ESMTP\r\n").await.unwrap();
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                return chunks;
            }
            let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
            pending.push_str(&chunk);
            chunks.push(chunk);
            loop {
                let (end, command) = if in_data {
                    let Some(end) = pending.find("\r\n.\r\n") else {
                        break;
                    };
                    (end + 5, ".".to_owned())
                } else {
                    let Some(end) = pending.find("\r\n") else {
                        break;
                    };
                    (end + 2, pending[..end].to_owned())
                };
                pending.drain(..end);
                let reply = if command.starts_with("EHLO") {
                    ehlo
                } else {
                    answer(&command)
                };
                in_data = reply.starts_with("354");
                io.write_all(format!("{reply}\r\n").as_bytes())
                    .await
                    .unwrap();
                if command == "QUIT" {
                    return chunks;
                }
            }
        }
    }

    /// A session with [`relay`], and the relay's task.
    async fn session_with(
        ehlo: &'static str,
        answer: Answer,
    ) -> (
        Result<Session<tokio::io::DuplexStream>, String>,
        tokio::task::JoinHandle<Vec<String>>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let relay = tokio::spawn(relay(server, ehlo, answer));
        (Session::greet(client, "postbote.test").await, relay)
    }

    fn accept_all(command: &str) -> &'static str {
        if command == "DATA" {
            "354 go ahead"
        } else {
            "250 2.0.0 Ok"
        }
    }

    const PIPELINING: &str =
        "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME";

    #[tokio::test]
    async fn a_pipelining_relay_gets_the_envelope_in_one_write_and_the_message_in_another() {
        let (session, relay) = session_with(PIPELINING, accept_all).await;
        let mut session = session.unwrap();
        let message = b"Subject: x\r\n\r\n.a line with a dot\r\nbare LF\nlast";
        session.send(SENDER, READER, message, None).await.unwrap();
        session.quit().await;
        assert_eq!(
            relay.await.unwrap(),
            [
                "EHLO postbote.test\r\n".to_owned(),
                format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{READER}>\r\nDATA\r\n"),
                "Subject: x\r\n\r\n..a line with a dot\r\nbare LF\r\nlast\r\n.\r\n".to_owned(),
                "QUIT\r\n".to_owned(),
            ]
        );
    }

    const OTHER: &str = "other@example.net";

    #[tokio::test]
    async fn the_next_mails_envelope_follows_the_final_dot_and_is_answered_with_it() {
        let (session, relay) = session_with(PIPELINING, accept_all).await;
        let mut session = session.unwrap();
        let next = Some((SENDER, OTHER));
        session
            .send(SENDER, READER, b"first\r\n", next)
            .await
            .unwrap();
        assert!(session.expects(SENDER, OTHER, b"second\r\n"));
        assert!(!session.expects(SENDER, READER, b"second\r\n"));
        session
            .send(SENDER, OTHER, b"second\r\n", None)
            .await
            .unwrap();
        assert!(session.expects(SENDER, READER, b"third\r\n"));
        session.quit().await;
        assert_eq!(
            relay.await.unwrap(),
            [
                "EHLO postbote.test\r\n".to_owned(),
                format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{READER}>\r\nDATA\r\n"),
                format!("first\r\n.\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{OTHER}>\r\nDATA\r\n"),
                "second\r\n.\r\n".to_owned(),
                "QUIT\r\n".to_owned(),
            ]
        );
    }

    #[tokio::test]
    async fn a_session_waiting_for_another_mails_message_sends_nothing_more() {
        let (session, relay) = session_with(PIPELINING, accept_all).await;
        let mut session = session.unwrap();
        // A message to be stuffed takes the other path to the wire.
        let first = b"Subject: x\r\n\r\n.dot\nbare LF";
        session
            .send(SENDER, READER, first, Some((SENDER, OTHER)))
            .await
            .unwrap();
        // Announced as ASCII: an 8-bit message needs another MAIL FROM.
        assert!(!session.expects(SENDER, OTHER, "Grüße\r\n".as_bytes()));
        let sent = session.send(SENDER, READER, b"not this\r\n", None).await;
        assert!(
            matches!(&sent, Err(SendError::Transient(e)) if e.contains("another mail")),
            "{sent:?}"
        );
        // QUIT would be the announced mail's text: the connection is only dropped.
        session.quit().await;
        drop(session);
        let chunks = relay.await.unwrap();
        assert_eq!(
            chunks.last().unwrap(),
            &format!(
                "Subject: x\r\n\r\n..dot\r\nbare LF\r\n.\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{OTHER}>\r\nDATA\r\n"
            )
        );
        assert_eq!(chunks.len(), 3, "{chunks:?}");
    }

    #[tokio::test]
    async fn a_refusal_of_the_envelope_sent_ahead_is_the_next_mails() {
        fn refuse_other(command: &str) -> &'static str {
            match command {
                c if c.starts_with("RCPT") && c.contains("other@") => "550 5.1.1 User unknown",
                c => accept_all(c),
            }
        }
        let (session, _relay) = session_with(PIPELINING, refuse_other).await;
        let mut session = session.unwrap();
        // The first mail is accepted whatever its follower's envelope gets.
        session
            .send(SENDER, READER, b"first\r\n", Some((SENDER, OTHER)))
            .await
            .unwrap();
        let sent = session.send(SENDER, OTHER, b"second\r\n", None).await;
        assert!(
            matches!(&sent, Err(SendError::RecipientRefused(e)) if e.contains("550 5.1.1")),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn a_reply_after_the_go_ahead_ends_the_session_before_the_message() {
        fn chatty(command: &str) -> &'static str {
            match command {
                // One reply too many, after the go-ahead: it would answer the dot.
                "DATA" => "354 go ahead\r\n250 2.0.0 Ok",
                c => accept_all(c),
            }
        }
        let (session, relay) = session_with(PIPELINING, chatty).await;
        let sent = session.unwrap().send(SENDER, READER, b"x\r\n", None).await;
        assert!(
            matches!(&sent, Err(SendError::Transient(e)) if e.contains("nobody asked for")),
            "{sent:?}"
        );
        let chunks = relay.await.unwrap();
        assert!(!chunks.iter().any(|c| c.contains("x\r\n.")), "{chunks:?}");
    }

    #[tokio::test]
    async fn without_pipelining_nothing_goes_ahead() {
        let (session, relay) = session_with("250-relay.test\r\n250 8BITMIME", accept_all).await;
        let mut session = session.unwrap();
        session
            .send(SENDER, READER, b"first\r\n", Some((SENDER, OTHER)))
            .await
            .unwrap();
        session
            .send(SENDER, OTHER, b"second\r\n", None)
            .await
            .unwrap();
        session.quit().await;
        let chunks = relay.await.unwrap();
        assert_eq!(chunks[4], "first\r\n.\r\n");
        assert_eq!(chunks[5], format!("MAIL FROM:<{SENDER}>\r\n"));
        assert_eq!(chunks.last().unwrap(), "QUIT\r\n");
    }

    #[tokio::test]
    async fn without_pipelining_each_command_waits_for_its_reply() {
        let (session, relay) = session_with("250-relay.test\r\n250 8BITMIME", accept_all).await;
        let mut session = session.unwrap();
        session
            .send(SENDER, READER, "Grüße\r\n".as_bytes(), None)
            .await
            .unwrap();
        session.quit().await;
        let chunks = relay.await.unwrap();
        assert_eq!(
            chunks[1..4],
            [
                format!("MAIL FROM:<{SENDER}> BODY=8BITMIME\r\n"),
                format!("RCPT TO:<{READER}>\r\n"),
                "DATA\r\n".to_owned()
            ]
        );
    }

    #[tokio::test]
    async fn a_pipelined_refusal_is_sorted_by_the_command_it_answered() {
        fn refuse_reader(command: &str) -> &'static str {
            match command {
                c if c.starts_with("RCPT") => {
                    "550 5.1.1 <reader@example.net>: Recipient address rejected: User unknown"
                }
                "DATA" => "554 5.5.1 Error: no valid recipients",
                c => accept_all(c),
            }
        }
        fn refuse_sender(command: &str) -> &'static str {
            match command {
                c if c.starts_with("MAIL") => "550 5.1.1 User unknown",
                c if c.starts_with("RCPT") || c == "DATA" => "503 5.5.1 Error: need MAIL command",
                c => accept_all(c),
            }
        }
        fn defer_data(command: &str) -> &'static str {
            match command {
                "DATA" => "451 4.3.0 Error: queue file write error",
                c => accept_all(c),
            }
        }
        let cases: [(Answer, SendError); 3] = [
            (
                refuse_reader,
                SendError::RecipientRefused(
                    "relay refused RCPT TO: 550 5.1.1 <reader@example.net>: Recipient address rejected: User unknown".into(),
                ),
            ),
            (
                refuse_sender,
                SendError::Permanent("relay refused MAIL FROM: 550 5.1.1 User unknown".into()),
            ),
            (
                defer_data,
                SendError::Transient(
                    "DATA: transient error (451): 4.3.0 Error: queue file write error".into(),
                ),
            ),
        ];
        for (answer, expected) in cases {
            let (session, _relay) = session_with(PIPELINING, answer).await;
            let sent = session.unwrap().send(SENDER, READER, b"x\r\n", None).await;
            assert_eq!(sent, Err(expected));
        }
    }

    /// Refuses the reader [`OTHER`] (and `DATA` after it, as a relay must when no
    /// recipient is left); takes everything else.
    fn refuse_other_reader(command: &str) -> &'static str {
        match command {
            c if c.starts_with("RCPT") && c.contains("other@") => "550 5.1.1 User unknown",
            "DATA" if LAST_RCPT_REFUSED.with(std::cell::Cell::get) => {
                "554 5.5.1 Error: no valid recipients"
            }
            c => accept_all(c),
        }
    }

    thread_local! {
        static LAST_RCPT_REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// [`refuse_other_reader`], remembering whether the last `RCPT TO` was refused.
    fn refusing_relay(command: &str) -> &'static str {
        let reply = refuse_other_reader(command);
        if command.starts_with("RCPT") {
            LAST_RCPT_REFUSED.with(|c| c.set(reply.starts_with('5')));
        }
        reply
    }

    // One thread: the relay's answers and the test share `LAST_RCPT_REFUSED`.
    #[tokio::test(flavor = "current_thread")]
    async fn after_a_refused_reader_the_session_is_reset_and_takes_the_next_mail() {
        for ehlo in [PIPELINING, "250-relay.test\r\n250 8BITMIME"] {
            let (session, relay) = session_with(ehlo, refusing_relay).await;
            let mut session = session.unwrap();
            let sent = session.send(SENDER, OTHER, b"first\r\n", None).await;
            assert!(
                matches!(&sent, Err(SendError::RecipientRefused(e)) if e.contains("550 5.1.1")),
                "{sent:?}"
            );
            assert!(session.recovered(), "{ehlo}");
            session
                .send(SENDER, READER, b"second\r\n", None)
                .await
                .unwrap();
            assert!(!session.recovered());
            session.quit().await;
            let chunks = relay.await.unwrap().concat();
            let expected = format!(
                "RCPT TO:<{OTHER}>\r\n{}RSET\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{READER}>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n",
                // Without PIPELINING, DATA is never sent after a refusal.
                if ehlo == PIPELINING { "DATA\r\n" } else { "" }
            );
            assert!(chunks.ends_with(&expected), "{ehlo}: {chunks:?}");
            assert!(!chunks.contains("first"), "{chunks:?}");
        }
    }

    #[tokio::test]
    async fn a_relay_that_takes_data_after_a_refused_reader_is_left_alone() {
        // Against RFC 2920: DATA accepted although its only recipient was refused.
        fn lax(command: &str) -> &'static str {
            match command {
                c if c.starts_with("RCPT") => "550 5.1.1 User unknown",
                c => accept_all(c),
            }
        }
        let (session, relay) = session_with(PIPELINING, lax).await;
        let mut session = session.unwrap();
        let sent = session.send(SENDER, OTHER, b"first\r\n", None).await;
        assert!(
            matches!(sent, Err(SendError::RecipientRefused(_))),
            "{sent:?}"
        );
        // The relay waits for a message: RSET or QUIT would become its text.
        assert!(!session.recovered());
        drop(session);
        let chunks = relay.await.unwrap();
        assert!(
            !chunks
                .iter()
                .any(|c| c.contains("RSET") || c.contains("QUIT")),
            "{chunks:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_message_after_an_envelope_sent_ahead_is_not_recovered() {
        fn refuse_first(command: &str) -> &'static str {
            match command {
                "." => "554 5.7.1 Message rejected",
                c => accept_all(c),
            }
        }
        let (session, _relay) = session_with(PIPELINING, refuse_first).await;
        let mut session = session.unwrap();
        let sent = session
            .send(SENDER, READER, b"first\r\n", Some((SENDER, OTHER)))
            .await;
        assert!(matches!(sent, Err(SendError::Permanent(_))), "{sent:?}");
        // The next envelope's replies are still to come: the session is dropped.
        assert!(!session.recovered());
        let (session, relay) = session_with(PIPELINING, refuse_first).await;
        let mut session = session.unwrap();
        let sent = session.send(SENDER, READER, b"first\r\n", None).await;
        assert!(matches!(sent, Err(SendError::Permanent(_))), "{sent:?}");
        assert!(session.recovered(), "nothing went ahead: reset and kept");
        session.quit().await;
        let chunks = relay.await.unwrap().concat();
        assert!(
            chunks.ends_with("first\r\n.\r\nRSET\r\nQUIT\r\n"),
            "{chunks:?}"
        );
    }

    #[tokio::test]
    async fn what_the_message_or_address_needs_must_be_offered() {
        let (session, _relay) = session_with("250 relay.test", accept_all).await;
        let mut session = session.unwrap();
        let sent = session.send(SENDER, READER, "Grüße".as_bytes(), None).await;
        assert!(
            matches!(&sent, Err(SendError::Permanent(e)) if e.contains("8BITMIME")),
            "{sent:?}"
        );
        let sent = session.send(SENDER, "zoë@example.net", b"x", None).await;
        assert!(
            matches!(&sent, Err(SendError::Permanent(e)) if e.contains("SMTPUTF8")),
            "{sent:?}"
        );
        let sent = session
            .send(
                SENDER,
                "a@b.example>\r\nRCPT TO:<victim@example.com",
                b"x",
                None,
            )
            .await;
        assert!(
            matches!(&sent, Err(SendError::Permanent(e)) if e.contains("cannot carry")),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn bytes_after_the_go_ahead_for_starttls_end_the_session() {
        fn inject(command: &str) -> &'static str {
            match command {
                // A man in the middle answers for the relay before TLS begins.
                "STARTTLS" => "220 2.0.0 Ready to start TLS\r\n250 2.0.0 Ok",
                c => accept_all(c),
            }
        }
        let (session, _relay) = session_with("250-relay.test\r\n250 STARTTLS", inject).await;
        let err = session.unwrap().starttls().await.err().unwrap();
        assert!(err.contains("before TLS began"), "{err}");

        let (session, _relay) = session_with("250 relay.test", accept_all).await;
        let err = session.unwrap().starttls().await.err().unwrap();
        assert_eq!(err, "the relay does not offer STARTTLS");
    }

    #[tokio::test]
    async fn credentials_go_as_auth_plain_or_auth_login() {
        fn plain(command: &str) -> &'static str {
            // base64 of "\0user\0secret"
            match command {
                "AUTH PLAIN AHVzZXIAc2VjcmV0" => "235 2.7.0 Authentication successful",
                _ => "535 5.7.8 Error: authentication failed",
            }
        }
        fn login(command: &str) -> &'static str {
            match command {
                "AUTH LOGIN" => "334 VXNlcm5hbWU6",
                "dXNlcg==" => "334 UGFzc3dvcmQ6",
                "c2VjcmV0" => "235 2.7.0 Authentication successful",
                _ => "535 5.7.8 Error: authentication failed",
            }
        }
        let (session, _relay) = session_with("250-relay.test\r\n250 AUTH LOGIN PLAIN", plain).await;
        assert_eq!(
            session.unwrap().authenticate("user", "secret").await,
            Ok(())
        );
        let (session, _relay) = session_with("250-relay.test\r\n250 AUTH=LOGIN", login).await;
        assert_eq!(
            session.unwrap().authenticate("user", "secret").await,
            Ok(())
        );

        let (session, _relay) = session_with("250-relay.test\r\n250 AUTH LOGIN", login).await;
        let err = session
            .unwrap()
            .authenticate("user", "wrong")
            .await
            .unwrap_err();
        assert_eq!(err, "535 5.7.8 Error: authentication failed");
        let (session, _relay) = session_with("250-relay.test\r\n250 AUTH CRAM-MD5", plain).await;
        let err = session
            .unwrap()
            .authenticate("user", "secret")
            .await
            .unwrap_err();
        assert!(err.contains("neither AUTH PLAIN nor AUTH LOGIN"), "{err}");
    }

    #[tokio::test]
    async fn a_reply_is_read_through_caps_and_must_be_well_formed() {
        async fn greeting(bytes: Vec<u8>) -> String {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            server.write_all(&bytes).await.unwrap();
            drop(server);
            Session::greet(client, "postbote.test").await.err().unwrap()
        }
        let long = [b"220 ".as_slice(), &[b'x'; 5000], b"\r\n"].concat();
        assert!(greeting(long).await.contains("longer than 4096 bytes"));
        let endless = "220-hello\r\n".repeat(MAX_LINES + 1).into_bytes();
        assert!(greeting(endless).await.contains("more than 128 lines"));
        assert!(
            greeting(b"220-a\r\n250 b\r\n".to_vec())
                .await
                .contains("disagree")
        );
        assert!(
            greeting(b"HTTP/1.1 400\r\n".to_vec())
                .await
                .contains("not an SMTP reply")
        );
        assert!(
            greeting(b"220 half a line".to_vec())
                .await
                .contains("closed the connection")
        );
        assert_eq!(
            greeting(b"554-go away\r\n554 5.7.1 no\r\n".to_vec()).await,
            "greeting: 554 go away 5.7.1 no"
        );
    }

    #[test]
    fn the_extensions_are_read_from_the_ehlo_reply() {
        let ehlo = Reply {
            code: 250,
            lines: [
                "relay.test",
                "pipelining",
                "AUTH=PLAIN",
                "SMTPUTF8",
                "STARTTLS",
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        assert_eq!(
            Extensions::of(&ehlo),
            Extensions {
                pipelining: true,
                smtputf8: true,
                eight_bit_mime: false,
                starttls: true,
                auth_plain: true,
                auth_login: false,
            }
        );
    }

    #[test]
    fn no_bare_line_break_can_end_the_data_early() {
        let mut out = Vec::new();
        stuff(b"a\r.\r\nb\n.\nc\r\n.\r\n\r\n..d", &mut out);
        assert_eq!(
            out,
            b"a\r\n..\r\nb\r\n..\r\nc\r\n..\r\n\r\n...d\r\n.\r\n".to_vec()
        );
    }

    /// The stuffing as RFC 5321 words it, line by line (the implementation
    /// before the whole-message scan): the reference for the property below.
    fn stuffed_line_by_line(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = message;
        while !rest.is_empty() {
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            for line in line.split(|&b| b == b'\r') {
                if line.first() == Some(&b'.') {
                    out.push(b'.');
                }
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            rest = next;
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]
        #[test]
        fn stuffing_is_the_line_by_line_stuffing(
            message in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'.', b'\r', b'\n', b' ']), 0..64)
        ) {
            let mut out = Vec::new();
            stuff(&message, &mut out);
            proptest::prop_assert_eq!(&out, &stuffed_line_by_line(&message));
            if wire_ready(&message) {
                proptest::prop_assert_eq!(out, [message.as_slice(), b".\r\n"].concat());
            }
        }

        /// A message that `wire_ready` lets go out as it is is exactly what
        /// stuffing would have sent; mostly whole lines here, so that many are.
        #[test]
        fn a_wire_ready_message_is_its_own_stuffing(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec!["ab", "\r\n", ".", "a\r\n", "\n", "\r", " "]), 0..24)
        ) {
            let message = pieces.concat().into_bytes();
            let mut out = Vec::new();
            stuff(&message, &mut out);
            let ready = [message.as_slice(), b".\r\n"].concat();
            proptest::prop_assert_eq!(wire_ready(&message), out == ready && !message.is_empty());
        }
    }

    #[test]
    fn only_whole_crlf_lines_without_a_leading_dot_are_wire_ready() {
        assert!(wire_ready(b"a\r\nb\r\n"));
        assert!(wire_ready(b"a\r\n\r\nb..\r\n"));
        for not in [
            &b""[..],
            b"a",
            b"a\r\nb",
            b".a\r\n",
            b"a\r\n.b\r\n",
            b"a\nb\r\n",
            b"a\rb\r\n",
            b"a\r\r\n",
            b"a\r\n\n",
        ] {
            assert!(!wire_ready(not), "{:?}", String::from_utf8_lossy(not));
        }
    }

    #[tokio::test]
    async fn a_reply_nobody_asked_for_ends_the_session() {
        fn chatty(command: &str) -> &'static str {
            match command {
                "DATA" => "354 go ahead",
                // One reply too many: it would answer the next MAIL FROM.
                "." => "250 2.0.0 Ok\r\n550 5.1.1 <reader@example.net>: User unknown",
                c => accept_all(c),
            }
        }
        let (session, _relay) = session_with(PIPELINING, chatty).await;
        let mut session = session.unwrap();
        session.send(SENDER, READER, b"x\r\n", None).await.unwrap();
        // Wait for the stray reply (it may have come with the 250 already); it is
        // seen before anything is sent.
        let _ = session.io.fill_buf().await;
        let sent = session.send(SENDER, READER, b"y\r\n", None).await;
        assert!(
            matches!(&sent, Err(SendError::Transient(e)) if e.contains("nobody asked for")),
            "{sent:?}"
        );
    }
}
