//! `[submissions]`: items mailed in, and who may mail them.

use serde::Deserialize;

use super::ConfigError;

/// `[submissions]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileSubmissions {
    address: Option<String>,
    allowed_senders: Vec<String>,
    authserv_id: Option<String>,
    verify_dkim: Option<bool>,
}

/// Items mailed in.
#[derive(Debug, Clone, Default)]
pub struct SubmissionSettings {
    /// Address template with `{topic}`, e.g. `presse+{topic}@example.org`.
    pub address: Option<String>,
    /// Senders allowed to submit: full addresses or `@domain`.
    pub allowed_senders: Vec<String>,
    /// The authserv-id of our own MTA's `Authentication-Results` headers: only
    /// those count as proof that the sender's domain passed DMARC or DKIM.
    pub authserv_id: Option<String>,
    /// Whether postbote verifies DKIM signatures itself (DNS through the system
    /// resolver) when the MTA's results do not authenticate the sender.
    pub verify_dkim: bool,
}

impl SubmissionSettings {
    /// Whether `from` (lower-cased) is an allowed sender: listed, or of a listed
    /// `@domain`.
    pub fn allows(&self, from: &str) -> bool {
        !from.is_empty()
            && self.allowed_senders.iter().any(|a| {
                if a.starts_with('@') {
                    from.ends_with(a.as_str())
                } else {
                    a == from
                }
            })
    }
}

/// Checks `[submissions]`: an address template with `{topic}`, an authserv-id
/// that is one token; senders are lower-cased.
pub(super) fn resolve(file: FileSubmissions) -> Result<SubmissionSettings, ConfigError> {
    let address = match file.address {
        Some(a)
            if !a.contains("{topic}")
                || a.replace("{topic}", "x")
                    .parse::<lettre::Address>()
                    .is_err() =>
        {
            return Err(ConfigError::new(
                "submissions.address",
                "must be an address with {topic}, e.g. presse+{topic}@example.org",
            ));
        }
        other => other,
    };
    let authserv_id = match file.authserv_id {
        Some(id) if id.trim().is_empty() || id.contains([';', ' ', '\t']) => {
            return Err(ConfigError::new(
                "submissions.authserv_id",
                "must be the authserv-id your MTA writes into Authentication-Results, e.g. mx.example.org",
            ));
        }
        other => other.map(|id| id.trim().to_owned()),
    };
    Ok(SubmissionSettings {
        address,
        allowed_senders: file
            .allowed_senders
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect(),
        authserv_id,
        verify_dkim: file.verify_dkim.unwrap_or(true),
    })
}
