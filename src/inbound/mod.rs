//! `postbote inbound`: one message from the MTA's pipe transport, classified with
//! mail-parser and acted on.
//!
//! | message | effect |
//! | --- | --- |
//! | RFC 3464 DSN, `Action: failed`, `5.x.x` (not `5.7.x`) | hard bounce: reader marked bounced, address suppressed |
//! | DSN `5.7.x` (policy: spam filter, DMARC, …) | recorded only: the address is fine |
//! | DSN `4.x.x` or `Action: delayed` | soft bounce: counted; `bounces.soft_threshold` within the window condemn the address |
//! | RFC 5965 ARF complaint | reader unsubscribed, address suppressed |
//! | mail to the `mailto:` unsubscribe address | reader unsubscribed |
//! | anything else | logged and ignored |
//!
//! The reader is found by the VERP envelope recipient (`bounces+<id>@…`, the id
//! signed; a VERP address with a bad signature is ignored as forged), else by the
//! DSN's `Original-Recipient` / `Final-Recipient`; a complaint by the returned
//! original message's `To` (or `Original-Rcpt-To`), else by the VERP address.

pub mod report;

use chrono::{DateTime, Utc};
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use crate::config::BounceSettings;
use crate::mail::compose::Composer;
use crate::store::{EventEffect, Store, StoreError};

/// What a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A delivery status notification with per-recipient outcomes.
    Dsn(Vec<report::RecipientStatus>),
    /// An abuse/feedback report; the complained-about message's recipient, if shown.
    Complaint {
        /// `Feedback-Type`.
        feedback_type: String,
        /// The original recipient.
        original_to: Option<String>,
        /// `Original-Mail-From`: our VERP envelope sender, when the report keeps it.
        original_from: Option<String>,
    },
    /// Anything else (a reply, an auto-responder, spam).
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
}

/// The parts of a message an item is made of.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// `From` address, lower-cased.
    pub from: Option<String>,
    /// `Message-ID`.
    pub message_id: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// The text: the text part, or the HTML part reduced to text.
    pub text: Option<String>,
    /// Attachments (ignored).
    pub attachments: usize,
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
    Ok(Inbound {
        kind: kind_of(&message),
        delivered_to,
        content: content_of(&message),
    })
}

fn content_of(message: &Message<'_>) -> Content {
    let is = |p: &mail_parser::MessagePart<'_>, sub: &str| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case(sub))
        }) || (p.content_type().is_none() && sub == "plain" && matches!(p.body, PartType::Text(_)))
    };
    let not_attachment = |p: &&mail_parser::MessagePart<'_>| p.attachment_name().is_none();
    let text = message
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
        });
    Content {
        from: message
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_ascii_lowercase),
        message_id: message.message_id().map(str::to_owned),
        subject: message
            .subject()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        text: text
            .map(|t| t.trim().replace("\r\n", "\n"))
            .filter(|t| !t.is_empty()),
        attachments: message.attachment_count(),
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

fn kind_of(message: &Message<'_>) -> Kind {
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
    let part_of = |subtype: &str| {
        message.parts.iter().find(|p| {
            p.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("message")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
            })
        })
    };
    match report_type.as_deref() {
        Some("delivery-status") => match part_of("delivery-status") {
            Some(p) => Kind::Dsn(report::delivery_status(p.contents())),
            None => Kind::Other,
        },
        Some("feedback-report") => {
            let fields = part_of("feedback-report")
                .map(|p| report::blocks(p.contents()).concat())
                .unwrap_or_default();
            Kind::Complaint {
                feedback_type: report::field(&fields, "feedback-type")
                    .unwrap_or("abuse")
                    .to_ascii_lowercase(),
                original_from: report::field(&fields, "original-mail-from").map(report::address),
                original_to: original_recipient(message)
                    .or_else(|| report::field(&fields, "original-rcpt-to").map(report::address)),
            }
        }
        _ => Kind::Other,
    }
}

/// The `To` of the returned original message (`message/rfc822` or
/// `text/rfc822-headers`).
fn original_recipient(message: &Message<'_>) -> Option<String> {
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
        let headers: Option<Vec<u8>> = match (&part.body, sub.as_str()) {
            (PartType::Message(m), _) => Some(m.raw_message().to_vec()),
            (_, "rfc822-headers") | (_, "rfc822") => Some(part.contents().to_vec()),
            _ => None,
        };
        if let Some(raw) = headers {
            let mut raw = raw;
            raw.extend_from_slice(b"\r\n\r\n");
            let parsed = MessageParser::default().parse(&raw);
            if let Some(to) = parsed
                .as_ref()
                .and_then(|m| m.to())
                .and_then(|a| a.first())
                .and_then(|a| a.address())
            {
                return Some(to.to_ascii_lowercase());
            }
        }
    }
    None
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
    /// Deliberately ignored, with the reason.
    Ignored(&'static str),
    /// A submission stored as an item (or recognised as one stored before).
    Item {
        /// The item's id.
        id: i64,
        /// Whether it is new.
        new: bool,
    },
}

/// Everything handling needs.
pub struct Handler<'a> {
    /// The database.
    pub store: &'a Store,
    /// Knows the VERP and unsubscribe address templates and their signatures.
    pub composer: &'a Composer,
    /// Soft-bounce threshold and window.
    pub bounces: BounceSettings,
    /// Who may mail items in, and where to.
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
        let addresses = self.composer.addresses();
        let verp_reader = |template: &Option<String>| {
            template
                .as_deref()
                .zip(to.as_deref())
                .and_then(|(t, a)| template_id(t, a))
                .and_then(|id| self.composer.verify_verp_id(&id))
        };
        // A message to a VERP-shaped address whose signature does not verify is
        // forged (every real bounce to a VERP address verifies): it must not fall
        // back to naming a reader by the addresses inside the report.
        let forged = |template: &Option<String>| {
            template
                .as_deref()
                .zip(to.as_deref())
                .and_then(|(t, a)| template_id(t, a))
                .is_some_and(|id| self.composer.verify_verp_id(&id).is_none())
        };
        if forged(&addresses.bounce) || forged(&addresses.unsubscribe) {
            tracing::warn!("inbound message to a return address with a bad signature; ignored");
            return Ok(Outcome::Ignored("return address with a bad signature"));
        }
        let topic = self
            .submissions
            .address
            .as_deref()
            .zip(to.as_deref())
            .and_then(|(t, a)| template_id(&t.replace("{topic}", "{id}"), a));
        if let Some(topic) = topic {
            return self.submit(&inbound.content, &topic).await;
        }
        if let Some(id) = verp_reader(&addresses.unsubscribe) {
            return self
                .record(
                    id,
                    "unsubscribe_reply",
                    "mailto unsubscribe".into(),
                    EventEffect::Unsubscribe,
                )
                .await;
        }
        match &inbound.kind {
            Kind::Dsn(recipients) => {
                let Some(r) = recipients.iter().find(|r| {
                    r.action != "delivered" && r.action != "relayed" && r.action != "expanded"
                }) else {
                    return Ok(Outcome::Ignored("delivery status without a failure"));
                };
                let reader = match verp_reader(&addresses.bounce) {
                    Some(id) => Some(id),
                    None => {
                        let by_address = r
                            .original_recipient
                            .clone()
                            .or_else(|| r.final_recipient.clone());
                        match by_address {
                            Some(a) => self.store.subscriber_id(&a).await?,
                            None => None,
                        }
                    }
                };
                let Some(id) = reader else {
                    return Ok(Outcome::Ignored("bounce for no known reader"));
                };
                let detail = format!(
                    "{} {} {}",
                    r.action,
                    r.status,
                    r.diagnostic.as_deref().unwrap_or_default()
                )
                .trim()
                .to_owned();
                let (event, effect) = if r.action == "failed" && r.status.starts_with("5.7.") {
                    ("policy_bounce", EventEffect::Record)
                } else if r.action == "failed" && r.status.starts_with('5') {
                    ("hard_bounce", EventEffect::Bounce)
                } else {
                    let since = self.now - self.bounces.soft_window;
                    (
                        "soft_bounce",
                        EventEffect::Count {
                            threshold: self.bounces.soft_threshold,
                            since,
                        },
                    )
                };
                self.record(id, event, detail, effect).await
            }
            Kind::Complaint {
                feedback_type,
                original_to,
                original_from,
            } => {
                // Only abuse (and fraud) reports are complaints; "not-spam" says the
                // opposite, and "auth-failure" reports quote other people's mail.
                if !matches!(feedback_type.as_str(), "abuse" | "fraud") {
                    return Ok(Outcome::Ignored("feedback report that is no complaint"));
                }
                // Providers often redact the original recipient: then the VERP
                // address the report came back to names the reader.
                let reader = match original_to {
                    Some(a) => self.store.subscriber_id(a).await?,
                    None => None,
                }
                .or_else(|| {
                    // Feedback loops send to a fixed address and often redact the
                    // recipient; the original envelope sender is our signed VERP id.
                    addresses
                        .bounce
                        .as_deref()
                        .zip(original_from.as_deref())
                        .and_then(|(t, a)| template_id(t, a))
                        .and_then(|id| self.composer.verify_verp_id(&id))
                })
                .or_else(|| verp_reader(&addresses.bounce));
                let Some(id) = reader else {
                    return Ok(Outcome::Ignored("complaint about no known reader"));
                };
                self.record(
                    id,
                    "complaint",
                    format!("feedback-type {feedback_type}"),
                    EventEffect::UnsubscribeAndSuppress,
                )
                .await
            }
            Kind::Other => Ok(Outcome::Ignored(
                "neither a report nor an unsubscribe reply",
            )),
        }
    }

    /// Stores a mailed-in press release from an allowed sender as an item.
    async fn submit(&self, content: &Content, topic: &str) -> Result<Outcome, StoreError> {
        let from = content.from.clone().unwrap_or_default();
        let allowed = !from.is_empty()
            && self.submissions.allowed_senders.iter().any(|a| {
                if a.starts_with('@') {
                    from.ends_with(a.as_str())
                } else {
                    *a == from
                }
            });
        if !allowed {
            tracing::warn!(sender_domain = %from.rsplit('@').next().unwrap_or_default(), "submission from a sender not allowed; nothing stored");
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
        let Some(title) = content.subject.clone() else {
            return Ok(Outcome::Ignored("submission without a subject"));
        };
        if content.attachments > 0 {
            tracing::info!(
                attachments = content.attachments,
                "attachments of a submission ignored"
            );
        }
        let text = content.text.clone().unwrap_or_default();
        let item = crate::store::NewItem {
            topics: vec![slug],
            title: title.chars().take(500).collect(),
            url: None,
            summary: Some(crate::feeds::text::first_paragraph(&text, 500))
                .filter(|s| !s.is_empty()),
            body: Some(text.chars().take(100_000).collect::<String>()).filter(|b| !b.is_empty()),
            published_at: Some(self.now),
            guid: content.message_id.as_ref().map(|id| format!("mail:{id}")),
            source: match content.attachments {
                0 => format!("mail:{from}"),
                n => format!("mail:{from} ({n} attachments ignored)"),
            },
        };
        Ok(match self.store.add_item(&item, self.now).await? {
            crate::store::ItemOutcome::Created(i) => Outcome::Item {
                id: i.id,
                new: true,
            },
            crate::store::ItemOutcome::Existing(i) => Outcome::Item {
                id: i.id,
                new: false,
            },
        })
    }

    async fn record(
        &self,
        id: i64,
        event: &'static str,
        detail: String,
        effect: EventEffect,
    ) -> Result<Outcome, StoreError> {
        match self
            .store
            .record_mail_event(id, event, &detail, effect, self.now)
            .await?
        {
            Some(status) => Ok(Outcome::Recorded { event, status }),
            None => Ok(Outcome::Ignored("the reader no longer exists")),
        }
    }
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
}
