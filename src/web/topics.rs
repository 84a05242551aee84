//! The offered topics as the sign-up form checks them, kept in memory for a
//! moment: every `POST /subscribe` needs the list, and reading it from the
//! database cost a round trip and a sixth of a sign-up's time.
//!
//! A change made through this process (admin API, console) drops the copy at
//! once; one made by another process (another instance, the command line) is
//! seen within [`FRESH_FOR`]. A slug the copy does not know makes it read again,
//! so a topic created elsewhere is never refused. What the copy can do for that
//! moment is accept a topic retired elsewhere, which a sign-up racing the
//! retirement could always do.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreResult, Topic};

/// How long a copy of the list is used.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The offered (not retired) topics, as last read.
#[derive(Debug, Default)]
pub struct OfferedTopics {
    copy: Mutex<Copy>,
}

/// The list with when it was read, and how often it was dropped: a read that
/// began before a drop is not kept (it may predate the change).
#[derive(Debug, Default)]
struct Copy {
    list: Option<(Instant, Arc<Vec<Topic>>)>,
    dropped: u64,
}

impl OfferedTopics {
    /// The offered topics: the copy while it is fresh and knows every slug in
    /// `wanted`, else read again.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn get(&self, store: &Store, wanted: &[String]) -> StoreResult<Arc<Vec<Topic>>> {
        let dropped = {
            let copy = self.lock();
            if let Some((read_at, topics)) = &copy.list {
                let knows = |slug: &String| topics.iter().any(|t| &t.slug == slug);
                if read_at.elapsed() < FRESH_FOR && wanted.iter().all(knows) {
                    return Ok(topics.clone());
                }
            }
            copy.dropped
        };
        let read_at = Instant::now();
        let topics = Arc::new(store.list_topics(false).await?);
        let mut copy = self.lock();
        if copy.dropped == dropped {
            copy.list = Some((read_at, topics.clone()));
        }
        Ok(topics)
    }

    /// Drops the copy: the next caller reads the list again. Called after every
    /// change to the topics this process makes.
    pub fn forget(&self) {
        let mut copy = self.lock();
        copy.list = None;
        copy.dropped += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Copy> {
        // Nothing can be left half-written under this lock.
        self.copy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
