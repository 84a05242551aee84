//! Digests: the scheduling pass that finds the readers whose slot has come, builds
//! each distinct digest once, personalises it per reader and queues it — all in the
//! store's transaction per batch, so a slot is served exactly once.
//!
//! `serve` runs a pass every `digest.pass_interval_secs`; `POST /api/v1/digests/run`
//! runs one as of any instant. Which items a digest lists is decided by arrival
//! order (arrival numbers up to the pass's watermark), never by a clock.
//!
//! Whatever arrived, a digest stays small: a batch loads at most
//! `digest.max_items + 1` items per topic, and a digest whose mail would exceed
//! [`MAX_DIGEST_BYTES`] lists fewer items and counts the rest in "… and N more".

use std::collections::{HashMap, HashSet, hash_map::Entry};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::DigestSettings;
use crate::mail::compose::{Composer, DigestBody, DigestEntry, DigestGroup};
use crate::store::{BoxError, DigestBatch, DigestPlan, DueReader, NewMail, Store, StoreError};

/// Readers claimed per transaction: large enough to share rendered bodies and
/// amortise round trips, small enough to keep memory flat and locks short.
const BATCH: u32 = 500;
/// Batches served side by side on PostgreSQL.
const PASS_LANES: usize = 2;

/// Largest digest mail, in bytes as queued. The product promises less than 256 KiB;
/// the rest is room for DKIM signatures and for readers of the same content whose
/// address or links are longer than those of the reader the size was measured with.
pub const MAX_DIGEST_BYTES: usize = 240 * 1024;

/// Address the size of a digest is measured with when the reader's own does not
/// build (that reader is then skipped, others with the same content are not).
const SIZE_PROBE: &str = "digest-size-probe@example.org";

/// What makes two readers' digests identical: language, topics, watermark, date.
type BodyKey = (crate::domain::Locale, Vec<i64>, i64, chrono::NaiveDate);

/// A digest's shared content, once per [`BodyKey`].
struct Rendered {
    /// The content.
    body: DigestBody,
    /// New items in all, shown or counted.
    count: i32,
    /// The mail of the reader it was measured with, so it is not built twice.
    first: Option<NewMail>,
}

/// What a pass did.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PassOutcome {
    /// Readers whose slot had come.
    pub due: usize,
    /// Digests queued (readers with news).
    pub enqueued: usize,
}

/// Runs scheduling passes.
#[derive(Clone)]
pub struct Digester {
    /// The database.
    pub store: Store,
    /// Builds the mails.
    pub composer: Composer,
    /// Digest settings.
    pub settings: DigestSettings,
    /// Time source (for record times; the pass instant is given).
    pub clock: Arc<dyn Clock>,
    /// Rung when digests were queued.
    pub mail_wake: Arc<Notify>,
}

impl Digester {
    /// One pass as of `at`: every reader whose slot is at or before `at` gets the
    /// digest of what arrived since their previous one (none if nothing did), and
    /// their next slot after `at`.
    ///
    /// # Errors
    /// When the database fails; batches committed before that stay done.
    #[tracing::instrument(skip_all, fields(at = %at))]
    pub async fn run_pass(&self, at: DateTime<Utc>) -> Result<PassOutcome, StoreError> {
        let watermark = self.store.item_watermark().await?;
        // On PostgreSQL two lanes claim batches side by side (SKIP LOCKED keeps them
        // apart): one renders while the other waits for the database. SQLite has
        // one connection, so one lane.
        let lanes = if self.store.is_postgres() {
            PASS_LANES
        } else {
            1
        };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..lanes {
            let me = self.clone();
            tasks.spawn(async move { me.drain(at, watermark).await });
        }
        let mut total = PassOutcome::default();
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(lane)) => {
                    total.due += lane.due;
                    total.enqueued += lane.enqueued;
                }
                Ok(Err(e)) => failure = Some(e),
                Err(e) => {
                    tracing::error!(error = %e, "a digest lane stopped");
                    failure = Some(StoreError::Callback(
                        format!("a digest lane stopped: {e}").into(),
                    ));
                }
            }
        }
        if total.due > 0 {
            tracing::info!(
                due = total.due,
                enqueued = total.enqueued,
                "digest pass done"
            );
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Claims and serves batches until no reader is due.
    async fn drain(&self, at: DateTime<Utc>, watermark: i64) -> Result<PassOutcome, StoreError> {
        let mut total = PassOutcome::default();
        loop {
            let now = self.clock.now();
            let batch = self
                .store
                .digest_batch(
                    at,
                    watermark,
                    BATCH,
                    self.settings.max_items + 1,
                    now,
                    |batch| self.plan(batch, at, now),
                )
                .await?;
            if batch.due == 0 {
                return Ok(total);
            }
            total.due += batch.due;
            total.enqueued += batch.enqueued;
            if batch.enqueued > 0 {
                self.mail_wake.notify_waiters();
            }
        }
    }

    fn plan(
        &self,
        batch: &DigestBatch,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DigestPlan>, BoxError> {
        // Readers with the same language, topics, watermark and local date get the
        // same digest: it is rendered once (`None`: nothing new for them).
        let mut bodies: HashMap<BodyKey, Option<Rendered>> = HashMap::new();
        let mut plans = Vec::with_capacity(batch.readers.len());
        for reader in &batch.readers {
            let next_slot_at = reader.schedule.next_after(at);
            let mut plan = DigestPlan {
                subscriber_id: reader.id,
                slot_at: reader.next_slot_at,
                next_slot_at,
                last_item_id: reader.last_item_id.max(batch.watermark),
                mail: None,
            };
            let mut topics = reader.topic_ids.clone();
            topics.sort_unstable();
            topics.dedup();
            let date = at
                .with_timezone(&reader.schedule.timezone.tz())
                .date_naive();
            let key = (reader.locale, topics, reader.last_item_id, date);
            let rendered = match bodies.entry(key) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => {
                    let made = self.render(batch, reader, &new.key().1, date, now)?;
                    new.insert(made)
                }
            };
            if let Some(rendered) = rendered {
                let mail = match rendered.first.take() {
                    Some(mail) => Ok(mail),
                    None => {
                        self.composer
                            .digest(&rendered.body, reader.email.as_str(), reader.id, now)
                    }
                };
                match mail {
                    Ok(mail) => plan.mail = Some((mail, rendered.count)),
                    // One unsendable reader must not hold up the batch: their slot
                    // passes without a mail, and the watermark stays for the next.
                    Err(e) => {
                        tracing::error!(subscriber.id = reader.id, error = %e, "building a digest failed; skipped");
                        plan.last_item_id = reader.last_item_id;
                    }
                }
            }
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Renders the digest for a reader's topics (sorted) and watermark, or `None`
    /// when nothing is new to them. Lists the newest `digest.max_items` of their new
    /// items, or fewer when the mail would exceed [`MAX_DIGEST_BYTES`] (measured by
    /// building it for this reader); the rest are counted in "… and N more".
    fn render(
        &self,
        batch: &DigestBatch,
        reader: &DueReader,
        topics: &[i64],
        date: chrono::NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Option<Rendered>, BoxError> {
        let (fresh, total) = batch.items.fresh(topics, reader.last_item_id);
        if total == 0 {
            return Ok(None);
        }
        let mut chosen: Vec<(&str, i64)> = topics
            .iter()
            .filter_map(|id| batch.topics.get(id).map(|t| (t.name.as_str(), *id)))
            .collect();
        chosen.sort();
        let names: Vec<String> = chosen.iter().map(|(n, _)| (*n).to_owned()).collect();
        let count = i32::try_from(total).unwrap_or(i32::MAX);
        let mut shown = fresh.len().min(self.settings.max_items);
        loop {
            // Newest first; an item in two chosen topics once, under the first.
            let mut placed = HashSet::new();
            let mut groups = Vec::new();
            for (name, topic) in &chosen {
                let items: Vec<DigestEntry> = fresh[..shown]
                    .iter()
                    .filter(|i| i.in_topic(*topic) && placed.insert(i.id))
                    .map(|i| DigestEntry {
                        title: i.title.clone(),
                        // Items without their own page (mailed-in ones) get ours.
                        url: Some(
                            i.url
                                .clone()
                                .unwrap_or_else(|| self.composer.links().item(i.id)),
                        ),
                        summary: i.summary.clone(),
                    })
                    .collect();
                if !items.is_empty() {
                    groups.push(DigestGroup {
                        topic: (*name).to_owned(),
                        items,
                    });
                }
            }
            let body = self
                .composer
                .digest_body(reader.locale, date, &groups, total, &names)?;
            let (size, first) =
                match self
                    .composer
                    .digest(&body, reader.email.as_str(), reader.id, now)
                {
                    Ok(mail) => (mail.message.len(), Some(mail)),
                    Err(_) => (
                        self.composer
                            .digest(&body, SIZE_PROBE, reader.id, now)?
                            .message
                            .len(),
                        None,
                    ),
                };
            if size <= MAX_DIGEST_BYTES || shown == 0 {
                return Ok(Some(Rendered { body, count, first }));
            }
            // Fewer items, in proportion and a tenth more, at least one fewer.
            let fits = shown * MAX_DIGEST_BYTES / size * 9 / 10;
            tracing::debug!(shown, fits, size, "digest too large; listing fewer items");
            shown = fits.min(shown - 1);
        }
    }

    /// Runs a pass every `pass_interval` until `stop` fires.
    pub async fn run_schedule(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.pass_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.run_pass(self.clock.now()).await {
                tracing::error!(error = %e, "digest pass failed; the next one retries");
            }
        }
    }
}
