//! Feed polling: RSS 2.0, Atom and JSON Feed (feed-rs) over HTTP (reqwest with
//! rustls). Each feed is fetched on its cron schedule with conditional GET; each
//! entry becomes an item once (guid, else link; the same release in a feed of
//! another topic adds that topic); entry HTML is reduced to plain text and cut to
//! the item limits. A poll stores at most `polling.max_new_items` new items; a
//! redirect may not lead to a non-public address ([`destinations`]). A feed that
//! fails — timeout, 4xx/5xx, redirect loop or refused redirect, oversized or garbage
//! body — is logged with its name, counted, retried with back-off, and never stops
//! the daemon or the other feeds.

pub mod destinations;
pub mod text;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::PollingSettings;
use crate::domain::{FeedSchedule, TopicSlug};
use crate::store::{Feed, ItemOutcome, NewItem, Store, StoreError};

/// A feed's own offset within a minute, so that feeds on the same schedule do not
/// all fire in the same second.
fn jitter(name: &str) -> chrono::Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    chrono::Duration::seconds((h.finish() % 60) as i64)
}

/// When a feed is polled next after `after`: its schedule's next time plus the
/// feed's jitter; an hour later when the schedule has no next time.
pub fn next_poll(schedule: &FeedSchedule, name: &str, after: DateTime<Utc>) -> DateTime<Utc> {
    let next = schedule
        .next_after(after)
        .unwrap_or(after + chrono::Duration::hours(1));
    next + jitter(name)
}

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// `304 Not Modified`.
    Unchanged,
    /// The feed was read: entries seen and new items stored.
    Read {
        /// Entries in the feed.
        entries: usize,
        /// Items stored now.
        new: usize,
        /// Entries left for the next poll because `polling.max_new_items` was
        /// reached.
        deferred: usize,
    },
}

/// Polls due feeds.
#[derive(Clone)]
pub struct Poller {
    /// The database.
    pub store: Store,
    /// Time source: decides which feeds are due.
    pub clock: Arc<dyn Clock>,
    /// The `User-Agent` of every fetch.
    user_agent: String,
    /// Limits.
    pub settings: PollingSettings,
}

impl Poller {
    /// A poller with an HTTP client built from the settings.
    ///
    /// # Errors
    /// When the TLS backend cannot be set up.
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        settings: PollingSettings,
        public_url: &str,
    ) -> reqwest::Result<Self> {
        let user_agent = format!("postbote/{} (+{public_url})", env!("CARGO_PKG_VERSION"));
        // Each poll builds its own client (it knows the feed's host, see
        // `destinations`); building one now shows at start that TLS can be set up.
        let example = url::Url::parse("https://feed.example/").expect("a valid URL");
        destinations::client(&example, &settings, &user_agent)?;
        Ok(Self {
            store,
            clock,
            user_agent,
            settings,
        })
    }

    /// Polls every due feed once, `concurrency` at a time; returns how many were polled.
    pub async fn poll_due(&self) -> usize {
        let now = self.clock.now();
        // Held for longer than a poll can take; the poll sets the real next time.
        let hold = now
            + chrono::Duration::from_std(self.settings.timeout * 3)
                .unwrap_or(chrono::Duration::minutes(5));
        let feeds = match self.store.claim_due_feeds(now, hold, 100).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "looking for due feeds failed");
                return 0;
            }
        };
        let count = feeds.len();
        let mut tasks = JoinSet::new();
        for claimed in feeds {
            let feed = match claimed {
                Ok(feed) => feed,
                Err(e) => {
                    self.set_aside(&e, now).await;
                    continue;
                }
            };
            while tasks.len() >= self.settings.concurrency {
                tasks.join_next().await;
            }
            let poller = self.clone();
            tasks.spawn(async move { poller.poll_and_record(feed).await });
        }
        while tasks.join_next().await.is_some() {}
        count
    }

    /// A claimed feed whose stored row does not parse: logged naming the row, and
    /// recorded as a failed poll to try again in an hour (the error in
    /// `last_error`), so the operator sees it and the other feeds go on.
    async fn set_aside(&self, error: &StoreError, now: DateTime<Utc>) {
        tracing::error!(%error, "a claimed feed cannot be read; it is not polled");
        if let StoreError::Corrupt(c) = error {
            let retry = now + chrono::Duration::hours(1);
            let message = c.to_string();
            if let Err(e) = self.store.feed_failed(c.id, now, retry, &message).await {
                tracing::error!(error = %e, "recording the unreadable feed failed");
            }
        }
    }

    #[tracing::instrument(skip_all, fields(feed = %feed.name))]
    async fn poll_and_record(&self, feed: Feed) {
        let result = self.poll(&feed).await;
        let now = self.clock.now();
        let next = next_poll(&feed.schedule, &feed.name, now);
        let recorded = match result {
            Ok((polled, etag, modified)) => {
                match polled {
                    Polled::Unchanged => tracing::debug!("feed unchanged"),
                    Polled::Read {
                        entries,
                        new,
                        deferred: 0,
                    } => tracing::info!(entries, new, "feed read"),
                    Polled::Read {
                        entries,
                        new,
                        deferred,
                    } => tracing::warn!(
                        entries,
                        new,
                        deferred,
                        max_new_items = self.settings.max_new_items,
                        "feed read; more new entries than a poll stores, the rest waits for the next poll"
                    ),
                }
                self.store
                    .feed_polled(feed.id, now, next, etag.as_deref(), modified.as_deref())
                    .await
            }
            Err(error) => {
                // Back off: a failing feed is tried less often, at most every 6 hours.
                let backoff = chrono::Duration::minutes(1 << feed.failures.clamp(0, 9))
                    .min(chrono::Duration::hours(6));
                let retry = next.max(now + backoff);
                tracing::warn!(%error, failures = feed.failures + 1, retry_at = %retry, "feed poll failed");
                self.store.feed_failed(feed.id, now, retry, &error).await
            }
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, "recording the poll failed");
        }
    }

    /// Fetches and reads one feed; returns what it found and the new validators.
    ///
    /// # Errors
    /// A message saying what went wrong (for the log and `last_error`).
    pub async fn poll(
        &self,
        feed: &Feed,
    ) -> Result<(Polled, Option<String>, Option<String>), String> {
        let Some(Fetched {
            body,
            etag,
            modified,
        }) = self.fetch(feed).await?
        else {
            return Ok((Polled::Unchanged, None, None));
        };
        let parsed = parse_feed(&body, feed.url.as_str())?;
        drop(body);
        let (new, deferred) = self.store_entries(&parsed.entries, feed).await?;
        // Entries were left unread: without validators the next poll reads the feed
        // in full again and goes on where this one stopped.
        let (etag, modified) = if deferred > 0 {
            (None, None)
        } else {
            (etag, modified)
        };
        let entries = parsed.entries.len();
        Ok((
            Polled::Read {
                entries,
                new,
                deferred,
            },
            etag,
            modified,
        ))
    }

    /// Fetches the feed with a conditional GET: `None` when it is unchanged (304),
    /// else its body (at most `max_bytes`) and validators.
    async fn fetch(&self, feed: &Feed) -> Result<Option<Fetched>, String> {
        let feed_url = feed.url.url();
        let http = destinations::client(feed_url, &self.settings, &self.user_agent)
            .map_err(|e| describe(&e))?;
        let mut request = http.get(feed_url.clone());
        if let Some(etag) = &feed.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &feed.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
        }
        let response = request.send().await.map_err(|e| describe(&e))?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, modified) = (
            header(reqwest::header::ETAG),
            header(reqwest::header::LAST_MODIFIED),
        );
        let body = read_capped(response, self.settings.max_bytes).await?;
        Ok(Some(Fetched {
            body,
            etag,
            modified,
        }))
    }

    /// Stores the entries as items of the feed's topic, at most `max_new_items` new
    /// ones; returns how many were new and how many were left for the next poll.
    async fn store_entries(
        &self,
        entries: &[feed_rs::model::Entry],
        feed: &Feed,
    ) -> Result<(usize, usize), String> {
        let now = self.clock.now();
        let (mut new, mut cut, mut links_dropped, mut without_id) = (0, 0, 0, 0);
        let mut deferred = 0;
        for (n, entry) in entries.iter().enumerate() {
            if new >= self.settings.max_new_items {
                // Not even read: the next poll goes on where this one stopped.
                deferred = entries.len() - n;
                break;
            }
            let Some(item) = to_item(entry, &feed.topic, &feed.name) else {
                continue;
            };
            let (item, changed) = item.fitted();
            cut += usize::from(changed.iter().any(|f| *f != "url"));
            if changed.contains(&"url") {
                links_dropped += 1;
            }
            // A link refused by the item limits was the entry's only identity.
            if item.guid.is_none() && item.url.is_none() || item.title.trim().is_empty() {
                without_id += 1;
                continue;
            }
            match self.store.add_item(&item, now).await {
                Ok(ItemOutcome::Created(_)) => new += 1,
                Ok(ItemOutcome::Existing(_)) => {}
                Err(e) => return Err(format!("storing an entry failed: {e}")),
            }
        }
        if cut + links_dropped + without_id > 0 {
            // A link that is too long or not http(s) is dropped: the item is stored
            // without it and digests link to its page on this site instead.
            tracing::info!(
                cut,
                links_dropped,
                skipped = without_id,
                "entries cut to the item limits; links over 2048 characters or not http(s) dropped; entries left without guid or link skipped"
            );
        }
        Ok((new, deferred))
    }

    /// Polls due feeds every `tick` until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = self.poll_due() => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.tick) => {}
            }
        }
    }
}

/// A feed that changed: its body and the validators for the next conditional GET.
struct Fetched {
    /// The body, at most `polling.max_bytes`.
    body: Vec<u8>,
    /// The `ETag` header.
    etag: Option<String>,
    /// The `Last-Modified` header.
    modified: Option<String>,
}

/// Reads the body, refusing one larger than `max_bytes` (by its `Content-Length`,
/// else as soon as it grows past the limit).
async fn read_capped(response: reqwest::Response, max_bytes: usize) -> Result<Vec<u8>, String> {
    let too_large = || format!("the feed is larger than {max_bytes} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| describe(&e))?;
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses RSS, Atom or JSON Feed; an entry without an id gets `link:` + its first
/// link (see [`to_item`]), relative links resolve against the feed's URL.
fn parse_feed(body: &[u8], feed_url: &str) -> Result<feed_rs::model::Feed, String> {
    let parser = feed_rs::parser::Builder::new()
        .base_uri(Some(feed_url))
        .id_generator(|links, _title, _uri| {
            links
                .first()
                .map(|l| format!("link:{}", l.href))
                .unwrap_or_default()
        })
        .build();
    parser.parse(body).map_err(|e| format!("not a feed: {e}"))
}

/// A reqwest error with its cause, e.g. "timed out" or "redirect refused: more
/// than 5 redirects".
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut s = kind.to_owned();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// An entry as an item: text only, a link only when it is http(s). Not yet cut to
/// the item limits ([`NewItem::fitted`]).
fn to_item(entry: &feed_rs::model::Entry, topic: &TopicSlug, feed: &str) -> Option<NewItem> {
    let title = text::html_to_text(&entry.title.as_ref()?.content);
    if title.is_empty() {
        return None;
    }
    let url = entry
        .links
        .iter()
        .map(|l| l.href.clone())
        .find(|h| url::Url::parse(h).is_ok_and(|u| matches!(u.scheme(), "http" | "https")));
    let content = entry.content.as_ref().and_then(|c| c.body.clone());
    let summary_html = entry
        .summary
        .as_ref()
        .map(|s| s.content.clone())
        .or_else(|| content.clone());
    let summary = summary_html
        .map(|h| text::first_paragraph(&text::html_to_text(&h), 500))
        .filter(|s| !s.is_empty());
    let body = content
        .map(|h| text::html_to_text(&h))
        .filter(|b| !b.is_empty());
    let (guid, url) = match entry.id.strip_prefix("link:") {
        Some(_) => (None, url),
        None if entry.id.is_empty() => (None, url),
        None => (Some(entry.id.clone()), url),
    };
    if guid.is_none() && url.is_none() {
        return None;
    }
    Some(NewItem {
        topics: vec![topic.clone()],
        title,
        url,
        summary,
        body,
        published_at: entry.published.or(entry.updated),
        guid,
        source: format!("feed:{feed}"),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One JSON Feed entry with these fields, read by feed-rs and turned into an item
    /// cut to the item limits, as a poll does.
    fn entry_as_item(
        id: &str,
        url: &str,
        title: &str,
        summary: &str,
        html: &str,
    ) -> Option<(NewItem, Vec<&'static str>)> {
        let feed = serde_json::json!({
            "version": "https://jsonfeed.org/version/1.1",
            "title": "Feed",
            "items": [{"id": id, "url": url, "title": title, "summary": summary, "content_html": html}],
        });
        let parsed = feed_rs::parser::parse(feed.to_string().as_bytes()).ok()?;
        let topic = TopicSlug::parse("wirtschaft").unwrap();
        to_item(parsed.entries.first()?, &topic, "feed").map(NewItem::fitted)
    }

    proptest! {
        #[test]
        fn whatever_an_entry_holds_its_item_fits_the_limits(
            id in any::<String>(),
            url in prop_oneof![any::<String>(), Just("https://presse.example/1".to_owned()), "https://[a-z]{1,8}\\.example/[ -~]{0,40}"],
            title in prop_oneof![any::<String>(), "[<>&;a-z ]{0,2000}"],
            summary in prop_oneof![any::<String>(), "[<>&;#xa-z\n ]{0,3000}"],
            html in prop_oneof![any::<String>(), "[<>&;#xa-z/!\n -]{0,3000}"],
        ) {
            let Some((item, _)) = entry_as_item(&id, &url, &title, &summary, &html) else {
                return Ok(());
            };
            prop_assert!(item.title.chars().count() <= crate::store::MAX_TITLE);
            prop_assert!(item.summary.as_ref().is_none_or(|s| s.chars().count() <= 501));
            prop_assert!(item.body.as_ref().is_none_or(|b| b.len() <= html.len()));
            prop_assert!(item.url.as_ref().is_none_or(|u| u.chars().count() <= crate::store::MAX_URL));
            if !item.title.trim().is_empty() {
                prop_assert_eq!(item.validate(), Ok(()));
            }
        }
    }

    #[test]
    fn a_two_megabyte_link_is_dropped_and_long_texts_are_cut() {
        let link = format!("https://presse.example/{}", "a".repeat(2 * 1024 * 1024));
        let title = "<b>Titel</b> ".repeat(1_000);
        let (item, changed) =
            entry_as_item("pm-1", &link, &title, &"Absatz ".repeat(2_000), "<p>x</p>").unwrap();
        assert_eq!(
            item.url, None,
            "refused link dropped; the item page stands in"
        );
        assert_eq!(item.guid.as_deref(), Some("pm-1"));
        assert_eq!(item.title.chars().count(), crate::store::MAX_TITLE);
        assert!(item.summary.unwrap().ends_with('…'));
        assert!(
            changed.contains(&"url") && changed.contains(&"title"),
            "{changed:?}"
        );
        assert_eq!(
            entry_as_item("pm-2", "javascript:alert(1)", "Titel", "", "")
                .unwrap()
                .0
                .url,
            None
        );
    }

    #[test]
    fn a_hundred_feeds_on_one_schedule_do_not_fire_in_the_same_second() {
        let at: DateTime<Utc> = "2027-05-03T06:00:00Z".parse().unwrap();
        let schedule = FeedSchedule::parse("0 */15 * * * *").unwrap();
        let times: std::collections::HashSet<_> = (0..100)
            .map(|i| next_poll(&schedule, &format!("feed-{i}"), at))
            .collect();
        assert!(times.len() >= 40, "only {} distinct seconds", times.len());
        let latest = times.iter().max().unwrap();
        assert!(
            *latest < at + chrono::Duration::minutes(16),
            "spread within a minute of the slot"
        );
    }
}
