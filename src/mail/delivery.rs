//! Delivery workers: claim due mails from the queue, send them, record the outcome;
//! and the retention task that purges finished mail after `delivery.keep_days`.
//!
//! Each worker owns one [`Sender`] (one SMTP connection), so `delivery.workers`
//! bounds the concurrency towards the relay. A batch that a pass or a sign-up of
//! this process queued already leased is taken from the [`Handoff`] instead of
//! claimed. Mails are claimed with a short [`LEASE`] that a heartbeat renews every
//! [`HEARTBEAT`] while the worker holds them; a worker that dies stops renewing and
//! its mails are claimed again within the lease. A digest is queued as a reference to its shared body: the worker
//! loads the bodies of a claimed batch once ([`BodyCache`]), adds the reader's part
//! and signs the mail while the previous one is on the wire or being recorded.
//! Every delivery is recorded before the worker sends its next mail, so a crash
//! repeats at most the one mail per worker that was in flight; the [`Recorder`]
//! writes the deliveries of all workers that wait at the same moment in one
//! statement (a group commit), so recording does not cost a round trip per mail.
//! Shutdown is checked between mails: a send in progress is always finished.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::compose::{Composer, DigestBody, PreparedBody};
use super::dkim::Signer;
use super::handoff::{Handed, Handoff};
use super::transport::{SendError, Sender};
use crate::clock::Clock;
use crate::config::{Delivery, Transport};
use crate::domain::MailEventKind;
use crate::store::{ClaimedMail, EventEffect, LeasedBatch, Store, StoreResult};

/// Mails one worker claims at a time.
pub const BATCH: u32 = 32;
/// Bytes of encoded digest bodies a process keeps in memory, the oldest loaded
/// going first: enough for a fan-out of three thousand distinct bodies of 16 KB
/// (every reader's mail refers to one of them, in no particular order), which
/// are then rendered and encoded once instead of being read back from the
/// database and encoded again. Readers with three of twenty topics in two
/// languages make 2,280 bodies; with room for only 24 MB of them, half were read
/// back and encoded a second time, a tenth of a fan-out's time, and peak memory
/// was no lower (each reload allocated as much again for a moment).
const BODY_CACHE_BYTES: usize = 48 << 20;
/// How often an idle worker other than the lookout looks for due mail on its own:
/// only a safety net, as the lookout wakes the others when it finds a full batch.
const IDLE_POLL: Duration = Duration::from_secs(60);
/// How long an idle worker keeps its SMTP connection open for the next mail: a
/// connection per mail costs a TCP handshake, `EHLO` (and TLS) and `QUIT` on both
/// sides. Well below the idle limits of relays and `transport`'s 20 s.
const KEEP_OPEN: Duration = Duration::from_secs(5);
/// Deliveries written in one statement at most.
const RECORD_ROUND: usize = 512;
/// Most deliveries a recording round waits for ([`ROUND_WAIT`] at most) before it
/// writes them: half the workers of its task, at most this (with the default 64
/// workers a round of 32 kept workers waiting longer than its statement saved).
const ROUND_TARGET: usize = 16;
/// How long a recording round waits for more deliveries after its first.
const ROUND_WAIT: Duration = Duration::from_millis(2);
/// Bodies no queued mail refers to are deleted once they are this old. A pass
/// that reuses a stored body older than `BODY_REFRESH` (an hour, well inside
/// this) gives it a new age first, so none is taken from under a pass.
const BODY_GRACE: chrono::Duration = chrono::Duration::days(1);

/// What a worker needs.
#[derive(Clone)]
pub struct DeliveryContext {
    /// The queue.
    pub store: Store,
    /// Time source for leases and back-off.
    pub clock: Arc<dyn Clock>,
    /// Worker settings.
    pub settings: Delivery,
    /// Where mail goes.
    pub transport: Transport,
    /// Rung when new mail is queued, so workers need not wait for the next poll.
    pub wake: Arc<Notify>,
    /// Signs every mail just before it is sent, when DKIM is configured.
    pub signer: Option<Arc<Signer>>,
    /// Spaces sends out to `delivery.max_per_second`, shared by all workers.
    pub pace: Arc<Pace>,
    /// Adds each reader's part to a digest's body.
    pub composer: Composer,
    /// The digest bodies of the mails being sent, shared by all workers.
    pub bodies: Arc<BodyCache>,
    /// Records the workers' deliveries together.
    pub recorder: Recorder,
    /// Batches a digest pass of this process queued already leased for the
    /// workers; taken before any claim.
    pub handoff: Arc<Handoff>,
}

/// Digest bodies by id, loaded and encoded once for all the mails that refer to
/// them, within [`BODY_CACHE_BYTES`].
#[derive(Debug, Default)]
pub struct BodyCache {
    loaded: std::sync::Mutex<Loaded>,
}

/// What a [`BodyCache`] holds, and in which order it was loaded.
#[derive(Debug, Default)]
struct Loaded {
    bodies: std::collections::HashMap<i64, Arc<PreparedBody>>,
    order: std::collections::VecDeque<i64>,
    bytes: usize,
}

impl Loaded {
    /// Keeps `body`, letting the oldest go while over `budget` bytes.
    fn keep(&mut self, id: i64, body: Arc<PreparedBody>, budget: usize) {
        self.bytes += body.size();
        if let Some(old) = self.bodies.insert(id, body) {
            self.bytes -= old.size();
        } else {
            self.order.push_back(id);
        }
        while self.bytes > budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.bodies.remove(&oldest) {
                self.bytes -= gone.size();
            }
        }
    }
}

impl BodyCache {
    /// Keeps `body`, stored as `id`, for the workers: a digest pass of this
    /// process offers each body it rendered.
    pub fn offer(&self, id: i64, body: Arc<PreparedBody>) {
        self.lock().keep(id, body, BODY_CACHE_BYTES);
    }

    /// Whether the body stored as `id` is held.
    pub fn holds(&self, id: i64) -> bool {
        self.lock().bodies.contains_key(&id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bodies `mails` refer to: from memory, the others read in one query and
    /// encoded. The batch keeps what it gets, whatever other batches load meanwhile.
    async fn load(&self, store: &Store, mails: &[ClaimedMail]) -> StoreResult<BatchBodies> {
        let mut wanted: Vec<i64> = mails.iter().filter_map(|m| m.body_id).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut bodies = BatchBodies::new();
        let mut missing = Vec::new();
        {
            let loaded = self.lock();
            for id in wanted {
                match loaded.bodies.get(&id) {
                    Some(body) => {
                        bodies.insert(id, body.clone());
                    }
                    None => missing.push(id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(bodies);
        }
        let stored = store.digest_bodies(&missing).await?;
        let prepared: Vec<(i64, Arc<PreparedBody>)> = stored
            .into_iter()
            .map(|b| {
                let body = DigestBody::new(b.locale, b.subject, b.text, b.html, b.topics);
                (b.id, Arc::new(body.prepare()))
            })
            .collect();
        let mut loaded = self.lock();
        for (id, body) in prepared {
            loaded.keep(id, body.clone(), BODY_CACHE_BYTES);
            bodies.insert(id, body);
        }
        Ok(bodies)
    }
}

/// The digest bodies of one claimed batch, by id.
type BatchBodies = std::collections::HashMap<i64, Arc<PreparedBody>>;

/// A sent mail handed to the [`Recorder`], and where to say whether it was recorded.
type SentMail = (i64, tokio::sync::oneshot::Sender<bool>);

/// Records the deliveries of all workers of a process: each worker hands over the
/// mail it sent and waits for the record before it sends the next. A few recording
/// tasks share the hand-over queue; each takes whatever is waiting when it is free,
/// waits a moment for more (see [`record_rounds`]), and writes the round in one
/// statement, so while one round is in the database the next one is already being
/// gathered (a group commit that never stands still).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// To the recording tasks.
    queue: tokio::sync::mpsc::UnboundedSender<SentMail>,
}

impl Recorder {
    /// Starts `tasks` recording tasks writing through `store`; they end when the
    /// last clone of this is dropped.
    pub fn start(store: Store, clock: Arc<dyn Clock>, tasks: usize, workers: usize) -> Self {
        let (queue, sent) = tokio::sync::mpsc::unbounded_channel::<SentMail>();
        let sent = Arc::new(tokio::sync::Mutex::new(sent));
        // Half the workers of a task: a round then never waits for the last
        // worker still talking to a slow relay.
        let target = (workers / tasks.max(1) / 2).clamp(1, ROUND_TARGET);
        for _ in 0..tasks.max(1) {
            tokio::spawn(record_rounds(
                store.clone(),
                clock.clone(),
                sent.clone(),
                target,
            ));
        }
        Self { queue }
    }

    /// How many recording tasks suit `workers` delivery workers on `store`: one per
    /// 64 workers on PostgreSQL, one on SQLite (it has a single writer). Fewer,
    /// larger rounds cost the database far less than many small ones (a statement
    /// costs about the same for one row as for twenty), and the workers waiting on
    /// a round are what fills the next one.
    pub fn tasks_for(store: &Store, workers: usize) -> usize {
        if store.is_postgres() {
            workers.div_ceil(64)
        } else {
            1
        }
    }

    /// Records mail `id` as sent; whether that worked.
    async fn sent(&self, id: i64) -> bool {
        let (done, recorded) = tokio::sync::oneshot::channel();
        if self.queue.send((id, done)).is_err() {
            return false;
        }
        recorded.await.unwrap_or(false)
    }
}

/// One recording task: takes the mails waiting (up to [`RECORD_ROUND`]) while it
/// holds the queue, until it has `target` of them or [`ROUND_WAIT`] has passed
/// since the first, writes them in one statement, tells each worker.
async fn record_rounds(
    store: Store,
    clock: Arc<dyn Clock>,
    sent: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<SentMail>>>,
    target: usize,
) {
    loop {
        let round = {
            let mut sent = sent.lock().await;
            let Some(first) = sent.recv().await else {
                return;
            };
            let mut round = vec![first];
            // Workers that are ready to run (their relay has answered) get a turn
            // first and join this round; then it waits for more, up to `target`
            // mails or `ROUND_WAIT` after its first. A statement costs the
            // database about as much as six of its rows: a fan-out of 20,000 short
            // digests took 1,900-2,200 statements of 9-10 rows, with rounds of
            // 16 about 1,130, and PostgreSQL about 10 % less CPU. A
            // worker waits at most `ROUND_WAIT` longer for its record; a lone
            // mail (a confirmation) is recorded that much later.
            let deadline = tokio::time::Instant::now() + ROUND_WAIT;
            loop {
                tokio::task::yield_now().await;
                let before = round.len();
                while round.len() < RECORD_ROUND {
                    match sent.try_recv() {
                        Ok(next) => round.push(next),
                        Err(_) => break,
                    }
                }
                if round.len() >= target {
                    break;
                }
                if round.len() == before {
                    match tokio::time::timeout_at(deadline, sent.recv()).await {
                        Ok(Some(next)) => round.push(next),
                        _ => break,
                    }
                }
            }
            round
        };
        let ids: Vec<i64> = round.iter().map(|(id, _)| *id).collect();
        let recorded = match store.mails_sent(&ids, clock.now()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, count = ids.len(), "recording deliveries failed");
                false
            }
        };
        for (_, done) in round {
            let _ = done.send(recorded);
        }
    }
}

/// A send rate shared by the workers of a process: each send takes the next free
/// slot, `1/rate` seconds after the previous one.
#[derive(Debug)]
pub struct Pace {
    /// Time between two sends; zero means no limit.
    interval: Duration,
    /// The next free slot.
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    /// A pace of `per_second` sends (0: unlimited).
    pub fn new(per_second: u32) -> Self {
        let interval = if per_second == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / per_second
        };
        Self {
            interval,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Whether sends are spaced at all.
    pub fn spaces(&self) -> bool {
        !self.interval.is_zero()
    }

    /// Waits for this send's slot.
    pub async fn wait(&self) {
        if !self.spaces() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// How long a claimed mail stays leased without a renewal: the longest a dead
/// process's mail waits before another worker (of any process) claims it.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a worker renews the lease of the mails it still holds.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A worker sends the next mail only while its lease is known to hold at least this
/// long; otherwise it renews first and learns whether the mails are still its own.
const LEASE_MARGIN: Duration = Duration::from_secs(15);
/// How often the retention task looks for finished mail past `delivery.keep_days`.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// Finished mails the retention task deletes per transaction.
const RETENTION_BATCH: u32 = 1000;

/// The lease on one claimed batch, shared by the worker and its heartbeat.
struct Lease {
    /// The random token the claim wrote into `mail_jobs.lease_owner`: renewals
    /// touch only rows that still carry it.
    owner: i64,
    /// What the heartbeat renews, and until when.
    held: std::sync::Mutex<Held>,
}

/// The mails a lease still covers.
struct Held {
    /// Claimed mails whose outcome is not recorded yet (delivered but unrecorded
    /// ones included: letting their lease run out would send them again).
    ids: Vec<i64>,
    /// Until when the lease on them is known to hold, on this process's monotonic
    /// clock: the start of the last successful claim or renewal plus [`LEASE`].
    until: tokio::time::Instant,
}

impl Lease {
    fn new(owner: i64, ids: Vec<i64>, until: tokio::time::Instant) -> Self {
        Self {
            owner,
            held: std::sync::Mutex::new(Held { ids, until }),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding this lock cannot leave it inconsistent.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Extends the lease on the mails still held; those the database no longer
    /// shows as ours (claimed by another worker after a stall, or withdrawn) are
    /// dropped from the batch.
    async fn renew(&self, store: &Store) -> StoreResult<()> {
        let ids = self.held().ids.clone();
        let started = tokio::time::Instant::now();
        let until = chrono::Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let kept = store.renew_mail_leases(self.owner, &ids, until).await?;
        let mut held = self.held();
        let lost = held.ids.iter().filter(|id| !kept.contains(id)).count();
        if lost > 0 {
            tracing::warn!(
                lost,
                "claimed mails are no longer ours; they are not sent by this worker"
            );
        }
        held.ids.retain(|id| kept.contains(id));
        held.until = started + LEASE;
        Ok(())
    }

    /// Whether mail `id` may be sent now: the lease holds for a while yet, or a
    /// renewal just showed that it does. `None` when that cannot be known (the
    /// database does not answer).
    async fn may_send(&self, store: &Store, id: i64) -> Option<bool> {
        let fresh = self.held().until > tokio::time::Instant::now() + LEASE_MARGIN;
        if !fresh && let Err(e) = self.renew(store).await {
            tracing::warn!(error = %e, "renewing the lease failed; the rest of the batch is left to its lease");
            return None;
        }
        Some(self.holds(id))
    }

    /// Whether mail `id` is still covered, as far as this process knows.
    fn holds(&self, id: i64) -> bool {
        self.held().ids.contains(&id)
    }

    /// The mail's outcome is recorded: the lease no longer needs to cover it.
    fn done(&self, id: i64) {
        self.held().ids.retain(|held| *held != id);
    }
}

/// Renews a batch's lease every [`HEARTBEAT`], also while a slow SMTP transaction
/// is in progress; aborted when dropped, i.e. when the batch is done.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(store: Store, lease: Arc<Lease>) -> Self {
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = lease.renew(&store).await {
                    tracing::warn!(error = %e, "renewing the lease on claimed mail failed");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one worker until `cancel` fires. One worker per process is the `lookout`:
/// when idle it looks for due mail every `delivery.poll_interval` (retries, other
/// instances' mail); the others sleep until mail is queued in this process or a
/// worker claims a full batch (there may be more), so an idle process asks the
/// database once per interval, however many workers it runs.
pub async fn run_worker(ctx: DeliveryContext, cancel: CancellationToken, lookout: bool) {
    let mut sender = Sender::new(ctx.transport.clone(), ctx.settings.smtp_timeout);
    let mut relay_failures: i32 = 0;
    // After a batch handed over and sent, with no wake rung meanwhile, an empty
    // hand-over means nothing new: whoever queues mail for a claim rings the wake.
    // The worker then waits instead of asking the database for nothing.
    let mut handed_last = false;
    while !cancel.is_cancelled() {
        let wake = ctx.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();

        let next = match next_batch(&ctx, std::mem::take(&mut handed_last)).await {
            Ok(Some(next)) => {
                // A full claim: there may be more in the queue. (A pass wakes one
                // worker per batch it hands over.)
                if next.claimed && next.mails.len() == BATCH as usize {
                    ctx.wake.notify_waiters();
                }
                next
            }
            Ok(None) => {
                idle(&ctx, &mut sender, &cancel, wake, lookout).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming mail failed; retrying");
                wait(&cancel, ctx.settings.poll_interval, None).await;
                continue;
            }
        };
        let lease = Arc::new(Lease::new(
            next.owner,
            next.mails.iter().map(|m| m.id).collect(),
            next.until,
        ));
        let work = Batch {
            mails: &next.mails,
            bodies: &next.bodies,
            lease: &lease,
        };
        let relay_down = serve_batch(&ctx, &mut sender, &work, &cancel).await;
        // Rung while this batch was sent (this wake is dropped at the loop's end)?
        let woken = tokio::select! {
            biased;
            () = wake.as_mut() => true,
            () = std::future::ready(()) => false,
        };
        handed_last = !next.claimed && !woken && relay_down.is_none();
        match relay_down {
            Some(reason) => {
                // The relay is the problem, not the mails: they keep their attempts
                // and wait, however long the outage lasts.
                relay_failures = relay_failures.saturating_add(1);
                let pause = backoff(&ctx.settings, relay_failures);
                tracing::warn!(%reason, retry_in = ?pause, "relay unavailable; mail stays queued");
                wait(&cancel, pause, None).await;
            }
            None => relay_failures = 0,
        }
    }
    sender.close().await;
}

/// Nothing due: waits for new mail, the poll interval (the lookout) or shutdown.
/// The connection stays open for a moment, as mail comes in runs (sign-ups one by
/// one); then it is closed while idle.
async fn idle(
    ctx: &DeliveryContext,
    sender: &mut Sender,
    cancel: &CancellationToken,
    mut wake: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    lookout: bool,
) {
    let poll = if lookout {
        ctx.settings.poll_interval
    } else {
        IDLE_POLL
    };
    let mut rest = poll;
    if sender.is_open() {
        let keep = poll.min(KEEP_OPEN);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.as_mut() => return,
            () = tokio::time::sleep(keep) => sender.close().await,
        }
        rest = poll.saturating_sub(keep);
    }
    wait(cancel, rest, Some(wake)).await;
}

/// A batch to send.
struct NextBatch {
    /// Its lease holder.
    owner: i64,
    /// The mails, by id.
    mails: Vec<ClaimedMail>,
    /// The digest bodies they refer to.
    bodies: BatchBodies,
    /// Until when the lease holds, at the latest.
    until: tokio::time::Instant,
    /// Claimed from the queue, not handed over.
    claimed: bool,
}

/// The next batch: one a pass handed over, or else one claimed from the queue;
/// `None` when nothing is due, or when `no_claim` and nothing was handed over.
async fn next_batch(ctx: &DeliveryContext, no_claim: bool) -> StoreResult<Option<NextBatch>> {
    if let Some(Handed {
        batch: LeasedBatch { owner, mails },
        until,
    }) = ctx.handoff.take()
    {
        let bodies = load_bodies(ctx, owner, &mails).await?;
        return Ok(Some(NextBatch {
            owner,
            mails,
            bodies,
            until,
            claimed: false,
        }));
    }
    if no_claim {
        return Ok(None);
    }
    let owner: i64 = rand::random();
    let claimed_at = tokio::time::Instant::now();
    let now = ctx.clock.now();
    let real_now = chrono::Utc::now();
    let lease_length = chrono::Duration::from_std(LEASE).unwrap_or_default();
    let mails = ctx
        .store
        .claim_mail(now, real_now, real_now + lease_length, owner, BATCH)
        .await?;
    if mails.is_empty() {
        return Ok(None);
    }
    let bodies = load_bodies(ctx, owner, &mails).await?;
    Ok(Some(NextBatch {
        owner,
        mails,
        bodies,
        until: claimed_at + LEASE,
        claimed: true,
    }))
}

/// Loads the digest bodies `batch` refers to; if that fails, the mails go back
/// untouched and are claimed again.
async fn load_bodies(
    ctx: &DeliveryContext,
    owner: i64,
    batch: &[ClaimedMail],
) -> StoreResult<BatchBodies> {
    match ctx.bodies.load(&ctx.store, batch).await {
        Ok(bodies) => Ok(bodies),
        Err(e) => {
            for mail in batch {
                let _ = ctx.store.mail_release(mail.id, owner, None).await;
            }
            Err(e)
        }
    }
}

/// A claimed batch: its mails, their digest bodies, the lease on them.
struct Batch<'a> {
    /// The mails, oldest first.
    mails: &'a [ClaimedMail],
    /// The bodies the digests among them refer to.
    bodies: &'a BatchBodies,
    /// Held while the mails are worked on.
    lease: &'a Arc<Lease>,
}

/// Sends a claimed batch while its lease holds, each mail built (and signed) while
/// the one before is on the wire or being recorded; gives back what it did not
/// send. Returns why the relay was unavailable, if it was.
async fn serve_batch(
    ctx: &DeliveryContext,
    sender: &mut Sender,
    batch: &Batch<'_>,
    cancel: &CancellationToken,
) -> Option<String> {
    let (mails, lease) = (batch.mails, batch.lease);
    let heartbeat = Heartbeat::start(ctx.store.clone(), lease.clone());
    let mut relay_down = None;
    let mut unrecorded = Vec::new();
    let mut next = prepare(ctx, batch, 0).await;
    for (i, mail) in mails.iter().enumerate() {
        let prepared = next.take();
        if !lease.holds(mail.id) {
            // Lost or withdrawn: no send slot is spent on it.
            next = prepare(ctx, batch, i + 1).await;
            continue;
        }
        ctx.pace.wait().await;
        // Sent only while the lease is ours: a worker that stalled past its
        // lease learns here that another may have claimed the rest.
        match lease.may_send(&ctx.store, mail.id).await {
            Some(true) => {}
            Some(false) => {
                next = prepare(ctx, batch, i + 1).await;
                continue;
            }
            None => break,
        }
        // The next mail's envelope goes ahead with this one's final dot (one
        // round trip per mail), unless it has to wait for a send slot or the
        // worker is stopping: the relay would wait for its message meanwhile.
        let following = mails
            .get(i + 1)
            .filter(|next| lease.holds(next.id) && !ctx.pace.spaces() && !cancel.is_cancelled());
        let send = send_and_record(ctx, sender, mail, prepared, following, lease);
        let (outcome, following) = tokio::join!(send, prepare(ctx, batch, i + 1));
        next = following;
        match outcome {
            Recorded::Yes => {}
            // Recorded before the next mail goes out, or kept for one more try: a
            // crash repeats at most the one mail per worker whose record had not
            // committed.
            Recorded::No => unrecorded.push(mail.id),
            Recorded::RelayDown(reason) => {
                // This mail and the rest of the batch go back untouched.
                relay_down = Some(reason);
                break;
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    record_again(ctx, lease, &unrecorded).await;
    drop(heartbeat);
    release(ctx, lease, &unrecorded, relay_down.as_deref()).await;
    relay_down
}

/// What became of one mail's record.
enum Recorded {
    /// Sent and recorded, or its failure recorded.
    Yes,
    /// Sent, but the record failed.
    No,
    /// The relay is unavailable; nothing was recorded.
    RelayDown(String),
}

/// Sends `prepared` (the built mail, or why it could not be built), announcing
/// `next` when there is one, and records the outcome.
async fn send_and_record(
    ctx: &DeliveryContext,
    sender: &mut Sender,
    mail: &ClaimedMail,
    prepared: Option<Result<ClaimedMail, SendError>>,
    next: Option<&ClaimedMail>,
    lease: &Lease,
) -> Recorded {
    let prepared = prepared.unwrap_or_else(|| Err(SendError::Transient("not built".into())));
    match deliver(ctx, sender, mail, prepared, next, lease.owner).await {
        Delivered::Sent => {
            if ctx.recorder.sent(mail.id).await {
                lease.done(mail.id);
                Recorded::Yes
            } else {
                tracing::warn!(
                    mail.id,
                    "recording a delivery failed; retried after the batch"
                );
                Recorded::No
            }
        }
        Delivered::Recorded => {
            lease.done(mail.id);
            Recorded::Yes
        }
        Delivered::RelayDown(reason) => Recorded::RelayDown(reason),
    }
}

/// Records the deliveries whose record failed once more.
async fn record_again(ctx: &DeliveryContext, lease: &Lease, unrecorded: &[i64]) {
    if unrecorded.is_empty() {
        return;
    }
    match ctx.store.mails_sent(unrecorded, ctx.clock.now()).await {
        Ok(()) => unrecorded.iter().for_each(|id| lease.done(*id)),
        Err(e) => {
            tracing::error!(error = %e, count = unrecorded.len(), "recording deliveries failed; the mails will be sent again");
        }
    }
}

/// Gives back at once what is still held and was not delivered; delivered mails
/// that could not be recorded wait for their lease to end.
async fn release(
    ctx: &DeliveryContext,
    lease: &Lease,
    unrecorded: &[i64],
    relay_down: Option<&str>,
) {
    let unsent: Vec<i64> = lease
        .held()
        .ids
        .iter()
        .copied()
        .filter(|id| !unrecorded.contains(id))
        .collect();
    for id in unsent {
        if let Err(e) = ctx.store.mail_release(id, lease.owner, relay_down).await {
            tracing::warn!(mail.id = id, error = %e, "releasing mail failed; its lease will run out");
        }
    }
}

/// Gives back handed-over batches no worker took (shutdown): unleased, their
/// attempt not counted, as [`release`] gives back what a worker did not send.
pub async fn release_handed(store: &Store, batches: Vec<LeasedBatch>) {
    for batch in batches {
        for mail in batch.mails {
            if let Err(e) = store.mail_release(mail.id, batch.owner, None).await {
                tracing::warn!(mail.id, error = %e, "releasing mail failed; its lease will run out");
            }
        }
    }
}

/// Deletes finished mail older than `delivery.keep_days` at start and then every
/// hour, in batches, keeping each reader's delivery history as daily counts
/// (`Store::purge_finished_mail`), until `cancel` fires.
pub async fn run_retention(ctx: DeliveryContext, cancel: CancellationToken) {
    let keep = chrono::Duration::days(i64::from(ctx.settings.keep_days));
    loop {
        let cutoff = ctx.clock.now() - keep;
        let mut deleted = 0;
        loop {
            match ctx.store.purge_finished_mail(cutoff, RETENTION_BATCH).await {
                Ok(n) => {
                    deleted += n;
                    if n < u64::from(RETENTION_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging finished mail failed; retried later");
                    break;
                }
            }
            // Other work goes first between batches.
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "purged finished mail past delivery.keep_days");
        }
        match ctx
            .store
            .purge_unused_bodies(ctx.clock.now() - BODY_GRACE)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged digest bodies no mail needs"),
            Err(e) => tracing::warn!(error = %e, "purging digest bodies failed; retried later"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

async fn wait(
    cancel: &CancellationToken,
    poll: Duration,
    wake: Option<std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>>,
) {
    match wake {
        Some(wake) => tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(poll) => {}
            () = wake => {}
        },
        None => tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(poll) => {}
        },
    }
}

/// What became of one mail.
enum Delivered {
    /// The relay took it; the caller records it with the batch.
    Sent,
    /// A failure of this mail, recorded already.
    Recorded,
    /// The relay is unavailable; nothing was recorded.
    RelayDown(String),
}

/// Sends one mail (`prepared`: as built for the wire; `next`: the mail to be sent
/// after it, whose envelope may go ahead) and records a failure of the mail itself.
#[tracing::instrument(skip_all, fields(mail.id = mail.id, attempt = mail.attempts))]
async fn deliver(
    ctx: &DeliveryContext,
    sender: &mut Sender,
    mail: &ClaimedMail,
    prepared: Result<ClaimedMail, SendError>,
    next: Option<&ClaimedMail>,
    owner: i64,
) -> Delivered {
    let result = match prepared {
        Ok(built) => sender.send(&built, next).await,
        Err(e) => Err(e),
    };
    let now = ctx.clock.now();
    let recorded = match &result {
        Ok(()) => {
            tracing::debug!("delivered");
            return Delivered::Sent;
        }
        Err(SendError::Relay(reason)) => return Delivered::RelayDown(reason.clone()),
        Err(SendError::Permanent(reason)) => {
            tracing::warn!(%reason, "delivery failed permanently");
            ctx.store.mail_failed(mail.id, now, reason).await
        }
        Err(SendError::RecipientRefused(reason)) => {
            // The reason quotes the address; the log gets the reader's id only.
            tracing::warn!(
                subscriber.id = mail.subscriber_id,
                "the relay refused the reader's address; the reader is bounced"
            );
            bounce(ctx, mail, reason, now).await
        }
        Err(SendError::Transient(reason)) if mail.attempts >= ctx.settings.max_attempts as i32 => {
            tracing::warn!(%reason, "delivery failed too often; giving up");
            ctx.store
                .mail_failed(
                    mail.id,
                    now,
                    &format!("gave up after {} attempts: {reason}", mail.attempts),
                )
                .await
        }
        Err(SendError::Transient(reason)) => {
            let delay = backoff(&ctx.settings, mail.attempts);
            tracing::info!(%reason, retry_in = ?delay, "delivery failed; will retry");
            let next =
                now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
            ctx.store.mail_retry(mail.id, owner, next, reason).await
        }
    };
    if let Err(e) = recorded {
        // The mail stays claimed until its lease runs out, then it is sent again:
        // the one case where a reader may get a mail twice.
        tracing::error!(error = %e, outcome = ?result, "recording the delivery outcome failed");
    }
    Delivered::Recorded
}

/// The relay refused the reader's address for good, synchronously: the mail fails,
/// and the reader is bounced exactly as by a hard-bounce DSN (status `bounced`, the
/// address suppressed, queued digests withdrawn). With a smarthost this is how most
/// bounces arrive, and mailing a known-dead address daily gets an account suspended.
///
/// The mail's outcome is recorded first: should the bounce then fail to be recorded,
/// the next mail to the address is refused again and records it.
async fn bounce(
    ctx: &DeliveryContext,
    mail: &ClaimedMail,
    reason: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> StoreResult<()> {
    ctx.store.mail_failed(mail.id, now, reason).await?;
    if let Some(subscriber_id) = mail.subscriber_id {
        ctx.store
            // No message reference: it serves to count soft bounces per message.
            .record_mail_event(
                subscriber_id,
                MailEventKind::HardBounce,
                reason,
                None,
                EventEffect::Bounce,
                now,
            )
            .await?;
    }
    Ok(())
}

/// The batch's mail number `i` as it goes out (`None` past the end): a digest
/// assembled from its body and the reader's part, then signed when DKIM is on (on
/// the blocking pool: an RSA signature costs about 0.65 ms of CPU, too long for an
/// async thread).
async fn prepare(
    ctx: &DeliveryContext,
    batch: &Batch<'_>,
    i: usize,
) -> Option<Result<ClaimedMail, SendError>> {
    let mail = batch.mails.get(i)?;
    let mut built = mail.clone();
    if let Some(body_id) = mail.body_id {
        let Some(body) = batch.bodies.get(&body_id) else {
            return Some(Err(SendError::Permanent(format!(
                "the digest's body {body_id} is gone"
            ))));
        };
        let subscriber_id = mail.subscriber_id.unwrap_or_default();
        match ctx
            .composer
            .digest(body, &mail.recipient, subscriber_id, ctx.clock.now())
        {
            Ok(digest) => built.message = digest.message,
            Err(e) => {
                return Some(Err(SendError::Permanent(format!(
                    "building the digest: {e}"
                ))));
            }
        }
    }
    let Some(signer) = ctx.signer.clone() else {
        return Some(Ok(built));
    };
    let message = std::mem::take(&mut built.message);
    let result = tokio::task::spawn_blocking(move || signer.sign(&message)).await;
    Some(match result {
        Ok(Ok(bytes)) => {
            built.message = bytes;
            Ok(built)
        }
        Ok(Err(e)) => Err(SendError::Transient(format!("DKIM: {e}"))),
        Err(e) => Err(SendError::Transient(format!("DKIM signer stopped: {e}"))),
    })
}

/// Exponential back-off: base, 2·base, 4·base, … up to the maximum.
pub fn backoff(settings: &Delivery, attempts: i32) -> Duration {
    doubling(settings.retry_base, settings.retry_max, attempts)
}

/// The delay after the `attempts`-th failed attempt: `base` doubled for each
/// attempt after the first, at most `max` (also used by the webhook deliverer).
pub fn doubling(base: Duration, max: Duration, attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    base.saturating_mul(1 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pace_spaces_sends_evenly() {
        let pace = Pace::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pace.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        let free = Pace::new(0);
        let start = tokio::time::Instant::now();
        for _ in 0..100 {
            free.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let s = Delivery {
            workers: 1,
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            max_attempts: 10,
            smtp_timeout: Duration::from_secs(30),
            max_per_second: 0,
            keep_days: 90,
        };
        assert_eq!(backoff(&s, 1), Duration::from_secs(30));
        assert_eq!(backoff(&s, 2), Duration::from_secs(60));
        assert_eq!(backoff(&s, 3), Duration::from_secs(120));
        assert_eq!(backoff(&s, 30), Duration::from_secs(3600));
    }

    /// The body cache stays within its byte budget by letting the oldest bodies go,
    /// and keeps the newest.
    #[test]
    fn the_body_cache_lets_the_oldest_go_past_its_budget() {
        let body = |n: usize| {
            let text = format!("Zeile {n:03}\n").repeat(1_000);
            Arc::new(
                DigestBody::new(
                    crate::domain::Locale::De,
                    "Betreff".into(),
                    text,
                    "<p>x</p>\n".into(),
                    "A".into(),
                )
                .prepare(),
            )
        };
        let one = body(0).size();
        let budget = 20 * one + one / 2;
        let mut loaded = Loaded::default();
        let count = 25;
        for n in 0..count {
            loaded.keep(i64::try_from(n).unwrap(), body(n), budget);
        }
        assert!(loaded.bytes <= budget);
        assert_eq!(
            loaded.bytes,
            loaded.bodies.values().map(|b| b.size()).sum::<usize>()
        );
        assert_eq!(loaded.bodies.len(), loaded.order.len());
        assert!(!loaded.bodies.contains_key(&0), "the oldest went first");
        assert!(
            loaded
                .bodies
                .contains_key(&i64::try_from(count - 1).unwrap())
        );
        assert_eq!(loaded.bodies.len(), 20, "as many as fit");
    }
}
