//! The durable mail queue. A mail is a row written in the same transaction as the
//! change that causes it (written already leased when it is handed straight to a
//! worker of the same process, see [`LeaseTerms`]); workers claim due rows with a
//! short lease that they renew while they work (see `mail::delivery`), deliver them
//! and record each outcome as it happens. A worker that dies stops renewing: its
//! lease runs out within [`crate::mail::delivery::LEASE`] and the mail is claimed
//! again, so at most the mails in flight at a crash (one per worker) can be sent
//! twice. A mail that is done (sent, or given up) leaves the queue for the mail log
//! (`mail_log`, migration 0020) in the same transaction; the log's rows are
//! aggregated into `delivery_days` and deleted after `delivery.keep_days`.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::counters::{Tally, flush_tally, push_upsert};
use super::{BeginWrite, Store, StoreResult, Tx, on_pool, on_tx};

/// What the mail log keeps of a mail leaving the queue: the columns of
/// [`RETIRED`].
#[derive(FromRow)]
struct Retired {
    id: i64,
    subscriber_id: Option<i64>,
    kind: String,
    recipient: String,
    attempts: i32,
    created_at: DateTime<Utc>,
}

/// The tables that hold a reader's mail: the queue, and since migration 0020 the
/// log of sent and failed mail. Whatever deletes a reader deletes from both.
pub(super) const MAIL_TABLES: [&str; 2] = ["mail_jobs", "mail_log"];

/// The `RETURNING` clause of a `DELETE FROM mail_jobs` whose rows [`retire!`]
/// moves into the log.
const RETIRED: &str = " RETURNING id, subscriber_id, kind, recipient, attempts, created_at";

/// Runs `$delete` (a query builder holding a `DELETE FROM mail_jobs …` that ends
/// in [`RETIRED`]) on `$conn` and appends the mails it removed to the mail log as
/// `$status` (`"sent"` or `"failed"`), with `$error` (an `Option<&str>`), finished
/// at `$now`; evaluates to their kinds, one per mail, for the counters.
macro_rules! retire {
    ($conn:expr, $delete:expr, $status:expr, $error:expr, $now:expr) => {{
        let retired: Vec<Retired> = $delete.build_query_as().fetch_all(&mut *$conn).await?;
        // Nine values a row: SQLite takes at most 32,766 per statement.
        for chunk in retired.chunks(1000) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO mail_log (id, subscriber_id, kind, recipient, status, attempts, last_error, \
                 created_at, finished_at) ",
            );
            q.push_values(chunk, |mut row, r| {
                row.push_bind(r.id)
                    .push_bind(r.subscriber_id)
                    .push_bind(r.kind.clone())
                    .push_bind(r.recipient.clone())
                    .push_bind($status)
                    .push_bind(r.attempts)
                    .push_bind($error)
                    .push_bind(r.created_at)
                    .push_bind($now);
            });
            q.build().execute(&mut *$conn).await?;
        }
        retired.into_iter().map(|r| r.kind).collect::<Vec<String>>()
    }};
}

/// Whether an insert is the transaction's last write, which may carry the
/// counters' upsert ([`Tx::insert_mail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// The last write before the commit.
    Write,
    /// Others may follow.
    Not,
}

/// Pushes the `INSERT` of one mail (`$subscriber_id`, `$mail` a [`NewMail`], queued
/// at `$now`, leased under `$lease`, an `Option<(until, holder)>`: a leased mail
/// counts its first attempt, as a claim does) returning its id onto the query
/// builder `$q`, for either backend, alone or after `WITH` queries.
macro_rules! push_mail_insert {
    ($q:expr, $subscriber_id:expr, $mail:expr, $now:expr, $lease:expr) => {{
        $q.push(
            "INSERT INTO mail_jobs (subscriber_id, kind, recipient, envelope_from, message, \
             status, next_attempt_at, created_at, locked_until, lease_owner, attempts) VALUES (",
        );
        $q.separated(", ")
            .push_bind($subscriber_id)
            .push_bind($mail.kind)
            .push_bind(&$mail.recipient)
            .push_bind(&$mail.envelope_from)
            .push_bind(&$mail.message)
            .push_bind("queued")
            .push_bind($now)
            .push_bind($now)
            .push_bind($lease.map(|(until, _)| until))
            .push_bind($lease.map(|(_, owner)| owner))
            .push_bind(i32::from($lease.is_some()));
        $q.push(") RETURNING id");
    }};
}
pub(super) use push_mail_insert;

/// A rendered mail to queue.
#[derive(Debug, Clone)]
pub struct NewMail {
    /// What it is, for history and limits: `confirm`, `already-subscribed`, …
    pub kind: &'static str,
    /// Envelope recipient.
    pub recipient: String,
    /// Envelope sender (bounces go there).
    pub envelope_from: String,
    /// The complete RFC 5322 message.
    pub message: Vec<u8>,
}

/// A mail a worker has claimed.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedMail {
    /// Queue id.
    pub id: i64,
    /// The reader it is for, if any: a relay refusing their address bounces them.
    pub subscriber_id: Option<i64>,
    /// `confirm`, `digest`, …: which counters its outcome moves.
    pub kind: String,
    /// Envelope recipient.
    pub recipient: String,
    /// Envelope sender.
    pub envelope_from: String,
    /// The message; empty for a digest, which the worker assembles from its body.
    pub message: Vec<u8>,
    /// A digest's shared body (`digest_bodies`); `None` for a mail queued whole.
    pub body_id: Option<i64>,
    /// Attempts including this one.
    pub attempts: i32,
}

/// How mails queued by a digest pass are leased at once to this process's delivery
/// workers, which then need not claim them (`mail::handoff`): the same lease a claim
/// writes, in the same statement as the mails.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTerms {
    /// Until when the lease holds, on the system clock (as a claim's lease).
    pub until: DateTime<Utc>,
    /// Mails per lease holder: the size of a worker's batch.
    pub per_owner: usize,
    /// Mails leased at most (the room the workers have); the others are queued
    /// unleased, for a claim.
    pub limit: usize,
}

/// Mails queued already leased to `owner` ([`LeaseTerms`]): a worker sends them
/// as if it had claimed them.
#[derive(Debug, Clone)]
pub struct LeasedBatch {
    /// The random token written into their `lease_owner`.
    pub owner: i64,
    /// The mails, by id.
    pub mails: Vec<ClaimedMail>,
}

impl LeasedBatch {
    /// Reader `subscriber_id`'s `mail`, queued as `id` under the lease of `owner`.
    pub(super) fn one(owner: i64, id: i64, subscriber_id: i64, mail: NewMail) -> Self {
        Self {
            owner,
            mails: vec![ClaimedMail {
                id,
                subscriber_id: Some(subscriber_id),
                kind: mail.kind.to_owned(),
                recipient: mail.recipient,
                envelope_from: mail.envelope_from,
                message: mail.message,
                body_id: None,
                attempts: 1,
            }],
        }
    }

    /// Groups mails returned with their lease owner into batches, each by id.
    pub(super) fn group(rows: Vec<(i64, ClaimedMail)>) -> Vec<Self> {
        let mut batches: Vec<Self> = Vec::new();
        for (owner, mail) in rows {
            match batches.iter_mut().find(|b| b.owner == owner) {
                Some(batch) => batch.mails.push(mail),
                None => batches.push(Self {
                    owner,
                    mails: vec![mail],
                }),
            }
        }
        for batch in &mut batches {
            batch.mails.sort_by_key(|m| m.id);
        }
        batches
    }
}

/// Finished mail of one reader, day and kind whose rows the retention purge
/// deleted: the compact delivery history the export keeps showing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct DeliveryDay {
    /// The day (UTC) the mails were finished.
    pub day: NaiveDate,
    /// `confirm`, `digest`, …
    pub kind: String,
    /// How many were delivered.
    pub sent: i64,
    /// How many were given up.
    pub failed: i64,
    /// The last error of a failed one, if any.
    pub last_error: Option<String>,
}

/// Leases up to `$3` due mails to `$5`, oldest first, on PostgreSQL.
///
/// The search is an array (`id = ANY(ARRAY(…))`): PostgreSQL runs it once, then
/// takes the claimed mails by key. Written `id IN (SELECT …)`, it was a semi join
/// that a queue with statistics of a couple of mails planned as a scan of the
/// queue running the search again for each of its rows: in a fan-out whose mails
/// were all leased, a claim took a second of the database's CPU.
const CLAIM_PG: &str = "UPDATE mail_jobs SET locked_until = $2, lease_owner = $5, attempts = attempts + 1 \
    WHERE id = ANY(ARRAY(SELECT id FROM mail_jobs WHERE status = 'queued' AND next_attempt_at <= $1 \
    AND (locked_until IS NULL OR locked_until <= $4) ORDER BY next_attempt_at, id LIMIT $3 \
    FOR UPDATE SKIP LOCKED)) \
    RETURNING id, subscriber_id, kind, recipient, envelope_from, COALESCE(message, ''::bytea) AS message, body_id, attempts";
/// How PostgreSQL plans the claim: walk the queue's index in order and stop after
/// `limit` rows. A fan-out queues thousands of mails at one instant, and until the
/// statistics catch up the planner expects a handful and would fetch and sort all
/// of them for every claim.
const CLAIM_PLANNING: &str = "SET LOCAL enable_sort = off";
const CLAIM_SQLITE: &str = "UPDATE mail_jobs SET locked_until = $2, lease_owner = $5, attempts = attempts + 1 \
    WHERE id IN (SELECT id FROM mail_jobs WHERE status = 'queued' AND next_attempt_at <= $1 \
    AND (locked_until IS NULL OR locked_until <= $4) ORDER BY next_attempt_at, id LIMIT $3) \
    RETURNING id, subscriber_id, kind, recipient, envelope_from, COALESCE(message, X'') AS message, body_id, attempts";

/// Moves mails from the queue into the log as sent and counts them in ONE
/// statement: a worker records every delivery on its own, so this is the hot path
/// of a fan-out (what [`retire!`] and `Tally::mails` do for queued → sent, written
/// out). Deleting the queue row writes no index entry; the log row is narrow and
/// has two (see migration 0020).
///
/// Each id is looked up by the primary key (`id = ANY($2)`: an index condition,
/// the one plan that stays right whatever the queue's size). A mail gone from the
/// queue meanwhile (withdrawn, or recorded already) is not logged or counted
/// again. Nothing but the key is asked: `status = 'queued'` would let the planner
/// answer the record by scanning the partial index of queued mail, which on a
/// queue just filled (no statistics yet) it takes for a handful of rows, so every
/// record read the whole queue (a fan-out of 20,000: 94 µs per mail recorded, half
/// of the database's time).
const SENT_PG: &str = "WITH done AS ( \
    DELETE FROM mail_jobs WHERE mail_jobs.id = ANY($2::bigint[]) \
    RETURNING id, subscriber_id, kind, recipient, attempts, created_at), \
    logged AS ( \
    INSERT INTO mail_log (id, subscriber_id, kind, recipient, status, attempts, created_at, finished_at) \
    SELECT id, subscriber_id, kind, recipient, 'sent', attempts, created_at, $1 FROM done RETURNING kind) \
    INSERT INTO counters (name, shard, value) \
    SELECT 'mails:' || kind || ':sent', $3, COUNT(*) FROM logged GROUP BY kind ORDER BY 1 \
    ON CONFLICT (name, shard) DO UPDATE SET value = counters.value + excluded.value";

/// Logged mail past the retention cutoff, oldest first; on PostgreSQL rows that
/// another instance's purge holds are skipped. The search runs once, as the
/// claim's does ([`CLAIM_PG`]); the log has no key, so its rows are named by
/// their place (`ctid`, which the lock keeps for the statement; `rowid` on SQLite).
const PURGE_PG: &str = "DELETE FROM mail_log WHERE ctid = ANY(ARRAY(SELECT ctid FROM mail_log \
    WHERE finished_at < $1 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)) \
    RETURNING subscriber_id, kind, status, finished_at, last_error";
const PURGE_SQLITE: &str = "DELETE FROM mail_log WHERE rowid IN (SELECT rowid FROM mail_log \
    WHERE finished_at < $1 ORDER BY finished_at LIMIT $2) \
    RETURNING subscriber_id, kind, status, finished_at, last_error";

/// One reader's purged mail of one day and kind.
#[derive(Default)]
struct DayTotals {
    sent: i64,
    failed: i64,
    /// The error of the latest failure, with its time.
    last_error: Option<(DateTime<Utc>, String)>,
}

/// A purged row: reader, kind, status, finished at, last error.
type PurgedRow = (
    Option<i64>,
    String,
    String,
    Option<DateTime<Utc>>,
    Option<String>,
);

impl Store {
    /// Claims up to `limit` mails due at `due_at` for the lease holder `owner` until
    /// `lease_until`; nobody else gets them before the lease runs out, and only the
    /// holder can renew it ([`Store::renew_mail_leases`]). Leases are measured on the
    /// system clock (`lease_now`): they are about how long a worker may take, not
    /// about the schedule, which may follow another clock.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn claim_mail(
        &self,
        due_at: DateTime<Utc>,
        lease_now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMail>> {
        let sql = if self.is_postgres() {
            CLAIM_PG
        } else {
            CLAIM_SQLITE
        };
        let postgres = self.is_postgres();
        let mut mails: Vec<ClaimedMail> = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if postgres {
                sqlx::query(CLAIM_PLANNING).execute(&mut *tx).await?;
            }
            let mails: Vec<ClaimedMail> = sqlx::query_as(sql)
                .bind(due_at)
                .bind(lease_until)
                .bind(i64::from(limit))
                .bind(lease_now)
                .bind(owner)
                .fetch_all(&mut *tx)
                .await?;
            // `mails_retried` counts mails attempted more than once.
            let mut tally = Tally::default();
            tally.add("mails_retried".to_owned(), mails.iter().filter(|m| m.attempts == 2).count() as i64);
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            mails
        });
        mails.sort_by_key(|m| m.id);
        Ok(mails)
    }

    /// Extends the lease of those of `ids` that `owner` still holds and that are
    /// still queued, in one statement, and returns them. A mail missing from the
    /// answer was claimed by another worker after the lease ran out, or withdrawn
    /// (an unsubscribe): the holder must not send it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn renew_mail_leases(
        &self,
        owner: i64,
        ids: &[i64],
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let kept: Vec<i64> = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new("UPDATE mail_jobs SET locked_until = ");
            q.push_bind(lease_until)
                .push(" WHERE status = 'queued' AND lease_owner = ")
                .push_bind(owner)
                .push(" AND id IN (");
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            list.push_unseparated(") RETURNING id");
            q.build_query_scalar().fetch_all(pool).await
        })?;
        Ok(kept)
    }

    /// Records the delivery of mails: each leaves the queue for the mail log, with
    /// its body (it may hold a link token, and only the history is needed from now
    /// on). A mail withdrawn meanwhile (unsubscribe, bounce) stays logged as that,
    /// and a mail recorded twice counts once. The delivery recorder
    /// calls this on a pool with relaxed commits ([`Store::with_relaxed_commits`]):
    /// the worker waits for the record before its next send, so a lost record can
    /// only mean the mail goes out once more, never that one is lost.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mails_sent(&self, ids: &[i64], now: DateTime<Utc>) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Self::Postgres(pool) => {
                let shard = i64::from(rand::random::<u8>()) % super::counters::SHARDS;
                // One statement, one round trip: the update and the counter commit
                // together on their own.
                sqlx::query(SENT_PG)
                    .bind(now)
                    .bind(ids)
                    .bind(shard)
                    .execute(pool)
                    .await?;
            }
            Self::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                let mut q = sqlx::QueryBuilder::new("DELETE FROM mail_jobs WHERE id IN (");
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                list.push_unseparated(")");
                q.push(RETIRED);
                let kinds = retire!(tx, q, "sent", None::<&str>, now);
                let mut tally = Tally::default();
                for kind in &kinds {
                    tally.mails(kind, Some("queued"), Some("sent"), 1);
                }
                flush_tally!(tally, &mut *tx);
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The plan the delivery record ([`Store::mails_sent`]) runs with on this
    /// store's PostgreSQL connections, as `EXPLAIN EXECUTE` shows it for the
    /// statement prepared on one of them (`None` on SQLite). For tests and
    /// diagnosis: on the recorder's pool ([`Store::with_relaxed_commits`]) it is
    /// the plan made once per connection.
    ///
    /// # Errors
    /// When the database fails.
    #[doc(hidden)]
    pub async fn mails_sent_plan(&self) -> StoreResult<Option<String>> {
        let Self::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut tx = pool.begin().await?;
        let plan = prepared_plan(
            &mut tx,
            "postbote_mails_sent",
            SENT_PG,
            "now(), '{1, 2}', 0",
        )
        .await?;
        tx.rollback().await?;
        Ok(Some(plan))
    }

    /// The plan the claim ([`Store::claim_mail`]) runs with on PostgreSQL, with
    /// its settings, as `EXPLAIN EXECUTE` shows it for the statement prepared on
    /// one of this store's connections (`None` on SQLite). For tests and diagnosis.
    ///
    /// # Errors
    /// When the database fails.
    #[doc(hidden)]
    pub async fn claim_mail_plan(&self) -> StoreResult<Option<String>> {
        let Self::Postgres(pool) = self else {
            return Ok(None);
        };
        let mut tx = pool.begin().await?;
        sqlx::query(CLAIM_PLANNING).execute(&mut *tx).await?;
        let plan = prepared_plan(
            &mut tx,
            "postbote_claim_mail",
            CLAIM_PG,
            "now(), now(), 16, now(), 1",
        )
        .await?;
        tx.rollback().await?;
        Ok(Some(plan))
    }

    /// Puts a mail that `owner` holds back for another attempt at `next_at`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_retry(
        &self,
        id: i64,
        owner: i64,
        next_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        let sql = "UPDATE mail_jobs SET next_attempt_at = $2, locked_until = NULL, lease_owner = NULL, \
                   last_error = $3 WHERE id = $1 AND lease_owner = $4 AND status = 'queued'";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(id)
            .bind(next_at)
            .bind(error)
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Gives a queued mail up for good (a 5xx, or too many attempts).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_failed(&self, id: i64, now: DateTime<Utc>, error: &str) -> StoreResult<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut q = sqlx::QueryBuilder::new("DELETE FROM mail_jobs WHERE status = 'queued' AND id = ");
            q.push_bind(id).push(RETIRED);
            let kinds = retire!(tx, q, "failed", Some(error), now);
            let mut tally = Tally::default();
            for kind in &kinds {
                tally.mails(kind, Some("queued"), Some("failed"), 1);
            }
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Hands a claimed mail that `owner` holds back without counting the attempt
    /// (at shutdown, or when the relay is unavailable), noting why if there is a
    /// reason.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_release(&self, id: i64, owner: i64, reason: Option<&str>) -> StoreResult<()> {
        let sql = "UPDATE mail_jobs SET locked_until = NULL, lease_owner = NULL, attempts = attempts - 1, \
                   last_error = COALESCE($2, last_error) \
                   WHERE id = $1 AND lease_owner = $3 AND status = 'queued' RETURNING attempts";
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let attempts: Option<i32> = sqlx::query_scalar(sql)
                .bind(id)
                .bind(reason)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
            // Back to one attempt: it no longer counts as retried.
            let mut tally = Tally::default();
            if attempts == Some(1) {
                tally.add("mails_retried".to_owned(), -1);
            }
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Mails waiting to be delivered (queued, including those being sent): a count
    /// over the queued rows' partial index, bounded by what is queued, not by the
    /// history.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn mail_queue_depth(&self) -> StoreResult<i64> {
        let sql = "SELECT COUNT(*) FROM mail_jobs WHERE status = 'queued'";
        let n = on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await)?;
        Ok(n)
    }

    /// Deletes up to `limit` logged (sent or failed) mails that finished before
    /// `cutoff`, oldest first, and adds them to their readers' `delivery_days` in
    /// the same transaction. Returns how many rows were deleted; call again until
    /// it returns less than `limit`. The counters are totals and stay as they are.
    /// Several instances may purge at once: on PostgreSQL each takes other rows.
    ///
    /// # Errors
    /// When the database fails; nothing is deleted then.
    pub async fn purge_finished_mail(&self, cutoff: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        use std::collections::BTreeMap;
        let postgres = self.is_postgres();
        let sql = if postgres { PURGE_PG } else { PURGE_SQLITE };
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let rows: Vec<PurgedRow> = sqlx::query_as(sql)
                .bind(cutoff)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            let deleted = rows.len() as u64;
            // Sorted by (reader, day, kind), so that two purges lock the rows they
            // share in the same order.
            let mut days: BTreeMap<(i64, NaiveDate, String), DayTotals> = BTreeMap::new();
            for (subscriber, kind, status, finished_at, last_error) in rows {
                let (Some(subscriber), Some(finished_at)) = (subscriber, finished_at) else {
                    continue;
                };
                let day = days.entry((subscriber, finished_at.date_naive(), kind)).or_default();
                if status == "sent" {
                    day.sent += 1;
                } else {
                    day.failed += 1;
                    if let Some(error) = last_error
                        && day.last_error.as_ref().is_none_or(|(at, _)| *at <= finished_at)
                    {
                        day.last_error = Some((finished_at, error));
                    }
                }
            }
            let days: Vec<_> = days.into_iter().collect();
            for chunk in days.chunks(1000) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO delivery_days (subscriber_id, day, kind, sent, failed, last_error) ",
                );
                if postgres {
                    q.push("SELECT * FROM (");
                }
                q.push_values(chunk, |mut row, ((subscriber, day, kind), totals)| {
                    row.push_bind(*subscriber)
                        .push_bind(*day)
                        .push_bind(kind.clone())
                        .push_bind(totals.sent)
                        .push_bind(totals.failed)
                        .push_bind(totals.last_error.as_ref().map(|(_, e)| e.clone()));
                });
                if postgres {
                    // A mail whose reader is gone (no foreign key holds it on
                    // PostgreSQL) goes without a history row.
                    q.push(
                        ") AS v (subscriber_id, day, kind, sent, failed, last_error) \
                         WHERE EXISTS (SELECT 1 FROM subscribers WHERE subscribers.id = v.subscriber_id)",
                    );
                }
                q.push(
                    " ON CONFLICT (subscriber_id, day, kind) DO UPDATE SET sent = delivery_days.sent + excluded.sent, \
                     failed = delivery_days.failed + excluded.failed, \
                     last_error = COALESCE(excluded.last_error, delivery_days.last_error)",
                );
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
    }
}

impl Store {
    /// Queues a mail for no reader (the console's test digest to an address the
    /// operator typed): delivered by the workers like any other, counted under its
    /// own kind, and nothing else changes.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn queue_test_mail(&self, mail: &NewMail, now: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let mut tally = Tally::default();
        tx.insert_mail(None, mail, now, None, &mut tally, Last::Write)
            .await?;
        tx.commit_with(tally).await
    }
}

impl Tx {
    /// Queues one mail for a reader, counted.
    pub(super) async fn queue_mail(
        &mut self,
        subscriber_id: i64,
        mail: &NewMail,
        now: DateTime<Utc>,
        tally: &mut Tally,
    ) -> StoreResult<()> {
        self.insert_mail(Some(subscriber_id), mail, now, None, tally, Last::Not)
            .await
            .map(|_| ())
    }

    /// [`Tx::queue_mail`] under `lease`, for one worker of this process: the mail
    /// as that worker would have claimed it.
    ///
    /// It must be the transaction's last write: on PostgreSQL the insert also
    /// writes `tally` (with this mail counted) to the counters and leaves it empty
    /// for the commit (see [`Tx::insert_mail`]).
    pub(super) async fn queue_leased_mail(
        &mut self,
        subscriber_id: i64,
        mail: NewMail,
        now: DateTime<Utc>,
        lease: LeaseTerms,
        tally: &mut Tally,
    ) -> StoreResult<LeasedBatch> {
        let owner: i64 = rand::random();
        let leased = Some((lease.until, owner));
        let id = self
            .insert_mail(Some(subscriber_id), &mail, now, leased, tally, Last::Write)
            .await?;
        Ok(LeasedBatch::one(owner, id, subscriber_id, mail))
    }

    /// Inserts one mail, for a reader or none (a console test mail), leased until
    /// a time to a holder if given (a leased mail
    /// counts its first attempt, as a claim does), counted in `tally`; returns its
    /// id. As the transaction's [`Last::Write`] on PostgreSQL, the same statement
    /// writes `tally` to the counters (a `WITH` query, one round trip fewer) and
    /// leaves it empty; otherwise the commit writes it (`Tx::commit_with`).
    async fn insert_mail(
        &mut self,
        subscriber_id: Option<i64>,
        mail: &NewMail,
        now: DateTime<Utc>,
        lease: Option<(DateTime<Utc>, i64)>,
        tally: &mut Tally,
        last: Last,
    ) -> StoreResult<i64> {
        tally.mails(mail.kind, None, Some("queued"), 1);
        let counted = match last {
            Last::Write if self.is_postgres() => std::mem::take(tally),
            _ => Tally::default(),
        };
        let rows = counted.rows();
        let id: i64 = on_tx!(self, tx => {
            let mut q = sqlx::QueryBuilder::new("");
            if !rows.is_empty() {
                q.push("WITH counted AS (");
                push_upsert!(q, rows);
                q.push(") ");
            }
            push_mail_insert!(q, subscriber_id, mail, now, lease);
            q.build_query_scalar().fetch_one(&mut *tx).await
        })?;
        Ok(id)
    }

    /// Withdraws the digests still queued for a reader who is no longer confirmed
    /// (left, bounced, complained): out of the queue, logged as failed with
    /// `reason`, counted.
    pub(super) async fn withdraw_digests(
        &mut self,
        subscriber_id: i64,
        now: DateTime<Utc>,
        reason: &str,
        tally: &mut Tally,
    ) -> StoreResult<()> {
        let withdrawn = on_tx!(self, tx => {
            let mut q = sqlx::QueryBuilder::new(
                "DELETE FROM mail_jobs WHERE status = 'queued' AND kind = 'digest' AND subscriber_id = ",
            );
            q.push_bind(subscriber_id)
                .push(" AND EXISTS (SELECT 1 FROM subscribers WHERE status <> 'confirmed' AND id = ")
                .push_bind(subscriber_id)
                .push(")")
                .push(RETIRED);
            retire!(tx, q, "failed", Some(reason), now)
        });
        tally.mails(
            "digest",
            Some("queued"),
            Some("failed"),
            withdrawn.len() as i64,
        );
        Ok(())
    }
}

/// `EXPLAIN EXECUTE` of `sql` prepared as `name` on `conn`, run with `args`; the
/// prepared statement is gone afterwards (it would outlive the transaction).
async fn prepared_plan(
    conn: &mut sqlx::PgConnection,
    name: &str,
    sql: &str,
    args: &str,
) -> sqlx::Result<String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE {name} AS {sql}")))
        .execute(&mut *conn)
        .await?;
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE {name}({args})"
    )))
    .fetch_all(&mut *conn)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE {name}")))
        .execute(&mut *conn)
        .await?;
    Ok(plan.join("\n"))
}
