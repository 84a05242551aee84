//! Who a returned message is about, by what postbote signed and nothing else.
//!
//! A bounce or complaint can only name a reader through something only postbote
//! could have written: the VERP envelope recipient (checked in
//! [`super::Handler`]), or, inside the returned copy of our own mail, the manage
//! token of its `List-Unsubscribe` header and body links, or, in a feedback report,
//! the signed VERP id of the `Original-Mail-From` field. Addresses written in
//! a report (`Final-Recipient`, the attached `To:`) are anybody's to write; they are
//! never evidence.

use crate::domain::LinkKey;
use crate::mail::compose::Composer;

/// What a message's returned original says about its reader, as far as signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// Nothing we signed is in it.
    Nothing,
    /// Everything we signed in it names this reader.
    Reader(i64),
    /// Signed evidence for two different readers: trust neither.
    Conflicting,
}

/// The reader named by the signed evidence inside a message: the manage tokens in
/// `texts` (the returned original's headers and decoded text) and, for a feedback
/// report, the VERP id of its `Original-Mail-From` field.
pub fn signed_reader(
    texts: &[String],
    original_mail_from: Option<&str>,
    composer: &Composer,
) -> Signed {
    let key = composer.links().key();
    let by_token = texts.iter().flat_map(|text| {
        ["/unsubscribe/", "/preferences/"]
            .into_iter()
            .flat_map(move |path| manage_tokens(text, path, key))
    });
    let bounce = composer.addresses().bounce.as_deref();
    let by_verp = bounce
        .zip(original_mail_from)
        .and_then(|(template, address)| {
            super::template_id(template, &super::report::address(address))
        })
        .and_then(|id| composer.verify_verp_id(&id));
    let mut found: Option<i64> = None;
    for reader in by_token.chain(by_verp) {
        match found {
            Some(r) if r != reader => return Signed::Conflicting,
            _ => found = Some(reader),
        }
    }
    found.map_or(Signed::Nothing, Signed::Reader)
}

/// The readers of the verified manage tokens after each `path` in `text`.
fn manage_tokens<'a>(
    text: &'a str,
    path: &'static str,
    key: &'a LinkKey,
) -> impl Iterator<Item = i64> + 'a {
    text.match_indices(path).filter_map(move |(at, _)| {
        let rest = &text[at + path.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '.'))
            .unwrap_or(rest.len());
        key.verify(&rest[..end]).map(|t| t.subscriber_id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manage_tokens_count_only_when_their_mac_verifies() {
        let key = LinkKey::new(vec![3; 32]);
        let good = key.manage_token(42);
        let text = format!(
            "List-Unsubscribe: <https://n.example/unsubscribe/{}>\n\
             https://n.example/preferences/43.{}\n",
            good.as_str(),
            "0".repeat(32)
        );
        let found: Vec<i64> = manage_tokens(&text, "/unsubscribe/", &key)
            .chain(manage_tokens(&text, "/preferences/", &key))
            .collect();
        assert_eq!(found, [42]);
    }
}
