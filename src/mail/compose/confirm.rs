//! The confirmation mail without rendering it for every sign-up: each language's
//! `confirm` templates are rendered once with stand-ins for the reader's address
//! and link, cut there as a digest's footer is ([`EncodedTail`]), and every
//! sign-up's mail is written from the cut: its header lines, then the two parts,
//! encoded but for the lines with the reader's values.
//!
//! Rendering the templates and building the message with lettre's builder was a
//! sixth of `serve`'s CPU for a sign-up (measured with `perf` under the bench's
//! sign-up load). Only templates that show the address and the link as they are
//! are cut: one that hands them to a helper (`{{len email}}`, `{{#if (eq email
//! "…")}}`), a block or a partial is rendered for every confirmation, as is one
//! whose cut, filled in for two samples, does not give what rendering gives, to
//! the byte.

use super::{
    ComposeError, Composer, EncodedTail, Locale, NewMail, STAND_IN_START, Slot, SlotValues, Token,
    boundary, close_multipart, date_line, made_once, multipart_lines, part_head, quoted_printable,
    subject_line, to_line,
};
use crate::domain::EmailAddress;
use chrono::{DateTime, Utc};
use serde_json::json;

/// One language's confirmation mail, cut at the reader's values.
#[derive(Debug)]
pub(super) struct ConfirmCut {
    /// The `Subject:` line, the same for every reader, encoded and folded once.
    subject_line: String,
    /// The `text/plain` part.
    text: EncodedTail,
    /// The `text/html` part.
    html: EncodedTail,
}

/// The languages' [`ConfirmCut`]s, in the order of [`Locale::ALL`], each made at
/// its first confirmation (`None` inside: that language's templates cannot be
/// cut); shared by a composer's clones.
pub(super) type ConfirmCuts =
    std::sync::Arc<[std::sync::OnceLock<Option<ConfirmCut>>; Locale::ALL.len()]>;

/// A confirmation mail's values.
struct ConfirmValues<'a> {
    email: &'a str,
    confirm_url: &'a str,
}

impl SlotValues for ConfirmValues<'_> {
    fn value(&self, slot: Slot) -> &str {
        match slot {
            Slot::Email => self.email,
            Slot::Confirm => self.confirm_url,
            Slot::Unsubscribe | Slot::Preferences => "",
        }
    }
}

impl Composer {
    /// The `confirm` templates' data.
    pub(super) fn confirm_data(
        &self,
        locale: Locale,
        email: &str,
        confirm_url: &str,
    ) -> serde_json::Value {
        json!({
            "email": email,
            "confirm_url": confirm_url,
            "lifetime_days": self.lifetime_days,
            "site": self.site_data(locale),
        })
    }

    /// The confirmation mail to `to` with `token`'s link, written from
    /// `locale`'s cut, or `None` when that language's templates cannot be cut
    /// (the caller renders the mail).
    pub(super) fn cut_confirmation(
        &self,
        to: &EmailAddress,
        locale: Locale,
        token: &Token,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Option<Result<NewMail, ComposeError>> {
        let cut = self.confirm_cut(locale)?;
        let confirm_url = self.links.confirm(token);
        let values = ConfirmValues {
            email: to.as_str(),
            confirm_url: &confirm_url,
        };
        Some(self.write_confirmation(cut, to, &values, subscriber_id, now))
    }

    /// `locale`'s cut, made at its first use.
    fn confirm_cut(&self, locale: Locale) -> Option<&ConfirmCut> {
        made_once(&self.confirm_cuts, locale, || {
            self.cut_confirm_templates(locale)
        })
    }

    /// `locale`'s `confirm` templates rendered with stand-ins and cut: only
    /// templates that show the address and the link as they are (no helper, block
    /// or partial gets them, [`crate::mail::templates::Templates::shows_values_plainly`]), and only if
    /// filling the cut in gives, for sample readers whose values need escaping and
    /// differ in length, the subject and both parts as rendered, to the byte.
    fn cut_confirm_templates(&self, locale: Locale) -> Option<ConfirmCut> {
        if !self
            .templates
            .shows_values_plainly(locale, "confirm", &["email", "confirm_url"])
        {
            tracing::info!(
                %locale,
                "the confirm templates do more with the address or link than show them: each confirmation is rendered"
            );
            return None;
        }
        let (email, confirm_url) = (Slot::Email.stand_in(), Slot::Confirm.stand_in());
        let data = self.confirm_data(locale, email, confirm_url);
        let rendered = self.templates.mail(locale, "confirm", data).ok()?;
        if rendered.subject.contains(STAND_IN_START) {
            return None;
        }
        let cut = ConfirmCut {
            subject_line: subject_line(&rendered.subject),
            text: EncodedTail::new("", &rendered.text)?,
            html: EncodedTail::new("", &rendered.html)?,
        };
        let tokens = [Token::generate(), Token::generate()];
        let samples = [
            ("leser@example.org", self.links.confirm(&tokens[0])),
            (
                "o'brien+a=b&c`d<x>\"y\"@example.org",
                format!("{}?a=b&c='d'", self.links.confirm(&tokens[1])),
            ),
        ];
        for (email, confirm_url) in samples {
            let data = self.confirm_data(locale, email, &confirm_url);
            let sample = self.templates.mail(locale, "confirm", data).ok()?;
            let values = ConfirmValues {
                email,
                confirm_url: &confirm_url,
            };
            let same = sample.subject == rendered.subject
                && cut.text.encode(&values) == quoted_printable(&sample.text)
                && cut.html.encode(&values) == quoted_printable(&sample.html);
            if !same {
                tracing::info!(
                    %locale,
                    "the confirm templates transform a value: each confirmation is rendered"
                );
                return None;
            }
        }
        Some(cut)
    }

    /// The message from `cut` with `values`, laid out as lettre lays out the
    /// rendered one: `From`, `To`, `Subject`, `Date`, `Message-ID`,
    /// `Auto-Submitted`, `MIME-Version`, then `multipart/alternative` with a
    /// quoted-printable text and HTML part.
    fn write_confirmation(
        &self,
        cut: &ConfirmCut,
        to: &EmailAddress,
        values: &ConfirmValues<'_>,
        subscriber_id: i64,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        let boundary = boundary();
        let mut message = Vec::with_capacity(1024 + cut.text.size_hint() + cut.html.size_hint());
        message.extend_from_slice(self.digest_lines.0.as_bytes());
        to_line(&mut message, to)?;
        message.extend_from_slice(cut.subject_line.as_bytes());
        date_line(&mut message, now);
        for piece in ["Message-ID: ", &self.message_id(), "\r\n"] {
            message.extend_from_slice(piece.as_bytes());
        }
        message.extend_from_slice(b"Auto-Submitted: auto-generated\r\n");
        multipart_lines(&mut message, &boundary);
        message.extend_from_slice(b"\r\n");
        for (content_type, part) in [("text/plain", &cut.text), ("text/html", &cut.html)] {
            part_head(&mut message, &boundary, content_type);
            part.encode_into(values, &mut message);
            message.extend_from_slice(b"\r\n");
        }
        close_multipart(&mut message, &boundary);
        Ok(NewMail {
            kind: "confirm",
            recipient: to.as_str().to_owned(),
            envelope_from: self.envelope_from(subscriber_id),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{composer, composer_from};
    use super::*;

    /// A composer whose English `confirm` templates are `subject` and `text`, with
    /// an HTML part that shows the address (the folder lives as long as the
    /// first value).
    fn with_english_confirm(subject: &str, text: &str) -> (tempfile::TempDir, Composer) {
        let dir = tempfile::tempdir().unwrap();
        let confirm = dir.path().join("mail/en/confirm");
        std::fs::create_dir_all(&confirm).unwrap();
        std::fs::write(confirm.join("subject.hbs"), subject).unwrap();
        std::fs::write(confirm.join("body.txt.hbs"), text).unwrap();
        std::fs::write(confirm.join("body.html.hbs"), "<p>{{email}}</p>\n").unwrap();
        let c = composer_from(dir.path());
        (dir, c)
    }

    const ADDRESSES: [&str; 5] = [
        "leser@example.org",
        "o'brien+a=b@example.org",
        "x&y=`z@example.org",
        "leser@bücher.example",
        "ein.sehr.langer.name.der.nicht.umbrochen.werden.kann.weil@example.org",
    ];

    fn now() -> DateTime<Utc> {
        chrono::NaiveDate::from_ymd_opt(2027, 5, 2)
            .unwrap()
            .and_hms_opt(5, 0, 9)
            .unwrap()
            .and_utc()
    }

    /// The header block of `message` with its `Message-ID` and boundary replaced
    /// by fixed ones.
    fn header_block(message: &[u8]) -> String {
        let text = String::from_utf8(message.to_vec()).unwrap();
        let head = text.split("\r\n\r\n").next().unwrap().to_owned();
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .expect("a Message-ID");
        let boundary = head.split("boundary=\"").nth(1).expect("a boundary");
        let boundary = &boundary[..boundary.find('"').unwrap()];
        head.replace(id, "<ID>").replace(boundary, "BOUNDARY")
    }

    /// What a reader sees of a message: subject, sender, recipient, the two
    /// parts' decoded text and the header lines that matter to a mail client.
    fn seen(message: &[u8]) -> Vec<String> {
        use mail_parser::MimeHeaders as _;
        let m = mail_parser::MessageParser::default()
            .parse(message)
            .expect("parses");
        let kinds: Vec<String> = m
            .parts
            .iter()
            .map(|p| format!("{:?}", p.content_type().map(|c| (c.ctype(), c.subtype()))))
            .collect();
        vec![
            format!("{:?}", m.subject()),
            format!("{:?}", m.from()),
            format!("{:?}", m.to()),
            format!("{:?}", m.header_raw("Auto-Submitted")),
            format!("{kinds:?}"),
            m.body_text(0).expect("a text part").into_owned(),
            m.body_html(0).expect("an HTML part").into_owned(),
        ]
    }

    /// A confirmation from the cut has lettre's header lines, byte for byte but
    /// for its own `Message-ID` and boundary, and shows its reader what the
    /// rendered one shows, for plain, unusual, international and long addresses
    /// in both languages.
    #[test]
    fn a_confirmation_from_the_cut_is_the_rendered_one() {
        let c = composer();
        let token = Token::generate();
        for locale in Locale::ALL {
            for address in ADDRESSES {
                let to = EmailAddress::parse(address).unwrap();
                let cut = c
                    .cut_confirmation(&to, locale, &token, 42, now())
                    .expect("the built-in templates are cut")
                    .unwrap();
                let rendered = c
                    .rendered_confirmation(&to, locale, &token, 42, now())
                    .unwrap();
                assert_eq!(header_block(&cut.message), header_block(&rendered.message));
                assert_eq!(seen(&cut.message), seen(&rendered.message), "{address}");
                assert_eq!(
                    (cut.kind, &cut.recipient, &cut.envelope_from),
                    (rendered.kind, &rendered.recipient, &rendered.envelope_from)
                );
                let text = seen(&cut.message)[5].clone();
                assert!(text.contains(&c.links.confirm(&token)), "{text}");
                assert!(text.contains(address), "{text}");
            }
        }
        // Each mail its own boundary and id.
        let to = EmailAddress::parse(ADDRESSES[0]).unwrap();
        let mail = || c.confirmation(&to, Locale::De, &token, 42, now()).unwrap();
        // The text after `marker` up to the next quote or line end.
        let after = |m: &NewMail, marker: &str| {
            let text = String::from_utf8(m.message.clone()).unwrap();
            let at = text.find(marker).unwrap() + marker.len();
            text[at..].split(['"', '\r']).next().unwrap().to_owned()
        };
        let (a, b) = (mail(), mail());
        assert_ne!(after(&a, "boundary=\""), after(&b, "boundary=\""));
        assert_ne!(after(&a, "Message-ID: "), after(&b, "Message-ID: "));
    }

    /// What the reader typed stays text: an `=`, a boundary-like address, and a
    /// dot that a soft line break puts at the start of a line (written `=2E`,
    /// so the message needs no dot-stuffing on its way to the relay).
    #[test]
    fn the_cut_encodes_what_the_reader_typed() {
        let (_dir, c) =
            with_english_confirm("Please confirm", "{{email}}{{email}}\n{{confirm_url}}\n");
        let token = Token::generate();
        // Its dot is the line's 76th character: the soft break comes before it.
        let dotted = format!("{}@{}.org", "l".repeat(40), "d".repeat(34));
        let addresses = [
            "x=3D@example.org".to_owned(),
            "--boundary--@example.org".to_owned(),
            dotted,
        ];
        let mut dot_at_line_start = false;
        for address in &addresses {
            let to = EmailAddress::parse(address).unwrap();
            let mail = c
                .cut_confirmation(&to, Locale::En, &token, 7, now())
                .expect("cut")
                .unwrap();
            let (seen, address) = (seen(&mail.message), to.as_str());
            assert_eq!(
                seen[5],
                format!("{address}{address}\r\n{}\r\n", c.links.confirm(&token))
            );
            let rendered = c
                .rendered_confirmation(&to, Locale::En, &token, 7, now())
                .unwrap();
            assert_eq!(seen, super::tests::seen(&rendered.message));
            assert!(seen[6].starts_with("<p>") && seen[6].ends_with(".org</p>\r\n"));
            let raw = String::from_utf8(mail.message.clone()).unwrap();
            assert!(!raw.contains("\r\n."), "{raw}");
            dot_at_line_start |= raw.contains("=\r\n=2E");
        }
        assert!(dot_at_line_start, "a soft break fell before a dot");
    }

    /// An operator's template that does more with the address or the link than
    /// show them is rendered for every confirmation: a cut would show every reader
    /// the stand-in's branch or length.
    #[test]
    fn templates_that_look_at_a_value_are_rendered_for_each_confirmation() {
        let token = Token::generate();
        let to = EmailAddress::parse("anna@example.org").unwrap();
        let looking = [
            (
                "Please confirm",
                "{{#if (eq email \"anna@example.org\")}}Hello Anna{{else}}Hello{{/if}} {{confirm_url}}\n",
                "Hello Anna ",
            ),
            (
                "Please confirm",
                "{{#if (gt (len email) 10)}}Long{{else}}Short{{/if}} {{confirm_url}}\n",
                "Long ",
            ),
            (
                "Please confirm",
                "{{lookup this \"email\"}} {{confirm_url}}\n",
                "anna@example.org ",
            ),
            (
                "Please confirm",
                "{{#with this}}{{email}}{{/with}} {{confirm_url}}\n",
                "anna@example.org ",
            ),
            (
                "Please confirm",
                "{{#if confirm_url}}Link: {{/if}}{{confirm_url}}\n",
                "Link: ",
            ),
            ("Confirm {{email}}", "{{confirm_url}}\n", "https://"),
            (
                "Please confirm",
                "{{(eq email \"anna@example.org\")}} {{confirm_url}}\n",
                "true ",
            ),
            (
                "Please confirm",
                "{{#if false}}{{else if (eq email \"anna@example.org\")}}Anna{{/if}} {{confirm_url}}\n",
                "Anna ",
            ),
        ];
        for (subject, text, shown) in looking {
            let (_dir, c) = with_english_confirm(subject, text);
            assert!(
                c.cut_confirmation(&to, Locale::En, &token, 7, now())
                    .is_none(),
                "cut: {text}"
            );
            let mail = c.confirmation(&to, Locale::En, &token, 7, now()).unwrap();
            let seen = seen(&mail.message);
            assert!(seen[5].starts_with(shown), "{text}: {}", seen[5]);
            // The other language's built-in templates are still cut.
            assert!(
                c.cut_confirmation(&to, Locale::De, &token, 7, now())
                    .is_some()
            );
        }
        let (_dir, c) = with_english_confirm("Confirm", "{{confirm_url}}\n");
        let mail = c.confirmation(&to, Locale::En, &token, 7, now()).unwrap();
        assert_eq!(seen(&mail.message)[0], "Some(\"Confirm\")");
        let (_dir, c) = with_english_confirm("Confirm {{email}}", "{{confirm_url}}\n");
        let mail = c.confirmation(&to, Locale::En, &token, 7, now()).unwrap();
        assert_eq!(seen(&mail.message)[0], "Some(\"Confirm anna@example.org\")");
        // Shown as they are, in blocks that look at other values: cut.
        let (_dir, c) = with_english_confirm(
            "Confirm",
            "{{#if (eq lifetime_days 7)}}{{email}}{{/if}} {{{confirm_url}}} {{#with site}}{{@root.email}}{{/with}}\n",
        );
        assert!(
            c.cut_confirmation(&to, Locale::En, &token, 7, now())
                .is_some()
        );
        let mail = c.confirmation(&to, Locale::En, &token, 7, now()).unwrap();
        let confirm_url = c.links.confirm(&token);
        assert_eq!(
            seen(&mail.message)[5],
            format!("anna@example.org {confirm_url} anna@example.org\r\n")
        );
    }
}
