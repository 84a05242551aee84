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
    /// `failed`, `delayed`, `delivered`, `relayed` or `expanded`.
    pub action: String,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// `Final-Recipient`, address only.
    pub final_recipient: Option<String>,
    /// `Original-Recipient`, address only.
    pub original_recipient: Option<String>,
    /// `Diagnostic-Code`, as given.
    pub diagnostic: Option<String>,
}

/// The per-recipient blocks of a `message/delivery-status` body.
pub fn delivery_status(body: &[u8]) -> Vec<RecipientStatus> {
    blocks(body)
        .iter()
        .filter(|f| field(f, "action").is_some())
        .map(|f| RecipientStatus {
            action: field(f, "action").unwrap_or_default().to_ascii_lowercase(),
            status: field(f, "status")
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
            final_recipient: field(f, "final-recipient").map(address),
            original_recipient: field(f, "original-recipient").map(address),
            diagnostic: field(f, "diagnostic-code").map(str::to_owned),
        })
        .collect()
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
}
