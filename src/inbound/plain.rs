//! Bounces that are no RFC 3464 report: qmail, old Exchange and Exim, Yahoo, and
//! postmasters writing prose, in German and English; and the auto-replies
//! (vacation notices, challenge–response filters) that land on a VERP address too.
//!
//! Only ever asked about a message that reached a VERP address whose MAC verified,
//! so the reader is known; the text only decides how bad the news is. Clearly
//! permanent → hard, clearly temporary → soft, an auto-reply → ignored, unclear →
//! soft (counted, so a real problem shows after the threshold, and one odd message
//! condemns nobody).

use super::report::status_code;

/// What a plain-text bounce says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The address is gone (the code, if the text states one).
    Permanent(Option<String>),
    /// Refused for policy (`5.7.x`): recorded only.
    Policy(String),
    /// Maybe later, or unclear.
    Temporary(Option<String>),
    /// An auto-reply or challenge: nothing about deliverability.
    AutoReply,
    /// Does not look like a bounce at all.
    NotABounce,
}

/// The parts of a message that tell a bounce from an auto-reply.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// `From` address and display name, lower-cased.
    pub from: String,
    /// `Subject`, lower-cased.
    pub subject: String,
    /// Headers that auto-responders set (`Auto-Submitted`, `X-Autoreply`,
    /// `Precedence`, …), as `name: value`, lower-cased.
    pub auto_headers: Vec<String>,
    /// The message's own text (not the returned original), lower-cased, capped.
    pub text: String,
}

/// How much of a bounce's text is read: the explanation is at the top, and the
/// returned original (item content anybody can write) must not be read as the
/// MTA's words.
pub const TEXT_CAP: usize = 16 * 1024;

/// Where the returned copy of the original starts in plain-text bounces.
const ORIGINAL_MARKERS: &[&str] = &[
    "--- below this line is a copy of the message",
    "------ this is a copy of the message",
    "----- original message -----",
    "------ original message ------",
    "--- the header of the original message is following",
    "original message follows",
    "----- transcript of session follows",
    "-----ursprüngliche nachricht-----",
    "--- ursprüngliche nachricht",
];

/// The text of a bounce up to the returned original, capped.
pub fn own_text(text: &str) -> String {
    let mut lower: String = text
        .chars()
        .take(TEXT_CAP)
        .collect::<String>()
        .to_lowercase();
    if let Some(at) = ORIGINAL_MARKERS.iter().filter_map(|m| lower.find(m)).min() {
        lower.truncate(at);
    }
    lower
}

const BOUNCE_SENDERS: &[&str] = &[
    "mailer-daemon",
    "postmaster",
    "mail delivery",
    "maildelivery",
];

const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "undelivered",
    "unzustellbar",
    "nicht zustellbar",
    "delivery status",
    "delivery failure",
    "delivery failed",
    "delivery has failed",
    "failure notice",
    "returned mail",
    "returning message to sender",
    "mail delivery",
    "could not be delivered",
    "nicht zugestellt",
    "non remis",
    "delivery problem",
];

const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "automatische antwort",
    "abwesenheit",
    "out of office",
    "out of the office",
    "vacation",
    "urlaub",
    "auto:",
    "réponse automatique",
];

const CHALLENGE_PHRASES: &[&str] = &[
    "confirm that you are a human",
    "verify that you are a human",
    "prove you are a human",
    "please verify your email",
    "confirm your message",
    "challenge",
    "whitelist",
    "bestätigen sie, dass sie ein mensch",
];

const PERMANENT_PHRASES: &[&str] = &[
    "user unknown",
    "unknown user",
    "no such user",
    "no such recipient",
    "no mailbox",
    "mailbox unavailable",
    "mailbox not found",
    "mailbox does not exist",
    "account does not exist",
    "does not exist",
    "doesn't exist",
    "doesn't have a",
    "recipient not found",
    "recipient unknown",
    "unknown recipient",
    "address rejected",
    "invalid recipient",
    "invalid address",
    "account has been disabled",
    "account is disabled",
    "permanent error",
    "permanent failure",
    "unbekannt",
    "existiert nicht",
    "gibt es nicht",
    "nicht vorhanden",
    "ungültig",
    "dauerhaft",
    "permanenter fehler",
];

const TEMPORARY_PHRASES: &[&str] = &[
    "mailbox full",
    "mailbox is full",
    "quota",
    "temporar",
    "still being retried",
    "will be retried",
    "will keep trying",
    "will retry",
    "try again later",
    "postfach ist voll",
    "speicherplatz",
    "vorübergehend",
];

/// Reads a message that reached a verified VERP address but is no report.
pub fn classify(signals: &Signals) -> Verdict {
    let from_daemon = BOUNCE_SENDERS.iter().any(|s| signals.from.contains(s));
    let bounce_subject = BOUNCE_SUBJECTS.iter().any(|s| signals.subject.contains(s));
    let looks_like_bounce = from_daemon || bounce_subject;
    if !looks_like_bounce {
        let auto_header = signals.auto_headers.iter().any(|h| {
            h.starts_with("auto-submitted:") && !h.ends_with(" no")
                || h.starts_with("x-autoreply")
                || h.starts_with("x-autorespond")
                || h.starts_with("x-auto-response-suppress")
                || h.starts_with("precedence: auto_reply")
                || h.starts_with("x-ms-exchange-inbox-rules-loop")
        });
        let auto_subject = AUTO_REPLY_SUBJECTS
            .iter()
            .any(|s| signals.subject.contains(s));
        let challenge = CHALLENGE_PHRASES.iter().any(|s| signals.text.contains(s));
        return if auto_header || auto_subject || challenge {
            Verdict::AutoReply
        } else {
            Verdict::NotABounce
        };
    }
    match status_code(&signals.text) {
        Some(code) if code.starts_with("5.7.") => Verdict::Policy(code),
        Some(code) if code.starts_with('5') => Verdict::Permanent(Some(code)),
        Some(code) if code.starts_with('4') => Verdict::Temporary(Some(code)),
        _ if PERMANENT_PHRASES.iter().any(|p| signals.text.contains(p)) => Verdict::Permanent(None),
        _ if TEMPORARY_PHRASES.iter().any(|p| signals.text.contains(p)) => Verdict::Temporary(None),
        _ => Verdict::Temporary(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(from: &str, subject: &str, text: &str) -> Signals {
        Signals {
            from: from.into(),
            subject: subject.into(),
            auto_headers: Vec::new(),
            text: own_text(text),
        }
    }

    #[test]
    fn bounces_are_graded_by_code_then_by_words() {
        let qmail = signals(
            "mailer-daemon@mx.example.net",
            "failure notice",
            "<leser@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n--- Below this line is a copy of the message.\n\nSubject: 4.2.2 mailbox full",
        );
        assert_eq!(classify(&qmail), Verdict::Permanent(Some("5.1.1".into())));
        let german = signals(
            "postmaster@mail.example.de",
            "unzustellbar",
            "ihre nachricht konnte nicht zugestellt werden. der empfänger ist unbekannt.",
        );
        assert_eq!(classify(&german), Verdict::Permanent(None));
        let full = signals("mailer-daemon@x", "undeliverable", "452 4.2.2 mailbox full");
        assert_eq!(classify(&full), Verdict::Temporary(Some("4.2.2".into())));
        let unclear = signals("postmaster@x", "delivery problem", "we will look into it");
        assert_eq!(classify(&unclear), Verdict::Temporary(None));
    }

    #[test]
    fn auto_replies_and_other_mail_change_nothing() {
        let mut vacation = signals("leser@example.net", "abwesenheitsnotiz", "bin im urlaub");
        assert_eq!(classify(&vacation), Verdict::AutoReply);
        vacation.subject = "re: newsletter".into();
        vacation.auto_headers = vec!["auto-submitted: auto-replied".into()];
        assert_eq!(classify(&vacation), Verdict::AutoReply);
        let challenge = signals(
            "verify@filter.example",
            "please verify",
            "please confirm that you are a human by clicking",
        );
        assert_eq!(classify(&challenge), Verdict::AutoReply);
        assert_eq!(
            classify(&signals("someone@example.net", "hello", "550 user unknown")),
            Verdict::NotABounce
        );
    }
}
