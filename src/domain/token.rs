//! Secret tokens in links: random, shown once, stored only as a hash.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A secret token as it appears in a link: 256 random bits, URL-safe hex.
///
/// The token itself is only ever put into a mail; the database keeps its
/// [`TokenHash`], so a copy of the database cannot confirm anyone's sign-up.
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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The token in every unsubscribe and preferences link: `<subscriber id>.<MAC>`,
/// the MAC being HMAC-SHA256 over the id under the installation's link key,
/// truncated to 128 bits. Nothing per token is stored, so every digest can carry
/// links without a write per mail; without the key nobody can forge one for another
/// reader's id.
#[derive(Clone, PartialEq, Eq)]
pub struct ManageToken {
    /// The reader it belongs to.
    pub subscriber_id: i64,
    /// The token as it appears in a link.
    text: String,
}

/// The secret behind [`ManageToken`]s (32 random bytes, kept in the database),
/// held as an HMAC-SHA256 already keyed with it: every digest carries a token, and
/// keying is half of what making one costs.
#[derive(Clone)]
pub struct LinkKey(hmac::Hmac<Sha256>);

impl LinkKey {
    /// A key from its stored bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        use hmac::Mac;
        Self(hmac::Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC takes any key length"))
    }

    fn mac(&self, subscriber_id: i64) -> [u8; 16] {
        use hmac::Mac;
        let mut mac = self.0.clone();
        mac.update(b"postbote-manage:");
        mac.update(&subscriber_id.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// The token for a reader's links.
    pub fn manage_token(&self, subscriber_id: i64) -> ManageToken {
        ManageToken {
            subscriber_id,
            text: format!("{subscriber_id}.{}", hex(&self.mac(subscriber_id))),
        }
    }

    /// A MAC over `data` for `purpose`, as 32 hex digits: for short-lived form
    /// tokens that need no storage.
    pub fn sign(&self, purpose: &str, data: &str) -> String {
        use hmac::Mac;
        let mut mac = self.0.clone();
        mac.update(purpose.as_bytes());
        mac.update(b":");
        mac.update(data.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// Whether `mac` is [`LinkKey::sign`] of `data` for `purpose` (in constant time).
    pub fn check(&self, purpose: &str, data: &str, mac: &str) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.sign(purpose, data);
        expected.len() == mac.len() && bool::from(expected.as_bytes().ct_eq(mac.as_bytes()))
    }

    /// Checks a token from a URL path (in constant time).
    pub fn verify(&self, s: &str) -> Option<ManageToken> {
        use subtle::ConstantTimeEq;
        let (id, mac) = s.split_once('.')?;
        let id: i64 = id.parse().ok().filter(|id| *id > 0)?;
        let expected = self.manage_token(id);
        let given = expected.text.len() == s.len()
            && bool::from(expected.text.as_bytes().ct_eq(s.as_bytes()));
        (given && mac.len() == 32).then_some(expected)
    }
}

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey(…)")
    }
}

impl ManageToken {
    /// The token for a link.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for ManageToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManageToken({}.…)", self.subscriber_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Links already sent must keep working: the token of a reader under a key
    /// is what HMAC-SHA256 gives (Python's `hmac` module computed these).
    #[test]
    fn tokens_are_the_hmac_of_their_data() {
        let key = LinkKey::new(vec![7; 32]);
        assert_eq!(
            key.manage_token(42).as_str(),
            "42.9b7659d1799bc056e01b8fcc420b35bc"
        );
        assert_eq!(key.sign("form", "abc"), "63ac898be29e12fb8baf10cb7f3b702b");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn manage_tokens_verify_only_under_their_key() {
        let key = LinkKey::new(vec![7; 32]);
        let t = key.manage_token(42);
        assert!(t.as_str().starts_with("42."));
        assert_eq!(key.verify(t.as_str()), Some(t.clone()));
        let forged = t.as_str().replacen("42.", "43.", 1);
        assert_eq!(key.verify(&forged), None, "another id with the same MAC");
        assert_eq!(
            LinkKey::new(vec![8; 32]).verify(t.as_str()),
            None,
            "another key"
        );
        for junk in [
            "",
            "42",
            "42.",
            "x.y",
            "-1.00",
            &format!("42.{}", "0".repeat(32)),
        ] {
            assert_eq!(key.verify(junk), None, "{junk}");
        }
    }

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
