//! The public links postbote hands out, in mails and on pages: the confirmation
//! link, a reader's unsubscribe and preferences links (signed with the
//! installation's [`LinkKey`]), the "send me my link" page and an item's page. [`Links`] is the one place that
//! knows the public base URL and the key, so the web handlers and mail composition
//! build the same links and check the same signatures.

use crate::domain::{LinkKey, Token};

/// The public base URL and the key that signs reader links. Cheap to clone; its
/// `Debug` does not show the key.
#[derive(Debug, Clone)]
pub struct Links {
    /// Base of every link, without a trailing slash (e.g. `https://news.example.org`).
    public_url: String,
    /// Signs unsubscribe and preferences links, form tokens and VERP ids.
    key: LinkKey,
}

impl Links {
    /// Links under `public_url`, signed with `key`.
    pub fn new(public_url: String, key: LinkKey) -> Self {
        Self { public_url, key }
    }

    /// The base of every link.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The key that signs reader links (and, for other purposes, form tokens and
    /// VERP ids).
    pub fn key(&self) -> &LinkKey {
        &self.key
    }

    /// The sign-up page.
    pub fn home(&self) -> String {
        format!("{}/", self.public_url)
    }

    /// The confirmation link of a sign-up.
    pub fn confirm(&self, token: &Token) -> String {
        format!("{}/confirm/{}", self.public_url, token.as_str())
    }

    /// A reader's one-click unsubscribe link.
    pub fn unsubscribe(&self, subscriber_id: i64) -> String {
        let token = self.key.manage_token(subscriber_id);
        format!("{}/unsubscribe/{}", self.public_url, token.as_str())
    }

    /// A reader's preferences link.
    pub fn preferences(&self, subscriber_id: i64) -> String {
        let token = self.key.manage_token(subscriber_id);
        format!("{}/preferences/{}", self.public_url, token.as_str())
    }

    /// A reader's unsubscribe and preferences links, signed once for both (a
    /// digest's footer carries the two).
    pub fn unsubscribe_and_preferences(&self, subscriber_id: i64) -> (String, String) {
        let token = self.key.manage_token(subscriber_id);
        (
            format!("{}/unsubscribe/{}", self.public_url, token.as_str()),
            format!("{}/preferences/{}", self.public_url, token.as_str()),
        )
    }

    /// A topic's page in the public archive.
    pub fn archive(&self, slug: &str) -> String {
        format!("{}/archive/{slug}", self.public_url)
    }

    /// A digest's "view in browser" page: the items of topics `slugs` whose first
    /// arrival among them lies in `(since, upto]`, as the digest of `date` listed
    /// them, in `locale`. The same for every reader of that digest.
    pub fn digest_view(
        &self,
        slugs: &[&str],
        window: (i64, i64),
        date: chrono::NaiveDate,
        locale: crate::domain::Locale,
    ) -> String {
        format!(
            "{}/digest?topics={}&since={}&upto={}&date={date}&lang={locale}",
            self.public_url,
            slugs.join(","),
            window.0,
            window.1,
        )
    }

    /// The "send me my link" page, where a reader asks for their preferences link
    /// by mail: the same for everyone.
    pub fn link_page(&self) -> String {
        format!("{}/link", self.public_url)
    }

    /// The public page of an item (for items without a URL of their own).
    pub fn item(&self, item_id: i64) -> String {
        format!("{}/items/{item_id}", self.public_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_links_carry_a_token_the_key_verifies() {
        let links = Links::new("https://news.example.org".into(), LinkKey::new(vec![7; 32]));
        let unsubscribe = links.unsubscribe(42);
        assert_eq!(
            links.unsubscribe_and_preferences(42),
            (unsubscribe.clone(), links.preferences(42))
        );
        let token = unsubscribe
            .strip_prefix("https://news.example.org/unsubscribe/")
            .expect("under the base URL");
        assert_eq!(links.key().verify(token).map(|t| t.subscriber_id), Some(42));
        assert!(links.preferences(42).ends_with(token));
        assert_eq!(links.item(7), "https://news.example.org/items/7");
        assert_eq!(links.home(), "https://news.example.org/");
        assert_eq!(links.link_page(), "https://news.example.org/link");
    }
}
