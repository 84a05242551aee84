//! Whether a mailed-in press release may be published without an operator.
//!
//! The `From` header is anybody's to write, so it counts only when the message
//! has exactly one `From` header with exactly one address (mail-parser, like most
//! readers, would otherwise pick one of several), that address is an allowed
//! sender, and its domain is authenticated:
//!
//! - an `Authentication-Results` header (RFC 8601) whose authserv-id is our own
//!   MTA's (`submissions.authserv_id`) reports `dmarc=pass`, or `dkim=pass` with
//!   `header.d` aligned to the From domain. The local MTA removes headers with its
//!   own authserv-id from incoming mail, so only it can have written them;
//!   headers of other ids are ignored;
//! - or postbote's own DKIM verification (mail-auth, DNS through the system
//!   resolver) passes for an aligned `d=`.
//!
//! Anything else from an allowed sender is held for an operator.

/// How the `From` header looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// Exactly one header with exactly one address (lower-cased).
    One(String),
    /// No `From` header, or one without an address.
    None,
    /// Several `From` headers, or several addresses in one.
    Several,
}

/// The domain of an address, lower-cased.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Whether a signing domain `d` is aligned (relaxed, RFC 7489) with the From
/// domain: the same domain, or one a subdomain of the other. Without the public
/// suffix list, a single-label `d` is never aligned.
pub fn aligned(d: &str, from_domain: &str) -> bool {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let f = from_domain.trim_end_matches('.').to_ascii_lowercase();
    if !d.contains('.') || f.is_empty() {
        return false;
    }
    d == f || f.ends_with(&format!(".{d}")) || d.ends_with(&format!(".{f}"))
}

/// Whether any of the `Authentication-Results` header values written by
/// `authserv_id` says the From domain passed DMARC, or DKIM with an aligned `d=`.
pub fn authenticated_by_results(values: &[&str], authserv_id: &str, from_domain: &str) -> bool {
    values.iter().any(|value| {
        let value = strip_comments(value);
        let mut statements = value.split(';');
        let id = statements
            .next()
            .and_then(|first| first.split_whitespace().next())
            .unwrap_or_default();
        if !id.eq_ignore_ascii_case(authserv_id.trim()) {
            return false;
        }
        statements.any(|statement| {
            let mut words = statement.split_whitespace();
            let Some((method, result)) = words.next().and_then(|w| w.split_once('=')) else {
                return false;
            };
            if !result.eq_ignore_ascii_case("pass") {
                return false;
            }
            let property = |name: &str| {
                statement
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim_matches('"').to_ascii_lowercase())
            };
            match method.to_ascii_lowercase().as_str() {
                // OpenDMARC names the From domain it evaluated; it must be ours.
                "dmarc" => property("header.from").is_none_or(|d| d == from_domain),
                "dkim" => property("header.d")
                    .or_else(|| property("header.i").map(|i| domain_of(&i).to_owned()))
                    .is_some_and(|d| aligned(&d, from_domain)),
                _ => false,
            }
        })
    })
}

/// RFC 8601 values may carry `(comments)` anywhere.
fn strip_comments(value: &str) -> String {
    let mut depth = 0usize;
    value
        .chars()
        .filter(|c| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' => {
                depth = depth.saturating_sub(1);
                false
            }
            _ => depth == 0,
        })
        .collect()
}

/// Checks the message's DKIM signatures ourselves, with DNS through the system
/// resolver: whether one passes for a `d=` aligned with the From domain.
pub async fn dkim_verified(raw: &[u8], from_domain: &str) -> bool {
    let Some(message) = mail_auth::AuthenticatedMessage::parse(raw) else {
        return false;
    };
    let authenticator = match mail_auth::MessageAuthenticator::new_system_conf() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver for DKIM verification");
            return false;
        }
    };
    let checked = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        authenticator.verify_dkim(&message),
    )
    .await;
    checked.is_ok_and(|outputs| {
        outputs.iter().any(|o| {
            *o.result() == mail_auth::DkimResult::Pass
                && o.signature().is_some_and(|s| aligned(&s.d, from_domain))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_authserv_id_counts_and_dkim_must_align() {
        let ours = "mx.news.example.org";
        let pass = "mx.news.example.org; spf=pass smtp.mailfrom=agentur.example; dkim=pass header.d=agentur.example header.s=s1; dmarc=pass (p=none) header.from=agentur.example";
        assert!(authenticated_by_results(&[pass], ours, "agentur.example"));
        let foreign = pass.replacen("mx.news.example.org", "mx.attacker.example", 1);
        assert!(!authenticated_by_results(
            &[&foreign],
            ours,
            "agentur.example"
        ));
        let unaligned = "mx.news.example.org 1; dkim=pass header.d=attacker.example";
        assert!(!authenticated_by_results(
            &[unaligned],
            ours,
            "agentur.example"
        ));
        let sub = "mx.news.example.org; dkim=pass (2048-bit key) header.d=mail.agentur.example";
        assert!(authenticated_by_results(&[sub], ours, "agentur.example"));
        let failed = "mx.news.example.org; dmarc=fail header.from=agentur.example";
        assert!(!authenticated_by_results(
            &[failed],
            ours,
            "agentur.example"
        ));
        let other_from = "mx.news.example.org; dmarc=pass header.from=attacker.example";
        assert!(!authenticated_by_results(
            &[other_from],
            ours,
            "agentur.example"
        ));
        let comment_id = "(written by us) mx.news.example.org; dmarc=pass";
        assert!(authenticated_by_results(
            &[comment_id],
            ours,
            "agentur.example"
        ));
    }

    #[test]
    fn alignment_is_relaxed_but_never_a_bare_suffix() {
        assert!(aligned("agentur.example", "agentur.example"));
        assert!(aligned("agentur.example", "presse.agentur.example"));
        assert!(!aligned("example", "agentur.example"));
        assert!(!aligned("gentur.example", "agentur.example"));
        assert!(!aligned("", "agentur.example"));
    }
}
