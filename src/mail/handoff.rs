//! The hand-over from a digest pass to the delivery workers of the same process.
//!
//! A pass that runs inside `serve` queues its digests already leased, in batches
//! of a worker's size ([`LeaseTerms`]), and hands the batches to the workers here:
//! they send them as if they had claimed them, so a fan-out costs no claim (a write
//! per mail, and a walk over the queue's index) and no reading back. The queue rows
//! stay the truth: a handed batch carries the lease a claim would have written, so
//! a crash, or a worker that takes one late, leaves them to run out their lease and
//! be claimed again like any other mail, and a worker renews before sending what it
//! got late (`mail::delivery`). At shutdown what still waits is released at once,
//! as a worker releases what it did not send.
//!
//! After a full batch a pass waits while `room` mails wait ([`Handoff::room`]), so
//! the workers set its pace and no more is leased than they will take within
//! seconds; a batch finding no room is queued unleased ([`Handoff::terms`]). A process
//! with a send rate (`delivery.max_per_second`) has no room at all: it would only
//! hoard mail that other instances could send; its passes queue unleased mail for
//! whichever worker of whichever process claims it first, and never wait.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::{LeaseTerms, LeasedBatch};

/// Mails handed over, not yet taken by a worker.
#[derive(Debug)]
pub struct Handoff {
    /// The batches waiting, oldest first, and whether the workers have stopped.
    waiting: std::sync::Mutex<Waiting>,
    /// Mails that may wait at most (0: nothing is handed over).
    room: usize,
    /// Rung when a worker takes a batch (there may be room now) and on close.
    taken: Notify,
    /// Mails per batch: a worker's claim.
    per_owner: usize,
}

/// What is waiting.
#[derive(Debug, Default)]
struct Waiting {
    batches: VecDeque<Handed>,
    mails: usize,
    closed: bool,
}

/// A batch handed over: leased to its owner until `until` (this process's clock).
#[derive(Debug)]
pub struct Handed {
    /// The mails and their lease holder.
    pub batch: LeasedBatch,
    /// When the lease written with them runs out, at the latest.
    pub until: tokio::time::Instant,
}

impl Handoff {
    /// The hand-over for a process's delivery workers: a batch of
    /// [`crate::mail::delivery::BATCH`] per worker may wait; nothing is handed over
    /// when `delivery.max_per_second` paces them.
    #[must_use]
    pub fn for_workers(settings: &crate::config::Delivery) -> Self {
        let batch = crate::mail::delivery::BATCH as usize;
        let room = if settings.max_per_second == 0 {
            settings.workers * batch
        } else {
            0
        };
        Self::new(batch, room)
    }

    /// A hand-over of batches of `per_owner` mails that lets about `room` mails
    /// wait for a worker (none if `room` is 0).
    pub fn new(per_owner: usize, room: usize) -> Self {
        Self {
            waiting: std::sync::Mutex::default(),
            room,
            taken: Notify::new(),
            per_owner: per_owner.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Pushing and popping cannot leave the queue inconsistent on a panic.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until there is room for `wanted` more mails (or the queue is empty, if
    /// `wanted` is more than it ever holds), the workers have stopped, nothing is
    /// ever handed over (no room), or `patience` has passed (the workers may be
    /// waiting out a relay that is down: the pass then queues unleased mail rather
    /// than stall).
    pub async fn room(&self, patience: Duration, wanted: usize) {
        let _ = tokio::time::timeout(patience, self.until_room(wanted.min(self.room))).await;
    }

    async fn until_room(&self, wanted: usize) {
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            {
                let waiting = self.lock();
                if waiting.closed || self.room == 0 || waiting.mails + wanted <= self.room {
                    return;
                }
            }
            taken.await;
        }
    }

    /// The lease for mails queued now and handed over after, lasting `lease` from
    /// now on both clocks, for as many mails as there is room for; `None` while
    /// `room` mails wait or once the workers have stopped: the mails are then
    /// queued for any worker to claim.
    pub fn terms(&self, lease: Duration) -> Option<(LeaseTerms, tokio::time::Instant)> {
        let free = {
            let waiting = self.lock();
            if waiting.closed || waiting.mails >= self.room {
                return None;
            }
            self.room - waiting.mails
        };
        let started = tokio::time::Instant::now();
        let until = chrono::Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        Some((
            LeaseTerms {
                until,
                per_owner: self.per_owner,
                limit: free.div_ceil(self.per_owner) * self.per_owner,
            },
            started + lease,
        ))
    }

    /// Hands `batches` over, leased until `until`. Once the workers have stopped
    /// nothing is taken: the batches come back, for the caller to release
    /// ([`crate::mail::delivery::release_handed`]).
    #[must_use]
    pub fn give(&self, batches: Vec<LeasedBatch>, until: tokio::time::Instant) -> Vec<LeasedBatch> {
        let mut waiting = self.lock();
        if waiting.closed {
            return batches;
        }
        for batch in batches {
            waiting.mails += batch.mails.len();
            waiting.batches.push_back(Handed { batch, until });
        }
        Vec::new()
    }

    /// The oldest batch waiting, if any.
    pub fn take(&self) -> Option<Handed> {
        let handed = {
            let mut waiting = self.lock();
            let handed = waiting.batches.pop_front()?;
            waiting.mails -= handed.batch.mails.len();
            handed
        };
        self.taken.notify_waiters();
        Some(handed)
    }

    /// The workers have stopped: nothing is leased for them any more, no pass
    /// waits, and what still waits comes back, for the caller to release (so it is
    /// claimed at once after a restart, its attempt not counted).
    pub fn close(&self) -> Vec<LeasedBatch> {
        let waiting = {
            let mut waiting = self.lock();
            waiting.closed = true;
            waiting.mails = 0;
            std::mem::take(&mut waiting.batches)
        };
        self.taken.notify_waiters();
        waiting.into_iter().map(|h| h.batch).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ClaimedMail;

    fn batch(owner: i64, ids: std::ops::Range<i64>) -> LeasedBatch {
        LeasedBatch {
            owner,
            mails: ids
                .map(|id| ClaimedMail {
                    id,
                    subscriber_id: Some(id),
                    kind: "digest".into(),
                    recipient: format!("r{id}@example.org"),
                    envelope_from: "b@example.org".into(),
                    message: Vec::new(),
                    body_id: Some(1),
                    attempts: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn beyond_its_room_or_once_closed_nothing_is_leased() {
        let lease = Duration::from_secs(30);
        let handoff = Handoff::new(2, 4);
        let (terms, until) = handoff.terms(lease).expect("room");
        assert_eq!((terms.per_owner, terms.limit), (2, 4));
        assert!(terms.until > chrono::Utc::now() + chrono::Duration::seconds(29));
        assert!(handoff.give(vec![batch(1, 0..2)], until).is_empty());
        let (terms, _) = handoff.terms(lease).expect("2 of 4 wait");
        assert_eq!(terms.limit, 2, "leased: no more than there is room for");
        assert!(handoff.give(vec![batch(2, 2..4)], until).is_empty());
        assert!(
            handoff.terms(lease).is_none(),
            "4 of 4 wait: queued unleased"
        );
        let first = handoff.take().expect("a batch");
        assert_eq!(
            (first.batch.owner, first.batch.mails.len()),
            (1, 2),
            "oldest first"
        );
        assert!(handoff.terms(lease).is_some(), "room again after a take");
        let back = handoff.close();
        assert_eq!(
            back.iter().map(|b| b.owner).collect::<Vec<_>>(),
            [2],
            "what waits comes back"
        );
        assert!(handoff.terms(lease).is_none(), "workers stopped");
        assert!(handoff.take().is_none());
        let refused = handoff.give(vec![batch(3, 4..6)], until);
        assert_eq!(refused.len(), 1, "given after the close: back to the giver");
        assert!(handoff.take().is_none());
        assert!(
            Handoff::new(2, 0).terms(lease).is_none(),
            "no room: never leased"
        );
    }

    #[tokio::test]
    async fn a_pass_waits_for_room_until_a_worker_takes_a_batch() {
        let handoff = std::sync::Arc::new(Handoff::new(2, 4));
        let (_, until) = handoff.terms(Duration::from_secs(30)).expect("room");
        assert!(
            handoff
                .give(vec![batch(1, 0..2), batch(2, 2..4)], until)
                .is_empty()
        );
        let waiter = {
            let handoff = handoff.clone();
            tokio::spawn(async move { handoff.room(Duration::from_secs(60), 1).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "4 mails wait: no room");
        handoff.take().expect("a batch");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("room after a take")
            .expect("joined");
        assert!(
            tokio::time::timeout(
                Duration::from_millis(50),
                handoff.room(Duration::from_secs(60), 3)
            )
            .await
            .is_err(),
            "2 of 4 wait: no room for 3 more"
        );
        let full = Handoff::new(2, 2);
        assert!(full.give(vec![batch(3, 0..2)], until).is_empty());
        assert_eq!(full.close().len(), 1);
        tokio::time::timeout(
            Duration::from_secs(5),
            full.room(Duration::from_secs(60), 1),
        )
        .await
        .expect("a closed hand-over holds no pass back");
        tokio::time::timeout(
            Duration::from_secs(5),
            Handoff::new(2, 0).room(Duration::from_secs(60), 1),
        )
        .await
        .expect("no room: a pass never waits");
        let stuck = Handoff::new(2, 2);
        assert!(stuck.give(vec![batch(4, 0..2)], until).is_empty());
        tokio::time::timeout(
            Duration::from_secs(5),
            stuck.room(Duration::from_millis(20), 1),
        )
        .await
        .expect("workers that take nothing hold a pass back no longer than its patience");
    }
}
