//! The offered topics as the sign-up form checks them, kept in memory for a
//! moment: every `POST /subscribe` needs the list, and reading it from the
//! database cost a round trip and a sixth of a sign-up's time.
//!
//! A change made through this process (admin API, console) drops the copy
//! ([`OfferedTopics::changing`]); one made by another process (another instance,
//! the command line) is seen within [`FRESH_FOR`] on the app's clock (so that a
//! test's clock, which stands still, keeps a copy until the test moves it: a
//! missing drop then fails the test whatever the machine's speed). A slug the copy does not know
//! makes it read again, so a topic created elsewhere is never refused. What the
//! copy can do for that moment is let a form name a topic retired elsewhere; the
//! store gives no one a retired topic, so the reader gets the others.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::TopicSlug;
use crate::store::{Store, StoreResult, Topic};

/// How long a copy of the list is used.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The offered (not retired) topics, as last read.
#[derive(Debug)]
pub struct OfferedTopics {
    fresh_for: Duration,
    snapshot: Mutex<Snapshot>,
}

/// The list with when it was read, and how often it was dropped: a read that
/// began before a drop is not kept (it may predate the change).
#[derive(Debug, Default)]
struct Snapshot {
    list: Option<(DateTime<Utc>, Arc<Vec<Topic>>)>,
    dropped: u64,
}

impl Default for OfferedTopics {
    fn default() -> Self {
        Self::fresh_for(FRESH_FOR)
    }
}

impl OfferedTopics {
    /// A copy used for `fresh_for` after each read.
    #[must_use]
    pub fn fresh_for(fresh_for: Duration) -> Self {
        Self {
            fresh_for,
            snapshot: Mutex::default(),
        }
    }

    /// The offered topics at `now`: the copy while it is fresh (read at most
    /// [`OfferedTopics::fresh_for`] before `now`, and not after it: a clock set
    /// back makes it stale) and knows every well-formed slug in `wanted`, else
    /// read again.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn get(
        &self,
        store: &Store,
        now: DateTime<Utc>,
        wanted: &[String],
    ) -> StoreResult<Arc<Vec<Topic>>> {
        let dropped = {
            let snapshot = self.lock();
            if let Some((read_at, topics)) = &snapshot.list {
                // A slug that is not one (any bytes a client sends) names no topic
                // anywhere: the form refuses it without a read.
                let knows = |slug: &String| {
                    TopicSlug::parse(slug).is_err() || topics.iter().any(|t| &t.slug == slug)
                };
                let age = (now - *read_at).to_std();
                let fresh = age.is_ok_and(|age| age < self.fresh_for);
                if fresh && wanted.iter().all(knows) {
                    return Ok(topics.clone());
                }
            }
            snapshot.dropped
        };
        let topics = Arc::new(store.list_topics(false).await?);
        let mut snapshot = self.lock();
        if snapshot.dropped == dropped {
            snapshot.list = Some((now, topics.clone()));
        }
        Ok(topics)
    }

    /// Drops the copy: the next caller reads the list again.
    pub fn forget(&self) {
        let mut snapshot = self.lock();
        snapshot.list = None;
        snapshot.dropped += 1;
    }

    /// Taken by a handler before it changes a topic: drops the copy when the
    /// handler ends, however it ends (an error, or a client that hung up while
    /// the change was in the database).
    #[must_use]
    pub fn changing(&self) -> Changing<'_> {
        Changing(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // Nothing can be left half-written under this lock.
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Drops an [`OfferedTopics`] copy when dropped itself.
#[derive(Debug)]
pub struct Changing<'a>(&'a OfferedTopics);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DatabaseUrl;
    use chrono::Utc;

    async fn store(dir: &tempfile::TempDir) -> Store {
        let store = Store::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        for slug in ["kultur", "sport"] {
            let slug = TopicSlug::parse(slug).unwrap();
            store
                .create_topic(&slug, slug.as_str(), None, Utc::now())
                .await
                .unwrap();
        }
        store
    }

    fn slugs(topics: &[Topic]) -> Vec<&str> {
        topics.iter().map(|t| t.slug.as_str()).collect()
    }

    #[tokio::test]
    async fn the_copy_is_used_until_dropped_and_read_again_for_an_unknown_slug() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let offered = OfferedTopics::fresh_for(Duration::from_secs(3600));
        let first = offered.get(&store, Utc::now(), &[]).await.unwrap();
        assert_eq!(slugs(&first), ["kultur", "sport"]);

        // Changed behind its back: the copy is what the next sign-ups see.
        let sport = TopicSlug::parse("sport").unwrap();
        store.retire_topic(&sport, Utc::now()).await.unwrap();
        let cached = offered
            .get(&store, Utc::now(), &["sport".into()])
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &cached), "no read while fresh");

        // A malformed slug can name no topic: no read for it.
        let junk = offered
            .get(
                &store,
                Utc::now(),
                &["x' OR 1=1".into(), "Sport".into(), String::new()],
            )
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &junk), "no read for a malformed slug");

        // A slug it does not know: read again.
        let wetter = TopicSlug::parse("wetter").unwrap();
        store
            .create_topic(&wetter, "wetter", None, Utc::now())
            .await
            .unwrap();
        let read = offered
            .get(&store, Utc::now(), &["wetter".into()])
            .await
            .unwrap();
        assert_eq!(slugs(&read), ["kultur", "wetter"]);

        // A change through this process drops it, however its handler ends.
        let kultur = TopicSlug::parse("kultur").unwrap();
        {
            let _changing = offered.changing();
            store.retire_topic(&kultur, Utc::now()).await.unwrap();
        }
        assert_eq!(
            slugs(&offered.get(&store, Utc::now(), &[]).await.unwrap()),
            ["wetter"]
        );
    }

    #[tokio::test]
    async fn a_copy_is_read_again_once_it_is_older_than_its_freshness_on_the_given_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let offered = OfferedTopics::fresh_for(Duration::from_secs(1));
        let t0 = Utc::now();
        let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        offered.get(&store, t0, &[]).await.unwrap();
        let sport = TopicSlug::parse("sport").unwrap();
        store.retire_topic(&sport, Utc::now()).await.unwrap();
        // However long the machine took: the clock given says how old it is.
        assert_eq!(
            slugs(&offered.get(&store, at(999), &[]).await.unwrap()),
            ["kultur", "sport"],
            "fresh for a second"
        );
        assert_eq!(
            slugs(&offered.get(&store, at(1000), &[]).await.unwrap()),
            ["kultur"],
            "read again after it"
        );
        // A clock set back makes the copy stale, rather than fresh for as long
        // as the clock went back.
        let kultur = TopicSlug::parse("kultur").unwrap();
        store.retire_topic(&kultur, Utc::now()).await.unwrap();
        assert!(
            offered.get(&store, at(0), &[]).await.unwrap().is_empty(),
            "read again at an earlier time"
        );
    }

    #[tokio::test]
    async fn a_read_that_began_before_a_drop_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let offered = OfferedTopics::fresh_for(Duration::from_secs(3600));
        // The drop lands while the read is in the database (SQLite's one
        // connection is held here, so the read waits for it).
        let held = match &store {
            Store::Sqlite(pool) => pool.acquire().await.unwrap(),
            Store::Postgres(_) => unreachable!(),
        };
        let reading = offered.get(&store, Utc::now(), &[]);
        tokio::pin!(reading);
        assert!(
            futures_util::FutureExt::now_or_never(reading.as_mut()).is_none(),
            "the read waits for the connection"
        );
        offered.forget();
        drop(held);
        let stale = reading.await.unwrap();
        assert_eq!(slugs(&stale), ["kultur", "sport"]);
        let sport = TopicSlug::parse("sport").unwrap();
        store.retire_topic(&sport, Utc::now()).await.unwrap();
        assert_eq!(
            slugs(&offered.get(&store, Utc::now(), &[]).await.unwrap()),
            ["kultur"],
            "the read from before the drop was not kept"
        );
    }
}
