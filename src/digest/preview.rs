//! The digest a reader would get next, for the console's preview
//! (`web::console::preview`): a reader who is not stored, with the chosen topics
//! and language, whose previous digest covered what arrived before
//! `digest.lookback_hours` (as at a confirmation now), planned and rendered by the
//! pass's own [`Planner`] and assembled by [`Composer::digest`] as the delivery
//! workers assemble it. Nothing is claimed or written: no subscriber, no digest
//! log row, no watermark moves.

use std::collections::HashMap;

use crate::domain::{DeliverySchedule, EmailAddress, Locale};
use crate::mail::compose::DigestBody;
use crate::store::{DigestPlanner, DueReader, NewMail, StoreError};

use super::{Digester, Planner};
use crate::store::PassBodies;

/// The reader id a preview is built for: no stored reader has it, so its
/// unsubscribe and preferences links lead nowhere.
pub const PREVIEW_READER: i64 = 0;

/// Whom a preview is for.
#[derive(Debug, Clone)]
pub struct PreviewReader {
    /// The address the footer names (and a test copy is sent to).
    pub email: EmailAddress,
    /// The digest's language.
    pub locale: Locale,
    /// Their schedule: the next slot decides the digest's date.
    pub schedule: DeliverySchedule,
    /// The chosen topics' ids.
    pub topic_ids: Vec<i64>,
}

/// A previewed digest: the complete mail, as a worker would send it.
#[derive(Debug, Clone)]
pub struct DigestPreview {
    /// The mail (recipient, envelope, RFC 5322 bytes).
    pub mail: NewMail,
    /// The new items it counts (listed or in "… and N more").
    pub item_count: i32,
}

impl Digester {
    /// The digest `reader` would get at their next slot if they confirmed now;
    /// `None` when nothing new would be in it.
    ///
    /// # Errors
    /// When the database fails, or rendering fails (`StoreError::Callback`).
    pub async fn preview(
        &self,
        reader: PreviewReader,
    ) -> Result<Option<DigestPreview>, StoreError> {
        let now = self.clock.now();
        let at = reader.schedule.next_after(now);
        let watermark = self.store.item_watermark().await?;
        let due = DueReader {
            id: PREVIEW_READER,
            email: reader.email.clone(),
            locale: reader.locale,
            schedule: reader.schedule,
            last_item_id: 0,
            next_slot_at: at,
            last_slot_at: None,
            topic_ids: reader.topic_ids,
            // The preview shows what a digest would list; it is never paused.
            paused_until: None,
        };
        let batch = self
            .store
            .preview_batch(
                due,
                now - self.settings.lookback,
                watermark,
                self.settings.max_items + 1,
            )
            .await?;
        let mut planner = Planner {
            digester: self,
            at,
            known: PassBodies::default(),
            fingerprint: self.composer.content_fingerprint(),
            wanted: HashMap::new(),
            rendered: HashMap::new(),
            lease: None,
        };
        let plans = planner.plan(&batch).map_err(StoreError::Callback)?;
        let Some(planned) = plans.into_iter().find_map(|p| p.digest) else {
            return Ok(None);
        };
        let body = planner
            .render(&batch, &planned.body_key)
            .map_err(StoreError::Callback)?;
        let item_count = body.item_count;
        let body = DigestBody::new(body.locale, body.subject, body.text, body.html, body.topics);
        let mail = self
            .composer
            .digest(&body.prepare(), reader.email.as_str(), PREVIEW_READER, now)
            .map_err(|e| StoreError::Callback(Box::new(e)))?;
        Ok(Some(DigestPreview { mail, item_count }))
    }
}
