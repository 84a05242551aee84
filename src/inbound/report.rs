//! Reading the machine-readable parts of reports: RFC 3464 delivery status
//! (`message/delivery-status`) and RFC 5965 feedback (`message/feedback-report`).
//! Both are blocks of `Field: value` lines separated by blank lines; mail-parser
//! hands them over as raw bytes.

/// One block's fields, names lower-cased, continuation lines joined.
pub type Fields = Vec<(String, String)>;

/// Splits a report body into its field blocks.
pub fn blocks(body: &[u8]) -> Vec<Fields> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .map(|block| {
            let mut fields: Fields = Vec::new();
            for line in block.lines() {
                if line.starts_with([' ', '\t']) {
                    if let Some((_, value)) = fields.last_mut() {
                        value.push(' ');
                        value.push_str(line.trim());
                    }
                } else if let Some((name, value)) = line.split_once(':') {
                    fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
            fields
        })
        .filter(|f| !f.is_empty())
        .collect()
}

/// The first value of a field.
pub fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// An address field such as `rfc822; user@example.org`: the address.
pub fn address(value: &str) -> String {
    let v = value.split_once(';').map_or(value, |(_, a)| a);
    v.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// One recipient's outcome in a delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// `failed`, `delayed`, `delivered`, `relayed` or `expanded` (comments and
    /// the non-standard `failure` normalised away).
    pub action: String,
    /// Enhanced status code, e.g. `5.1.1`; a bare SMTP reply code such as `553`
    /// becomes `5.5.3`; empty when the report gives none.
    pub status: String,
    /// `Final-Recipient`, when it is an internet address (`rfc822;`).
    pub final_recipient: Option<String>,
    /// `Original-Recipient`, when it is an internet address.
    pub original_recipient: Option<String>,
    /// `Diagnostic-Code`, as given.
    pub diagnostic: Option<String>,
}

impl RecipientStatus {
    /// Whether delivery to this recipient did not succeed.
    pub fn is_failure(&self) -> bool {
        matches!(self.action.as_str(), "failed" | "delayed")
    }
}

/// The per-recipient blocks of a `message/delivery-status` body: failures first
/// (a report may list recipients that were delivered beside the one that failed),
/// then delays, then the rest.
pub fn delivery_status(body: &[u8]) -> Vec<RecipientStatus> {
    let mut statuses: Vec<RecipientStatus> = blocks(body)
        .iter()
        .filter(|f| field(f, "action").is_some())
        .map(|f| {
            let diagnostic = field(f, "diagnostic-code").map(str::to_owned);
            let status = field(f, "status")
                .and_then(status_code)
                .or_else(|| diagnostic.as_deref().and_then(status_code))
                .unwrap_or_default();
            RecipientStatus {
                action: action(field(f, "action").unwrap_or_default()),
                status,
                final_recipient: field(f, "final-recipient").and_then(internet_address),
                original_recipient: field(f, "original-recipient").and_then(internet_address),
                diagnostic,
            }
        })
        .collect();
    statuses.sort_by_key(|s| match s.action.as_str() {
        "failed" => 0,
        "delayed" => 1,
        _ => 2,
    });
    statuses
}

/// `failed (Bad destination mailbox address)` → `failed`; `failure` → `failed`.
fn action(value: &str) -> String {
    let word = value
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match word.as_str() {
        "failure" | "fail" => "failed".to_owned(),
        "delay" => "delayed".to_owned(),
        _ => word,
    }
}

/// An address-typed field's address, only for internet addresses: `x400; /G=…/`
/// and other types name no mailbox we know.
fn internet_address(value: &str) -> Option<String> {
    let (kind, _) = value.split_once(';').unwrap_or(("rfc822", value));
    let a = address(value);
    (kind.trim().eq_ignore_ascii_case("rfc822")
        && a.contains('@')
        && !a.contains(char::is_whitespace))
    .then_some(a)
}

/// The status code a text states: the first enhanced code (`5.1.1`, `#5.1.1`,
/// `(5.1.10)`), else the first SMTP reply code (`553` → `5.5.3`).
pub fn status_code(text: &str) -> Option<String> {
    // Whole words only: digits inside an address, a host name or a signed id
    // (`bounces+5-4a552f…`) are no status code.
    let words = || {
        text.split(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    ';' | ',' | '(' | ')' | '[' | ']' | '<' | '>' | '"' | '-' | '/' | '=' | ':'
                )
        })
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
    };
    let enhanced = words().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && (1..=3).contains(&parts[1].len())
            && (1..=3).contains(&parts[2].len())
    });
    if let Some(code) = enhanced {
        return Some(code.to_owned());
    }
    words()
        .find(|w| w.len() == 3 && matches!(w.as_bytes()[0], b'2' | b'4' | b'5') && !w.contains('.'))
        .map(|w| {
            let b = w.as_bytes();
            format!("{}.{}.{}", b[0] as char, b[1] as char, b[2] as char)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_recipient_blocks_are_read_with_continuations() {
        let body = b"Reporting-MTA: dns; mx.example.org\r\nArrival-Date: Mon, 1 Mar 2027\r\n\r\n\
Final-Recipient: rfc822; Nobody@Example.org\r\nOriginal-Recipient: rfc822;nobody@example.org\r\n\
Action: failed\r\nStatus: 5.1.1 (user unknown)\r\nDiagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>:\r\n \
Recipient address rejected\r\n";
        let r = delivery_status(body);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].action, "failed");
        assert_eq!(r[0].status, "5.1.1");
        assert_eq!(r[0].final_recipient.as_deref(), Some("nobody@example.org"));
        assert!(
            r[0].diagnostic
                .as_deref()
                .unwrap()
                .ends_with("Recipient address rejected")
        );
    }

    #[test]
    fn what_real_mtas_write_is_read_tolerantly() {
        assert_eq!(action("failed (Bad destination mailbox address)"), "failed");
        assert_eq!(action("Failure"), "failed");
        assert_eq!(action("  delayed"), "delayed");
        assert_eq!(status_code("553").as_deref(), Some("5.5.3"));
        assert_eq!(
            status_code("553 mailbox name not allowed").as_deref(),
            Some("5.5.3")
        );
        assert_eq!(
            status_code("5.1.1 (user unknown)").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            status_code("smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound").as_deref(),
            Some("5.1.10")
        );
        assert_eq!(
            status_code("Sorry, no mailbox here by that name. (#5.1.1)").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(status_code("no code here, version 1.2.3.4"), None);
        assert_eq!(
            status_code("550-5.1.1 The email account does not exist").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            status_code("to <bounces+5-4a552f1e9@b.example> at mx452.example:"),
            None
        );
        assert_eq!(
            status_code("Diagnostic-Code: smtp;550 mailbox unavailable").as_deref(),
            Some("5.5.0")
        );
        assert_eq!(internet_address("x400; /G=Leser/S=Muster/O=Contoso/"), None);
        assert_eq!(
            internet_address("rfc822;<Leser@Example.org>").as_deref(),
            Some("leser@example.org")
        );
        let body = b"Reporting-MTA: dns; mx\n\nFinal-Recipient: rfc822; ok@example.org\nAction: delivered\nStatus: 2.0.0\n\n\
Final-Recipient: x400; /G=a/S=b/\nOriginal-Recipient: rfc822; leser@example.org\nAction: failure\nStatus: 553\n";
        let r = delivery_status(body);
        assert_eq!(r[0].action, "failed");
        assert_eq!(r[0].status, "5.5.3");
        assert_eq!(r[0].final_recipient, None);
        assert_eq!(
            r[0].original_recipient.as_deref(),
            Some("leser@example.org")
        );
        assert_eq!(r[1].action, "delivered");
    }
}
