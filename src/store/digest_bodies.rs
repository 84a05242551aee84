//! Digest bodies, table `digest_bodies`: a digest's content, stored once for every
//! reader who gets the same one (same language, topics, news and local date), and
//! named by a key the planner derives from what it was rendered from. A digest's
//! mail job refers to its body; the reader's own part is added when the mail is
//! sent. Bodies hold no reader's data, so erasure never needs to look at them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::decode::StoredRow;
use super::{Store, StoreError, StoreResult, Tx, on_pool, on_tx};
use crate::domain::Locale;

/// A body to store: the content a planner rendered for `key`.
#[derive(Debug, Clone)]
pub struct NewBody {
    /// Names the content: equal keys mean equal content.
    pub key: String,
    /// The language it is written in (the reader's part follows it).
    pub locale: Locale,
    /// The subject line.
    pub subject: String,
    /// The `text/plain` part up to the reader's part.
    pub text: String,
    /// The `text/html` part up to the reader's part.
    pub html: String,
    /// The topics it covers, as the reader's part names them.
    pub topics: String,
    /// The new items it counts (listed or "… and N more").
    pub item_count: i32,
}

/// A stored body, as a delivery worker reads it.
#[derive(Debug, Clone)]
pub struct StoredBody {
    /// Id, as mail jobs refer to it.
    pub id: i64,
    /// Language.
    pub locale: Locale,
    /// Subject line.
    pub subject: String,
    /// `text/plain` content.
    pub text: String,
    /// `text/html` content.
    pub html: String,
    /// The topics it covers.
    pub topics: String,
}

#[derive(FromRow)]
struct BodyRow {
    id: i64,
    locale: String,
    subject: String,
    text_part: String,
    html_part: String,
    topics: String,
}

impl TryFrom<BodyRow> for StoredBody {
    type Error = StoreError;

    fn try_from(r: BodyRow) -> Result<Self, StoreError> {
        let row = StoredRow::new("digest_bodies", r.id);
        Ok(Self {
            id: r.id,
            locale: row.parse("locale", r.locale.as_str(), Locale::parse)?,
            subject: r.subject,
            text: r.text_part,
            html: r.html_part,
            topics: r.topics,
        })
    }
}

/// A stored body's id, by key.
pub type BodyIds = HashMap<String, i64>;

/// Stored bodies too old to be named by a mail before they are given a new age
/// ([`BODY_REFRESH`]): id by key.
pub(super) type AgedBodies = HashMap<String, i64>;

/// The bodies of one digest pass, shared by its lanes: those stored (committed),
/// by key, and those a lane is rendering and storing right now. A lane that needs
/// a body another lane is working on waits for it instead of rendering it too
/// (two lanes starting a pass need nearly the same bodies: without this, more than
/// half of a 20,000-reader pass's renderings were done twice, and the second
/// insert of each waited for the first lane's commit).
#[derive(Debug, Clone, Default)]
pub struct PassBodies {
    shared: Arc<Shared>,
}

/// A body of a pass: its id and since when it is stored (or was given its age),
/// or `None` while a lane works on it.
type PassBody = Option<(i64, DateTime<Utc>)>;

#[derive(Debug, Default)]
struct Shared {
    /// `Some((id, at))` stored (or found and given a new age) at `at`, `None`
    /// being worked on by a lane.
    bodies: Mutex<HashMap<String, PassBody>>,
    /// Woken when a lane finishes (or gives up) the bodies it worked on.
    settled: tokio::sync::Notify,
}

/// What [`PassBodies::claim`] found for a set of keys.
pub(super) struct Claim<'a> {
    /// Stored already.
    pub(super) known: BodyIds,
    /// Now this lane's to render and store, given up unless settled.
    pub(super) mine: Claimed<'a>,
    /// Another lane's, being worked on.
    pub(super) theirs: Vec<String>,
}

impl PassBodies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PassBody>> {
        self.shared
            .bodies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sorts `keys` into stored, taken on by the caller, and another lane's, as of
    /// `now`. A body stored or given its age more than [`BODY_REFRESH`] before is
    /// the caller's again (to be found and given a new age), however long the pass
    /// runs.
    pub(super) fn claim<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
        now: DateTime<Utc>,
    ) -> Claim<'_> {
        let mut claim = Claim {
            known: BodyIds::new(),
            mine: Claimed {
                bodies: self,
                keys: Vec::new(),
            },
            theirs: Vec::new(),
        };
        let mut bodies = self.lock();
        for key in keys {
            match bodies.get(key) {
                Some(Some((id, at))) if *at >= now - BODY_REFRESH => {
                    claim.known.insert(key.to_owned(), *id);
                }
                Some(None) => claim.theirs.push(key.to_owned()),
                _ => {
                    bodies.insert(key.to_owned(), None);
                    claim.mine.keys.push(key.to_owned());
                }
            }
        }
        claim
    }

    /// Ends the caller's work on `keys`: stored at `at` with the ids `ids` names,
    /// given up for the others (another lane may take them on).
    fn settle(&self, keys: &[String], ids: &BodyIds, at: DateTime<Utc>) {
        let mut bodies = self.lock();
        for key in keys {
            match ids.get(key) {
                Some(id) => bodies.insert(key.clone(), Some((*id, at))),
                None => bodies.remove(key),
            };
        }
        drop(bodies);
        self.shared.settled.notify_waiters();
    }

    /// Gives up the caller's work on `keys` (another lane may take them on).
    fn give_up(&self, keys: &[String]) {
        let mut bodies = self.lock();
        for key in keys {
            bodies.remove(key);
        }
        drop(bodies);
        self.shared.settled.notify_waiters();
    }

    /// Waits until no lane works on any of `keys`; returns those stored, and the
    /// keys given up (to be claimed again).
    pub(super) async fn wait(&self, keys: &[String]) -> (BodyIds, Vec<String>) {
        loop {
            let settled = self.shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let bodies = self.lock();
                if keys.iter().all(|k| !matches!(bodies.get(k), Some(None))) {
                    let mut ids = BodyIds::new();
                    let mut given_up = Vec::new();
                    for key in keys {
                        match bodies.get(key) {
                            Some(Some((id, _))) => {
                                ids.insert(key.clone(), *id);
                            }
                            _ => given_up.push(key.clone()),
                        }
                    }
                    return (ids, given_up);
                }
            }
            settled.await;
        }
    }
}

/// A lane's claimed keys, given up if the lane stops before it settles them (an
/// error, or the pass dropped).
pub(super) struct Claimed<'a> {
    bodies: &'a PassBodies,
    keys: Vec<String>,
}

impl Claimed<'_> {
    /// The claimed keys.
    pub(super) fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The claimed keys stored (or found and given a new age) at `at` with the
    /// ids `ids` names; the others given up.
    pub(super) fn settle(mut self, ids: &BodyIds, at: DateTime<Utc>) {
        let keys = std::mem::take(&mut self.keys);
        self.bodies.settle(&keys, ids, at);
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            self.bodies.give_up(&self.keys);
        }
    }
}

/// Keys per `IN (…)` list and rows per multi-row insert.
const CHUNK: usize = 200;

/// A stored body older than this is given a new age by the pass that reuses it,
/// before any mail refers to it (see [`Store::purge_unused_bodies`]).
pub const BODY_REFRESH: chrono::Duration = chrono::Duration::hours(1);

impl Store {
    /// The bodies with these ids (those that exist).
    ///
    /// # Errors
    /// When the database fails, or a stored body's language does not parse.
    pub async fn digest_bodies(&self, ids: &[i64]) -> StoreResult<Vec<StoredBody>> {
        let mut bodies = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<BodyRow> = on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, locale, subject, text_part, html_part, topics FROM digest_bodies WHERE id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                list.push_unseparated(")");
                q.build_query_as().fetch_all(pool).await?
            });
            for row in rows {
                bodies.push(StoredBody::try_from(row)?);
            }
        }
        Ok(bodies)
    }

    /// Deletes bodies created before `cutoff` that no queued mail refers to any
    /// more (a finished mail lets go of its body); returns how many.
    ///
    /// Nothing but this keeps a queued mail's body (on PostgreSQL the job has no
    /// foreign key to it since migration 0017): a pass that reuses a stored body
    /// older than [`BODY_REFRESH`] moves its `created_at` forward first, in a
    /// transaction that commits before any mail names it, so a `cutoff` at least
    /// that far back never takes a body a pass is about to refer to. Only queued
    /// mail is read (a finished mail has let go of its body), not the whole
    /// delivery history.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purge_unused_bodies(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let deleted = on_pool!(self, pool => sqlx::query(
            "DELETE FROM digest_bodies WHERE created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM mail_jobs \
             WHERE mail_jobs.status = 'queued' AND mail_jobs.body_id = digest_bodies.id)",
        )
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(deleted)
    }
}

impl Tx {
    /// Those of `keys` that are stored: their ids, and apart those created before
    /// `now - BODY_REFRESH` (to be given a new age by [`Tx::refresh_bodies`]
    /// before a mail may name them). Reads only.
    pub(super) async fn find_bodies(
        &mut self,
        keys: &[&str],
        now: DateTime<Utc>,
    ) -> StoreResult<(BodyIds, AgedBodies)> {
        let mut found = BodyIds::new();
        let mut aged = AgedBodies::new();
        for chunk in keys.chunks(CHUNK) {
            let rows: Vec<(i64, String, DateTime<Utc>)> = on_tx!(self, tx => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, body_key, created_at FROM digest_bodies WHERE body_key IN (",
                );
                let mut list = q.separated(", ");
                for key in chunk {
                    list.push_bind(*key);
                }
                list.push_unseparated(")");
                q.build_query_as().fetch_all(&mut *tx).await?
            });
            for (id, key, created_at) in rows {
                if created_at < now - BODY_REFRESH {
                    aged.insert(key, id);
                } else {
                    found.insert(key, id);
                }
            }
        }
        Ok((found, aged))
    }

    /// Gives the `aged` bodies `now` as their age, and returns the ids of those
    /// still there: the update locks them until this transaction ends, and the
    /// body purge takes only bodies a day old, so none of them can go before a
    /// mail names it. One the purge took first is not returned (to be rendered and
    /// stored again).
    pub(super) async fn refresh_bodies(
        &mut self,
        aged: &AgedBodies,
        now: DateTime<Utc>,
    ) -> StoreResult<BodyIds> {
        let aged: Vec<(&String, &i64)> = aged.iter().collect();
        let mut kept = BodyIds::new();
        for chunk in aged.chunks(CHUNK) {
            let ids: Vec<i64> = on_tx!(self, tx => {
                let mut q = sqlx::QueryBuilder::new("UPDATE digest_bodies SET created_at = ");
                q.push_bind(now).push(" WHERE id IN (");
                let mut list = q.separated(", ");
                for (_, id) in chunk {
                    list.push_bind(**id);
                }
                list.push_unseparated(") RETURNING id");
                q.build_query_scalar().fetch_all(&mut *tx).await?
            });
            kept.extend(
                chunk
                    .iter()
                    .filter(|(_, id)| ids.contains(id))
                    .map(|(key, id)| ((*key).clone(), **id)),
            );
        }
        Ok(kept)
    }

    /// Stores `bodies` and returns the ids of all of them. A body another
    /// transaction stored first (the same content, needed by another batch or
    /// instance) is left as it is and its id returned: PostgreSQL makes this
    /// insert wait for that transaction, and bodies are inserted in key order, so
    /// two batches waiting for each other's bodies cannot deadlock. One that was
    /// stored a day before and purged between the insert and the lookup is
    /// stored again: the second insert is this transaction's own row, or a row
    /// too young for the purge.
    pub(super) async fn store_bodies(
        &mut self,
        mut bodies: Vec<NewBody>,
        now: DateTime<Utc>,
    ) -> StoreResult<BodyIds> {
        bodies.sort_by(|a, b| a.key.cmp(&b.key));
        let mut ids = BodyIds::new();
        for _ in 0..3 {
            self.insert_bodies(&bodies, now, &mut ids).await?;
            let stored_before: Vec<&str> = bodies
                .iter()
                .map(|b| b.key.as_str())
                .filter(|key| !ids.contains_key(*key))
                .collect();
            if !stored_before.is_empty() {
                let (found, aged) = self.find_bodies(&stored_before, now).await?;
                ids.extend(found);
                ids.extend(self.refresh_bodies(&aged, now).await?);
            }
            bodies.retain(|b| !ids.contains_key(&b.key));
            if bodies.is_empty() {
                return Ok(ids);
            }
        }
        Err(StoreError::Callback(
            format!(
                "{} digest bodies were deleted each time they were stored",
                bodies.len()
            )
            .into(),
        ))
    }

    /// Inserts those of `bodies` nobody stored yet and adds their ids to `ids`.
    async fn insert_bodies(
        &mut self,
        bodies: &[NewBody],
        now: DateTime<Utc>,
        ids: &mut BodyIds,
    ) -> StoreResult<()> {
        for chunk in bodies.chunks(CHUNK) {
            let inserted: Vec<(i64, String)> = on_tx!(self, tx => {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO digest_bodies (body_key, locale, subject, text_part, html_part, topics, item_count, created_at) ",
                );
                q.push_values(chunk, |mut row, b| {
                    row.push_bind(&b.key)
                        .push_bind(b.locale.as_str())
                        .push_bind(&b.subject)
                        .push_bind(&b.text)
                        .push_bind(&b.html)
                        .push_bind(&b.topics)
                        .push_bind(b.item_count)
                        .push_bind(now);
                });
                q.push(" ON CONFLICT (body_key) DO NOTHING RETURNING id, body_key");
                q.build_query_as().fetch_all(&mut *tx).await?
            });
            ids.extend(inserted.into_iter().map(|(id, key)| (key, id)));
        }
        Ok(())
    }
}
