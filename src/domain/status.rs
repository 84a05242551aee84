//! Closed sets of stored names: a reader's [`SubscriberStatus`], the
//! [`MailEventKind`] of a bounce, complaint or reply, and where a mailed-in
//! [`SubmissionStatus`] stands. Each is stored as its name
//! (`confirmed`, `hard_bounce`, …) and parsed back; a name outside the set is an
//! error, never a default.

use std::fmt;
use std::str::FromStr;

/// Why a stored or requested name is not one of a set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of: {0}")]
pub struct UnknownName(&'static str);

/// An enum of unit variants, each stored as a fixed name: `as_str`, `ALL`,
/// `parse`, `FromStr`, `Display` and `Serialize` (as the name) from one table.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// # Errors
            /// [`UnknownName`] for any text that is not exactly one of the names.
            pub fn parse(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownName(concat!($($text, " "),+).trim_ascii_end())),
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// Where a reader stands. Stored in `subscribers.status`.
    pub enum SubscriberStatus {
        /// Signed up, not confirmed yet (or signed up again after leaving).
        Pending = "pending",
        /// Confirmed: gets digests.
        Confirmed = "confirmed",
        /// Left: gets nothing until a new double opt-in.
        Unsubscribed = "unsubscribed",
        /// The address bounced for good or complained: gets nothing.
        Bounced = "bounced",
    }
}

impl SubscriberStatus {
    /// Whether the reader has left, by their own choice or by bouncing: their
    /// links show "unsubscribed" instead of a form.
    pub fn has_left(self) -> bool {
        matches!(self, Self::Unsubscribed | Self::Bounced)
    }
}

named_enum! {
    /// What an inbound message or a refused delivery said about a reader. Stored in
    /// `mail_events.kind`.
    pub enum MailEventKind {
        /// A permanent failure: the address does not exist.
        HardBounce = "hard_bounce",
        /// A temporary failure (mailbox full, delay warning).
        SoftBounce = "soft_bounce",
        /// Refused for a policy reason (5.7.x): says nothing about the address.
        PolicyBounce = "policy_bounce",
        /// The reader marked a digest as spam.
        Complaint = "complaint",
        /// The reader mailed the `mailto:` unsubscribe address.
        UnsubscribeReply = "unsubscribe_reply",
        /// A report without signed evidence: kept, nobody changed.
        UnverifiedReport = "unverified_report",
    }
}

named_enum! {
    /// Where a mailed-in press release stands. Stored in `submissions.status`.
    pub enum SubmissionStatus {
        /// Waiting for an operator.
        Held = "held",
        /// Published as an item.
        Approved = "approved",
        /// Dropped by an operator.
        Rejected = "rejected",
        /// Refused on arrival (several or no `From` addresses).
        Refused = "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for status in SubscriberStatus::ALL {
            assert_eq!(SubscriberStatus::parse(status.as_str()), Ok(*status));
        }
        for kind in MailEventKind::ALL {
            assert_eq!(kind.as_str().parse::<MailEventKind>(), Ok(*kind));
        }
        let e = SubscriberStatus::parse("Confirmed").unwrap_err();
        assert_eq!(
            e.to_string(),
            "must be one of: pending confirmed unsubscribed bounced"
        );
        assert!(MailEventKind::parse("bounce").is_err());
        for status in SubmissionStatus::ALL {
            assert_eq!(SubmissionStatus::parse(status.as_str()), Ok(*status));
        }
        assert!(SubmissionStatus::parse("all").is_err());
        assert_eq!(
            serde_json::to_string(&SubscriberStatus::Bounced).unwrap(),
            r#""bounced""#
        );
    }
}
