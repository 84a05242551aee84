//! Counters for `/api/v1/stats` and `/metrics`, kept in table `counters` so that
//! reading them ([`Store::stats`]) costs a few dozen rows, never a scan of
//! `mail_jobs` or `subscribers`.
//!
//! A transaction that changes counted state (a reader's status, a mail's status, a
//! mail's second attempt, a mail event) collects its changes in a [`Tally`] and
//! writes them with [`flush_tally!`] as its LAST statement before the commit, so a
//! counter moves exactly when the state it counts does. (On PostgreSQL a mail
//! inserted as its transaction's last write carries the same upsert,
//! [`push_upsert!`], as a `WITH` query of its insert: `Tx::insert_mail`.)
//!
//! Each counter is split over [`SHARDS`] rows (`name`, `shard`); a transaction
//! writes to one shard picked at random, and a reader sums the shards. Concurrent
//! sign-ups or deliveries therefore rarely wait for each other's counter row, and
//! because every transaction takes its counter rows last and in name order, two of
//! them can never deadlock over counters.
//!
//! Names: `subscribers:<status>` (current count); per mail kind the totals
//! `mails:<kind>:enqueued`, `mails:<kind>:sent`, `mails:<kind>:failed` and
//! `mails:<kind>:dropped` (queued mail deleted unsent: erasure, purge of unconfirmed
//! sign-ups), none of which a deletion of finished rows (the retention purge) lowers;
//! the mails queued now are `enqueued - sent - failed - dropped`, so that recording
//! a delivery, the hot path of a fan-out, moves one counter row, not two;
//! `mails_retried` (mails that were attempted a second time), `mail_events:<kind>`
//! (totals).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{LimitScope, Store, StoreResult, on_pool};
use crate::domain::{MailEventKind, SubscriberStatus};

/// Rows each counter is spread over: twice the connections that commonly write at
/// once (32 sign-ups or 32 delivery workers), so that few transactions wait for
/// another's counter row while it commits (with 8, the counter upsert was the
/// slowest statement of a sign-up, 0.44 ms on average, most of it waiting).
pub(super) const SHARDS: i64 = 64;

/// The upsert that adds a tally to the counters; rows are bound after it.
pub(super) const UPSERT_HEAD: &str = "INSERT INTO counters (name, shard, value) ";
/// Its conflict clause.
pub(super) const UPSERT_TAIL: &str =
    " ON CONFLICT (name, shard) DO UPDATE SET value = counters.value + excluded.value";

/// Counter changes a transaction makes, by counter name (sorted, see the module doc).
#[derive(Debug, Default)]
pub(super) struct Tally(BTreeMap<String, i64>);

impl Tally {
    /// Adds `delta` to counter `name`.
    pub(super) fn add(&mut self, name: String, delta: i64) {
        if delta != 0 {
            *self.0.entry(name).or_insert(0) += delta;
        }
    }

    /// `n` readers moved from status `from` to status `to` (`None`: created or deleted).
    pub(super) fn subscribers(
        &mut self,
        from: Option<SubscriberStatus>,
        to: Option<SubscriberStatus>,
        n: i64,
    ) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            self.add(format!("subscribers:{from}"), -n);
        }
        if let Some(to) = to {
            self.add(format!("subscribers:{to}"), n);
        }
    }

    /// `n` mails of `kind` moved from status `from` to status `to` (`None`: queued
    /// anew, or deleted). Only leaving `queued` counts: into `sent` or `failed`, or
    /// `dropped` when deleted unsent; deleting finished rows (the retention purge,
    /// an erasure) leaves the totals alone.
    pub(super) fn mails(&mut self, kind: &str, from: Option<&str>, to: Option<&str>, n: i64) {
        match (from, to) {
            (None, Some("queued")) => self.add(format!("mails:{kind}:enqueued"), n),
            (Some("queued"), Some(to @ ("sent" | "failed"))) => {
                self.add(format!("mails:{kind}:{to}"), n);
            }
            (Some("queued"), None) => self.add(format!("mails:{kind}:dropped"), n),
            _ => {}
        }
    }

    /// A mail event of `kind` was recorded.
    pub(super) fn event(&mut self, kind: MailEventKind) {
        self.add(format!("mail_events:{kind}"), 1);
    }

    /// The rows to upsert, in name order, on one random shard; empty when nothing
    /// changed.
    pub(super) fn rows(&self) -> Vec<(&str, i64, i64)> {
        let shard = i64::from(rand::random::<u8>()) % SHARDS;
        self.0
            .iter()
            .filter(|(_, delta)| **delta != 0)
            .map(|(name, delta)| (name.as_str(), shard, *delta))
            .collect()
    }
}

/// Writes a [`Tally`] inside the open transaction `$tx` (an executor such as
/// `&mut *tx`), as the last statement before the commit. Expands in place so that
/// it compiles against either backend's connection inside `on_pool!`.
macro_rules! flush_tally {
    ($tally:expr, $tx:expr) => {{
        let rows = $tally.rows();
        if !rows.is_empty() {
            let mut q = sqlx::QueryBuilder::new("");
            $crate::store::counters::push_upsert!(q, rows);
            q.build().execute($tx).await?;
        }
    }};
}
pub(super) use flush_tally;

/// Pushes the upsert of `$rows` (a non-empty [`Tally::rows`]) onto the query
/// builder `$q`: the statement of [`flush_tally!`], or a `WITH` query of another
/// statement that is the transaction's last write.
macro_rules! push_upsert {
    ($q:expr, $rows:expr) => {{
        $q.push($crate::store::counters::UPSERT_HEAD);
        $q.push_values($rows, |mut row, (name, shard, delta)| {
            row.push_bind(name.to_owned())
                .push_bind(shard)
                .push_bind(delta);
        });
        $q.push($crate::store::counters::UPSERT_TAIL);
    }};
}
pub(super) use push_upsert;

/// Counters for `/api/v1/stats` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Subscribers by status.
    pub subscribers: BTreeMap<String, i64>,
    /// Mails waiting for delivery.
    pub queue_depth: i64,
    /// Mails by kind and final status: `{"digest": {"sent": 3, "failed": 1}}`.
    pub mails: BTreeMap<String, BTreeMap<String, i64>>,
    /// Mails that needed more than one attempt.
    pub retried: i64,
    /// Digests sent.
    pub digests_sent: i64,
    /// Digests given up.
    pub digests_failed: i64,
    /// Feeds, and how they are doing.
    pub feeds: FeedStats,
    /// Bounces, complaints and unsubscribe replies, by kind.
    pub mail_events: BTreeMap<String, i64>,
    /// Sign-ups refused by each limit: `client`, `mailbox`, `domain`, `global`.
    pub rate_limited: BTreeMap<String, i64>,
}

/// Feed health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedStats {
    /// Feeds configured.
    pub total: i64,
    /// Feeds whose last poll failed.
    pub failing: i64,
    /// Failed polls ever, by feed name.
    pub failures: BTreeMap<String, i64>,
}

impl Store {
    /// Counters for monitoring: read from table `counters` (a few rows per counter)
    /// and the feeds, so the cost does not grow with readers or mail history.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn stats(&self) -> StoreResult<Stats> {
        on_pool!(self, pool => {
            let mut stats = Stats::default();
            for status in SubscriberStatus::ALL {
                stats.subscribers.insert(status.as_str().to_owned(), 0);
            }
            for limit in LimitScope::ALL {
                stats.rate_limited.insert(limit.as_str().to_owned(), 0);
            }
            let counters: Vec<(String, i64)> = sqlx::query_as(
                "SELECT name, CAST(SUM(value) AS BIGINT) FROM counters GROUP BY name",
            )
            .fetch_all(pool)
            .await?;
            // Per kind: enqueued, sent, failed, dropped (see `store::counters`).
            let mut mail_totals: BTreeMap<String, [i64; 4]> = BTreeMap::new();
            for (name, value) in counters {
                let mut parts = name.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("subscribers"), Some(status), None) => {
                        stats.subscribers.insert(status.to_owned(), value);
                    }
                    (Some("mails_retried"), None, None) => stats.retried = value,
                    (Some("mails"), Some(kind), Some(status)) => {
                        let totals = mail_totals.entry(kind.to_owned()).or_insert([0; 4]);
                        match status {
                            "enqueued" => totals[0] = value,
                            "sent" => totals[1] = value,
                            "failed" => totals[2] = value,
                            "dropped" => totals[3] = value,
                            _ => {}
                        }
                    }
                    (Some("mail_events"), Some(kind), None) if value != 0 => {
                        stats.mail_events.insert(kind.to_owned(), value);
                    }
                    (Some("rate_limited"), Some(limit), None) => {
                        stats.rate_limited.insert(limit.to_owned(), value);
                    }
                    _ => {}
                }
            }
            for (kind, [enqueued, sent, failed, dropped]) in mail_totals {
                let queued = enqueued - sent - failed - dropped;
                stats.queue_depth += queued;
                if kind == "digest" {
                    (stats.digests_sent, stats.digests_failed) = (sent, failed);
                }
                // As before the counters: statuses without mail are left out.
                let by_status: BTreeMap<String, i64> = [("queued", queued), ("sent", sent), ("failed", failed)]
                    .into_iter()
                    .filter(|(_, n)| *n != 0)
                    .map(|(status, n)| (status.to_owned(), n))
                    .collect();
                if !by_status.is_empty() {
                    stats.mails.insert(kind, by_status);
                }
            }
            let feeds: Vec<(String, i32, i64)> = sqlx::query_as("SELECT name, failures, failures_total FROM feeds")
                .fetch_all(pool)
                .await?;
            for (name, in_a_row, total) in feeds {
                stats.feeds.total += 1;
                stats.feeds.failing += i64::from(in_a_row > 0);
                stats.feeds.failures.insert(name, total);
            }
            Ok(stats)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_moves_gauges_and_keeps_totals() {
        let mut t = Tally::default();
        t.subscribers(None, Some(SubscriberStatus::Pending), 1);
        t.subscribers(
            Some(SubscriberStatus::Pending),
            Some(SubscriberStatus::Confirmed),
            1,
        );
        t.mails("digest", None, Some("queued"), 3);
        t.mails("digest", Some("queued"), Some("sent"), 2);
        t.mails("digest", Some("sent"), None, 2);
        t.mails("digest", Some("queued"), None, 1);
        t.event(MailEventKind::HardBounce);
        let rows: Vec<(&str, i64)> = t.rows().into_iter().map(|(n, _, d)| (n, d)).collect();
        assert_eq!(
            rows,
            [
                ("mail_events:hard_bounce", 1),
                ("mails:digest:dropped", 1),
                ("mails:digest:enqueued", 3),
                ("mails:digest:sent", 2),
                ("subscribers:confirmed", 1),
            ],
            "pending: +1 -1 = 0; deleting sent rows keeps the total"
        );
        assert!(
            t.rows()
                .iter()
                .all(|(_, shard, _)| (0..SHARDS).contains(shard))
        );
    }
}
