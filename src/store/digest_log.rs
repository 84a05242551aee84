//! The digest pass's transaction: a digest batch claims due readers, loads what
//! their digests may list, lets the planner decide, stores the bodies not stored
//! yet, and records the digests' mail jobs (each referring to its body) and
//! everyone's next slot, watermark and last served slot at once. (The digest log,
//! table `digests`, one row per reader and served slot, was written here until
//! migration 0016 put the last served slot on the reader's row.)

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::FromRow;

use super::counters::Tally;
use super::decode::StoredRow;
use super::digest_bodies::{BodyIds, Claimed, NewBody, PassBodies};
use super::items::load_digest_items;
use super::mail_queue::{ClaimedMail, LeaseTerms, LeasedBatch};
use super::{BoxError, DigestItems, Store, StoreError, StoreResult, Tx, on_tx};
use crate::domain::{DeliverySchedule, EmailAddress, Locale};

/// A reader whose slot has come, claimed for this pass.
#[derive(Debug, Clone)]
pub struct DueReader {
    /// Subscriber id.
    pub id: i64,
    /// Address.
    pub email: EmailAddress,
    /// Language.
    pub locale: Locale,
    /// When they want their digests.
    pub schedule: DeliverySchedule,
    /// The newest item their digests have covered.
    pub last_item_id: i64,
    /// The slot being served.
    pub next_slot_at: DateTime<Utc>,
    /// The slot their last digest served: a slot at or before it is not served
    /// again.
    pub last_slot_at: Option<DateTime<Utc>>,
    /// Chosen topic ids.
    pub topic_ids: Vec<i64>,
    /// No digest on their local dates up to and including this one.
    pub paused_until: Option<NaiveDate>,
}

#[derive(FromRow)]
struct DueRow {
    id: i64,
    email: String,
    locale: String,
    delivery_time: String,
    timezone: String,
    weekdays: i64,
    last_item_id: i64,
    next_slot_at: DateTime<Utc>,
    last_slot_at: Option<DateTime<Utc>>,
    paused_until: Option<NaiveDate>,
}

impl TryFrom<DueRow> for DueReader {
    type Error = StoreError;

    fn try_from(r: DueRow) -> Result<Self, StoreError> {
        let row = StoredRow::subscriber(r.id);
        Ok(Self {
            id: r.id,
            email: row.parse("email", r.email.as_str(), EmailAddress::parse)?,
            locale: row.parse("locale", r.locale.as_str(), Locale::parse)?,
            schedule: row.schedule(&r.delivery_time, &r.timezone, r.weekdays)?,
            last_item_id: r.last_item_id,
            next_slot_at: r.next_slot_at,
            last_slot_at: r.last_slot_at,
            topic_ids: Vec::new(),
            paused_until: r.paused_until,
        })
    }
}

/// A topic's display data.
#[derive(Debug, Clone, FromRow)]
pub struct TopicName {
    /// Id.
    pub id: i64,
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// What one batch of due readers looks like.
#[derive(Debug, Clone)]
pub struct DigestBatch {
    /// The readers, oldest slot first.
    pub readers: Vec<DueReader>,
    /// What the readers' digests may list: per topic of theirs at most
    /// `per_topic` of the newest arrivals up to the pass's watermark (see
    /// [`DigestItems`]).
    pub items: DigestItems,
    /// The readers' topics by id.
    pub topics: HashMap<i64, TopicName>,
    /// The pass's watermark.
    pub watermark: i64,
}

/// What to record for one reader.
#[derive(Debug, Clone)]
pub struct DigestPlan {
    /// The reader.
    pub subscriber_id: i64,
    /// The slot served.
    pub slot_at: DateTime<Utc>,
    /// Their next slot.
    pub next_slot_at: DateTime<Utc>,
    /// The newest item now covered.
    pub last_item_id: i64,
    /// The digest, when there is anything new.
    pub digest: Option<PlannedDigest>,
}

/// One reader's digest: which body, and the envelope of their mail.
#[derive(Debug, Clone)]
pub struct PlannedDigest {
    /// The key of the digest's body ([`NewBody::key`]).
    pub body_key: String,
    /// Envelope recipient: the reader's address.
    pub recipient: String,
    /// Envelope sender (bounces go there).
    pub envelope_from: String,
}

/// What decides a batch's digests: the digest pass. Called while the batch's
/// transaction is open.
pub trait DigestPlanner {
    /// Each reader's plan; a digest names its body by key.
    ///
    /// # Errors
    /// Whatever stops the batch; nothing is recorded then.
    fn plan(&mut self, batch: &DigestBatch) -> Result<Vec<DigestPlan>, BoxError>;

    /// The bodies of the pass this batch belongs to, shared with its other lanes;
    /// by default none (each batch on its own).
    fn bodies(&self) -> Option<&PassBodies> {
        None
    }

    /// Renders the body `key` (a key [`DigestPlanner::plan`] returned for `batch`).
    ///
    /// # Errors
    /// Whatever stops the batch.
    fn render(&mut self, batch: &DigestBatch, key: &str) -> Result<NewBody, BoxError>;

    /// Bodies now committed (those [`DigestPlanner::render`] rendered among them
    /// may go to the workers' cache).
    fn stored(&mut self, bodies: &BodyIds);

    /// The lease to queue the batch's mails under, if any ([`LeaseTerms`]: the
    /// hand-over to this process's workers); by default none.
    fn lease(&self) -> Option<LeaseTerms> {
        None
    }
}

/// What a batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Readers whose slot had come.
    pub due: usize,
    /// Digests queued.
    pub enqueued: usize,
    /// The digests queued already leased, when the pass asked for that: all of
    /// them then, in batches by lease holder.
    pub leased: Vec<LeasedBatch>,
}

/// Queues a chunk of digests ([`Tx::queue_digests`]) on PostgreSQL: one row per
/// element of the arrays (reader, recipient, envelope sender, body, lease holder),
/// leased until `$2` where a holder is given, with its first attempt counted as a
/// claim counts it.
const QUEUE_DIGESTS_PG: &str = "INSERT INTO mail_jobs (subscriber_id, kind, recipient, envelope_from, body_id, \
    status, next_attempt_at, created_at, locked_until, lease_owner, attempts) \
    SELECT j.reader, 'digest', j.recipient, j.sender, j.body, 'queued', $1, $1, \
    CASE WHEN j.holder IS NULL THEN NULL ELSE $2::timestamptz END, j.holder, \
    CASE WHEN j.holder IS NULL THEN 0 ELSE 1 END \
    FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bigint[]) \
    AS j(reader, recipient, sender, body, holder) \
    RETURNING lease_owner, id, subscriber_id";

const DUE_PG: &str = "SELECT id, email, locale, delivery_time, timezone, weekdays, last_item_id, next_slot_at, last_slot_at, paused_until \
    FROM subscribers WHERE status = 'confirmed' AND next_slot_at <= $1 ORDER BY next_slot_at, id LIMIT $2 \
    FOR UPDATE SKIP LOCKED";
const DUE_SQLITE: &str = "SELECT id, email, locale, delivery_time, timezone, weekdays, last_item_id, next_slot_at, last_slot_at, paused_until \
    FROM subscribers WHERE status = 'confirmed' AND next_slot_at <= $1 ORDER BY next_slot_at, id LIMIT $2";

/// Rows per multi-row statement.
const CHUNK: usize = 500;

/// How PostgreSQL plans a batch of the pass: every statement reads or writes a few
/// hundred rows by key. Left to its costs, the planner joins them to a sequential
/// scan of all readers (or all their topics), once per batch: a pass over N
/// readers would read N * N / 500 rows. (A cached plan keeps the settings it was
/// made with; these statements run nowhere else with batches.)
const BATCH_PLANNING: &[&str] = &["SET LOCAL enable_seqscan = off"];

/// How PostgreSQL plans the batch's last statements, which move each reader to
/// their next slot ([`ADVANCE_PG`]): each reader's row by its key. With sequential
/// scans off the planner still hashed each chunk against a scan of the whole
/// readers' index (4.4 of the chunk's 8.8 ms at 20,000 readers, and growing with
/// them). Nothing after them joins.
const ADVANCE_PLANNING: &[&str] = &[
    "SET LOCAL enable_hashjoin = off",
    "SET LOCAL enable_mergejoin = off",
];

/// The statement that moves a chunk of readers to their next slot and watermark
/// on PostgreSQL, from one array per column (reader, next slot, newest item
/// covered, last slot served): the same statement for every chunk.
const ADVANCE_PG: &str = "UPDATE subscribers SET next_slot_at = v.next_slot_at, \
    last_item_id = v.last_item_id, last_slot_at = v.last_slot_at \
    FROM UNNEST($1::bigint[], $2::timestamptz[], $3::bigint[], $4::timestamptz[]) \
    AS v(id, next_slot_at, last_item_id, last_slot_at) WHERE subscribers.id = v.id";

/// [`ADVANCE_PG`] on SQLite, around its `VALUES` rows.
const ADVANCE_SQLITE: [&str; 2] = [
    "UPDATE subscribers SET next_slot_at = v.column2, last_item_id = v.column3, last_slot_at = v.column4 FROM (",
    ") AS v WHERE subscribers.id = v.column1",
];

/// Applies `settings` (`SET LOCAL …`) to the transaction on `conn`.
async fn plan_as(conn: &mut sqlx::PgConnection, settings: &[&'static str]) -> sqlx::Result<()> {
    for setting in settings {
        sqlx::query(*setting).execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Claims up to `limit` readers due at `at`, loads at most `per_topic` items per
    /// topic of theirs (the newest arrivals up to `watermark`), lets `plan` decide their digests,
    /// and records everything in the same transaction: next slots, watermarks,
    /// last served slots and queued mails (under the planner's lease, if it has
    /// one: see [`LeaseTerms`]). Two instances never claim the same reader
    /// (`FOR UPDATE SKIP LOCKED`); once committed, a reader is not due again before
    /// their next slot. A slot at or before the reader's last served slot, read
    /// with the claim under the reader's row lock, gets no mail, so a slot can
    /// never produce a second digest. A reader whose row does not parse is
    /// logged with the row named and tried again a day later; the others are served.
    ///
    /// # Errors
    /// When the database or `plan` fails; nothing is recorded then.
    pub async fn digest_batch(
        &self,
        at: DateTime<Utc>,
        watermark: i64,
        limit: u32,
        per_topic: usize,
        now: DateTime<Utc>,
        planner: &mut impl DigestPlanner,
    ) -> StoreResult<BatchOutcome> {
        let mut tx = self.begin().await?;
        if let Tx::Postgres(conn) = &mut tx {
            plan_as(conn, BATCH_PLANNING).await?;
        }
        let (mut readers, skipped) = tx.claim_due_readers(at, limit).await?;
        if readers.is_empty() {
            tx.commit().await?;
            return Ok(BatchOutcome {
                due: skipped,
                ..BatchOutcome::default()
            });
        }
        tx.attach_topics(&mut readers).await?;
        let items = on_tx!(&mut tx, tx => load_digest_items!(tx, &readers, watermark, per_topic))?;
        let topics = tx.topic_names(&readers).await?;
        let batch = DigestBatch {
            readers,
            items,
            topics,
            watermark,
        };
        let plans = planner.plan(&batch).map_err(StoreError::Callback)?;
        let pass = planner.bodies().cloned().unwrap_or_default();
        let (bodies, held) = self
            .bodies_for(&mut tx, &batch, &plans, planner, &pass, now)
            .await?;
        let readers: HashMap<i64, &DueReader> = batch.readers.iter().map(|r| (r.id, r)).collect();
        // A digest for a slot at or before the reader's last served one is refused.
        let (refused, accepted): (Vec<&DigestPlan>, Vec<&DigestPlan>) = plans
            .iter()
            .filter(|p| p.digest.is_some())
            .partition(|p| readers[&p.subscriber_id].last_slot_at >= Some(p.slot_at));
        let refused: HashSet<i64> = refused.iter().map(|p| p.subscriber_id).collect();
        let mut enqueued = 0;
        let mut leased = Vec::new();
        let lease = planner.lease();
        for chunk in accepted.chunks(CHUNK) {
            let queued = tx.queue_digests(chunk, &bodies, now, lease).await?;
            enqueued += queued.0;
            leased.extend(queued.1);
        }
        tx.advance_readers(&readers, &plans, &refused).await?;
        let mut tally = Tally::default();
        tally.mails("digest", None, Some("queued"), enqueued as i64);
        tx.commit_with(tally).await?;
        if !held.is_empty() {
            for claimed in held {
                claimed.settle(&bodies, now);
            }
            planner.stored(&bodies);
        }
        Ok(BatchOutcome {
            due: batch.readers.len() + skipped,
            enqueued,
            leased,
        })
    }
}

impl Store {
    /// The ids of the bodies `plans` name: stored already (known to the pass, or
    /// found in the database), or rendered now and stored. A body another lane of
    /// the pass is working on is waited for, not rendered twice.
    ///
    /// What is missing is looked up in the batch's transaction (reading only) and
    /// rendered outside any other. On PostgreSQL what a lane writes (the bodies it
    /// rendered, and the new age of those found older than
    /// [`BODY_REFRESH`](super::digest_bodies::BODY_REFRESH), so that the body purge
    /// leaves them) goes in a short transaction of its own, committed before the
    /// batch's mails name them, so the other lane can use them at once. On SQLite
    /// (one lane, one connection) it goes in the batch's transaction, and the
    /// returned claims are settled when that commits.
    async fn bodies_for<'p>(
        &self,
        tx: &mut Tx,
        batch: &DigestBatch,
        plans: &[DigestPlan],
        planner: &mut impl DigestPlanner,
        pass: &'p PassBodies,
        now: DateTime<Utc>,
    ) -> StoreResult<(BodyIds, Vec<Claimed<'p>>)> {
        let keys: std::collections::BTreeSet<&str> = plans
            .iter()
            .filter_map(|p| p.digest.as_ref().map(|d| d.body_key.as_str()))
            .collect();
        let mut wanted: Vec<String> = keys.into_iter().map(str::to_owned).collect();
        let mut ids = BodyIds::new();
        let mut held = Vec::new();
        loop {
            let claim = pass.claim(wanted.iter().map(String::as_str), now);
            ids.extend(claim.known);
            if !claim.mine.keys().is_empty() {
                let claimed = claim.mine;
                let mine: Vec<&str> = claimed.keys().iter().map(String::as_str).collect();
                let (found, aged) = tx.find_bodies(&mine, now).await?;
                let rendered = render_missing(batch, planner, &mine, |k| {
                    found.contains_key(k) || aged.contains_key(k)
                })
                .await?;
                let mut stored = found;
                if self.is_postgres() {
                    let mut own = self.begin().await?;
                    stored.extend(
                        own.refresh_and_store(batch, planner, &aged, rendered, now)
                            .await?,
                    );
                    own.commit().await?;
                    planner.stored(&stored);
                    claimed.settle(&stored, now);
                } else {
                    stored.extend(
                        tx.refresh_and_store(batch, planner, &aged, rendered, now)
                            .await?,
                    );
                    held.push(claimed);
                }
                ids.extend(stored);
            }
            if claim.theirs.is_empty() {
                return Ok((ids, held));
            }
            let (settled, given_up) = pass.wait(&claim.theirs).await;
            ids.extend(settled);
            if given_up.is_empty() {
                return Ok((ids, held));
            }
            wanted = given_up;
        }
    }
}

/// The bodies among `keys` that `stored` does not know, rendered by `planner`.
///
/// A pass's first batches render a new body for almost every reader: hundreds of
/// bodies, tens of milliseconds of CPU in all. Between two bodies the thread's other
/// tasks get their turn (`yield_now`), so that the delivery workers on it go on
/// sending instead of waiting for the batch's last body.
async fn render_missing(
    batch: &DigestBatch,
    planner: &mut impl DigestPlanner,
    keys: &[&str],
    stored: impl Fn(&str) -> bool,
) -> StoreResult<Vec<NewBody>> {
    let mut bodies = Vec::new();
    for key in keys.iter().filter(|k| !stored(k)) {
        bodies.push(planner.render(batch, key).map_err(StoreError::Callback)?);
        tokio::task::yield_now().await;
    }
    Ok(bodies)
}

impl Tx {
    /// Gives the `aged` bodies a new age and stores the `rendered` ones; an aged
    /// body the purge took first is rendered and stored again. Returns the ids of
    /// all of them.
    async fn refresh_and_store(
        &mut self,
        batch: &DigestBatch,
        planner: &mut impl DigestPlanner,
        aged: &super::digest_bodies::AgedBodies,
        mut rendered: Vec<NewBody>,
        now: DateTime<Utc>,
    ) -> StoreResult<BodyIds> {
        let mut ids = self.refresh_bodies(aged, now).await?;
        let gone: Vec<&str> = aged.keys().map(String::as_str).collect();
        rendered.extend(render_missing(batch, planner, &gone, |k| ids.contains_key(k)).await?);
        ids.extend(self.store_bodies(rendered, now).await?);
        Ok(ids)
    }
}

impl Store {
    /// The plan of the statement that moves readers `ids` to their next slot, as
    /// a pass runs it (its settings, a chunk's arrays), from `EXPLAIN` in a
    /// transaction that is rolled back (`None` on SQLite). For tests and
    /// diagnosis.
    ///
    /// # Errors
    /// When the database fails.
    #[doc(hidden)]
    pub async fn advance_readers_plan(&self, ids: &[i64]) -> StoreResult<Option<String>> {
        let Self::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut tx = pool.begin().await?;
        plan_as(&mut tx, BATCH_PLANNING).await?;
        plan_as(&mut tx, ADVANCE_PLANNING).await?;
        let none: Vec<Option<DateTime<Utc>>> = vec![None; ids.len()];
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {ADVANCE_PG}")))
                .bind(ids)
                .bind(&none)
                .bind(vec![0_i64; ids.len()])
                .bind(&none)
                .fetch_all(&mut *tx)
                .await?;
        tx.rollback().await?;
        Ok(Some(plan.join("\n")))
    }

    /// What a pass would load for `reader` if their slot came now, without claiming
    /// or writing anything (the console's digest preview): their previous digest is
    /// taken to cover the items stored before `lookback_cutoff`, as at a
    /// confirmation, and the items are loaded as [`Store::digest_batch`] loads them.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn preview_batch(
        &self,
        mut reader: DueReader,
        lookback_cutoff: DateTime<Utc>,
        watermark: i64,
        per_topic: usize,
    ) -> StoreResult<DigestBatch> {
        let mut tx = self.begin().await?;
        reader.last_item_id = on_tx!(&mut tx, tx => sqlx::query_scalar(
            "SELECT COALESCE(MAX(id), 0) FROM items WHERE created_at < $1",
        )
        .bind(lookback_cutoff)
        .fetch_one(&mut *tx)
        .await)?;
        let readers = vec![reader];
        let items = on_tx!(&mut tx, tx => load_digest_items!(tx, &readers, watermark, per_topic))?;
        let topics = tx.topic_names(&readers).await?;
        tx.rollback().await?;
        Ok(DigestBatch {
            readers,
            items,
            topics,
            watermark,
        })
    }
}

impl Tx {
    /// Claims up to `limit` confirmed readers whose slot is at or before `at`.
    /// A row that does not parse is logged as an error naming it, and its slot is
    /// moved a day on (so it is tried again, and does not stop the others); returns
    /// the readers and how many were skipped.
    async fn claim_due_readers(
        &mut self,
        at: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<(Vec<DueReader>, usize)> {
        let sql = if self.is_postgres() {
            DUE_PG
        } else {
            DUE_SQLITE
        };
        let rows: Vec<DueRow> = on_tx!(self, tx => sqlx::query_as(sql)
            .bind(at)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await)?;
        let mut readers = Vec::with_capacity(rows.len());
        let mut skipped = 0;
        for row in rows {
            let id = row.id;
            match DueReader::try_from(row) {
                Ok(reader) => readers.push(reader),
                Err(e) => {
                    tracing::error!(subscriber.id = id, error = %e, "trying again in a day");
                    self.move_slot(id, at + chrono::Duration::days(1)).await?;
                    skipped += 1;
                }
            }
        }
        Ok((readers, skipped))
    }

    /// Sets a reader's next slot.
    async fn move_slot(&mut self, subscriber_id: i64, slot: DateTime<Utc>) -> StoreResult<()> {
        on_tx!(self, tx => sqlx::query("UPDATE subscribers SET next_slot_at = $2 WHERE id = $1")
            .bind(subscriber_id)
            .bind(slot)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Fills in each reader's topic ids.
    async fn attach_topics(&mut self, readers: &mut [DueReader]) -> StoreResult<()> {
        let pairs: Vec<(i64, i64)> = on_tx!(self, tx => {
            let mut ids = sqlx::QueryBuilder::new(
                "SELECT subscriber_id, topic_id FROM subscriber_topics WHERE subscriber_id IN (",
            );
            let mut list = ids.separated(", ");
            for r in readers.iter() {
                list.push_bind(r.id);
            }
            list.push_unseparated(")");
            ids.build_query_as().fetch_all(&mut *tx).await?
        });
        let mut topics_of: HashMap<i64, Vec<i64>> = HashMap::new();
        for (subscriber, topic) in pairs {
            topics_of.entry(subscriber).or_default().push(topic);
        }
        for r in readers {
            r.topic_ids = topics_of.remove(&r.id).unwrap_or_default();
        }
        Ok(())
    }

    /// The display data of the readers' topics, by id.
    async fn topic_names(&mut self, readers: &[DueReader]) -> StoreResult<HashMap<i64, TopicName>> {
        let topics: Vec<TopicName> = on_tx!(self, tx => {
            let mut names = sqlx::QueryBuilder::new("SELECT id, slug, name FROM topics WHERE id IN (");
            let mut list = names.separated(", ");
            for topic in DigestItems::windows(readers).into_keys() {
                list.push_bind(topic);
            }
            // No topics at all: `IN (NULL)` matches nothing and is valid SQL.
            list.push("NULL");
            list.push_unseparated(")");
            names.build_query_as().fetch_all(&mut *tx).await?
        });
        Ok(topics.into_iter().map(|t| (t.id, t)).collect())
    }

    /// Queues the digests of `plans`, each referring to its body, leased under
    /// `lease` if given; returns how many, and the leased ones.
    async fn queue_digests(
        &mut self,
        plans: &[&DigestPlan],
        bodies: &BodyIds,
        now: DateTime<Utc>,
        lease: Option<LeaseTerms>,
    ) -> StoreResult<(usize, Vec<LeasedBatch>)> {
        let jobs: Vec<(i64, &PlannedDigest, i64)> = plans
            .iter()
            .filter_map(|p| {
                let digest = p.digest.as_ref()?;
                let body = *bodies.get(&digest.body_key)?;
                Some((p.subscriber_id, digest, body))
            })
            .collect();
        if jobs.is_empty() {
            return Ok((0, Vec::new()));
        }
        let n = jobs.len();
        // Under a lease every `per_owner` mails (up to its limit) get their own
        // holder, as a claim of that many would, and count their first attempt as
        // a claim does; the rest are queued for a claim.
        let owners: Vec<i64> = match lease {
            Some(terms) => (0..n.min(terms.limit).div_ceil(terms.per_owner.max(1)))
                .map(|_| rand::random())
                .collect(),
            None => Vec::new(),
        };
        let per_owner = lease.map_or(1, |terms| terms.per_owner.max(1));
        let owner_of = |i: usize| owners.get(i / per_owner).copied();
        let until = lease.map(|terms| terms.until);
        // Only what the database adds is read back (the lease holder is `None` for a
        // mail left for a claim): the rest is in `jobs`.
        let returned: Vec<(Option<i64>, i64, i64)> = match self {
            Self::Postgres(tx) => {
                // Five arrays instead of eleven values per row: the statement is
                // the same for every batch, and PostgreSQL parses no row list.
                let column = |f: fn(&(i64, &PlannedDigest, i64)) -> i64| {
                    jobs.iter().map(f).collect::<Vec<i64>>()
                };
                let (readers, bodies) = (column(|j| j.0), column(|j| j.2));
                let recipients: Vec<&str> = jobs.iter().map(|j| j.1.recipient.as_str()).collect();
                let senders: Vec<&str> = jobs.iter().map(|j| j.1.envelope_from.as_str()).collect();
                let held: Vec<Option<i64>> = (0..n).map(owner_of).collect();
                sqlx::query_as(QUEUE_DIGESTS_PG)
                    .bind(now)
                    .bind(until)
                    .bind(readers)
                    .bind(recipients)
                    .bind(senders)
                    .bind(bodies)
                    .bind(held)
                    .fetch_all(&mut **tx)
                    .await?
            }
            Self::Sqlite(tx) => {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO mail_jobs (subscriber_id, kind, recipient, envelope_from, body_id, status, next_attempt_at, created_at, \
                     locked_until, lease_owner, attempts) ",
                );
                insert.push_values(
                    jobs.iter().enumerate(),
                    |mut row, (i, (id, digest, body))| {
                        row.push_bind(*id)
                            .push_bind("digest")
                            .push_bind(digest.recipient.as_str())
                            .push_bind(digest.envelope_from.as_str())
                            .push_bind(*body)
                            .push_bind("queued")
                            .push_bind(now)
                            .push_bind(now)
                            .push_bind(owner_of(i).and(until))
                            .push_bind(owner_of(i))
                            .push_bind(i32::from(owner_of(i).is_some()));
                    },
                );
                insert.push(" RETURNING lease_owner, id, subscriber_id");
                insert.build_query_as().fetch_all(&mut **tx).await?
            }
        };
        // A batch plans each of its readers once (they were claimed by id), so a
        // returned row is found by its reader.
        let by_reader: HashMap<i64, (&PlannedDigest, i64)> = jobs
            .iter()
            .map(|(id, digest, body)| (*id, (*digest, *body)))
            .collect();
        debug_assert_eq!(by_reader.len(), jobs.len(), "one digest per reader");
        let leased = LeasedBatch::group(
            returned
                .into_iter()
                .filter_map(|(owner, id, reader)| {
                    let (digest, body) = by_reader.get(&reader)?;
                    Some((
                        owner?,
                        ClaimedMail {
                            id,
                            subscriber_id: Some(reader),
                            kind: "digest".to_owned(),
                            recipient: digest.recipient.clone(),
                            envelope_from: digest.envelope_from.clone(),
                            message: Vec::new(),
                            body_id: Some(*body),
                            attempts: 1,
                        },
                    ))
                })
                .collect(),
        );
        Ok((n, leased))
    }

    /// Moves each planned reader (of `readers`, by id) to their next slot and
    /// watermark, and records the slot served for each that got a digest. A
    /// `refused` slot (served before) sent nothing, so that reader's watermark and
    /// last served slot stay where they were: those items go into the next digest.
    async fn advance_readers(
        &mut self,
        readers: &HashMap<i64, &DueReader>,
        plans: &[DigestPlan],
        refused: &HashSet<i64>,
    ) -> StoreResult<()> {
        if let Self::Postgres(conn) = self {
            plan_as(conn, ADVANCE_PLANNING).await?;
        }
        // Each reader's new watermark and last served slot.
        let moved = |p: &DigestPlan| {
            let before = readers[&p.subscriber_id];
            if refused.contains(&p.subscriber_id) {
                (before.last_item_id, before.last_slot_at)
            } else {
                (
                    p.last_item_id,
                    p.digest
                        .as_ref()
                        .map_or(before.last_slot_at, |_| Some(p.slot_at)),
                )
            }
        };
        for chunk in plans.chunks(CHUNK) {
            match self {
                Self::Postgres(tx) => {
                    let (last, served): (Vec<i64>, Vec<Option<DateTime<Utc>>>) =
                        chunk.iter().map(moved).unzip();
                    sqlx::query(ADVANCE_PG)
                        .bind(chunk.iter().map(|p| p.subscriber_id).collect::<Vec<i64>>())
                        .bind(
                            chunk
                                .iter()
                                .map(|p| p.next_slot_at)
                                .collect::<Vec<DateTime<Utc>>>(),
                        )
                        .bind(last)
                        .bind(served)
                        .execute(&mut **tx)
                        .await?;
                }
                Self::Sqlite(tx) => {
                    let mut update = sqlx::QueryBuilder::new(ADVANCE_SQLITE[0]);
                    update.push_values(chunk, |mut row, p| {
                        let (last, served) = moved(p);
                        row.push_bind(p.subscriber_id)
                            .push_bind(p.next_slot_at)
                            .push_bind(last)
                            .push_bind(served);
                    });
                    update.push(ADVANCE_SQLITE[1]);
                    update.build().execute(&mut **tx).await?;
                }
            }
        }
        Ok(())
    }
}
