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

    #[test]
    fn debug_output_hides_the_local_part() {
        let e = EmailAddress::parse("secret@example.org").unwrap();
        assert!(!format!("{e:?}").contains("secret"));
    }
}
