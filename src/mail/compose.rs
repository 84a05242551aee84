//! Building the mails postbote sends: rendered from the template set, with the
//! headers every mail must carry.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::{self, HeaderName, HeaderValue, Headers};
use lettre::message::{Mailbox, Mailboxes, MultiPart};
use rand::{Rng as _, RngCore};
use serde_json::json;

use super::templates::{RenderedMail, TemplateError, Templates};
use crate::config::SiteSettings;
use crate::domain::{EmailAddress, LinkKey, Locale, Token, hex};
use crate::links::Links;
use crate::store::NewMail;

mod confirm;

/// Why a mail could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// A template failed to render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// lettre refused the message (should not happen with parsed addresses).
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
    /// An address lettre cannot use.
    #[error("address: {0}")]
    Address(#[from] lettre::address::AddressError),
}

/// Renders and assembles mails. Cheap to share.
#[derive(Debug, Clone)]
pub struct Composer {
    /// The template set.
    templates: Arc<Templates>,
    /// The `From:` of every mail.
    from: Mailbox,
    /// Builds every link a mail carries, and signs VERP ids.
    links: Links,
    /// How long confirmation links live, shown in the mail.
    lifetime_days: i64,
    /// VERP bounce and mailto unsubscribe address templates.
    addresses: ReturnAddresses,
    /// Name, logo and accent colour of the mails' header, imprint and privacy links.
    site: SiteSettings,
    /// The `From:` and `List-Id:` header lines of every digest, formatted once.
    digest_lines: (String, String),
    /// The sender's domain in ASCII (IDNA) form: a `Message-ID` holds no more.
    message_id_domain: String,
    /// The digest footer of each language, cut once; made again with the site.
    footer_cuts: FooterCuts,
    /// The confirmation mail of each language, cut once; made again with the site.
    confirm_cuts: confirm::ConfirmCuts,
}

/// Address templates with an `{id}` placeholder for the reader (see
/// [`Composer::verp_id`]).
#[derive(Debug, Clone, Default)]
pub struct ReturnAddresses {
    /// Envelope sender of every mail, e.g. `bounces+{id}@news.example.org`.
    pub bounce: Option<String>,
    /// `mailto:` alternative in `List-Unsubscribe`, e.g. `unsubscribe+{id}@news.example.org`.
    pub unsubscribe: Option<String>,
}

impl Composer {
    /// A composer for these templates and settings.
    pub fn new(
        templates: Arc<Templates>,
        from: Mailbox,
        public_url: String,
        lifetime: chrono::Duration,
        link_key: LinkKey,
        list_id: String,
        addresses: ReturnAddresses,
    ) -> Self {
        let mut from_line = Headers::new();
        from_line.set(header::From::from(Mailboxes::from(from.clone())));
        let mut list_id_line = Headers::new();
        list_id_line.insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Id"),
            list_id,
        ));
        Self {
            digest_lines: (from_line.to_string(), list_id_line.to_string()),
            message_id_domain: crate::domain::ascii_domain(from.email.domain()),
            templates,
            from,
            links: Links::new(public_url, link_key),
            // Rounded down: the mail never promises more time than the link has.
            lifetime_days: lifetime.num_days().max(1),
            addresses,
            site: SiteSettings::default(),
            footer_cuts: FooterCuts::default(),
            confirm_cuts: confirm::ConfirmCuts::default(),
        }
    }

    /// This composer with the site's branding in every mail.
    pub fn with_site(mut self, site: SiteSettings) -> Self {
        self.site = site;
        self.footer_cuts = FooterCuts::default();
        self.confirm_cuts = confirm::ConfirmCuts::default();
        self
    }

    /// The site's branding as the mail templates see it (`site.name`,
    /// `site.logo_url`, `site.logo_width`, `site.accent`, `site.imprint_url`,
    /// `site.privacy_url`): the configured name, else the language's `site_title`.
    fn site_data(&self, locale: Locale) -> serde_json::Value {
        let url = |u: &Option<crate::domain::HttpUrl>| u.as_ref().map(|u| u.as_str().to_owned());
        json!({
            "name": self.site_name(locale),
            "logo_url": url(&self.site.logo_url),
            "logo_width": self.site.logo_width.px(),
            "accent": self.site.accent_color.as_str(),
            "imprint_url": url(&self.site.imprint_url),
            "privacy_url": url(&self.site.privacy_url),
        })
    }

    /// The newsletter's name in `locale`: configured, else the `site_title` text.
    pub fn site_name(&self, locale: Locale) -> String {
        self.site
            .name
            .clone()
            .unwrap_or_else(|| self.templates.string(locale, "site_title"))
    }

    /// A composer as the configuration says, building its links with `links`.
    pub fn from_config(
        config: &crate::config::Config,
        templates: Arc<Templates>,
        links: Links,
    ) -> Self {
        Self::new(
            templates,
            config.mail_from.clone(),
            links.public_url().to_owned(),
            config.confirmation_lifetime,
            links.key().clone(),
            config.digest.list_id.clone(),
            ReturnAddresses {
                bounce: config.bounce_address.clone(),
                unsubscribe: config.unsubscribe_address.clone(),
            },
        )
        .with_site(config.site.clone())
    }

    /// What digest content depends on besides its data: the template set, the
    /// public URL its links start with and the site's branding in its header.
    pub fn content_fingerprint(&self) -> String {
        format!(
            "{}|{}|{:?}",
            self.templates.fingerprint(),
            self.links.public_url(),
            self.site
        )
    }

    /// The envelope sender for mail to a reader: the VERP bounce address when one
    /// is configured (`bounces+{id}@…`, the id signed so that nobody can make a
    /// bounce for another reader), else the From address.
    pub fn envelope_from(&self, subscriber_id: i64) -> String {
        match &self.addresses.bounce {
            Some(template) => template.replace("{id}", &self.verp_id(subscriber_id)),
            None => self.from.email.to_string(),
        }
    }

    /// `<subscriber id>-<MAC>`: the part of a VERP or mailto address naming a reader.
    pub fn verp_id(&self, subscriber_id: i64) -> String {
        let mac = self.links.key().sign("verp", &subscriber_id.to_string());
        format!("{subscriber_id}-{}", &mac[..16])
    }

    /// The reader a VERP id names, if its MAC is right.
    pub fn verify_verp_id(&self, id: &str) -> Option<i64> {
        let (subscriber, mac) = id.split_once('-')?;
        let subscriber_id: i64 = subscriber.parse().ok()?;
        use subtle::ConstantTimeEq;
        let expected = self.verp_id(subscriber_id);
        (mac.len() == 16
            && expected.len() == id.len()
            && bool::from(expected.as_bytes().ct_eq(id.as_bytes())))
        .then_some(subscriber_id)
    }

    /// The addresses inbound mail is recognised by.
    pub fn addresses(&self) -> &ReturnAddresses {
        &self.addresses
    }

    /// The links this composer puts into mails (and whose key signs VERP ids).
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The double opt-in mail with the confirmation link.
    ///
    /// # Errors
    /// A [`ComposeError`] when rendering or assembling fails.
    pub fn confirmation(
        &self,
        to: &EmailAddress,
        locale: Locale,
        token: &Token,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        if let Some(mail) = self.cut_confirmation(to, locale, token, subscriber_id, now) {
            return mail;
        }
        self.rendered_confirmation(to, locale, token, subscriber_id, now)
    }

    /// The confirmation mail rendered from its templates and built by lettre:
    /// for a language whose templates cannot be cut (see `confirm`).
    fn rendered_confirmation(
        &self,
        to: &EmailAddress,
        locale: Locale,
        token: &Token,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        let data = self.confirm_data(locale, to.as_str(), &self.links.confirm(token));
        let rendered = self.templates.mail(locale, "confirm", data)?;
        self.build(
            "confirm",
            to,
            subscriber_id,
            rendered,
            now,
            &[auto_submitted()],
        )
    }

    /// The notice to an already confirmed reader who signed up again, with a link
    /// to their preferences instead of any change.
    ///
    /// # Errors
    /// A [`ComposeError`] when rendering or assembling fails.
    pub fn already_subscribed(
        &self,
        to: &EmailAddress,
        locale: Locale,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        self.with_preferences_link("already-subscribed", to, locale, subscriber_id, now)
    }

    /// The mail a confirmed reader asked for on the "send me my link" page: their
    /// preferences link (kind `preferences-link`).
    ///
    /// # Errors
    /// A [`ComposeError`] when rendering or assembling fails.
    pub fn preferences_link(
        &self,
        to: &EmailAddress,
        locale: Locale,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        self.with_preferences_link("preferences-link", to, locale, subscriber_id, now)
    }

    /// Mail `name` (also its kind) to a reader, with their address and their
    /// signed preferences link, marked as sent automatically.
    fn with_preferences_link(
        &self,
        name: &'static str,
        to: &EmailAddress,
        locale: Locale,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        let data = json!({
            "email": to.as_str(),
            "preferences_url": self.links.preferences(subscriber_id),
            "link_url": self.links.link_page(),
            "site": self.site_data(locale),
        });
        let rendered = self.templates.mail(locale, name, data)?;
        self.build(name, to, subscriber_id, rendered, now, &[auto_submitted()])
    }

    fn build(
        &self,
        kind: &'static str,
        to: &EmailAddress,
        subscriber_id: i64,
        mail: RenderedMail,
        now: DateTime<Utc>,
        extra_headers: &[HeaderValue],
    ) -> Result<NewMail, ComposeError> {
        let parts = MultiPart::alternative_plain_html(mail.text, mail.html);
        self.assemble(
            kind,
            to,
            subscriber_id,
            mail.subject,
            parts,
            now,
            extra_headers,
        )
    }

    /// A new `Message-ID` on the sender's domain.
    fn message_id(&self) -> String {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        format!("<{}@{}>", hex(&id), self.message_id_domain)
    }

    /// The message around `parts`: sender, recipient, subject, date, id and
    /// `extra_headers`.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &self,
        kind: &'static str,
        to: &EmailAddress,
        subscriber_id: i64,
        subject: String,
        parts: MultiPart,
        now: DateTime<Utc>,
        extra_headers: &[HeaderValue],
    ) -> Result<NewMail, ComposeError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(
                None,
                crate::domain::ascii_address(to.as_str()).parse()?,
            ))
            .subject(subject)
            .date(now.into())
            .message_id(Some(self.message_id()));
        for header in extra_headers {
            builder = builder.raw_header(header.clone());
        }
        let message = builder.multipart(parts)?;
        Ok(NewMail {
            kind,
            recipient: to.as_str().to_owned(),
            envelope_from: self.envelope_from(subscriber_id),
            message: message.formatted(),
        })
    }
}

/// RFC 3834: an automatic mail; well-behaved autoresponders stay silent.
fn auto_submitted() -> HeaderValue {
    HeaderValue::new(
        HeaderName::new_from_ascii_str("Auto-Submitted"),
        "auto-generated".to_owned(),
    )
}

/// A digest's content, shared by every reader with the same language, topics and
/// news: rendered once from the `digest` templates, without any reader's data, and
/// never searched or changed afterwards. [`Composer::digest`] puts one reader's part
/// after it.
#[derive(Debug, Clone)]
pub struct DigestBody {
    /// Picks the language of the reader's part.
    pub locale: Locale,
    /// One line, the same for every reader.
    pub subject: String,
    /// The `text/plain` part up to the reader's part.
    pub text: String,
    /// The `text/html` part up to the reader's part, which closes the document.
    pub html: String,
    /// The readers' topics, named again in the reader's part ("why you get this").
    pub topics: String,
}

impl DigestBody {
    /// A digest's shared content.
    #[must_use]
    pub fn new(
        locale: Locale,
        subject: String,
        text: String,
        html: String,
        topics: String,
    ) -> Self {
        Self {
            locale,
            subject,
            text,
            html,
            topics,
        }
    }

    /// The body ready to go out: both parts encoded once, so that every reader's
    /// copy encodes only its own part.
    #[must_use]
    pub fn prepare(&self) -> PreparedBody {
        PreparedBody {
            locale: self.locale,
            subject_line: subject_line(&self.subject),
            topics: self.topics.clone(),
            wire: WireBody {
                text: EncodedPrefix::new(&self.text),
                html: EncodedPrefix::new(&self.html),
            },
            footer: std::sync::OnceLock::new(),
        }
    }
}

/// A [`DigestBody`] as it goes on the wire: what the reader's part needs, and
/// the two parts encoded (the content itself is not kept).
#[derive(Debug)]
pub struct PreparedBody {
    /// Picks the language of the reader's part.
    pub locale: Locale,
    /// The `Subject:` header line, the same for every reader, encoded and folded
    /// once.
    subject_line: String,
    /// The readers' topics, named again in the reader's part.
    pub topics: String,
    wire: WireBody,
    /// The readers' footer cut where their values go, made at the first reader
    /// (`None` inside: this footer cannot be cut; every reader's is
    /// rendered).
    footer: std::sync::OnceLock<Option<FooterSplit>>,
}

impl PreparedBody {
    /// About how many bytes of memory it holds.
    #[must_use]
    pub fn size(&self) -> usize {
        // The cut footer (a few KB, made later) is not counted: the size must not
        // change while a cache holds the body.
        let part = |p: &EncodedPrefix| p.lines.len() + p.rest.len();
        self.subject_line.len() + self.topics.len() + part(&self.wire.text) + part(&self.wire.html)
    }
}

/// A digest body's two parts, quoted-printable encoded up to their last line
/// break.
#[derive(Debug)]
struct WireBody {
    text: EncodedPrefix,
    html: EncodedPrefix,
}

/// A part's shared content, encoded once. Quoted-printable encodes line by line,
/// so content that ends with a line break, encoded on its own, followed by the
/// encoding of what comes after it, is the encoding of the whole; the unfinished
/// last line (if any) is kept as text and encoded with each reader's part.
#[derive(Debug)]
struct EncodedPrefix {
    /// The encoded lines up to and including the last line break.
    lines: Vec<u8>,
    /// What follows the last line break, not yet encoded.
    rest: String,
}

impl EncodedPrefix {
    fn new(content: &str) -> Self {
        let split = content.rfind('\n').map_or(0, |i| i + 1);
        let (lines, rest) = content.split_at(split);
        let mut lines = quoted_printable(lines);
        // Kept for the life of a cached body: no room to spare.
        lines.shrink_to_fit();
        Self {
            lines,
            rest: rest.to_owned(),
        }
    }

    /// The encoding of what follows the shared lines: the unfinished last line,
    /// then `tail`.
    fn tail(&self, tail: &str) -> Vec<u8> {
        quoted_printable(&[self.rest.as_str(), tail].concat())
    }
}

/// `text` with CRLF line breaks, quoted-printable encoded (see
/// [`quoted_printable_into`]).
fn quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    quoted_printable_into(&mut out, text);
    out
}

/// Appends `text` to `out` quoted-printable encoded (RFC 2045 §6.7): a line break
/// (LF or CRLF) is written CRLF; printable ASCII but `=` stays as it is, and so do
/// space and tab except at the end of a line; every other byte is written `=XX`;
/// a line longer than 76 characters is cut by a soft break (`=` and CRLF). A dot
/// that would begin a line on the wire is written `=2E`, so an encoded part needs
/// no dot-stuffing for SMTP (`smtp::Session::send` then sends it without a
/// copy). Lines are encoded apart, so a text ending in a line break, then another,
/// encode to what the two joined encode to. Written for the digests' shared parts
/// and each reader's footer lines: lettre's `Body` copied each such line three
/// times. Runs of bytes that stay as they are are copied whole.
fn quoted_printable_into(out: &mut Vec<u8>, text: &str) {
    out.reserve(text.len() + text.len() / 16);
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let broken = lines.peek().is_some();
        let line = if broken {
            line.strip_suffix('\r').unwrap_or(line)
        } else {
            line
        };
        let bytes = line.as_bytes();
        let mut column = 0;
        // All bytes but the line's last, which may take one column more and is
        // encoded when it is a space or tab.
        let inner = bytes.len().saturating_sub(1);
        let mut i = 0;
        while i < inner {
            let plain = bytes[i..inner]
                .iter()
                .position(|&b| !QP_PLAIN[usize::from(b)])
                .map_or(inner, |n| i + n);
            while i < plain {
                if column == QP_LINE - 1 {
                    out.extend_from_slice(b"=\r\n");
                    column = 0;
                }
                if column == 0 && bytes[i] == b'.' {
                    push_encoded(out, b'.');
                    column = 3;
                    i += 1;
                    continue;
                }
                let take = (plain - i).min(QP_LINE - 1 - column);
                out.extend_from_slice(&bytes[i..i + take]);
                column += take;
                i += take;
            }
            if i < inner {
                if column + 3 > QP_LINE - 1 {
                    out.extend_from_slice(b"=\r\n");
                    column = 0;
                }
                push_encoded(out, bytes[i]);
                column += 3;
                i += 1;
            }
        }
        if let Some(&last) = bytes.last() {
            let plain = matches!(last, b'!'..=b'<' | b'>'..=b'~');
            if column + if plain { 1 } else { 3 } > QP_LINE {
                out.extend_from_slice(b"=\r\n");
                column = 0;
            }
            if plain && !(column == 0 && last == b'.') {
                out.push(last);
            } else {
                push_encoded(out, last);
            }
        }
        if broken {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The longest line quoted-printable allows, in characters.
const QP_LINE: usize = 76;

/// The bytes quoted-printable keeps as they are inside a line: printable ASCII but
/// `=`, space and tab.
static QP_PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0;
    while b < 256 {
        plain[b] = matches!(b as u8, b'!'..=b'<' | b'>'..=b'~' | b' ' | b'\t');
        b += 1;
    }
    plain
};

/// Appends `byte` as `=XX`.
fn push_encoded(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[
        b'=',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 15)],
    ]);
}

/// The values of one digest's header lines (see [`Composer::digest_headers`]).
struct DigestHeaders<'a> {
    to: &'a EmailAddress,
    subject_line: &'a str,
    now: DateTime<Utc>,
    message_id: &'a str,
    list_unsubscribe: &'a str,
    boundary: &'a str,
}

/// Whether `byte` may stand in an address that lettre writes as it is: an atom's
/// characters (RFC 5322 `atext`), the dot and the at sign.
fn plain_in_address(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.@".contains(&byte)
}

/// Appends the `To:` header line for `to`, as lettre writes it: written here when
/// lettre would write the address as it is, else by lettre.
fn to_line(out: &mut Vec<u8>, to: &EmailAddress) -> Result<(), ComposeError> {
    let to = crate::domain::ascii_address(to.as_str());
    if to.bytes().all(plain_in_address) {
        for piece in ["To: ", &to, "\r\n"] {
            out.extend_from_slice(piece.as_bytes());
        }
    } else {
        let mut line = Headers::new();
        line.set(header::To::from(Mailboxes::from(Mailbox::new(
            None,
            to.parse()?,
        ))));
        out.extend_from_slice(line.to_string().as_bytes());
    }
    Ok(())
}

/// Appends the head of one part of a `multipart/alternative` message: the
/// boundary and the part's header lines, as lettre lays them out for a
/// quoted-printable part of `content_type` (`text/plain`, `text/html`).
fn part_head(out: &mut Vec<u8>, boundary: &str, content_type: &str) {
    for piece in [
        b"--".as_slice(),
        boundary.as_bytes(),
        b"\r\nContent-Type: ",
        content_type.as_bytes(),
        b"; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
    ] {
        out.extend_from_slice(piece);
    }
}

/// The `Subject:` header line for `subject`, encoded and folded by lettre.
fn subject_line(subject: &str) -> String {
    let mut line = Headers::new();
    line.set(header::Subject::from(subject.to_owned()));
    line.to_string()
}

/// Appends the `MIME-Version` and `Content-Type` header lines of a
/// `multipart/alternative` message with `boundary` (40 characters), folded as
/// lettre folds them.
fn multipart_lines(out: &mut Vec<u8>, boundary: &str) {
    for piece in [
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=\"",
        boundary,
        "\"\r\n",
    ] {
        out.extend_from_slice(piece.as_bytes());
    }
}

/// Appends the closing boundary of a multipart message.
fn close_multipart(out: &mut Vec<u8>, boundary: &str) {
    for piece in ["--", boundary, "--\r\n"] {
        out.extend_from_slice(piece.as_bytes());
    }
}

/// A new boundary for a `multipart/alternative` message: 40 random letters and
/// digits, as long as lettre's.
fn boundary() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

/// Appends the `Date:` header line for `now`: RFC 5322's date in UTC, as lettre
/// writes it (`Fri, 04 Dec 2026 07:00:03 +0000`), without a format string to
/// parse for every digest.
fn date_line(out: &mut Vec<u8>, now: DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let two = |out: &mut Vec<u8>, n: u32| {
        out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
    };
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(DAYS[now.weekday().num_days_from_monday() as usize].as_bytes());
    out.extend_from_slice(b", ");
    two(out, now.day());
    out.push(b' ');
    out.extend_from_slice(MONTHS[now.month0() as usize].as_bytes());
    out.push(b' ');
    // Four digits for the years a clock shows; chrono pads to four as well.
    let year = u32::try_from(now.year()).unwrap_or(0);
    two(out, year / 100);
    two(out, year % 100);
    out.push(b' ');
    two(out, now.hour());
    out.push(b':');
    two(out, now.minute());
    out.push(b':');
    two(out, now.second());
    out.extend_from_slice(b" +0000\r\n");
}

/// A reader's values in the digest footer.
struct ReaderValues<'a> {
    email: &'a str,
    unsubscribe_url: &'a str,
    preferences_url: &'a str,
}

/// One of a reader's values in a cut template: the digest footer's, or the
/// confirmation mail's (`confirm::ConfirmCut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Email,
    Unsubscribe,
    Preferences,
    Confirm,
}

impl Slot {
    const ALL: [Self; 4] = [
        Self::Email,
        Self::Unsubscribe,
        Self::Preferences,
        Self::Confirm,
    ];

    /// What stands for the value while a template is rendered to be cut: a name
    /// between private-use characters, which no escaping changes, with an `&`, which
    /// the HTML registry escapes wherever it escapes the value, so the cut knows
    /// which values to escape.
    fn stand_in(self) -> &'static str {
        match self {
            Self::Email => "\u{E000}email&\u{E001}",
            Self::Unsubscribe => "\u{E000}unsubscribe_url&\u{E001}",
            Self::Preferences => "\u{E000}preferences_url&\u{E001}",
            Self::Confirm => "\u{E000}confirm_url&\u{E001}",
        }
    }
}

/// The values a cut template is filled with.
trait SlotValues {
    /// The value of `slot`; empty for a slot the mail has no value for (its
    /// template data has none either, so its cut never holds that slot).
    fn value(&self, slot: Slot) -> &str;
}

impl SlotValues for ReaderValues<'_> {
    fn value(&self, slot: Slot) -> &str {
        match slot {
            Slot::Email => self.email,
            Slot::Unsubscribe => self.unsubscribe_url,
            Slot::Preferences => self.preferences_url,
            Slot::Confirm => "",
        }
    }
}

/// The digest footer of one body's readers, text and HTML, after the body's
/// unfinished last lines: made once per body instead of once per reader, and
/// encoded but for the lines where a reader's values go.
#[derive(Debug)]
struct FooterSplit {
    text: EncodedTail,
    html: EncodedTail,
}

/// What begins every stand-in (see [`Slot::stand_in`]).
const STAND_IN_START: char = '\u{E000}';

/// What stands for a body's topics while a footer is rendered to be cut, made
/// like a reader's stand-in ([`Slot::stand_in`]).
const TOPICS_STAND_IN: &str = "\u{E000}topics&\u{E001}";

/// A language's digest footer rendered once with stand-ins for the topics and
/// the reader's values: each body fills in its topics ([`FooterCut::split`])
/// instead of rendering its footer.
#[derive(Debug)]
struct FooterCut {
    text: String,
    html: String,
}

impl FooterCut {
    /// The footer of a body on `topics` whose parts end in `text_rest` and
    /// `html_rest`, cut at the reader's values, or `None` when a line cannot be
    /// cut. The topics are filled in as the registries put them: raw in the
    /// text, escaped in the HTML where the template escapes them.
    fn split(&self, topics: &str, text_rest: &str, html_rest: &str) -> Option<FooterSplit> {
        let mut escaped = String::with_capacity(topics.len());
        html_escape_into(&mut escaped, topics);
        let html = self
            .html
            .replace(&TOPICS_STAND_IN.replace('&', "&amp;"), &escaped)
            .replace(TOPICS_STAND_IN, topics);
        Some(FooterSplit {
            text: EncodedTail::new(text_rest, &self.text.replace(TOPICS_STAND_IN, topics))?,
            html: EncodedTail::new(html_rest, &html)?,
        })
    }
}

/// The languages' [`FooterCut`]s, in the order of [`Locale::ALL`], each made at
/// its first digest; shared by a composer's clones.
type FooterCuts = Arc<[std::sync::OnceLock<Option<FooterCut>>; Locale::ALL.len()]>;

/// `locale`'s entry of `cuts` (one per language, in the order of
/// [`Locale::ALL`]), made by `make` at its first use.
fn made_once<T>(
    cuts: &[std::sync::OnceLock<Option<T>>; Locale::ALL.len()],
    locale: Locale,
    make: impl FnOnce() -> Option<T>,
) -> Option<&T> {
    let at = Locale::ALL.iter().position(|l| *l == locale)?;
    cuts[at].get_or_init(make).as_ref()
}

/// A reader's encoded footer parts: rendered whole (a footer that cannot be
/// cut), or encoded from the body's cut footer as they are written.
enum Tails<'a> {
    Whole(Vec<u8>, Vec<u8>),
    Split(&'a FooterSplit),
}

impl Tails<'_> {
    /// The text (`html == false`) or HTML part's tail length, or a bound of it.
    fn size_hint(&self, html: bool) -> usize {
        match (self, html) {
            (Self::Whole(text, _), false) => text.len(),
            (Self::Whole(_, html), true) => html.len(),
            (Self::Split(split), false) => split.text.size_hint(),
            (Self::Split(split), true) => split.html.size_hint(),
        }
    }

    /// Appends the text or HTML part's tail for `reader` to `out`.
    fn write(&self, html: bool, reader: &ReaderValues<'_>, out: &mut Vec<u8>) {
        match (self, html) {
            (Self::Whole(text, _), false) => out.extend_from_slice(text),
            (Self::Whole(_, html), true) => out.extend_from_slice(html),
            (Self::Split(split), false) => split.text.encode_into(reader, out),
            (Self::Split(split), true) => split.html.encode_into(reader, out),
        }
    }
}

/// What follows a part's shared lines, quoted-printable encoded once except for
/// the lines that hold a reader's value. Quoted-printable encodes line by line (see
/// [`EncodedPrefix`]), so the lines can be encoded apart.
#[derive(Debug)]
struct EncodedTail {
    lines: Vec<TailLines>,
    /// [`EncodedTail::size_hint`], summed once.
    size_hint: usize,
}

/// Lines of an [`EncodedTail`].
#[derive(Debug)]
enum TailLines {
    /// Lines without a reader's value, encoded.
    Encoded(Vec<u8>),
    /// One line with a reader's value, cut there; encoded per reader.
    Filled(Pieces),
}

impl EncodedTail {
    /// `rest` (a body's unfinished last line) followed by `rendered` (the footer
    /// rendered with stand-ins), or `None` when a line cannot be cut.
    fn new(rest: &str, rendered: &str) -> Option<Self> {
        let whole = [rest, rendered].concat();
        let mut lines: Vec<TailLines> = Vec::new();
        for line in whole.split_inclusive('\n') {
            if line.contains('\u{E000}') {
                lines.push(TailLines::Filled(Pieces::cut(line)?));
            } else if let Some(TailLines::Encoded(done)) = lines.last_mut() {
                quoted_printable_into(done, line);
            } else {
                lines.push(TailLines::Encoded(quoted_printable(line)));
            }
        }
        let size_hint = lines
            .iter()
            .map(|l| match l {
                TailLines::Encoded(done) => done.len(),
                // Encoded, a byte may take three (`=3D`), plus soft breaks.
                TailLines::Filled(pieces) => {
                    3 * pieces.literals.iter().map(String::len).sum::<usize>()
                        + 320 * pieces.slots.len()
                }
            })
            .sum();
        Some(Self { lines, size_hint })
    }

    /// The encoded tail for `reader`.
    fn encode(&self, reader: &impl SlotValues) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint());
        self.encode_into(reader, &mut out);
        out
    }

    /// At least the length of the encoded tail for any reader with values of
    /// usual length.
    fn size_hint(&self) -> usize {
        self.size_hint
    }

    /// Appends the encoded tail for `reader` to `out`.
    fn encode_into(&self, reader: &impl SlotValues, out: &mut Vec<u8>) {
        // Each filled line goes through one buffer before it is encoded.
        let mut line = String::new();
        for tail in &self.lines {
            match tail {
                TailLines::Encoded(done) => out.extend_from_slice(done),
                TailLines::Filled(pieces) => {
                    line.clear();
                    pieces.fill_into(reader, &mut line);
                    quoted_printable_into(out, &line);
                }
            }
        }
    }
}

/// A rendered template cut at its values: `literals` has one more entry than
/// `slots`, and each slot says whether its value is HTML-escaped.
#[derive(Debug)]
struct Pieces {
    literals: Vec<String>,
    slots: Vec<(Slot, bool)>,
}

impl Pieces {
    /// `rendered` cut at each stand-in, or `None` when something else begins like
    /// one (a stand-in the template changed).
    fn cut(rendered: &str) -> Option<Self> {
        let (mut literals, mut slots) = (Vec::new(), Vec::new());
        let mut rest = rendered;
        while let Some(at) = rest.find('\u{E000}') {
            literals.push(rest[..at].to_owned());
            let here = &rest[at..];
            let (slot, escaped, len) = Slot::ALL.iter().find_map(|slot| {
                let raw = slot.stand_in();
                let escaped = raw.replace('&', "&amp;");
                if here.starts_with(raw) {
                    Some((*slot, false, raw.len()))
                } else {
                    here.starts_with(&escaped)
                        .then_some((*slot, true, escaped.len()))
                }
            })?;
            slots.push((slot, escaped));
            rest = &here[len..];
        }
        literals.push(rest.to_owned());
        Some(Self { literals, slots })
    }

    /// Appends the template's output for `reader` to `out`.
    fn fill_into(&self, reader: &impl SlotValues, out: &mut String) {
        out.reserve(self.literals.iter().map(String::len).sum::<usize>() + 160 * self.slots.len());
        for (literal, slot) in self
            .literals
            .iter()
            .zip(self.slots.iter().map(Some).chain([None]))
        {
            out.push_str(literal);
            match slot {
                Some((slot, true)) => html_escape_into(out, reader.value(*slot)),
                Some((slot, false)) => out.push_str(reader.value(*slot)),
                None => {}
            }
        }
    }
}

/// Appends `value` to `out` escaped as the templates' registry escapes it
/// (`handlebars::html_escape`), runs of plain characters copied whole.
fn html_escape_into(out: &mut String, value: &str) {
    let mut rest = value;
    while let Some(at) = rest.find(['<', '>', '"', '&', '\'', '`', '=']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'&' => "&amp;",
            b'\'' => "&#x27;",
            b'`' => "&#x60;",
            _ => "&#x3D;",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// One topic's section in a digest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DigestGroup {
    /// Topic name.
    pub topic: String,
    /// Its items, newest first.
    pub items: Vec<DigestEntry>,
    /// The topic's page in the public archive ("… and N more" points there).
    pub archive_url: String,
}

/// One item in a digest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DigestEntry {
    /// Headline.
    pub title: String,
    /// Link, if any.
    pub url: Option<String>,
    /// Teaser.
    pub summary: Option<String>,
    /// Where it comes from: the host of its own link (`www.` dropped), if it has one.
    pub source: Option<String>,
}

impl DigestEntry {
    /// The source shown for an item linking `url`: its host without `www.`.
    pub fn source_of(url: &str) -> Option<String> {
        let host = url::Url::parse(url).ok()?.host_str()?.to_owned();
        Some(
            host.strip_prefix("www.")
                .map_or(host.clone(), str::to_owned),
        )
    }
}

impl Composer {
    /// Renders a digest's shared content once; [`Composer::digest`] adds each
    /// reader's part.
    ///
    /// # Errors
    /// A [`ComposeError`] when rendering fails.
    pub fn digest_body(
        &self,
        locale: Locale,
        date: chrono::NaiveDate,
        groups: &[DigestGroup],
        total: usize,
        topic_names: &[String],
        view_url: &str,
    ) -> Result<DigestBody, ComposeError> {
        let shown: usize = groups.iter().map(|g| g.items.len()).sum();
        let date = match locale {
            Locale::De => date.format("%d.%m.%Y").to_string(),
            Locale::En => date.format("%-d %B %Y").to_string(),
        };
        let topics = topic_names.join(", ");
        let data = json!({
            "date": date,
            "count": total,
            "groups": groups,
            "more": total.saturating_sub(shown),
            "archive_url": format!("{}/archive", self.links.public_url()),
            "view_url": view_url,
            "topics": topics,
            "site": self.site_data(locale),
        });
        let rendered = self.templates.mail(locale, "digest", data)?;
        Ok(DigestBody::new(
            locale,
            rendered.subject,
            rendered.text,
            rendered.html,
            topics,
        ))
    }

    /// Appends a digest's header lines (`From`, `To`, `Subject`, `Date`,
    /// `Message-ID`, the list headers of RFC 2369 and RFC 8058, `MIME-Version`,
    /// `Content-Type`) to `out`, as lettre formats them: the lines every digest or
    /// every reader of a body shares are formatted by lettre once; a value lettre
    /// would encode or fold (an address or `List-Unsubscribe` with more than
    /// plain ASCII, or a long one with spaces) goes through lettre each time.
    fn digest_headers(&self, out: &mut Vec<u8>, h: &DigestHeaders<'_>) -> Result<(), ComposeError> {
        let (from, list_id) = &self.digest_lines;
        out.extend_from_slice(from.as_bytes());
        to_line(out, h.to)?;
        out.extend_from_slice(h.subject_line.as_bytes());
        date_line(out, h.now);
        for piece in ["Message-ID: ", h.message_id, "\r\n", list_id] {
            out.extend_from_slice(piece.as_bytes());
        }
        // lettre folds a value only at its spaces, and encodes a word only when
        // it holds more than ASCII.
        let unfoldable = h
            .list_unsubscribe
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
            && (!h.list_unsubscribe.contains(' ') || h.list_unsubscribe.len() <= 50);
        if unfoldable {
            for piece in ["List-Unsubscribe: ", h.list_unsubscribe, "\r\n"] {
                out.extend_from_slice(piece.as_bytes());
            }
        } else {
            let mut line = Headers::new();
            line.insert_raw(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                h.list_unsubscribe.to_owned(),
            ));
            out.extend_from_slice(line.to_string().as_bytes());
        }
        out.extend_from_slice(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
        multipart_lines(out, h.boundary);
        Ok(())
    }

    /// The `List-Unsubscribe` value for the reader's one-click link `unsubscribe`.
    fn list_unsubscribe(&self, unsubscribe: &str, subscriber_id: i64) -> String {
        match &self.addresses.unsubscribe {
            Some(template) => {
                let mailto = template.replace("{id}", &self.verp_id(subscriber_id));
                format!("<{unsubscribe}>, <mailto:{mailto}?subject=unsubscribe>")
            }
            None => format!("<{unsubscribe}>"),
        }
    }

    /// The encoded tails of a reader's copy (text, then HTML): the body's
    /// unfinished last lines and the reader's footer, from the body's cut footer;
    /// an operator's footer that cannot be cut is rendered for every reader.
    fn reader_tails(
        &self,
        body: &PreparedBody,
        reader: &ReaderValues<'_>,
    ) -> Result<(Vec<u8>, Vec<u8>), ComposeError> {
        if let Some(split) = self.footer_split(body) {
            return Ok((split.text.encode(reader), split.html.encode(reader)));
        }
        let (text, html) = self.render_footer(body.locale, &body.topics, reader)?;
        Ok((body.wire.text.tail(&text), body.wire.html.tail(&html)))
    }

    /// The `digest-footer` templates rendered for `reader` of a digest on
    /// `topics`: text, then HTML.
    fn render_footer(
        &self,
        locale: Locale,
        topics: &str,
        reader: &ReaderValues<'_>,
    ) -> Result<(String, String), ComposeError> {
        let data = json!({
            "email": reader.email,
            "topics": topics,
            "unsubscribe_url": reader.unsubscribe_url,
            "preferences_url": reader.preferences_url,
            "link_url": self.links.link_page(),
            "site": self.site_data(locale),
        });
        let footer = self.templates.mail_body(locale, "digest-footer", data)?;
        Ok((footer.text, footer.html))
    }

    /// The footer of `body`'s readers, cut where their values go: made once per
    /// body from its language's [`FooterCut`], without rendering. `None` when the
    /// language's footer cannot be cut, or when the body's unfinished last lines
    /// or its topics hold what begins a stand-in (an item's text is the
    /// attacker's: it must stay text, never become a reader's address).
    fn footer_split<'b>(&self, body: &'b PreparedBody) -> Option<&'b FooterSplit> {
        body.footer
            .get_or_init(|| {
                let shared = [&body.topics, &body.wire.text.rest, &body.wire.html.rest];
                if shared.iter().any(|s| s.contains(STAND_IN_START)) {
                    return None;
                }
                self.footer_cut(body.locale)?.split(
                    &body.topics,
                    &body.wire.text.rest,
                    &body.wire.html.rest,
                )
            })
            .as_ref()
    }

    /// `locale`'s footer rendered with stand-ins, made once per composer, or
    /// `None` when cutting it does not give what rendering gives.
    fn footer_cut(&self, locale: Locale) -> Option<&FooterCut> {
        made_once(&self.footer_cuts, locale, || self.cut_footer(locale))
    }

    /// `locale`'s footer rendered once with stand-ins for the topics and the
    /// reader's values, kept only if, for sample readers whose values need
    /// escaping and differ in length, filling it in gives their footers as
    /// rendered, to the byte (a template that transforms a value cannot be cut).
    fn cut_footer(&self, locale: Locale) -> Option<FooterCut> {
        let values = ["email", "unsubscribe_url", "preferences_url", "topics"];
        if !self
            .templates
            .shows_values_plainly(locale, "digest-footer", &values)
        {
            return None;
        }
        let stand_ins = ReaderValues {
            email: Slot::Email.stand_in(),
            unsubscribe_url: Slot::Unsubscribe.stand_in(),
            preferences_url: Slot::Preferences.stand_in(),
        };
        let (text, html) = self
            .render_footer(locale, TOPICS_STAND_IN, &stand_ins)
            .ok()?;
        let cut = FooterCut { text, html };
        let samples = [
            ("leser@example.org", "Wirtschaft", 1),
            (
                "o'brien+a=b&c`d@example.org",
                "Umwelt & <Natur>, \"Sport\" = 'Spiel'",
                i64::MAX,
            ),
        ];
        for (email, topics, id) in samples {
            let (unsubscribe_url, preferences_url) = self.links.unsubscribe_and_preferences(id);
            let reader = ReaderValues {
                email,
                unsubscribe_url: &unsubscribe_url,
                preferences_url: &preferences_url,
            };
            let (text, html) = self.render_footer(locale, topics, &reader).ok()?;
            let split = cut.split(topics, "", "")?;
            let same = split.text.encode(&reader) == quoted_printable(&text)
                && split.html.encode(&reader) == quoted_printable(&html);
            if !same {
                return None;
            }
        }
        Some(cut)
    }

    /// One reader's copy of a digest: the shared content followed by the reader's
    /// part, joined as they are (no byte of either is searched or replaced), with
    /// the list headers (RFC 2369, RFC 8058 one-click).
    ///
    /// # Errors
    /// A [`ComposeError`] when the address is unusable or rendering or assembling
    /// fails.
    pub fn digest(
        &self,
        body: &PreparedBody,
        to: &str,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        self.measured_digest(body, to, subscriber_id, now)
            .map(|(mail, _)| mail)
    }

    /// [`Composer::digest`], and the size in bytes of its HTML part as sent.
    ///
    /// # Errors
    /// As [`Composer::digest`].
    pub fn measured_digest(
        &self,
        body: &PreparedBody,
        to: &str,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<(NewMail, usize), ComposeError> {
        let address =
            EmailAddress::parse(to).map_err(|_| lettre::address::AddressError::MissingParts)?;
        let (unsubscribe, preferences) = self.links.unsubscribe_and_preferences(subscriber_id);
        let reader = ReaderValues {
            email: address.as_str(),
            unsubscribe_url: &unsubscribe,
            preferences_url: &preferences,
        };
        // The body's footer is cut (`FooterSplit`), and each reader's lines are
        // encoded straight into the message.
        let tails = match self.footer_split(body) {
            Some(split) => Tails::Split(split),
            None => {
                let (text, html) = self.reader_tails(body, &reader)?;
                Tails::Whole(text, html)
            }
        };
        let wire = &body.wire;
        let boundary = boundary();
        let list_unsubscribe = self.list_unsubscribe(&unsubscribe, subscriber_id);
        // As lettre's `MultiPart` lays it out, without copying the parts into
        // it first: the shared lines are copied once, into the message.
        let parts = [
            ("text/plain", &wire.text.lines, false),
            ("text/html", &wire.html.lines, true),
        ];
        // Sized once: a message outgrowing its buffer was copied whole again.
        let size: usize = parts
            .iter()
            .map(|(_, l, html)| l.len() + tails.size_hint(*html) + 160)
            .sum();
        let mut message = Vec::with_capacity(1024 + size);
        self.digest_headers(
            &mut message,
            &DigestHeaders {
                to: &address,
                subject_line: &body.subject_line,
                now,
                message_id: &self.message_id(),
                list_unsubscribe: &list_unsubscribe,
                boundary: &boundary,
            },
        )?;
        message.extend_from_slice(b"\r\n");
        let mut html_size = 0;
        for (kind, lines, html) in parts {
            part_head(&mut message, &boundary, kind);
            let start = message.len();
            message.extend_from_slice(lines);
            tails.write(html, &reader, &mut message);
            if html {
                html_size = message.len() - start;
            }
            message.extend_from_slice(b"\r\n");
        }
        close_multipart(&mut message, &boundary);
        let mail = NewMail {
            kind: "digest",
            recipient: address.as_str().to_owned(),
            envelope_from: self.envelope_from(subscriber_id),
            message,
        };
        Ok((mail, html_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn composer() -> Composer {
        composer_with(Templates::load(None).expect("built-in templates"))
    }

    /// A composer with the operator's templates in `dir`.
    pub(super) fn composer_from(dir: &std::path::Path) -> Composer {
        composer_with(Templates::load(Some(dir)).expect("the operator's templates"))
    }

    fn composer_with(templates: Templates) -> Composer {
        Composer::new(
            Arc::new(templates),
            "News <news@example.org>".parse().expect("mailbox"),
            "https://news.example.org".into(),
            chrono::Duration::days(7),
            LinkKey::new(vec![1; 32]),
            "news.example.org".into(),
            ReturnAddresses::default(),
        )
    }

    /// A digest body cached under one site name, logo or colour is not reused
    /// after the operator changes it.
    #[test]
    fn the_content_fingerprint_follows_the_site_branding() {
        let plain = composer();
        let named = composer().with_site(SiteSettings {
            name: Some("Pressedienst".into()),
            ..SiteSettings::default()
        });
        let coloured = composer().with_site(SiteSettings {
            accent_color: crate::config::AccentColor::parse("#112233").unwrap(),
            ..SiteSettings::default()
        });
        let prints = [
            plain.content_fingerprint(),
            named.content_fingerprint(),
            coloured.content_fingerprint(),
        ];
        assert_ne!(prints[0], prints[1]);
        assert_ne!(prints[0], prints[2]);
        assert_eq!(plain.site_name(Locale::De), "Presse-Newsletter");
        assert_eq!(named.site_name(Locale::En), "Pressedienst");
    }

    /// The same headers and MIME structure, as lettre lays them out.
    fn assert_headers_and_parts_alike(a: &mail_parser::Message<'_>, b: &mail_parser::Message<'_>) {
        assert_eq!(a.subject(), b.subject());
        assert_eq!(format!("{:?}", a.from()), format!("{:?}", b.from()));
        assert_eq!(format!("{:?}", a.to()), format!("{:?}", b.to()));
        use mail_parser::MimeHeaders as _;
        let kinds = |m: &mail_parser::Message<'_>| -> Vec<String> {
            m.parts
                .iter()
                .map(|p| format!("{:?}", p.content_type().map(|c| (c.ctype(), c.subtype()))))
                .collect()
        };
        assert_eq!(kinds(a), kinds(b));
        assert_eq!(a.parts.len(), 3, "multipart/alternative: text and HTML");
        let list_unsubscribe = a.header_raw("List-Unsubscribe").unwrap();
        assert!(
            list_unsubscribe.contains("/unsubscribe/7."),
            "{list_unsubscribe}"
        );
    }

    /// A digest's header lines as lettre formats them whole (how they were built
    /// before [`Composer::digest_headers`]): the reference for the test below.
    fn lettre_digest_headers(
        c: &Composer,
        list_id: &str,
        h: &DigestHeaders<'_>,
        subject: &str,
    ) -> String {
        use lettre::message::header::ContentType;
        let mut headers = Headers::new();
        headers.set(header::From::from(Mailboxes::from(c.from.clone())));
        let to = crate::domain::ascii_address(h.to.as_str()).parse().unwrap();
        headers.set(header::To::from(Mailboxes::from(Mailbox::new(None, to))));
        headers.set(header::Subject::from(subject.to_owned()));
        headers.set(header::Date::new(h.now.into()));
        headers.set(header::MessageId::from(h.message_id.to_owned()));
        let raw = |name: &'static str, value: &str| {
            HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_owned())
        };
        headers.insert_raw(raw("List-Id", list_id));
        headers.insert_raw(raw("List-Unsubscribe", h.list_unsubscribe));
        headers.insert_raw(raw("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"));
        headers.set(lettre::message::header::MIME_VERSION_1_0);
        headers.set(
            ContentType::parse(&format!(
                "multipart/alternative; boundary=\"{}\"",
                h.boundary
            ))
            .unwrap(),
        );
        headers.to_string()
    }

    /// The header lines a digest writes itself are byte for byte those lettre
    /// writes: plain and unusual addresses, an international domain, a subject
    /// lettre encodes and folds, a `List-Unsubscribe` with and without `mailto:`.
    #[test]
    fn a_digests_header_lines_are_those_lettre_writes() {
        let with_mailto = Composer::new(
            Arc::new(Templates::load(None).expect("built-in templates")),
            "Pressedienst Müller <news@example.org>"
                .parse()
                .expect("mailbox"),
            "https://news.example.org".into(),
            chrono::Duration::days(7),
            LinkKey::new(vec![1; 32]),
            "Nachrichten <news.example.org>".into(),
            ReturnAddresses {
                bounce: Some("bounces+{id}@news.example.org".into()),
                unsubscribe: Some("unsubscribe+{id}@news.example.org".into()),
            },
        );
        let long_subject = "Neue Meldungen für Sie am 02.05.2027: Wirtschaft, Politik, \
            Kultur, Sport und noch viel mehr aus der ganzen Region";
        let subjects = ["Neue Meldungen", "Grüße =?utf-8?q?x?=", long_subject];
        let emails = [
            "leser@example.org",
            "o'brien+a=b@example.org",
            "x&y=`z@example.org",
            "leser@bücher.example",
            "ein.sehr.langer.name.der.nicht.umbrochen.werden.kann.weil@example.org",
        ];
        let now = chrono::NaiveDate::from_ymd_opt(2027, 5, 2)
            .unwrap()
            .and_hms_opt(5, 0, 9)
            .unwrap()
            .and_utc();
        let mut compared = 0;
        for (c, list_id) in [
            (&composer(), "news.example.org"),
            (&with_mailto, "Nachrichten <news.example.org>"),
        ] {
            for subject in subjects {
                let body = DigestBody::new(
                    Locale::De,
                    subject.into(),
                    "t".into(),
                    "h".into(),
                    "x".into(),
                )
                .prepare();
                for email in emails {
                    let to = EmailAddress::parse(email).unwrap();
                    let list_unsubscribe = c.list_unsubscribe(&c.links.unsubscribe(7), 7);
                    let h = DigestHeaders {
                        to: &to,
                        subject_line: &body.subject_line,
                        now,
                        message_id: "<0123abcd@example.org>",
                        list_unsubscribe: &list_unsubscribe,
                        // As long as every digest's.
                        boundary: "0123456789abcdefghijklmnopqrstuvwxyzABCD",
                    };
                    let mut out = Vec::new();
                    c.digest_headers(&mut out, &h).unwrap();
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        lettre_digest_headers(c, list_id, &h, subject),
                        "{email}, {subject}"
                    );
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 30);
        // The id's domain in ASCII, which lettre would otherwise have had to encode.
        let idn = Composer::new(
            Arc::new(Templates::load(None).expect("built-in templates")),
            "News <news@bücher.example>".parse().expect("mailbox"),
            "https://news.example.org".into(),
            chrono::Duration::days(7),
            LinkKey::new(vec![1; 32]),
            "news.example.org".into(),
            ReturnAddresses::default(),
        );
        let id = idn.message_id();
        assert!(
            id.ends_with("@xn--bcher-kva.example>") && id.is_ascii(),
            "{id}"
        );
    }

    /// Quoted-printable as RFC 2045 has it: line breaks as CRLF, `=` and every
    /// byte outside printable ASCII as `=XX`, a space or tab at a line's end too,
    /// no line over 76 characters, and soft breaks that decode to nothing; lines
    /// encode apart.
    #[test]
    fn quoted_printable_keeps_the_rules_and_encodes_lines_apart() {
        let qp = |t: &str| String::from_utf8(quoted_printable(t)).unwrap();
        assert_eq!(qp("a=b c \n\tx\t\r\nü"), "a=3Db c=20\r\n\tx=09\r\n=C3=BC");
        assert_eq!(qp("zwei\n"), "zwei\r\n");
        assert_eq!(qp(""), "");
        assert_eq!(
            [qp("eins\n"), qp("zwei =\n")].concat(),
            qp("eins\nzwei =\n")
        );
        let decode = |qp: &str| -> Vec<u8> {
            let joined = qp.replace("=\r\n", "");
            let mut out = Vec::new();
            let mut bytes = joined.bytes();
            while let Some(b) = bytes.next() {
                if b == b'=' {
                    let hex: String = [bytes.next().unwrap(), bytes.next().unwrap()]
                        .iter()
                        .map(|b| char::from(*b))
                        .collect();
                    out.push(u8::from_str_radix(&hex, 16).unwrap());
                } else {
                    out.push(b);
                }
            }
            out
        };
        for text in [
            "ä".repeat(100),
            "=".repeat(100),
            "x ".repeat(60),
            format!("{}ü", "a".repeat(74)),
            format!("{} ", "a".repeat(75)),
            "a".repeat(76),
            "a".repeat(77),
            // Item text from a feed that tries to end the line, the part or the
            // message, or to add a header.
            "Titel\rBcc: x@example.org\r\n--grenze\r\n.\r\n\0\u{7f}=?utf-8?q?x?=".to_owned(),
        ] {
            let encoded = qp(&text);
            assert!(
                encoded.split("\r\n").all(|l| l.len() <= 76),
                "{text:?}: {encoded}"
            );
            assert!(encoded.is_ascii());
            assert_eq!(decode(&encoded), text.as_bytes(), "{text:?}: {encoded}");
            assert!(
                !encoded.split("\r\n").any(|l| l.ends_with(' ')),
                "{encoded}"
            );
            assert!(
                !encoded
                    .split("\r\n")
                    .any(|l| l.contains(['\r', '\n', '\0'])),
                "no bare CR, LF or NUL: {encoded:?}"
            );
            assert!(
                !encoded.split("\r\n").any(|l| l.starts_with('.')),
                "no line begins with a dot: {encoded:?}"
            );
        }
        assert_eq!(qp(".\n.a\n.."), "=2E\r\n=2Ea\r\n=2E.");
        assert_eq!(
            qp(&format!("{}.", "a".repeat(75))),
            format!("{}.", "a".repeat(75))
        );
        assert_eq!(
            qp(&format!("{}.b", "a".repeat(75))),
            format!("{}=\r\n=2Eb", "a".repeat(75))
        );
    }

    /// The encoder as RFC 2045 words it, one byte at a time (the implementation
    /// before runs were copied whole): the reference for the property below.
    fn quoted_printable_byte_by_byte(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let broken = lines.peek().is_some();
            let line = if broken {
                line.strip_suffix('\r').unwrap_or(line)
            } else {
                line
            };
            let bytes = line.as_bytes();
            let mut column = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let last = i + 1 == bytes.len();
                let plain =
                    matches!(b, b'!'..=b'<' | b'>'..=b'~') || (matches!(b, b' ' | b'\t') && !last);
                let width = if plain { 1 } else { 3 };
                if column + width > if last { 76 } else { 75 } {
                    out.extend_from_slice(b"=\r\n");
                    column = 0;
                }
                if plain && !(column == 0 && b == b'.') {
                    out.push(b);
                    column += 1;
                } else {
                    out.extend_from_slice(format!("={b:02X}").as_bytes());
                    column += 3;
                }
            }
            if broken {
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4096, ..Default::default() })]
        /// The `Date:` line is what chrono's RFC 5322 format (lettre's) gives, from
        /// 1970 to 9999.
        #[test]
        fn the_date_line_is_chronos_rfc_5322_date(secs in 0i64..253_402_300_799) {
            let now = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
            let mut out = Vec::new();
            date_line(&mut out, now);
            proptest::prop_assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("Date: {}\r\n", now.format("%a, %d %b %Y %H:%M:%S +0000"))
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]
        #[test]
        fn quoted_printable_copies_runs_as_the_byte_by_byte_encoding(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", ".", " ", "\t", "=", "\r", "\n", "\r\n", "ü", "\0",
                    "Zölle, Märkte. ", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                ]),
                0..48,
            )
        ) {
            let text = pieces.concat();
            proptest::prop_assert_eq!(
                String::from_utf8(quoted_printable(&text)).unwrap(),
                String::from_utf8(quoted_printable_byte_by_byte(&text)).unwrap()
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]
        /// A reader's value in an HTML footer line is escaped as the templates'
        /// registry escapes it when it renders the footer whole.
        #[test]
        fn a_value_is_escaped_as_handlebars_escapes_it(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "<", ">", "\"", "&", "'", "`", "=", "ü", "€", "https://x.example/u?t=",
                    "&amp;", " ",
                ]),
                0..24,
            )
        ) {
            let value = pieces.concat();
            let mut escaped = String::from("kept ");
            html_escape_into(&mut escaped, &value);
            proptest::prop_assert_eq!(escaped, format!("kept {}", handlebars::html_escape(&value)));
        }
    }

    /// A digest assembled from its once-encoded shared parts and the reader's part
    /// reads exactly like the same mail rendered and encoded whole, keeps
    /// quoted-printable's line limit, and shares nearly all of its bytes.
    #[test]
    fn a_digest_from_its_encoded_shared_parts_reads_as_the_mail_built_whole() {
        let c = composer();
        let entry = |title: &str, summary: String| DigestEntry {
            title: title.into(),
            url: Some("https://www.example.org/a?x=1&y=2".into()),
            summary: Some(summary),
            source: DigestEntry::source_of("https://www.example.org/a"),
        };
        let groups = vec![DigestGroup {
            topic: "Wirtschaft".into(),
            items: vec![
                entry(
                    "Grüße & <b>Märkte</b> …",
                    "Ein sehr langer Absatz über Zölle. ".repeat(12),
                ),
                entry(
                    "=?utf-8?q?kein Kopf?=",
                    "Gleichheitszeichen = und Punkt\n.\nam Zeilenanfang".into(),
                ),
            ],
            archive_url: "https://news.example.org/archive/wirtschaft".into(),
        }];
        let date = chrono::NaiveDate::from_ymd_opt(2027, 5, 2).unwrap();
        let now = date.and_hms_opt(5, 0, 0).unwrap().and_utc();
        let body = c
            .digest_body(
                Locale::De,
                date,
                &groups,
                5,
                &["Wirtschaft".into()],
                "https://news.example.org/digest?t=1",
            )
            .unwrap();
        let to = EmailAddress::parse("leser@example.org").unwrap();
        let prepared = body.prepare();
        let shared = c.digest(&prepared, to.as_str(), 7, now).unwrap().message;
        let (unsubscribe_url, preferences_url) = (c.links.unsubscribe(7), c.links.preferences(7));
        let footer = c
            .render_footer(
                prepared.locale,
                &prepared.topics,
                &ReaderValues {
                    email: to.as_str(),
                    unsubscribe_url: &unsubscribe_url,
                    preferences_url: &preferences_url,
                },
            )
            .unwrap();
        let whole = RenderedMail {
            subject: body.subject.clone(),
            text: [body.text.as_str(), &footer.0].concat(),
            html: [body.html.as_str(), &footer.1].concat(),
        };
        let whole = c.build("digest", &to, 7, whole, now, &[]).unwrap().message;
        let parser = mail_parser::MessageParser::default();
        let (a, b) = (
            parser.parse(&shared).unwrap(),
            parser.parse(&whole).unwrap(),
        );
        assert_eq!(a.body_text(0), b.body_text(0));
        assert_eq!(a.body_html(0), b.body_html(0));
        assert_headers_and_parts_alike(&a, &b);
        assert!(a.body_text(0).unwrap().contains("Grüße & <b>Märkte</b>"));
        assert!(
            crate::mail::smtp::wire_ready(&shared),
            "goes out without dot-stuffing"
        );
        let text = String::from_utf8(shared).unwrap();
        assert!(text.is_ascii(), "every byte encoded");
        let (_, body_lines) = text.split_once("\r\n\r\n").unwrap();
        let long: Vec<&str> = body_lines.split("\r\n").filter(|l| l.len() > 76).collect();
        assert!(long.is_empty(), "QP line limit: {long:?}");
        let wire = &prepared.wire;
        assert!(
            wire.text.rest.len() < 200 && wire.html.rest.len() < 200,
            "the unshared rests are short: {} / {}",
            wire.text.rest.len(),
            wire.html.rest.len()
        );
    }

    /// A digest body in `locale` with one item, ready to go out.
    fn prepared_body(c: &Composer, locale: Locale) -> PreparedBody {
        let groups = vec![DigestGroup {
            topic: "Wirtschaft".into(),
            items: vec![DigestEntry {
                title: "Meldung".into(),
                url: None,
                summary: None,
                source: None,
            }],
            archive_url: "https://news.example.org/archive/wirtschaft".into(),
        }];
        let date = chrono::NaiveDate::from_ymd_opt(2027, 5, 2).unwrap();
        let topics = ["Wirtschaft & <Handel>".to_owned()];
        c.digest_body(
            locale,
            date,
            &groups,
            1,
            &topics,
            "https://news.example.org/d",
        )
        .unwrap()
        .prepare()
    }

    /// Each reader's footer, encoded, as rendering it directly gives it.
    fn assert_footers_as_rendered(c: &Composer, body: &PreparedBody, emails: &[&str]) {
        for (id, email) in (1..).zip(emails) {
            let (unsubscribe_url, preferences_url) =
                (c.links.unsubscribe(id), c.links.preferences(id));
            let reader = ReaderValues {
                email,
                unsubscribe_url: &unsubscribe_url,
                preferences_url: &preferences_url,
            };
            let rendered = c.render_footer(body.locale, &body.topics, &reader).unwrap();
            let text = |b: Vec<u8>| String::from_utf8(b).expect("encoded, ASCII");
            let (cut_text, cut_html) = c.reader_tails(body, &reader).unwrap();
            assert_eq!(
                (text(cut_text), text(cut_html)),
                (
                    text(body.wire.text.tail(&rendered.0)),
                    text(body.wire.html.tail(&rendered.1))
                ),
                "the encoded tails, {email}"
            );
        }
    }

    /// The reader's values a cut tail fills in, in order, and whether each is
    /// HTML-escaped.
    fn slots(tail: &EncodedTail) -> Vec<(Slot, bool)> {
        tail.lines
            .iter()
            .filter_map(|l| match l {
                TailLines::Filled(pieces) => Some(pieces.slots.clone()),
                TailLines::Encoded(_) => None,
            })
            .flatten()
            .collect()
    }

    const READERS: [&str; 3] = [
        "leser@example.org",
        "o'brien+a=b@example.org",
        "x&y=`z@example.org",
    ];

    #[test]
    fn the_footer_cut_once_per_body_gives_every_reader_the_rendered_footer() {
        let c = composer();
        for locale in [Locale::De, Locale::En] {
            let body = prepared_body(&c, locale);
            assert!(body.footer.get().is_none());
            assert_footers_as_rendered(&c, &body, &READERS);
            let split = body
                .footer
                .get()
                .unwrap()
                .as_ref()
                .expect("the built-in footer is cut");
            assert_eq!(slots(&split.text).len(), 3, "{split:?}");
            for tail in [&split.text, &split.html] {
                let filled = tail
                    .lines
                    .iter()
                    .filter(|l| matches!(l, TailLines::Filled(_)))
                    .count();
                assert!(
                    filled >= 1 && filled < tail.lines.len(),
                    "only the lines with a reader's value are left to encode: {tail:?}"
                );
            }
            assert!(
                slots(&split.html).iter().all(|(_, escaped)| *escaped),
                "{split:?}"
            );
        }
    }

    /// A body on `topics` whose content is one line.
    fn body_on(locale: Locale, topics: &str) -> PreparedBody {
        DigestBody::new(
            locale,
            "Betreff".into(),
            "Kopf\nMeldung".into(),
            "<html><body><p>Kopf</p>\n<p>Meldung</p>".into(),
            topics.into(),
        )
        .prepare()
    }

    #[test]
    fn the_footer_is_cut_once_per_language_and_each_body_fills_in_its_topics() {
        let c = composer();
        for locale in [Locale::De, Locale::En] {
            let topics = [
                "Wirtschaft",
                "Umwelt & <Natur>, \"Sport\"",
                "Kultur = 'Bühne' `x`",
            ];
            for topics in topics {
                let body = body_on(locale, topics);
                assert_footers_as_rendered(&c, &body, &READERS);
                let split = body.footer.get().unwrap().as_ref().expect("cut");
                assert_eq!(
                    slots(&split.text).len(),
                    3,
                    "only the reader's values are left"
                );
            }
            // One cut for the language, made with stand-ins for the topics too.
            let cut = c.footer_cut(locale).expect("the built-in footer is cut");
            assert!(cut.text.contains(TOPICS_STAND_IN), "{cut:?}");
        }
    }

    #[test]
    fn topics_that_carry_a_stand_in_are_not_cut() {
        let c = composer();
        let topics = format!("Wirtschaft {}", Slot::Email.stand_in());
        let body = body_on(Locale::De, &topics);
        assert_footers_as_rendered(&c, &body, &READERS);
        assert!(matches!(body.footer.get(), Some(None)), "not cut");
        // The language's cut stays for the other bodies.
        let body = body_on(Locale::De, "Wirtschaft");
        assert_footers_as_rendered(&c, &body, &READERS);
        assert!(matches!(body.footer.get(), Some(Some(_))), "cut");
    }

    #[test]
    fn an_operators_footer_that_changes_the_topics_is_rendered_for_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let footer = dir.path().join("mail/de/digest-footer");
        std::fs::create_dir_all(&footer).unwrap();
        let links = "{{email}} {{unsubscribe_url}} {{preferences_url}}";
        std::fs::write(
            footer.join("body.html.hbs"),
            format!("<p>{links}</p></body></html>"),
        )
        .unwrap();
        // The topics' length: no place to fill them in.
        std::fs::write(
            footer.join("body.txt.hbs"),
            format!("{{{{len topics}}}} {links}"),
        )
        .unwrap();
        let c = composer_from(dir.path());
        for topics in ["Wirtschaft", "Umwelt, Sport"] {
            let body = body_on(Locale::De, topics);
            assert_footers_as_rendered(&c, &body, &READERS);
            assert!(matches!(body.footer.get(), Some(None)), "not cut");
        }
        assert!(c.footer_cut(Locale::De).is_none());
        // English is cut: it keeps the built-in footer.
        let body = body_on(Locale::En, "Wirtschaft");
        assert_footers_as_rendered(&c, &body, &READERS);
        assert!(matches!(body.footer.get(), Some(Some(_))), "cut");
    }

    #[test]
    fn a_body_that_carries_a_stand_in_in_its_last_line_is_not_cut() {
        // An item's text (a press release, a feed) is the attacker's: in the
        // body's unfinished last line, a stand-in must stay text, never become
        // a reader's address.
        let c = composer();
        let stand_in = Slot::Email.stand_in();
        let body = DigestBody::new(
            Locale::De,
            "Betreff".into(),
            format!("Kopf\nMeldung {stand_in} Ende"),
            format!("<html><body><p>Kopf</p>\n<p>{stand_in}</p>"),
            "Wirtschaft".into(),
        )
        .prepare();
        assert_footers_as_rendered(&c, &body, &READERS);
        assert!(matches!(body.footer.get(), Some(None)), "not cut");
        for (id, email) in (1..).zip(READERS) {
            let (unsubscribe_url, preferences_url) =
                (c.links.unsubscribe(id), c.links.preferences(id));
            let reader = ReaderValues {
                email,
                unsubscribe_url: &unsubscribe_url,
                preferences_url: &preferences_url,
            };
            let (text, _) = c.reader_tails(&body, &reader).unwrap();
            let text = String::from_utf8(text).unwrap();
            // The stand-in as quoted-printable carries it: still there, as text.
            assert!(
                text.contains("Meldung =EE=80=80email&=EE=80=81 Ende"),
                "{text}"
            );
        }
    }

    #[test]
    fn an_operators_footer_that_changes_a_value_is_rendered_for_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let footer = dir.path().join("mail/en/digest-footer");
        std::fs::create_dir_all(&footer).unwrap();
        let links = "{{unsubscribe_url}} {{preferences_url}}";
        // Raw in HTML (triple braces): cut, and left unescaped as rendering does.
        std::fs::write(
            footer.join("body.html.hbs"),
            format!("<p>{{{{{{email}}}}}} {links}</p></body></html>"),
        )
        .unwrap();
        // A value's length: nothing to cut at; each reader's is rendered.
        std::fs::write(
            footer.join("body.txt.hbs"),
            format!("{{{{len email}}}} {links}"),
        )
        .unwrap();
        let c = composer_from(dir.path());
        let body = prepared_body(&c, Locale::En);
        assert_footers_as_rendered(&c, &body, &READERS);
        assert!(matches!(body.footer.get(), Some(None)), "not cut");

        std::fs::write(
            footer.join("body.txt.hbs"),
            format!("{{{{email}}}} {links}"),
        )
        .unwrap();
        let c = composer_from(dir.path());
        let body = prepared_body(&c, Locale::En);
        assert_footers_as_rendered(&c, &body, &READERS);
        let split = body.footer.get().unwrap().as_ref().expect("cut");
        assert_eq!(slots(&split.html)[0], (Slot::Email, false), "raw in HTML");
    }

    /// A footer that compares a reader's value or the topics with a string of its
    /// own is rendered for every reader: the samples alone would not notice (the
    /// stand-in and both samples take the same branch), the parsed template does.
    #[test]
    fn an_operators_footer_that_compares_a_value_is_rendered_for_every_reader() {
        let compared = ["email", "topics", "unsubscribe_url"]
            .into_iter()
            .flat_map(|value| {
                [
                    format!("{{{{#if (eq {value} \"x\")}}}}X{{{{/if}}}}"),
                    format!("{{{{(eq {value} \"x\")}}}}"),
                ]
            });
        for compared in compared {
            let links = "{{unsubscribe_url}} {{preferences_url}} {{email}} {{topics}}";
            let text = format!("{compared} {links}");
            let dir = tempfile::tempdir().unwrap();
            for (file, content) in [
                ("body.html.hbs", format!("<p>{links}</p></body></html>")),
                ("body.txt.hbs", text),
            ] {
                let footer = dir.path().join("mail/en/digest-footer");
                std::fs::create_dir_all(&footer).unwrap();
                std::fs::write(footer.join(file), content).unwrap();
            }
            let c = composer_from(dir.path());
            let body = prepared_body(&c, Locale::En);
            assert_footers_as_rendered(&c, &body, &READERS);
            assert!(matches!(body.footer.get(), Some(None)), "cut: {compared}");
        }
    }
}
