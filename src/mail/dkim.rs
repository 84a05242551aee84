//! DKIM signing (RFC 6376) with mail-auth's ring-based signers: rsa-sha256, and
//! optionally a second ed25519-sha256 signature, relaxed/relaxed, over the headers
//! big mail providers look at. RSA costs about 0.65 ms a signature, so workers sign
//! on the blocking pool, never on the async threads.
//!
//! The headers a reader sees are over-signed (RFC 6376 §8.15): named in `h=` once
//! more than the mail has them, so the signature also covers their absence, and a
//! second `From`, `Subject` or `List-Unsubscribe` added on the way breaks it.

use std::path::Path;

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use crate::config::DkimSettings;

/// The headers every signature covers, in `h=` order. mail-auth's signer lists
/// each header the message has once per occurrence, then every entry of this list
/// it did not match again: a name given twice here is therefore over-signed (one
/// `h=` entry more than the message has), and a name the message lacks is signed as
/// absent.
pub const SIGNED_HEADERS: [&str; 15] = [
    "From",
    "From",
    "To",
    "To",
    "Subject",
    "Subject",
    "Date",
    "Date",
    "List-Unsubscribe",
    "List-Unsubscribe",
    "MIME-Version",
    "Content-Type",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe-Post",
];

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key does not parse or is not usable.
    #[error("{path}: not a usable {kind} private key: {message}")]
    Key {
        /// The file.
        path: String,
        /// `RSA` or `ed25519`.
        kind: &'static str,
        /// The library's message.
        message: String,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// Signs messages for one domain.
pub struct Signer {
    rsa: DkimSigner<RsaKey<Sha256>, Done>,
    ed25519: Option<DkimSigner<Ed25519Key, Done>>,
    records: Vec<(String, String)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DkimError> {
    std::fs::read(path).map_err(|source| DkimError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The DER inside a PEM file (the first block), or the bytes as they are.
fn der(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    if !text.contains("-----BEGIN") {
        return bytes.to_vec();
    }
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap_or_default()
}

impl Signer {
    /// Loads the configured keys.
    ///
    /// # Errors
    /// A [`DkimError`] naming the file and the problem.
    pub fn load(settings: &DkimSettings) -> Result<Self, DkimError> {
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};
        let b64 = base64::engine::general_purpose::STANDARD;
        let path = settings.rsa_key.display().to_string();
        let bytes = read(&settings.rsa_key)?;
        let key_der = der(&bytes);
        let is_pkcs1 = String::from_utf8_lossy(&bytes).contains("BEGIN RSA PRIVATE KEY");
        let key = if is_pkcs1 {
            PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(key_der))
        } else {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der))
        };
        let rsa = RsaKey::<Sha256>::from_key_der(key).map_err(|e| DkimError::Key {
            path: path.clone(),
            kind: "RSA",
            message: e.to_string(),
        })?;
        let mut records = vec![(
            format!("{}._domainkey.{}", settings.selector, settings.domain),
            format!(
                "v=DKIM1; k=rsa; p={}",
                b64.encode(rsa_spki(&rsa.public_key()))
            ),
        )];
        let rsa = DkimSigner::from_key(rsa)
            .domain(settings.domain.clone())
            .selector(settings.selector.clone())
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let ed25519 = match &settings.ed25519 {
            Some((selector, key_path)) => {
                let path = key_path.display().to_string();
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(&der(&read(key_path)?))
                    .map_err(|e| DkimError::Key {
                        path,
                        kind: "ed25519",
                        message: e.to_string(),
                    })?;
                records.push((
                    format!("{selector}._domainkey.{}", settings.domain),
                    format!("v=DKIM1; k=ed25519; p={}", b64.encode(key.public_key())),
                ));
                Some(
                    DkimSigner::from_key(key)
                        .domain(settings.domain.clone())
                        .selector(selector.clone())
                        .headers(SIGNED_HEADERS)
                        .header_canonicalization(Canonicalization::Relaxed)
                        .body_canonicalization(Canonicalization::Relaxed),
                )
            }
            None => None,
        };
        let signer = Self {
            rsa,
            ed25519,
            records,
        };
        // A key that cannot sign is found at start, not at the first mail.
        signer.sign(b"From: a@example.org\r\nSubject: check\r\n\r\ncheck\r\n")?;
        Ok(signer)
    }

    /// The message with its `DKIM-Signature` header(s) in front.
    ///
    /// # Errors
    /// [`DkimError::Sign`] when a signer fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let mut out = Vec::with_capacity(message.len() + 1024);
        if let Some(ed) = &self.ed25519 {
            let sig = ed
                .sign(message)
                .map_err(|e| DkimError::Sign(e.to_string()))?;
            out.extend_from_slice(sig.to_header().as_bytes());
        }
        let sig = self
            .rsa
            .sign(message)
            .map_err(|e| DkimError::Sign(e.to_string()))?;
        out.extend_from_slice(sig.to_header().as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }

    /// The DNS TXT records to publish: `(name, value)`. The RSA key is given as a
    /// SubjectPublicKeyInfo (what `opendkim-genkey` and `openssl rsa -pubout`
    /// write, and every verifier reads); the ed25519 key as its 32 raw bytes
    /// (RFC 8463).
    pub fn dns_records(&self) -> &[(String, String)] {
        &self.records
    }
}

/// Wraps a PKCS#1 `RSAPublicKey` (what ring hands out) into the X.509
/// `SubjectPublicKeyInfo` that DKIM records carry in `p=` (RFC 6376 §3.6.1):
/// `SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING { RSAPublicKey } }`.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    /// `SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }`.
    const RSA_ENCRYPTION: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    // The BIT STRING's first content byte counts unused bits: none.
    let mut bit_string = vec![0x03];
    der_length(rsa_public_key.len() + 1, &mut bit_string);
    bit_string.push(0x00);
    bit_string.extend_from_slice(rsa_public_key);
    let mut spki = vec![0x30];
    der_length(RSA_ENCRYPTION.len() + bit_string.len(), &mut spki);
    spki.extend_from_slice(&RSA_ENCRYPTION);
    spki.extend_from_slice(&bit_string);
    spki
}

/// A DER length: one byte below 128, else `0x80 | n` and the n big-endian bytes.
fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let significant = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_use_the_short_form_below_128_and_the_long_form_above() {
        for (len, want) in [
            (0, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x81, 0x80]),
            (255, vec![0x81, 0xff]),
            (256, vec![0x82, 0x01, 0x00]),
            (0x01_0000, vec![0x83, 0x01, 0x00, 0x00]),
        ] {
            let mut out = Vec::new();
            der_length(len, &mut out);
            assert_eq!(out, want, "{len}");
        }
    }

    #[test]
    fn the_rsa_record_is_the_subject_public_key_info_openssl_writes() {
        // `openssl rsa -in tests/fixtures/dkim/rsa.pem -pubout`: what
        // `opendkim-genkey` publishes.
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dkim");
        let settings = DkimSettings {
            domain: "example.org".into(),
            selector: "postbote".into(),
            rsa_key: format!("{fixtures}/rsa.pem").into(),
            ed25519: None,
        };
        let signer = Signer::load(&settings).unwrap();
        let (name, value) = &signer.dns_records()[0];
        assert_eq!(name, "postbote._domainkey.example.org");
        let expected = std::fs::read_to_string(format!("{fixtures}/rsa.pub.pem")).unwrap();
        assert_eq!(
            value.strip_prefix("v=DKIM1; k=rsa; p=").unwrap(),
            base64::engine::general_purpose::STANDARD.encode(der(expected.as_bytes()))
        );
    }
}
