//! `postbote inbound`: one message from the MTA's pipe transport, classified with
//! mail-parser and acted on, trusting only what postbote signed.
//!
//! | message | effect |
//! | --- | --- |
//! | RFC 3464 DSN, `Action: failed`, `5.x.x` (not `5.7.x`), or `4.x.x` given up | hard bounce: reader marked bounced, address suppressed |
//! | DSN `5.7.x` (policy: spam filter, DMARC, …) | recorded only: the address is fine |
//! | DSN `Action: delayed` | soft bounce: counted once per returned message; `bounces.soft_threshold` within the window condemn the address |
//! | a plain-text bounce (qmail, old Exchange, Exim, postmaster prose) | graded by its words: permanent → hard, temporary or unclear → soft |
//! | an auto-reply or challenge to a return address | ignored |
//! | RFC 5965 ARF complaint (`abuse`, `fraud`) | reader unsubscribed, address suppressed |
//! | mail to the `mailto:` unsubscribe address | reader unsubscribed |
//! | mail to the submission address | an item, held for approval, or refused ([`submission`]) |
//! | anything else | logged and ignored |
//!
//! **Who a report is about** ([`evidence`]): only the VERP envelope recipient whose
//! MAC verifies, or a manage token / VERP id we signed inside the returned copy of
//! our own mail. When both name a reader and disagree, the inner token wins (it
//! verified too). Addresses written in a report (`Final-Recipient`,
//! `Original-Recipient`, the attached `To:`) are never evidence: a report that has
//! nothing else is recorded as `unverified_report` for the reader it names (visible
//! in the export and in stats) and changes nobody. A VERP-shaped recipient with a
//! bad MAC is forged and ignored outright.

pub mod evidence;
pub mod plain;
pub mod report;
pub mod submission;

#[cfg(test)]
mod props;

use chrono::{DateTime, Utc};
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use crate::config::BounceSettings;
use crate::domain::MailEventKind;
use crate::mail::compose::Composer;
use crate::store::{EventEffect, NewSubmission, Store, StoreError, SubmissionStatus};
use evidence::Signed;
use submission::Sender;

/// What a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A delivery status notification with per-recipient outcomes, failures first.
    Dsn(Vec<report::RecipientStatus>),
    /// An abuse/feedback report.
    Complaint {
        /// `Feedback-Type`.
        feedback_type: String,
        /// The recipient the report names (attached `To:` or `Original-Rcpt-To`):
        /// a cross-check, never evidence.
        original_to: Option<String>,
    },
    /// Anything else (a plain-text bounce, an auto-responder, a reply, spam).
    Other,
}

/// The message could not be read as mail at all.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a parseable mail message: {0}")]
pub struct Unparseable(pub &'static str);

/// A parsed inbound message.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// What it is.
    pub kind: Kind,
    /// The address it was delivered to, from the headers the MTA added.
    pub delivered_to: Option<String>,
    /// What an item submission is made of.
    pub content: Content,
    /// The returned copy of our own mail, where signed evidence may be.
    pub returned: Returned,
    /// What tells a plain-text bounce from an auto-reply.
    pub signals: plain::Signals,
    /// The message as received, for DKIM verification of submissions.
    pub raw: Vec<u8>,
}

impl Content {
    /// The `Authentication-Results` headers, as received.
    pub fn auth_results(&self) -> Vec<&str> {
        self.auth_results.iter().map(String::as_str).collect()
    }
}

/// The returned original of a report (`message/rfc822`, `text/rfc822-headers`) and
/// an ARF report's fields: the only places signed evidence can be.
#[derive(Debug, Clone, Default)]
pub struct Returned {
    /// Header and decoded text of the returned original, the report's fields.
    pub texts: Vec<String>,
    /// The returned original's `Message-ID`: several reports about one message
    /// count once.
    pub message_id: Option<String>,
    /// The returned original's `To`: a cross-check only.
    pub to: Option<String>,
    /// A feedback report's `Original-Mail-From`: our signed VERP sender, when the
    /// feedback loop keeps it.
    pub original_mail_from: Option<String>,
}

/// The parts of a message an item is made of.
#[derive(Debug, Clone)]
pub struct Content {
    /// How the `From` header looks.
    pub sender: Sender,
    /// The `From` header(s) as written, for the record of a refused message.
    pub from_raw: String,
    /// `Message-ID`.
    pub message_id: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// The text: the text part, or the HTML part reduced to text.
    pub text: Option<String>,
    /// Attachments (ignored).
    pub attachments: usize,
    /// `Authentication-Results` header values.
    pub auth_results: Vec<String>,
}

/// Reads and classifies a raw message.
///
/// # Errors
/// [`Unparseable`] for empty input or bytes that are no mail.
pub fn classify(raw: &[u8]) -> Result<Inbound, Unparseable> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(Unparseable("empty"));
    }
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(Unparseable("no header section"))?;
    if message.headers().is_empty()
        || !message
            .headers()
            .iter()
            .any(|h| is_known_header(h.name.as_str()))
    {
        return Err(Unparseable("no mail headers"));
    }
    let delivered_to = ["X-Original-To", "Delivered-To", "Envelope-To"]
        .iter()
        .find_map(|h| message.header_raw(*h))
        .map(report::address);
    let content = content_of(&message);
    let signals = signals_of(&message, content.text.as_deref());
    let returned = returned_of(&message);
    Ok(Inbound {
        kind: kind_of(&message, &returned),
        delivered_to,
        returned,
        signals,
        content,
        raw: raw.to_vec(),
    })
}

/// The first text of a message: the text part, or the HTML part reduced to text.
fn text_of(message: &Message<'_>) -> Option<String> {
    let is = |p: &mail_parser::MessagePart<'_>, sub: &str| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case(sub))
        }) || (p.content_type().is_none() && sub == "plain" && matches!(p.body, PartType::Text(_)))
    };
    let not_attachment = |p: &&mail_parser::MessagePart<'_>| p.attachment_name().is_none();
    message
        .parts
        .iter()
        .filter(not_attachment)
        .find(|p| is(p, "plain") && matches!(p.body, PartType::Text(_)))
        .and_then(|p| p.text_contents().map(str::to_owned))
        .or_else(|| {
            message
                .parts
                .iter()
                .filter(not_attachment)
                .find(|p| is(p, "html"))
                .and_then(|p| p.text_contents().map(crate::feeds::text::html_to_text))
        })
}

fn content_of(message: &Message<'_>) -> Content {
    let froms: Vec<&mail_parser::Header<'_>> = message
        .headers()
        .iter()
        .filter(|h| h.name == mail_parser::HeaderName::From)
        .collect();
    let addresses: Vec<String> = froms
        .iter()
        .filter_map(|h| h.value.as_address())
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .map(str::to_ascii_lowercase)
        .collect();
    let sender = match (froms.len(), addresses.as_slice()) {
        (1, [one]) if one.contains('@') => Sender::One(one.clone()),
        (0, _) | (1, []) => Sender::None,
        _ => Sender::Several,
    };
    let raw_headers = |name: &str| -> Vec<String> {
        message
            .headers_raw()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    };
    Content {
        sender,
        from_raw: raw_headers("From").join(" | ").chars().take(500).collect(),
        message_id: message.message_id().map(str::to_owned),
        subject: message
            .subject()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        text: text_of(message)
            .map(|t| t.trim().replace("\r\n", "\n"))
            .filter(|t| !t.is_empty()),
        attachments: message.attachment_count(),
        auth_results: raw_headers("Authentication-Results"),
    }
}

fn signals_of(message: &Message<'_>, text: Option<&str>) -> plain::Signals {
    const AUTO: &[&str] = &[
        "auto-submitted",
        "x-autoreply",
        "x-autorespond",
        "x-auto-response-suppress",
        "precedence",
        "x-ms-exchange-inbox-rules-loop",
    ];
    let from = message
        .from()
        .and_then(|a| a.first())
        .map(|a| {
            format!(
                "{} {}",
                a.name().unwrap_or_default(),
                a.address().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    plain::Signals {
        from: from.to_lowercase(),
        subject: message.subject().unwrap_or_default().to_lowercase(),
        auto_headers: message
            .headers_raw()
            .filter(|(n, _)| AUTO.iter().any(|a| n.eq_ignore_ascii_case(a)))
            .map(|(n, v)| format!("{}: {}", n.to_ascii_lowercase(), v.trim().to_lowercase()))
            .collect(),
        text: plain::own_text(text.unwrap_or_default()),
    }
}

fn is_known_header(name: &str) -> bool {
    [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "content-type",
        "received",
        "return-path",
        "mime-version",
    ]
    .contains(&name.to_ascii_lowercase().as_str())
}

/// The first part whose content type is `*/{subtype}`.
fn part_of<'a, 'x>(
    message: &'a Message<'x>,
    subtype: &str,
) -> Option<&'a mail_parser::MessagePart<'x>> {
    message.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            ct.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
        })
    })
}

fn kind_of(message: &Message<'_>, returned: &Returned) -> Kind {
    let report_type = message
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    match report_type.as_deref() {
        Some("delivery-status") => match part_of(message, "delivery-status") {
            Some(p) => Kind::Dsn(report::delivery_status(p.contents())),
            None => Kind::Other,
        },
        Some("feedback-report") => {
            let fields = part_of(message, "feedback-report")
                .map(|p| report::blocks(p.contents()).concat())
                .unwrap_or_default();
            Kind::Complaint {
                feedback_type: report::field(&fields, "feedback-type")
                    .unwrap_or("abuse")
                    .to_ascii_lowercase(),
                original_to: returned
                    .to
                    .clone()
                    .or_else(|| report::field(&fields, "original-rcpt-to").map(report::address)),
            }
        }
        _ => Kind::Other,
    }
}

/// The returned original (`message/rfc822` or `text/rfc822-headers`) and an ARF
/// report's fields.
fn returned_of(message: &Message<'_>) -> Returned {
    let mut returned = Returned::default();
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
        match (&part.body, sub.as_str()) {
            (PartType::Message(m), _) => take_original(&mut returned, m),
            (_, "rfc822-headers") | (_, "rfc822") => {
                let mut raw = part.contents().to_vec();
                raw.extend_from_slice(b"\r\n\r\n");
                if let Some(m) = MessageParser::default().parse(&raw) {
                    take_original(&mut returned, &m);
                }
            }
            (_, "feedback-report") => {
                let fields = report::blocks(part.contents()).concat();
                returned.original_mail_from =
                    report::field(&fields, "original-mail-from").map(str::to_owned);
            }
            _ => {}
        }
    }
    returned
}

/// Keeps what a returned original tells: its id, its `To`, and the texts where a
/// signed token may be.
fn take_original(returned: &mut Returned, original: &Message<'_>) {
    if returned.message_id.is_none() {
        returned.message_id = original.message_id().map(str::to_owned);
    }
    if returned.to.is_none() {
        returned.to = original
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_ascii_lowercase);
    }
    let headers: String = original
        .headers_raw()
        .map(|(n, v)| format!("{n}: {v}\n"))
        .collect();
    returned.texts.push(headers);
    returned.texts.extend(
        original
            .parts
            .iter()
            .filter(|p| {
                p.content_type()
                    .is_none_or(|ct| ct.ctype().eq_ignore_ascii_case("text"))
            })
            .filter_map(|p| p.text_contents().map(str::to_owned)),
    );
}

/// The part of `address` that `template`'s `{id}` stands for.
pub fn template_id(template: &str, address: &str) -> Option<String> {
    let (prefix, suffix) = template.split_once("{id}")?;
    let a = address.to_ascii_lowercase();
    let (prefix, suffix) = (prefix.to_ascii_lowercase(), suffix.to_ascii_lowercase());
    (a.len() > prefix.len() + suffix.len() && a.starts_with(&prefix) && a.ends_with(&suffix))
        .then(|| a[prefix.len()..a.len() - suffix.len()].to_owned())
}

/// What handling a message did, for the log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded for a reader: the event kind and the reader's status afterwards.
    Recorded {
        /// `hard_bounce`, `soft_bounce`, `policy_bounce`, `complaint`, `unsubscribe_reply`.
        event: &'static str,
        /// The reader's status afterwards.
        status: String,
    },
    /// A report without signed evidence, recorded as `unverified_report` for the
    /// reader it names; nobody changed.
    Unverified {
        /// What the report claimed (`hard_bounce`, `complaint`, …).
        claimed: &'static str,
    },
    /// Deliberately ignored, with the reason.
    Ignored(&'static str),
    /// A submission stored as an item (or recognised as one stored before).
    Item {
        /// The item's id.
        id: i64,
        /// Whether it is new.
        new: bool,
    },
    /// A submission from an allowed sender without authentication, held for an
    /// operator.
    Held {
        /// The submission's id.
        id: i64,
        /// Whether it is new.
        new: bool,
    },
    /// A submission refused outright (several or no From headers), recorded.
    Refused(&'static str),
}

/// Who the envelope recipient names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Envelope {
    /// No return address of ours (a plain address, a feedback-loop address).
    Plain,
    /// The VERP bounce address of this reader, MAC verified.
    Bounce(i64),
    /// The `mailto:` unsubscribe address of this reader, MAC verified.
    Unsubscribe(i64),
    /// A return address with a MAC that does not verify.
    Forged,
}

/// Everything handling needs.
pub struct Handler<'a> {
    /// The database.
    pub store: &'a Store,
    /// Knows the VERP and unsubscribe address templates and their signatures.
    pub composer: &'a Composer,
    /// Soft-bounce threshold and window.
    pub bounces: BounceSettings,
    /// Who may mail items in, where to, and how they are authenticated.
    pub submissions: crate::config::SubmissionSettings,
    /// The instant to record.
    pub now: DateTime<Utc>,
}

impl Handler<'_> {
    /// Acts on one message. `recipient` is the envelope recipient when the MTA
    /// passes it (else the `X-Original-To`/`Delivered-To` header is used).
    ///
    /// # Errors
    /// [`StoreError`] when the database fails: the MTA should retry.
    pub async fn handle(
        &self,
        inbound: &Inbound,
        recipient: Option<&str>,
    ) -> Result<Outcome, StoreError> {
        let to = recipient
            .map(report::address)
            .or_else(|| inbound.delivered_to.clone());
        if let Some(topic) = self.submission_topic(to.as_deref()) {
            return self.submit(inbound, &topic).await;
        }
        let envelope = self.envelope(to.as_deref());
        let inner = evidence::signed_reader(
            &inbound.returned.texts,
            inbound.returned.original_mail_from.as_deref(),
            self.composer,
        );
        let reader = match (envelope, inner) {
            (Envelope::Forged, _) => {
                tracing::warn!("inbound message to a return address with a bad signature; ignored");
                return Ok(Outcome::Ignored("return address with a bad signature"));
            }
            (Envelope::Unsubscribe(id), _) => {
                let event =
                    Event::new(MailEventKind::UnsubscribeReply, "mailto unsubscribe".into());
                return self.record(id, event, EventEffect::Unsubscribe).await;
            }
            // The token inside verified as well: it names the message's reader.
            (_, Signed::Reader(id)) => Some(id),
            (Envelope::Bounce(id), _) => Some(id),
            (Envelope::Plain, _) => None,
        };
        match &inbound.kind {
            Kind::Dsn(recipients) => self.bounce(reader, recipients, &inbound.returned).await,
            Kind::Complaint {
                feedback_type,
                original_to,
            } => {
                self.complaint(reader, feedback_type, original_to.as_deref())
                    .await
            }
            Kind::Other => match reader {
                Some(id) => self.plain_bounce(id, inbound).await,
                None => Ok(Outcome::Ignored(
                    "neither a report nor an unsubscribe reply",
                )),
            },
        }
    }

    /// The topic a submission address names, if `to` is one.
    fn submission_topic(&self, to: Option<&str>) -> Option<String> {
        self.submissions
            .address
            .as_deref()
            .zip(to)
            .and_then(|(t, a)| template_id(&t.replace("{topic}", "{id}"), a))
    }

    fn envelope(&self, to: Option<&str>) -> Envelope {
        let addresses = self.composer.addresses();
        let id_in = |template: &Option<String>| {
            template
                .as_deref()
                .zip(to)
                .and_then(|(t, a)| template_id(t, a))
        };
        let verify = |id: String| self.composer.verify_verp_id(&id);
        match (id_in(&addresses.unsubscribe), id_in(&addresses.bounce)) {
            (Some(id), _) => verify(id).map_or(Envelope::Forged, Envelope::Unsubscribe),
            (None, Some(id)) => verify(id).map_or(Envelope::Forged, Envelope::Bounce),
            (None, None) => Envelope::Plain,
        }
    }

    async fn bounce(
        &self,
        reader: Option<i64>,
        recipients: &[report::RecipientStatus],
        returned: &Returned,
    ) -> Result<Outcome, StoreError> {
        let Some(r) = recipients.first().filter(|r| r.is_failure()) else {
            return Ok(Outcome::Ignored("delivery status without a failure"));
        };
        let detail = format!(
            "{} {} {}",
            r.action,
            r.status,
            r.diagnostic.as_deref().unwrap_or_default()
        )
        .trim()
        .to_owned();
        let (kind, effect) = match (r.action.as_str(), r.status.as_bytes().first()) {
            ("failed", _) if r.status.starts_with("5.7.") => {
                (MailEventKind::PolicyBounce, EventEffect::Record)
            }
            // A 4.x.x with `failed` is the MTA giving up after its retry period.
            ("failed", _) => (MailEventKind::HardBounce, EventEffect::Bounce),
            _ => (MailEventKind::SoftBounce, self.soft_count()),
        };
        let named = [&r.original_recipient, &r.final_recipient, &returned.to]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect::<Vec<_>>();
        let event = Event {
            kind,
            detail,
            message_ref: returned.message_id.clone(),
        };
        self.act_or_record_unverified(reader, &named, event, effect)
            .await
    }

    async fn complaint(
        &self,
        reader: Option<i64>,
        feedback_type: &str,
        original_to: Option<&str>,
    ) -> Result<Outcome, StoreError> {
        // Only abuse (and fraud) reports are complaints; "not-spam" says the
        // opposite, and "auth-failure" reports quote other people's mail.
        if !matches!(feedback_type, "abuse" | "fraud") {
            return Ok(Outcome::Ignored("feedback report that is no complaint"));
        }
        let event = Event::new(
            MailEventKind::Complaint,
            format!("feedback-type {feedback_type}"),
        );
        let named: Vec<&str> = original_to.into_iter().collect();
        self.act_or_record_unverified(reader, &named, event, EventEffect::UnsubscribeAndSuppress)
            .await
    }

    /// Acts on the signed reader; without one, records the claim as unverified
    /// for the reader the report names, and changes nobody.
    async fn act_or_record_unverified(
        &self,
        reader: Option<i64>,
        named: &[&str],
        mut event: Event,
        effect: EventEffect,
    ) -> Result<Outcome, StoreError> {
        let mut named_readers = Vec::new();
        for address in named {
            if let Some(id) = self.store.subscriber_id(address).await? {
                named_readers.push(id);
            }
        }
        if let Some(id) = reader {
            if named_readers.iter().any(|n| *n != id) {
                // Only a cross-check: the other reader is not touched.
                event
                    .detail
                    .push_str(" (the report names another reader; ignored)");
            }
            return self.record(id, event, effect).await;
        }
        let Some(&named) = named_readers.first() else {
            tracing::info!(
                claimed = event.kind.as_str(),
                "report without signed evidence for no known reader"
            );
            return Ok(Outcome::Ignored(
                "report without signed evidence, for no known reader",
            ));
        };
        tracing::warn!(
            subscriber.id = named,
            claimed = event.kind.as_str(),
            "report without signed evidence; recorded as unverified, nobody changed"
        );
        let claimed = event.kind.as_str();
        let unverified = Event {
            kind: MailEventKind::UnverifiedReport,
            detail: format!("{claimed}: {} (no signed evidence)", event.detail),
            message_ref: event.message_ref,
        };
        self.record(named, unverified, EventEffect::Record).await?;
        Ok(Outcome::Unverified { claimed })
    }

    /// A message to a verified VERP address that is no report.
    async fn plain_bounce(&self, id: i64, inbound: &Inbound) -> Result<Outcome, StoreError> {
        use plain::Verdict;
        let code = |c: &Option<String>| c.clone().unwrap_or_else(|| "-".into());
        let (kind, code, effect) = match plain::classify(&inbound.signals) {
            Verdict::AutoReply => return Ok(Outcome::Ignored("auto-reply to a return address")),
            Verdict::NotABounce => {
                return Ok(Outcome::Ignored(
                    "mail to a return address that is no bounce",
                ));
            }
            Verdict::Policy(c) => (MailEventKind::PolicyBounce, c, EventEffect::Record),
            Verdict::Permanent(c) => (MailEventKind::HardBounce, code(&c), EventEffect::Bounce),
            Verdict::Temporary(c) => (MailEventKind::SoftBounce, code(&c), self.soft_count()),
        };
        let subject: String = inbound.signals.subject.chars().take(120).collect();
        let event = Event {
            kind,
            detail: format!("text {code} ({subject})"),
            message_ref: inbound.returned.message_id.clone(),
        };
        self.record(id, event, effect).await
    }

    fn soft_count(&self) -> EventEffect {
        EventEffect::Count {
            threshold: self.bounces.soft_threshold,
            since: self.now - self.bounces.soft_window,
        }
    }

    /// Stores a mailed-in press release: published when authenticated, held when
    /// not, refused when its `From` is ambiguous.
    async fn submit(&self, inbound: &Inbound, topic: &str) -> Result<Outcome, StoreError> {
        let content = &inbound.content;
        let from = match &content.sender {
            Sender::One(from) => from.clone(),
            Sender::Several => return self.refuse(content, topic, "several From addresses").await,
            Sender::None => return self.refuse(content, topic, "no From address").await,
        };
        if !self.submissions.allows(&from) {
            tracing::warn!(sender_domain = %submission::domain_of(&from), "submission from a sender not allowed; nothing stored");
            return Ok(Outcome::Ignored("sender not allowed to submit items"));
        }
        let Ok(slug) = crate::domain::TopicSlug::parse(topic) else {
            return Ok(Outcome::Ignored("submission to an address naming no topic"));
        };
        if !self
            .store
            .list_topics(false)
            .await?
            .iter()
            .any(|t| t.slug == slug.as_str())
        {
            return Ok(Outcome::Ignored(
                "submission for a topic that is not offered",
            ));
        }
        let Some(title) = content.subject.clone().filter(|s| !s.trim().is_empty()) else {
            return Ok(Outcome::Ignored("submission without a subject"));
        };
        if content.attachments > 0 {
            tracing::info!(
                attachments = content.attachments,
                "attachments of a submission ignored"
            );
        }
        let item = item_of(content, slug, title, &from, self.now);
        if self.authenticated(inbound, &from).await {
            return Ok(match self.store.add_item(&item, self.now).await? {
                crate::store::ItemOutcome::Created(i) => Outcome::Item {
                    id: i.id,
                    new: true,
                },
                crate::store::ItemOutcome::Existing(i) => Outcome::Item {
                    id: i.id,
                    new: false,
                },
            });
        }
        tracing::warn!(sender_domain = %submission::domain_of(&from), "submission without authentication; held for approval");
        let held = NewSubmission {
            status: SubmissionStatus::Held,
            topic: item.topics[0].as_str().to_owned(),
            sender: from,
            title: item.title,
            summary: item.summary,
            body: item.body,
            guid: item.guid,
            reason: "sender domain not authenticated (no DMARC or aligned DKIM pass)".into(),
        };
        let (id, new) = self.store.add_submission(&held, self.now).await?;
        Ok(Outcome::Held { id, new })
    }

    async fn authenticated(&self, inbound: &Inbound, from: &str) -> bool {
        let domain = submission::domain_of(from);
        let results = inbound.content.auth_results();
        let by_mta = self
            .submissions
            .authserv_id
            .as_deref()
            .is_some_and(|id| submission::authenticated_by_results(&results, id, domain));
        by_mta
            || (self.submissions.verify_dkim
                && submission::dkim_verified(&inbound.raw, domain).await)
    }

    async fn refuse(
        &self,
        content: &Content,
        topic: &str,
        reason: &'static str,
    ) -> Result<Outcome, StoreError> {
        tracing::warn!(reason, "submission refused");
        let refused = NewSubmission {
            status: SubmissionStatus::Refused,
            topic: topic.chars().take(64).collect(),
            sender: content.from_raw.clone(),
            title: content
                .subject
                .clone()
                .unwrap_or_default()
                .chars()
                .take(500)
                .collect(),
            summary: None,
            body: None,
            // The MTA delivering the same message twice records it once; a refused
            // copy never stands in for a held one with the same Message-ID.
            guid: content
                .message_id
                .as_ref()
                .map(|id| format!("refused:mail:{id}")),
            reason: reason.into(),
        };
        self.store.add_submission(&refused, self.now).await?;
        Ok(Outcome::Refused(reason))
    }

    async fn record(
        &self,
        id: i64,
        event: Event,
        effect: EventEffect,
    ) -> Result<Outcome, StoreError> {
        match self
            .store
            .record_mail_event(
                id,
                event.kind,
                &event.detail,
                event.message_ref.as_deref(),
                effect,
                self.now,
            )
            .await?
        {
            Some(status) => Ok(Outcome::Recorded {
                event: event.kind.as_str(),
                status: status.to_string(),
            }),
            None => Ok(Outcome::Ignored("the reader no longer exists")),
        }
    }
}

/// One mail event about to be recorded.
struct Event {
    kind: MailEventKind,
    detail: String,
    message_ref: Option<String>,
}

impl Event {
    fn new(kind: MailEventKind, detail: String) -> Self {
        Self {
            kind,
            detail,
            message_ref: None,
        }
    }
}

/// A submission as an item.
fn item_of(
    content: &Content,
    slug: crate::domain::TopicSlug,
    title: String,
    from: &str,
    now: DateTime<Utc>,
) -> crate::store::NewItem {
    let text = content.text.clone().unwrap_or_default();
    // Cut to the limits every source shares (`NewItem::fitted`): a mail cannot be
    // sent back for being long.
    let item = crate::store::NewItem {
        topics: vec![slug],
        title,
        url: None,
        summary: Some(crate::feeds::text::first_paragraph(&text, 500)).filter(|s| !s.is_empty()),
        body: Some(text).filter(|b| !b.is_empty()),
        published_at: Some(now),
        guid: content.message_id.as_ref().map(|id| format!("mail:{id}")),
        source: match content.attachments {
            0 => format!("mail:{from}"),
            n => format!("mail:{from} ({n} attachments ignored)"),
        },
    };
    item.fitted().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_ids_are_cut_out_of_addresses() {
        assert_eq!(
            template_id("bounces+{id}@example.org", "Bounces+12-ab@Example.org").as_deref(),
            Some("12-ab")
        );
        assert_eq!(
            template_id("bounces+{id}@example.org", "bounces+@example.org"),
            None
        );
        assert_eq!(
            template_id("bounces+{id}@example.org", "other+12-ab@example.org"),
            None
        );
    }

    #[test]
    fn empty_and_garbage_input_is_unparseable() {
        assert!(classify(b"").is_err());
        assert!(classify(b"\r\n\r\n").is_err());
        assert!(classify(&[0xff, 0xfe, 0x00, 0x13, 0x37]).is_err());
    }

    #[test]
    fn two_from_headers_are_several_senders() {
        let raw = b"From: a@attacker.example\r\nFrom: presse@allowed.example\r\nSubject: x\r\n\r\nText\r\n";
        assert_eq!(classify(raw).unwrap().content.sender, Sender::Several);
        let raw = b"From: a@attacker.example, presse@allowed.example\r\nSubject: x\r\n\r\nText\r\n";
        assert_eq!(classify(raw).unwrap().content.sender, Sender::Several);
        let raw = b"Subject: x\r\nTo: y@example.org\r\n\r\nText\r\n";
        assert_eq!(classify(raw).unwrap().content.sender, Sender::None);
        let raw = b"From: Presse <Presse@Allowed.example>\r\nSubject: x\r\n\r\nText\r\n";
        assert_eq!(
            classify(raw).unwrap().content.sender,
            Sender::One("presse@allowed.example".into())
        );
    }
}
