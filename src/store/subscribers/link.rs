//! "Send me my link": one transaction that counts the request against the sign-up
//! form's limits and, only for a confirmed reader, queues the mail with their
//! preferences link. Whatever the address is, the same steps run in the same
//! order, so neither the answer nor an error path tells readers apart.

use chrono::{DateTime, Utc};

use super::super::counters::Tally;
use super::super::mail_queue::NewMail;
use super::super::{BoxError, Store, StoreError, StoreResult};
use super::signup::{Counting, Gate};
use super::{LimitScope, SignUpLimits};
use crate::domain::{EmailAddress, Locale, SubscriberStatus};

/// What [`Store::send_link`] did. The web answers all of them with one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The address is a confirmed reader's: their mail is queued.
    Queued,
    /// Unknown, pending, unsubscribed, bounced or in its quiet period: counted,
    /// no mail.
    NoMail,
    /// The mailbox had its share of mails this hour: nothing stored.
    Limited {
        /// When the oldest counted mail leaves the window.
        retry_at: DateTime<Utc>,
    },
    /// The domain's or the global cap is reached: nothing stored.
    Capped {
        /// [`LimitScope::Domain`] or [`LimitScope::Global`].
        limit: LimitScope,
    },
}

impl Store {
    /// Handles a "send me my link" request for `email` at `now` in one
    /// transaction, with the sign-up form's `limits` and their steps: the
    /// mailbox's count and quiet period first, then the reader (locked), then the
    /// domain's and the global cap, and the request counted like a sign-up mail
    /// whether or not one goes out (so that the limits, too, cannot tell readers
    /// apart). `mail` renders the mail for the reader's id and language; it is
    /// called only for a confirmed reader.
    ///
    /// # Errors
    /// When the database fails or `mail` does; nothing is stored then.
    #[tracing::instrument(skip_all)]
    pub async fn send_link(
        &self,
        email: &EmailAddress,
        limits: &SignUpLimits,
        now: DateTime<Utc>,
        mail: impl FnOnce(i64, Locale) -> Result<NewMail, BoxError>,
    ) -> StoreResult<LinkOutcome> {
        let counting = Counting::new(email, limits, now);
        let mut tx = self.begin().await?;
        let mail = match tx.mailbox_gate(email, limits, &counting).await? {
            Gate::Limited { retry_at } => {
                tx.rollback().await?;
                return Ok(LinkOutcome::Limited { retry_at });
            }
            Gate::Quiet => None,
            Gate::Open => match tx.lock_by_email(email).await? {
                Some(r) if r.status == SubscriberStatus::Confirmed => {
                    let rendered = mail(r.id, r.locale).map_err(StoreError::Callback)?;
                    Some((r.id, rendered))
                }
                _ => None,
            },
        };
        if let Some((limit, _)) = tx.capped_or_counted(limits, &counting).await? {
            tx.rollback().await?;
            return Ok(LinkOutcome::Capped { limit });
        }
        let mut tally = Tally::default();
        let outcome = match mail {
            Some((id, mail)) => {
                tx.queue_mail(id, &mail, now, &mut tally).await?;
                LinkOutcome::Queued
            }
            None => LinkOutcome::NoMail,
        };
        tx.commit_with(tally).await?;
        Ok(outcome)
    }
}
