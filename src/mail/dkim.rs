//! DKIM signing (RFC 6376) with mail-auth's ring-based signers: rsa-sha256, and
//! optionally a second ed25519-sha256 signature, relaxed/relaxed, over the headers
//! big mail providers look at. RSA costs about 0.65 ms a signature, so workers sign
//! on the blocking pool, never on the async threads.

use std::path::Path;

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use crate::config::DkimSettings;

/// The headers every signature covers (those a message lacks are skipped by the
/// signer, and count as absent for the verifier).
pub const SIGNED_HEADERS: [&str; 8] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
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
            format!("v=DKIM1; k=rsa; p={}", b64.encode(rsa.public_key())),
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

    /// The DNS TXT records to publish: `(name, value)`.
    pub fn dns_records(&self) -> &[(String, String)] {
        &self.records
    }
}
