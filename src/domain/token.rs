//! Secret tokens in links: random, shown once, stored only as a hash.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A secret token as it appears in a link: 256 random bits, URL-safe hex.
///
/// The token itself is only ever put into a mail; the database keeps its
/// [`TokenHash`], so a leaked database cannot confirm or unsubscribe anyone.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// The SHA-256 of a [`Token`]: what the store keeps and looks up.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl Token {
    /// A fresh token from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(hex(&bytes))
    }

    /// Takes a token from a URL path. Anything that is not 64 lower-case hex
    /// digits cannot be one of ours and is refused without touching the store.
    pub fn from_path(s: &str) -> Option<Self> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    /// The hash to store or look up.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The token for a link.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tokens are secrets: debug output never shows them.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &hex(&self.0)[..8])
    }
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_parse_back() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 64);
        assert_eq!(Token::from_path(a.as_str()), Some(a.clone()));
        assert_eq!(a.hash(), Token::from_path(a.as_str()).unwrap().hash());
    }

    #[test]
    fn foreign_strings_are_not_tokens() {
        assert!(Token::from_path("abc").is_none());
        assert!(Token::from_path(&"G".repeat(64)).is_none());
        assert!(Token::from_path(&"A".repeat(64)).is_none());
    }
}
