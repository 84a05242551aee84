//! Delivery workers: claim due mails from the queue, send them, record the outcome.
//!
//! Each worker owns one [`Sender`] (one SMTP connection), so `delivery.workers`
//! bounds the concurrency towards the relay. Mails are claimed with a lease; a
//! worker that dies leaves the lease to run out and the mail is claimed again.
//! Shutdown is checked between mails: a send in progress is always finished.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::dkim::Signer;
use super::transport::{SendError, Sender};
use crate::clock::Clock;
use crate::config::{Delivery, Transport};
use crate::store::{ClaimedMail, EventEffect, Store, StoreResult};

/// Mails one worker claims at a time.
const BATCH: u32 = 16;

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

    /// Waits for this send's slot.
    pub async fn wait(&self) {
        if self.interval.is_zero() {
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

/// Runs one worker until `cancel` fires.
pub async fn run_worker(ctx: DeliveryContext, cancel: CancellationToken) {
    let mut sender = Sender::new(ctx.transport.clone(), ctx.settings.smtp_timeout);
    // A claimed batch must be done well within its lease, or another worker takes
    // it. Worst case per mail: a failed send on a kept connection, a new connection
    // and a second send, each bounded by the timeout.
    let lease = chrono::Duration::from_std(ctx.settings.smtp_timeout * (BATCH * 4 + 4))
        .unwrap_or(chrono::Duration::minutes(30));
    let mut relay_failures: i32 = 0;
    while !cancel.is_cancelled() {
        let wake = ctx.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();

        let now = ctx.clock.now();
        let real_now = chrono::Utc::now();
        let batch = match ctx
            .store
            .claim_mail(now, real_now, real_now + lease, BATCH)
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "claiming mail failed; retrying");
                wait(&cancel, ctx.settings.poll_interval, None).await;
                continue;
            }
        };
        if batch.is_empty() {
            // Nothing due: wait for new mail, the poll interval (retries, other
            // instances' mail) or shutdown. Idle connections are closed meanwhile.
            sender.close().await;
            wait(&cancel, ctx.settings.poll_interval, Some(wake)).await;
            continue;
        }
        let mut mails = batch.into_iter().peekable();
        let mut sent = Vec::with_capacity(BATCH as usize);
        let mut relay_down = None;
        let mut recorded_at = std::time::Instant::now();
        while let Some(mail) = mails.peek() {
            // A slow batch records what it delivered as it goes, so that a shutdown
            // or crash during a slow send repeats as little as possible.
            if !sent.is_empty() && recorded_at.elapsed() > Duration::from_secs(1) {
                if let Err(e) = ctx.store.mails_sent(&sent, ctx.clock.now()).await {
                    tracing::warn!(error = %e, "recording deliveries failed; retried with the batch");
                } else {
                    sent.clear();
                }
                recorded_at = std::time::Instant::now();
            }
            match deliver(&ctx, &mut sender, mail).await {
                Delivered::Sent => sent.push(mail.id),
                Delivered::Recorded => {}
                Delivered::RelayDown(reason) => {
                    // This mail and the rest of the batch go back untouched.
                    relay_down = Some(reason);
                    break;
                }
            }
            mails.next();
            if cancel.is_cancelled() {
                break;
            }
        }
        // One statement for the whole batch: at 2,000 mails/s a round trip per mail
        // would cost more than the SMTP transaction. Until it commits, the batch's
        // mails are in flight: a crash now may send them again (the documented bound).
        if let Err(e) = ctx.store.mails_sent(&sent, ctx.clock.now()).await {
            tracing::error!(error = %e, count = sent.len(), "recording deliveries failed; the mails will be sent again");
        }
        for unsent in mails {
            if let Err(e) = ctx
                .store
                .mail_release(unsent.id, relay_down.as_deref())
                .await
            {
                tracing::warn!(mail.id = unsent.id, error = %e, "releasing mail failed; its lease will run out");
            }
        }
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

/// Sends one mail and records a failure of the mail itself.
#[tracing::instrument(skip_all, fields(mail.id = mail.id, attempt = mail.attempts))]
async fn deliver(ctx: &DeliveryContext, sender: &mut Sender, mail: &ClaimedMail) -> Delivered {
    ctx.pace.wait().await;
    let result = match sign(ctx, mail).await {
        Ok(Some(signed)) => sender.send(&signed).await,
        Ok(None) => sender.send(mail).await,
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
            ctx.store.mail_retry(mail.id, next, reason).await
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
                "hard_bounce",
                reason,
                None,
                EventEffect::Bounce,
                now,
            )
            .await?;
    }
    Ok(())
}

/// The mail with its DKIM signature(s), computed on the blocking pool: an RSA
/// signature costs about 0.65 ms of CPU, too long for an async thread.
async fn sign(ctx: &DeliveryContext, mail: &ClaimedMail) -> Result<Option<ClaimedMail>, SendError> {
    let Some(signer) = ctx.signer.clone() else {
        return Ok(None);
    };
    let mut signed = mail.clone();
    let message = std::mem::take(&mut signed.message);
    let result = tokio::task::spawn_blocking(move || signer.sign(&message)).await;
    match result {
        Ok(Ok(bytes)) => {
            signed.message = bytes;
            Ok(Some(signed))
        }
        Ok(Err(e)) => Err(SendError::Transient(format!("DKIM: {e}"))),
        Err(e) => Err(SendError::Transient(format!("DKIM signer stopped: {e}"))),
    }
}

/// Exponential back-off: base, 2·base, 4·base, … up to the maximum.
pub fn backoff(settings: &Delivery, attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    settings
        .retry_base
        .saturating_mul(1 << exp)
        .min(settings.retry_max)
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
        };
        assert_eq!(backoff(&s, 1), Duration::from_secs(30));
        assert_eq!(backoff(&s, 2), Duration::from_secs(60));
        assert_eq!(backoff(&s, 3), Duration::from_secs(120));
        assert_eq!(backoff(&s, 30), Duration::from_secs(3600));
    }
}
