//! `[dkim]`: which keys sign outgoing mail, if any.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// `[dkim]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileDkim {
    domain: Option<String>,
    selector: Option<String>,
    rsa_key: Option<PathBuf>,
    ed25519_selector: Option<String>,
    ed25519_key: Option<PathBuf>,
}

/// DKIM signing, when configured.
#[derive(Debug, Clone)]
pub struct DkimSettings {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The RSA key's selector (`s=`).
    pub selector: String,
    /// PEM file of the RSA private key (PKCS#1 or PKCS#8).
    pub rsa_key: PathBuf,
    /// Optional second, ed25519 signature: selector and PKCS#8 PEM/DER key file.
    pub ed25519: Option<(String, PathBuf)>,
}

/// Checks `[dkim]`: nothing (unsigned mail), or domain, selector and RSA key
/// together, with an optional ed25519 selector and key together.
pub(super) fn resolve(file: FileDkim) -> Result<Option<DkimSettings>, ConfigError> {
    match (file.domain, file.selector, file.rsa_key) {
        (None, None, None) if file.ed25519_key.is_none() => Ok(None),
        (Some(domain), Some(selector), Some(rsa_key)) => Ok(Some(DkimSettings {
            domain,
            selector,
            rsa_key,
            ed25519: match (file.ed25519_selector, file.ed25519_key) {
                (Some(s), Some(k)) => Some((s, k)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::new(
                        "dkim.ed25519_selector",
                        "ed25519_selector and ed25519_key go together",
                    ));
                }
            },
        })),
        _ => Err(ConfigError::new(
            "dkim",
            "domain, selector and rsa_key are all needed to sign",
        )),
    }
}
