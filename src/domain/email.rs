//! A syntactically valid, normalised email address.

use std::fmt;

/// The longest address SMTP can carry in a path (RFC 5321 §4.5.3.1.3).
const MAX_LEN: usize = 254;
/// The longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_LEN: usize = 64;
/// The longest domain label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// An email address in the plain `local@domain` form, lower-cased.
///
/// Only the bare form a reader types into a sign-up field is accepted: no display
/// names, comments, quoted local parts or address literals. Everything that could
/// smuggle a header (CR, LF, any control character) is refused, so the value can be
/// put into a `To:` header as it is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

/// Why a string is not an [`EmailAddress`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 254 characters")]
    TooLong,
    #[error("contains a control character or line break")]
    ControlCharacter,
    #[error("must be a plain address like name@example.org, without a display name")]
    NotPlain,
    #[error("needs exactly one @")]
    NoSingleAt,
    #[error("has an invalid part before the @")]
    BadLocalPart,
    #[error("has an invalid domain")]
    BadDomain,
}

impl EmailAddress {
    /// Parses what a reader typed; surrounding whitespace is ignored.
    ///
    /// # Errors
    /// An [`EmailError`] saying what is wrong with the address.
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        if input.chars().any(char::is_control) {
            return Err(EmailError::ControlCharacter);
        }
        // Lower-cased first: lower-casing can lengthen a string or change its
        // characters, and what is checked must be what is stored.
        let lowered = input.trim().to_lowercase();
        let s = lowered.as_str();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        if s.contains(['<', '>', '"', '(', ')', ',', ';', ' ', '\\', '[', ']']) {
            return Err(EmailError::NotPlain);
        }
        let mut parts = s.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EmailError::NoSingleAt);
        };
        if !valid_local(local) {
            return Err(EmailError::BadLocalPart);
        }
        if !valid_domain(domain) {
            return Err(EmailError::BadDomain);
        }
        Ok(Self(lowered))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit('@').next().unwrap_or_default()
    }

    /// The mailbox the address delivers to, as the sign-up limits count it:
    /// `anna.muster+news@GoogleMail.com` and `annamuster@gmail.com` are one mailbox.
    ///
    /// A subaddress tag (`+tag`) is dropped, the domain is put into its ASCII
    /// (IDNA, punycode) form, and for Gmail (`gmail.com`, `googlemail.com`, which
    /// are one) dots in the local part are ignored. The stored address stays as the
    /// reader typed it; this key only decides what counts as "the same mailbox".
    pub fn mailbox_key(&self) -> String {
        mailbox_key(&self.0)
    }
}

/// Domains whose mailboxes ignore dots in the local part, and the name they share.
const GMAIL: &str = "gmail.com";
const GMAIL_ALIASES: [&str; 2] = [GMAIL, "googlemail.com"];

/// [`EmailAddress::mailbox_key`] for any text: total (never fails) and idempotent,
/// so it can be applied to stored or already normalised values too.
fn mailbox_key(address: &str) -> String {
    let lowered = address.to_lowercase();
    let Some((local, domain)) = lowered.rsplit_once('@') else {
        return lowered;
    };
    let mut domain = ascii_domain(domain);
    // `+tag` is a subaddress of the mailbox before it; a local part that starts
    // with `+` has no mailbox before it and stays whole.
    let mut local = match local.split_once('+') {
        Some((mailbox, _)) if !mailbox.is_empty() => mailbox.to_owned(),
        _ => local.to_owned(),
    };
    if GMAIL_ALIASES.contains(&domain.as_str()) {
        domain = GMAIL.to_owned();
        let undotted = local.replace('.', "");
        if !undotted.is_empty() {
            local = undotted;
        }
    }
    format!("{local}@{domain}")
}

/// The address with its domain in ASCII (IDNA) form, as SMTP needs it from a relay
/// without SMTPUTF8: `anna@müller.example` → `anna@xn--mller-kva.example`. The
/// local part is left as it is.
pub fn ascii_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if !domain.is_ascii() => format!("{local}@{}", ascii_domain(domain)),
        _ => address.to_owned(),
    }
}

/// The ASCII (IDNA) form of a domain; the domain itself (lower-cased) when it is
/// not one IDNA can convert. Only what [`EmailAddress::parse`] accepts in a domain
/// is handed to the converter, which would otherwise also percent-decode and read
/// numbers as IPv4 addresses.
pub fn ascii_domain(domain: &str) -> String {
    let convertible = !domain.is_empty()
        && domain
            .chars()
            .all(|c| c == '.' || c == '-' || c.is_alphanumeric());
    if convertible && let Ok(url::Host::Domain(ascii)) = url::Host::parse(domain) {
        return ascii;
    }
    domain.to_lowercase()
}

fn valid_local(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";
    !local.is_empty()
        && local.len() <= MAX_LOCAL_LEN
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || SPECIALS.contains(c))
}

fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Serialised as the address itself, for the admin API and the export (which
/// exist to show it).
impl serde::Serialize for EmailAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Addresses are personal data: debug output never shows them in full.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress(…@{})", self.domain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_are_accepted_and_lower_cased() {
        let e = EmailAddress::parse("  Anna.Muster+news@Example.ORG ").unwrap();
        assert_eq!(e.as_str(), "anna.muster+news@example.org");
        assert!(EmailAddress::parse("jürgen@müller.de").is_ok());
    }

    #[test]
    fn header_injection_is_refused() {
        assert_eq!(
            EmailAddress::parse("a@example.org\r\nBcc: victim@example.org"),
            Err(EmailError::ControlCharacter)
        );
        assert_eq!(
            EmailAddress::parse("a@example.org\n"),
            Err(EmailError::ControlCharacter)
        );
    }

    #[test]
    fn display_name_forms_are_refused() {
        for s in [
            "Anna <anna@example.org>",
            "<anna@example.org>",
            "\"a b\"@example.org",
        ] {
            assert_eq!(EmailAddress::parse(s), Err(EmailError::NotPlain), "{s}");
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        let long = format!("{}@example.org", "a".repeat(250));
        assert_eq!(EmailAddress::parse(&long), Err(EmailError::TooLong));
        assert_eq!(EmailAddress::parse(""), Err(EmailError::Empty));
        assert_eq!(EmailAddress::parse("a@b@c.de"), Err(EmailError::NoSingleAt));
        assert_eq!(EmailAddress::parse("nobody"), Err(EmailError::NoSingleAt));
        assert_eq!(
            EmailAddress::parse("a..b@example.org"),
            Err(EmailError::BadLocalPart)
        );
        assert_eq!(
            EmailAddress::parse("@example.org"),
            Err(EmailError::BadLocalPart)
        );
        assert_eq!(
            EmailAddress::parse("a@example..org"),
            Err(EmailError::BadDomain)
        );
        assert_eq!(
            EmailAddress::parse("a@.example.org"),
            Err(EmailError::BadDomain)
        );
        assert_eq!(
            EmailAddress::parse("a@localhost"),
            Err(EmailError::BadDomain)
        );
        assert_eq!(EmailAddress::parse("a@-x.org"), Err(EmailError::BadDomain));
        assert_eq!(EmailAddress::parse("a@1.2.3.4"), Err(EmailError::BadDomain));
        // Valid before lower-casing, too long after it (Ⱥ is 2 bytes, ⱥ 3).
        let grows = format!("{}@example.org", "Ⱥ".repeat(32));
        assert_eq!(EmailAddress::parse(&grows), Err(EmailError::BadLocalPart));
    }

    fn key(s: &str) -> String {
        EmailAddress::parse(s).unwrap().mailbox_key()
    }

    #[test]
    fn subaddress_tags_do_not_make_a_new_mailbox() {
        assert_eq!(key("victim@example.org"), "victim@example.org");
        for tagged in [
            "victim+1@example.org",
            "Victim+News@Example.ORG",
            "victim+a+b@example.org",
            "victim+@example.org",
        ] {
            assert_eq!(key(tagged), "victim@example.org", "{tagged}");
        }
        // Dots count outside Gmail: they are different mailboxes there.
        assert_eq!(key("vic.tim@example.org"), "vic.tim@example.org");
        // Nothing before the tag: the whole local part is the mailbox.
        assert_eq!(key("+x@example.org"), "+x@example.org");
    }

    #[test]
    fn gmail_ignores_dots_and_googlemail_is_gmail() {
        for variant in [
            "victim@gmail.com",
            "v.i.c.t.i.m@gmail.com",
            "Vic.Tim+list@GMail.com",
            "victim@googlemail.com",
            "vic.tim+x@googlemail.com",
        ] {
            assert_eq!(key(variant), "victim@gmail.com", "{variant}");
        }
    }

    #[test]
    fn the_domain_is_counted_in_its_ascii_form() {
        assert_eq!(key("jürgen@müller.de"), "jürgen@xn--mller-kva.de");
        assert_eq!(key("jürgen@XN--MLLER-KVA.de"), "jürgen@xn--mller-kva.de");
        // The address itself is kept as typed.
        assert_eq!(
            EmailAddress::parse("jürgen@müller.de").unwrap().as_str(),
            "jürgen@müller.de"
        );
    }

    #[test]
    fn text_that_is_no_address_still_gets_a_key() {
        assert_eq!(mailbox_key("No Address"), "no address");
        assert_eq!(mailbox_key("a+b@"), "a@");
        assert_eq!(mailbox_key("a@b@1.2.3.4"), "a@b@1.2.3.4");
        assert_eq!(mailbox_key("x@a%41.org"), "x@a%41.org");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Local parts and domains from the characters that matter: tags, dots,
        /// case, non-ASCII letters, Gmail's names.
        fn address() -> impl Strategy<Value = String> {
            let local = "[a-zA-Z0-9.+_äÄß-]{1,20}";
            let domain = prop_oneof![
                Just("gmail.com".to_owned()),
                Just("GoogleMail.com".to_owned()),
                Just("müller.de".to_owned()),
                Just("xn--mller-kva.de".to_owned()),
                "[a-zA-Z0-9äöüßİ-]{1,12}\\.[a-z]{2,5}",
            ];
            (local, domain).prop_map(|(l, d)| format!("{l}@{d}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn the_key_of_any_text_is_total_and_idempotent(s in any::<String>()) {
                let once = mailbox_key(&s);
                prop_assert_eq!(mailbox_key(&once), once);
            }

            #[test]
            fn the_key_of_an_address_is_idempotent_and_ignores_tags(s in address(), tag in "[a-z0-9]{0,8}") {
                let once = mailbox_key(&s);
                prop_assert_eq!(mailbox_key(&once), once.clone());
                if let Ok(e) = EmailAddress::parse(&s) {
                    prop_assert_eq!(e.mailbox_key(), once.clone());
                    let (local, domain) = s.rsplit_once('@').unwrap();
                    if !local.starts_with('+') {
                        let tagged = format!("{local}+{tag}@{domain}");
                        if let Ok(t) = EmailAddress::parse(&tagged) {
                            prop_assert_eq!(t.mailbox_key(), once);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn debug_output_hides_the_local_part() {
        let e = EmailAddress::parse("secret@example.org").unwrap();
        assert!(!format!("{e:?}").contains("secret"));
    }
}
