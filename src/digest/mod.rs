//! Digests: the scheduling pass that finds the readers whose slot has come, renders
//! each distinct digest body once (stored once, shared by every reader who gets
//! it) and queues one small mail job per reader that refers to it, all in the
//! store's transaction per batch, so a slot is served exactly once. The reader's
//! own part (address, links, list headers) is added when the mail is sent
//! (`mail::delivery`).
//!
//! `serve` runs a pass every `digest.pass_interval_secs`; `POST /api/v1/digests/run`
//! runs one as of any instant. Which items a digest lists is decided by arrival
//! order (arrival numbers up to the pass's watermark), never by a clock.
//!
//! A reader who paused (the preferences page's "pause until") is passed over like
//! on a weekday that is off: their slot moves past the pause and their watermark
//! stays, so the first digest after it lists what arrived meanwhile.
//!
//! The console's preview ([`Digester::preview`], `digest/preview.rs`) plans and
//! renders one unstored reader's next digest with the same [`Planner`].
//!
//! Whatever arrived, a digest stays small: a batch loads at most
//! `digest.max_items + 1` items per topic, and a digest whose mail would exceed
//! [`MAX_DIGEST_BYTES`], or whose HTML part would exceed [`MAX_HTML_BYTES`], lists
//! fewer items and counts the rest in "… and N more".

mod preview;

pub use preview::{DigestPreview, PREVIEW_READER, PreviewReader};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::DigestSettings;
use crate::domain::{Locale, hex};
use crate::mail::compose::{Composer, DigestEntry, DigestGroup, PreparedBody};
use crate::mail::delivery::{BodyCache, LEASE, release_handed};
use crate::mail::handoff::Handoff;
use crate::store::{
    BodyIds, BoxError, DigestBatch, DigestPlan, DigestPlanner, LeaseTerms, NewBody, PassBodies,
    PlannedDigest, Store, StoreError,
};

/// Readers claimed per transaction: large enough to share rendered bodies and
/// amortise round trips, small enough to keep memory flat and locks short.
const BATCH: u32 = 500;
/// Batches served side by side on PostgreSQL.
const PASS_LANES: usize = 2;

/// Largest digest mail, in bytes as queued. The product promises less than 256 KiB;
/// the rest is room for DKIM signatures and for readers of the same content whose
/// address or links are longer than those of the reader the size was measured with.
pub const MAX_DIGEST_BYTES: usize = 240 * 1024;

/// Largest HTML part of a digest, in bytes as sent. Gmail clips a mail whose HTML
/// is larger than 102 KB: it shows "[Message clipped]" and hides the rest, the
/// footer with the unsubscribe and preferences links included.
pub const MAX_HTML_BYTES: usize = 96 * 1024;

/// Address and reader id the size of a digest is measured with: longer than most, so
/// the margin below [`MAX_DIGEST_BYTES`] covers the rest.
const SIZE_PROBE: (&str, i64) = ("digest-size-probe@example.org", i64::MAX);

/// What a digest body is rendered from: readers with the same language, topics,
/// previous watermark and local date get the same content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BodySpec {
    /// The language.
    locale: Locale,
    /// The topics, sorted.
    topics: Vec<i64>,
    /// The newest item the readers' previous digest covered.
    since: i64,
    /// The readers' local date.
    date: chrono::NaiveDate,
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
    /// To this process's delivery workers: a pass queues its digests leased to
    /// them and hands them over (`None`: queued for whoever claims them).
    pub handoff: Option<Arc<Handoff>>,
    /// The body cache of this process's delivery workers: a pass puts each body
    /// it rendered and stored there, ready to go out, so the workers neither read
    /// it back from the database nor encode it again (`None`: they do).
    pub bodies: Option<Arc<BodyCache>>,
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
        let known = PassBodies::default();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..lanes {
            let (me, known) = (self.clone(), known.clone());
            tasks.spawn(async move { me.drain(at, watermark, known).await });
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
    async fn drain(
        &self,
        at: DateTime<Utc>,
        watermark: i64,
        known: PassBodies,
    ) -> Result<PassOutcome, StoreError> {
        let mut total = PassOutcome::default();
        let mut planner = Planner {
            digester: self,
            at,
            known,
            fingerprint: self.composer.content_fingerprint(),
            wanted: HashMap::new(),
            rendered: HashMap::new(),
            lease: None,
        };
        let mut more_due = false;
        loop {
            let now = self.clock.now();
            let per_topic = self.settings.max_items + 1;
            let lease = match &self.handoff {
                Some(handoff) => {
                    // After a full batch (more are likely due) the workers set the
                    // pace: the next waits for room for a whole batch. Otherwise
                    // the batch is leased as far as there is room, the rest queued
                    // for a claim.
                    if more_due {
                        handoff.room(LEASE / 3, BATCH as usize).await;
                    }
                    handoff.terms(LEASE)
                }
                None => None,
            };
            planner.lease = lease.map(|(terms, _)| terms);
            let batch = self
                .store
                .digest_batch(at, watermark, BATCH, per_topic, now, &mut planner)
                .await?;
            if batch.due == 0 {
                return Ok(total);
            }
            total.due += batch.due;
            total.enqueued += batch.enqueued;
            more_due = batch.due >= BATCH as usize;
            match (&self.handoff, lease) {
                (Some(handoff), Some((_, until))) if !batch.leased.is_empty() => {
                    // One worker woken per batch; busy ones take the rest next.
                    // Mail beyond the room is queued for a claim: everyone looks.
                    let leased: usize = batch.leased.iter().map(|b| b.mails.len()).sum();
                    if batch.enqueued > leased {
                        self.mail_wake.notify_waiters();
                    }
                    let given = batch.leased.len();
                    let refused = handoff.give(batch.leased, until);
                    for _ in refused.len()..given {
                        self.mail_wake.notify_one();
                    }
                    release_handed(&self.store, refused).await;
                }
                _ if batch.enqueued > 0 => self.mail_wake.notify_waiters(),
                _ => {}
            }
        }
    }

    /// The key of the body `spec` renders in `batch`: a hash of everything its
    /// content depends on (the templates and the public URL, the language, the
    /// topics and their names, the items' range, the date, `digest.max_items`, and
    /// the `news` itself: the ids loaded and how many in all, so that a body stored
    /// before an operator hid one of its items is not used again after);
    /// `fingerprint` is [`Composer::content_fingerprint`], taken once per pass.
    fn body_key(
        &self,
        fingerprint: &str,
        batch: &DigestBatch,
        spec: &BodySpec,
        news: (&[i64], usize),
    ) -> String {
        use sha2::Digest as _;
        let names: Vec<&str> = spec
            .topics
            .iter()
            .filter_map(|id| batch.topics.get(id).map(|t| t.name.as_str()))
            .collect();
        let text = format!(
            "{}|{}|{:?}|{:?}|{}|{}|{}|{}|{:?}|{}",
            fingerprint,
            spec.locale,
            spec.topics,
            names,
            spec.since,
            batch.watermark,
            spec.date,
            self.settings.max_items,
            news.0,
            news.1,
        );
        hex(&sha2::Sha256::digest(text.as_bytes()))
    }

    /// Renders the body for `spec` (which has news). Lists the newest
    /// `digest.max_items` of the new items, or fewer when the mail would exceed
    /// [`MAX_DIGEST_BYTES`] (measured with [`SIZE_PROBE`]'s reader part); the rest
    /// are counted in "… and N more".
    fn render(
        &self,
        batch: &DigestBatch,
        spec: &BodySpec,
        key: &str,
    ) -> Result<(NewBody, PreparedBody), BoxError> {
        let (fresh, total) = batch.items.fresh(&spec.topics, spec.since);
        let mut chosen: Vec<(&str, i64)> = spec
            .topics
            .iter()
            .filter_map(|id| batch.topics.get(id).map(|t| (t.name.as_str(), *id)))
            .collect();
        chosen.sort();
        let names: Vec<String> = chosen.iter().map(|(n, _)| (*n).to_owned()).collect();
        let slugs: Vec<&str> = chosen
            .iter()
            .filter_map(|(_, id)| batch.topics.get(id).map(|t| t.slug.as_str()))
            .collect();
        let view_url = self.composer.links().digest_view(
            &slugs,
            (spec.since, batch.watermark),
            spec.date,
            spec.locale,
        );
        let mut shown = fresh.len().min(self.settings.max_items);
        loop {
            let groups = self.groups(batch, &chosen, &fresh[..shown]);
            let body = self.composer.digest_body(
                spec.locale,
                spec.date,
                &groups,
                total,
                &names,
                &view_url,
            )?;
            let prepared = body.prepare();
            let (to, reader) = SIZE_PROBE;
            let (mail, html) =
                self.composer
                    .measured_digest(&prepared, to, reader, self.clock.now())?;
            let size = mail.message.len();
            if (size <= MAX_DIGEST_BYTES && html <= MAX_HTML_BYTES) || shown == 0 {
                let stored = NewBody {
                    key: key.to_owned(),
                    locale: spec.locale,
                    subject: body.subject,
                    text: body.text,
                    html: body.html,
                    topics: body.topics,
                    item_count: i32::try_from(total).unwrap_or(i32::MAX),
                };
                return Ok((stored, prepared));
            }
            // Fewer items, in proportion to the tighter limit and a tenth more, at
            // least one fewer.
            let fits =
                (shown * MAX_DIGEST_BYTES / size).min(shown * MAX_HTML_BYTES / html) * 9 / 10;
            tracing::debug!(
                shown,
                fits,
                size,
                html,
                "digest too large; listing fewer items"
            );
            shown = fits.min(shown - 1);
        }
    }

    /// The items grouped under their topics (`chosen`: names and ids, in order),
    /// newest first; an item in two chosen topics once, under the first.
    fn groups(
        &self,
        batch: &DigestBatch,
        chosen: &[(&str, i64)],
        items: &[&crate::store::PoolItem],
    ) -> Vec<DigestGroup> {
        let mut placed = HashSet::new();
        let mut groups = Vec::new();
        for (name, topic) in chosen {
            let entries: Vec<DigestEntry> = items
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
                    source: i.url.as_deref().and_then(DigestEntry::source_of),
                })
                .collect();
            if !entries.is_empty() {
                let slug = batch.topics.get(topic).map_or("", |t| t.slug.as_str());
                groups.push(DigestGroup {
                    topic: (*name).to_owned(),
                    items: entries,
                    archive_url: self.composer.links().archive(slug),
                });
            }
        }
        groups
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

/// One lane's [`DigestPlanner`]: plans each batch of a pass and renders the bodies
/// no committed batch has stored yet.
struct Planner<'a> {
    /// Settings, composer, clock.
    digester: &'a Digester,
    /// The instant the pass serves.
    at: DateTime<Utc>,
    /// The pass's bodies, shared with the other lanes.
    known: PassBodies,
    /// The templates and public URL the bodies are rendered with, for body keys.
    fingerprint: String,
    /// What each body key of the current batch is rendered from.
    wanted: HashMap<String, BodySpec>,
    /// The bodies the current batch rendered, ready to go out, by key: for the
    /// workers' cache once they are stored.
    rendered: HashMap<String, PreparedBody>,
    /// The lease the current batch's mails are queued under, if handed over.
    lease: Option<LeaseTerms>,
}

impl DigestPlanner for Planner<'_> {
    fn lease(&self) -> Option<LeaseTerms> {
        self.lease
    }

    fn plan(&mut self, batch: &DigestBatch) -> Result<Vec<DigestPlan>, BoxError> {
        self.wanted.clear();
        self.rendered.clear();
        // Readers with the same content share its key, or its lack of news: each
        // distinct content is looked at once per batch.
        let mut keys: HashMap<BodySpec, Option<String>> = HashMap::new();
        let mut plans = Vec::with_capacity(batch.readers.len());
        // Readers with the same schedule and pause share their next slot, pause
        // and local date (computed once: time zone arithmetic per reader was 3 %
        // of a fan-out's CPU).
        let mut slots: HashMap<_, (DateTime<Utc>, bool, chrono::NaiveDate)> = HashMap::new();
        for reader in &batch.readers {
            let (next_slot_at, paused, date) = *slots
                .entry((reader.schedule, reader.paused_until))
                .or_insert_with(|| {
                    let schedule = reader.schedule;
                    (
                        schedule.next_after_pause(self.at, reader.paused_until),
                        schedule.paused_at(self.at, reader.paused_until),
                        self.at.with_timezone(&schedule.timezone.tz()).date_naive(),
                    )
                });
            if paused {
                // Like a weekday that is off: no digest, and the watermark stays,
                // so the first digest after the pause lists what came meanwhile.
                plans.push(DigestPlan {
                    subscriber_id: reader.id,
                    slot_at: reader.next_slot_at,
                    next_slot_at,
                    last_item_id: reader.last_item_id,
                    digest: None,
                });
                continue;
            }
            let mut topics = reader.topic_ids.clone();
            topics.sort_unstable();
            topics.dedup();
            let spec = BodySpec {
                locale: reader.locale,
                topics,
                since: reader.last_item_id,
                date,
            };
            let body_key = keys.entry(spec).or_insert_with_key(|spec| {
                let (fresh, news) = batch.items.fresh(&spec.topics, spec.since);
                (news > 0).then(|| {
                    let ids: Vec<i64> = fresh.iter().map(|i| i.id).collect();
                    let key = self
                        .digester
                        .body_key(&self.fingerprint, batch, spec, (&ids, news));
                    self.wanted.insert(key.clone(), spec.clone());
                    key
                })
            });
            let digest = body_key.clone().map(|body_key| PlannedDigest {
                body_key,
                recipient: reader.email.as_str().to_owned(),
                envelope_from: self.digester.composer.envelope_from(reader.id),
            });
            plans.push(DigestPlan {
                subscriber_id: reader.id,
                slot_at: reader.next_slot_at,
                next_slot_at,
                last_item_id: reader.last_item_id.max(batch.watermark),
                digest,
            });
        }
        Ok(plans)
    }

    fn bodies(&self) -> Option<&PassBodies> {
        Some(&self.known)
    }

    fn render(&mut self, batch: &DigestBatch, key: &str) -> Result<NewBody, BoxError> {
        let spec = self
            .wanted
            .get(key)
            .ok_or_else(|| format!("no digest planned with body key {key}"))?;
        let (body, prepared) = self.digester.render(batch, spec, key)?;
        if self.digester.bodies.is_some() {
            self.rendered.insert(key.to_owned(), prepared);
        }
        Ok(body)
    }

    fn stored(&mut self, bodies: &BodyIds) {
        if let Some(cache) = &self.digester.bodies {
            for (key, id) in bodies {
                if let Some(prepared) = self.rendered.remove(key) {
                    cache.offer(*id, Arc::new(prepared));
                }
            }
        }
    }
}
