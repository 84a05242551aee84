//! Subscribers: sign-up with its proof of consent, confirmation, export, purge.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::FromRow;

use super::counters::{Tally, flush_tally};
use super::mail_queue::{INSERT_MAIL, NewMail};
use super::{BeginWrite, BoxError, Store, StoreError, StoreResult, on_pool};
use crate::domain::{
    DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, TokenHash, TopicSlug, Weekdays,
};

/// What a reader submitted, with the proof of their consent.
#[derive(Debug, Clone)]
pub struct SignUp {
    /// The address to subscribe.
    pub email: EmailAddress,
    /// Chosen topics, all currently offered.
    pub topics: Vec<TopicSlug>,
    /// Local delivery time.
    pub delivery_time: DeliveryTime,
    /// The reader's time zone.
    pub timezone: TimeZone,
    /// Mail and page language.
    pub locale: Locale,
    /// Proof of consent for this request.
    pub proof: ConsentProof,
    /// Hash of the confirmation token the mail will carry (new and pending readers).
    pub confirm_token: TokenHash,
    /// When that token stops working.
    pub confirm_expires_at: DateTime<Utc>,
    /// At most this many sign-up mails to the address's mailbox since the given
    /// instant. Read by [`Store::sign_up`] only; [`Store::sign_up_limited`] takes
    /// all its limits from its [`SignUpLimits`].
    pub mail_limit: Option<(u32, DateTime<Utc>)>,
}

/// The public form's abuse limits. They are checked inside the sign-up's
/// transaction, against counts in the database, so they hold across instances and
/// two concurrent sign-ups cannot both take the last slot.
#[derive(Debug, Clone, Copy)]
pub struct SignUpLimits {
    /// Start of the counting window (an hour before the request).
    pub since: DateTime<Utc>,
    /// Sign-up mails per mailbox ([`EmailAddress::mailbox_key`]) in the window;
    /// 0: no limit.
    pub per_mailbox: u32,
    /// Sign-up mails per ASCII domain (that of the mailbox key) in the window;
    /// 0: no cap.
    pub per_domain: u32,
    /// Sign-up mails in total in the window; 0: no cap.
    pub global: u32,
    /// An address suppressed for a hard bounce or a complaint after this instant
    /// gets no mail, and nothing about it changes; `None`: no quiet period.
    pub quiet_since: Option<DateTime<Utc>>,
}

impl SignUpLimits {
    /// No limit at all (imports, the store's own tests).
    pub fn none(now: DateTime<Utc>) -> Self {
        Self {
            since: now,
            per_mailbox: 0,
            per_domain: 0,
            global: 0,
            quiet_since: None,
        }
    }

    fn counted(&self) -> bool {
        self.per_mailbox > 0 || self.per_domain > 0 || self.global > 0
    }
}

/// Which limit refused a sign-up, as `/api/v1/stats` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Requests per client IP (`rate_limit.per_client_per_minute`).
    Client = 0,
    /// Mails per mailbox (`rate_limit.per_address_per_hour`).
    Mailbox = 1,
    /// Mails per domain (`rate_limit.per_domain_per_hour`).
    Domain = 2,
    /// Mails in total (`rate_limit.global_per_hour`).
    Global = 3,
}

impl LimitScope {
    /// Every scope, in index order.
    pub const ALL: [Self; 4] = [Self::Client, Self::Mailbox, Self::Domain, Self::Global];

    /// The name in stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Mailbox => "mailbox",
            Self::Domain => "domain",
            Self::Global => "global",
        }
    }

    /// A dense index (0..4), for per-scope arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Who consented, when, from where, to what.
#[derive(Debug, Clone)]
pub struct ConsentProof {
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// The client's IP address.
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// Version label of the consent text.
    pub consent_version: String,
    /// The exact consent text shown.
    pub consent_text: String,
}

/// What the sign-up found about the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignUpKind {
    /// Never seen (or purged): now pending.
    New,
    /// Pending already: the confirmation is sent again.
    Pending,
    /// Unsubscribed earlier: pending again, double opt-in again.
    Returning,
    /// Already confirmed: nothing changes, a notice with a preferences link is sent.
    Confirmed,
    /// Suppressed for a hard bounce or a complaint within the quiet period: nothing
    /// changes and no mail is sent, but the request counts against the limits like
    /// any other, so neither the answer nor the limits tell it apart.
    Suppressed,
}

/// The result of [`Store::sign_up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignUpOutcome {
    /// Stored; the mail is queued.
    Accepted(SignUpKind),
    /// The address's mailbox had its share of mails; nothing was stored.
    Limited {
        /// When the oldest counted mail leaves the window.
        retry_at: DateTime<Utc>,
    },
    /// The domain's or the global cap is reached; nothing was stored.
    Capped {
        /// [`LimitScope::Domain`] or [`LimitScope::Global`].
        limit: LimitScope,
        /// When the oldest counted mail leaves the window.
        retry_at: DateTime<Utc>,
    },
}

/// What a confirmation token is worth right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// No such token (never issued, or purged).
    Unknown,
    /// Issued, but its lifetime is over and the reader never confirmed.
    Expired,
    /// Usable.
    Valid,
}

/// The result of [`Store::confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// No such token.
    Unknown,
    /// The token's lifetime is over.
    Expired,
    /// Confirmed now.
    Confirmed,
    /// Was confirmed before: nothing changed.
    AlreadyConfirmed,
}

/// Everything stored about one address (GDPR Art. 15/20).
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberExport {
    /// The address.
    pub email: String,
    /// `pending`, `confirmed` or `unsubscribed`.
    pub status: String,
    /// Chosen topic slugs.
    pub topics: Vec<String>,
    /// Delivery schedule and language.
    pub schedule: Schedule,
    /// When the address was first stored.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The confirmation proof, once confirmed.
    pub confirmation: Option<ConfirmationProof>,
    /// When the reader unsubscribed, if they did.
    pub unsubscribed_at: Option<DateTime<Utc>>,
    /// Every sign-up request's consent proof, oldest first.
    pub consents: Vec<ConsentRecord>,
    /// Every mail queued for the address, oldest first, while its row is kept.
    pub deliveries: Vec<DeliveryRecord>,
    /// Older mail whose rows the retention purge deleted (`delivery.keep_days`),
    /// counted per day and kind, oldest first.
    pub delivery_days: Vec<super::DeliveryDay>,
    /// Every change of settings, oldest first.
    pub preference_changes: Vec<super::PreferenceChange>,
    /// Bounces, complaints and unsubscribe replies, oldest first.
    pub mail_events: Vec<super::MailEvent>,
}

/// When and how a reader wants their mail.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Local `HH:MM`.
    pub delivery_time: String,
    /// IANA zone.
    pub timezone: String,
    /// Day names, e.g. `["Mon", "Tue"]`.
    pub weekdays: Vec<&'static str>,
    /// Language.
    pub locale: String,
}

/// When and from where the reader confirmed.
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmationProof {
    /// Time of the confirming POST.
    pub at: DateTime<Utc>,
    /// Its client IP.
    pub ip: Option<String>,
}

/// One stored consent proof.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ConsentRecord {
    /// When the sign-up arrived.
    pub given_at: DateTime<Utc>,
    /// Client IP.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Consent text version.
    pub consent_version: String,
    /// The exact consent text.
    pub consent_text: String,
    /// Topic slugs asked for, comma separated.
    pub topics: String,
    /// Delivery time asked for.
    pub delivery_time: String,
    /// Time zone asked for.
    pub timezone: String,
    /// Language asked for.
    pub locale: String,
}

/// One mail's delivery record.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct DeliveryRecord {
    /// `confirm`, `already-subscribed`, …
    pub kind: String,
    /// `queued`, `sent` or `failed`.
    pub status: String,
    /// SMTP attempts made.
    pub attempts: i32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct SubscriberRow {
    id: i64,
    email: String,
    status: String,
    locale: String,
    delivery_time: String,
    timezone: String,
    weekdays: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    confirmed_at: Option<DateTime<Utc>>,
    confirmed_ip: Option<String>,
    unsubscribed_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct TokenRow {
    /// `None` once the sign-up was purged: the token is then expired for good.
    subscriber_id: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    status: Option<String>,
    locale: Option<String>,
    delivery_time: Option<String>,
    timezone: Option<String>,
    weekdays: Option<i64>,
    email: Option<String>,
}

impl TokenRow {
    fn schedule(&self) -> Option<DeliverySchedule> {
        Some(DeliverySchedule {
            time: DeliveryTime::parse(self.delivery_time.as_deref()?).ok()?,
            timezone: TimeZone::parse(self.timezone.as_deref()?).ok()?,
            weekdays: Weekdays::from_bits(self.weekdays?).unwrap_or_default(),
        })
    }
}

const LOCK_SUBSCRIBER_PG: &str = "SELECT id, status FROM subscribers WHERE email = $1 FOR UPDATE";
const LOCK_SUBSCRIBER_SQLITE: &str = "SELECT id, status FROM subscribers WHERE email = $1";

/// A PostgreSQL advisory lock key for one limit's counter: the first 8 bytes of
/// SHA-256 over the scope and the counted key. Two keys sharing a lock by chance
/// only queue up behind each other.
fn limit_lock(scope: LimitScope, key: &[u8]) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"postbote sign-up limit ")
        .chain_update(scope.as_str())
        .chain_update([0])
        .chain_update(key)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

impl Store {
    /// [`Store::sign_up_limited`] with only the per-mailbox limit of
    /// `req.mail_limit` (imports and the store's own callers).
    ///
    /// # Errors
    /// When the database fails or `mail` does; nothing is stored then.
    pub async fn sign_up(
        &self,
        req: &SignUp,
        mail: impl FnOnce(SignUpKind, i64) -> Result<NewMail, BoxError>,
    ) -> StoreResult<SignUpOutcome> {
        let limits = match req.mail_limit {
            Some((per_mailbox, since)) => SignUpLimits {
                since,
                per_mailbox,
                ..SignUpLimits::none(req.proof.at)
            },
            None => SignUpLimits::none(req.proof.at),
        };
        self.sign_up_limited(req, &limits, mail).await
    }

    /// Records a sign-up in one transaction: the subscriber (new, or updated while
    /// still pending), its topics, the consent proof, the confirmation token (unless
    /// already confirmed) and the mail. `mail` renders that mail for what was found
    /// and the subscriber's id. Confirmed readers' topics are never changed by an
    /// unauthenticated sign-up.
    ///
    /// The `limits` are checked in the same transaction, each behind a lock on
    /// PostgreSQL (SQLite has one connection, so its transactions are serial): the
    /// mailbox's count first, then the domain's and the global one, taken last and
    /// in this order so that no two sign-ups wait for each other in a cycle and the
    /// global lock is held only for the final inserts. A limit reached rolls
    /// everything back. An address in its quiet period after a bounce or complaint
    /// is counted like any other, but nothing is stored and no mail is rendered.
    ///
    /// # Errors
    /// When the database fails or `mail` does; nothing is stored then.
    #[tracing::instrument(skip_all)]
    pub async fn sign_up_limited(
        &self,
        req: &SignUp,
        limits: &SignUpLimits,
        mail: impl FnOnce(SignUpKind, i64) -> Result<NewMail, BoxError>,
    ) -> StoreResult<SignUpOutcome> {
        let now = req.proof.at;
        let postgres = self.is_postgres();
        let lock_sql = if postgres {
            LOCK_SUBSCRIBER_PG
        } else {
            LOCK_SUBSCRIBER_SQLITE
        };
        let mailbox = req.email.mailbox_key();
        let domain = mailbox.rsplit_once('@').map_or("", |(_, d)| d);
        let mailbox_hash = Sha256::digest(mailbox.as_bytes()).to_vec();
        let domain_hash = Sha256::digest(domain.as_bytes()).to_vec();
        // When the oldest of the counted mails leaves the window.
        let window = now - limits.since;
        let retry_at = |oldest: Option<DateTime<Utc>>| oldest.map_or(now, |o| o + window);
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut tally = Tally::default();
            let lock = |scope: LimitScope, key: &[u8]| {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(limit_lock(scope, key))
            };

            if limits.per_mailbox > 0 {
                // Different strings of one mailbox (`+tags`) are different
                // subscriber rows: the row lock below does not order them, this does.
                if postgres {
                    lock(LimitScope::Mailbox, &mailbox_hash).execute(&mut *tx).await?;
                }
                let (count, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                    "SELECT COUNT(*), MIN(created_at) FROM signup_mails WHERE mailbox = $1 AND created_at > $2",
                )
                .bind(&mailbox_hash)
                .bind(limits.since)
                .fetch_one(&mut *tx)
                .await?;
                if count >= i64::from(limits.per_mailbox) {
                    tx.rollback().await?;
                    return Ok(SignUpOutcome::Limited { retry_at: retry_at(oldest) });
                }
            }

            let quiet = match limits.quiet_since {
                Some(since) => {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM suppressions WHERE email_hash = $1 \
                         AND reason IN ('bounced', 'complaint') AND created_at > $2",
                    )
                    .bind(super::address_hash(req.email.as_str()))
                    .bind(since)
                    .fetch_one(&mut *tx)
                    .await?;
                    n > 0
                }
                None => false,
            };

            let (kind, mail) = if quiet {
                (SignUpKind::Suppressed, None)
            } else {
                // Insert-or-find, then lock the row: concurrent sign-ups for one
                // address queue up here.
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO subscribers (email, status, locale, delivery_time, timezone, created_at, updated_at) \
                     VALUES ($1, 'pending', $2, $3, $4, $5, $5) ON CONFLICT (email) DO NOTHING RETURNING id",
                )
                .bind(req.email.as_str())
                .bind(req.locale.as_str())
                .bind(req.delivery_time.to_string())
                .bind(req.timezone.to_string())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let (id, kind) = match inserted {
                    Some(id) => {
                        tally.subscribers(None, Some("pending"), 1);
                        (id, SignUpKind::New)
                    }
                    None => {
                        let (id, status): (i64, String) = sqlx::query_as(lock_sql)
                            .bind(req.email.as_str())
                            .fetch_one(&mut *tx)
                            .await?;
                        let kind = match status.as_str() {
                            "confirmed" => SignUpKind::Confirmed,
                            "unsubscribed" => SignUpKind::Returning,
                            _ => SignUpKind::Pending,
                        };
                        if kind != SignUpKind::Confirmed {
                            tally.subscribers(Some(&status), Some("pending"), 1);
                        }
                        (id, kind)
                    }
                };

                if kind != SignUpKind::Confirmed {
                    sqlx::query(
                        "UPDATE subscribers SET status = 'pending', locale = $2, delivery_time = $3, \
                         timezone = $4, updated_at = $5 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(req.locale.as_str())
                    .bind(req.delivery_time.to_string())
                    .bind(req.timezone.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM subscriber_topics WHERE subscriber_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    for slug in &req.topics {
                        sqlx::query(
                            "INSERT INTO subscriber_topics (subscriber_id, topic_id) \
                             SELECT $1, id FROM topics WHERE slug = $2 ON CONFLICT DO NOTHING",
                        )
                        .bind(id)
                        .bind(slug.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                }

                let topics = req.topics.iter().map(TopicSlug::as_str).collect::<Vec<_>>().join(",");
                sqlx::query(
                    "INSERT INTO consents (subscriber_id, given_at, ip, user_agent, consent_version, \
                     consent_text, topics, delivery_time, timezone, locale) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(id)
                .bind(now)
                .bind(req.proof.ip.as_deref())
                .bind(req.proof.user_agent.as_deref())
                .bind(&req.proof.consent_version)
                .bind(&req.proof.consent_text)
                .bind(topics)
                .bind(req.delivery_time.to_string())
                .bind(req.timezone.to_string())
                .bind(req.locale.as_str())
                .execute(&mut *tx)
                .await?;

                if kind != SignUpKind::Confirmed {
                    sqlx::query(
                        "INSERT INTO tokens (hash, subscriber_id, purpose, created_at, expires_at) \
                         VALUES ($1, $2, 'confirm', $3, $4)",
                    )
                    .bind(&req.confirm_token.0[..])
                    .bind(id)
                    .bind(now)
                    .bind(req.confirm_expires_at)
                    .execute(&mut *tx)
                    .await?;
                }
                let mail = mail(kind, id).map_err(StoreError::Callback)?;
                (kind, Some((id, mail)))
            };

            for (scope, max) in [(LimitScope::Domain, limits.per_domain), (LimitScope::Global, limits.global)] {
                if max == 0 {
                    continue;
                }
                let counted = if scope == LimitScope::Domain {
                    if postgres {
                        lock(scope, &domain_hash).execute(&mut *tx).await?;
                    }
                    sqlx::query_as::<_, (i64, Option<DateTime<Utc>>)>(
                        "SELECT COUNT(*), MIN(created_at) FROM signup_mails WHERE domain = $1 AND created_at > $2",
                    )
                    .bind(&domain_hash)
                    .bind(limits.since)
                    .fetch_one(&mut *tx)
                    .await?
                } else {
                    if postgres {
                        lock(scope, &[]).execute(&mut *tx).await?;
                    }
                    sqlx::query_as::<_, (i64, Option<DateTime<Utc>>)>(
                        "SELECT COUNT(*), MIN(created_at) FROM signup_mails WHERE created_at > $1",
                    )
                    .bind(limits.since)
                    .fetch_one(&mut *tx)
                    .await?
                };
                let (count, oldest) = counted;
                if count >= i64::from(max) {
                    tx.rollback().await?;
                    return Ok(SignUpOutcome::Capped { limit: scope, retry_at: retry_at(oldest) });
                }
            }

            if limits.counted() {
                sqlx::query("INSERT INTO signup_mails (mailbox, domain, created_at) VALUES ($1, $2, $3)")
                    .bind(&mailbox_hash)
                    .bind(&domain_hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some((id, mail)) = mail {
                sqlx::query(INSERT_MAIL)
                    .bind(id)
                    .bind(mail.kind)
                    .bind(&mail.recipient)
                    .bind(&mail.envelope_from)
                    .bind(&mail.message)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tally.mails(mail.kind, None, Some("queued"), 1);
            }
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(SignUpOutcome::Accepted(kind))
        })
    }

    /// Adds to the counters of refused sign-ups, per limit (`rate_limited:<scope>`
    /// in the `counters` table, see `store::counters`).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn add_rate_limit_hits(&self, hits: &[(LimitScope, u64)]) -> StoreResult<()> {
        let mut tally = Tally::default();
        for (scope, n) in hits {
            tally.add(
                format!("rate_limited:{}", scope.as_str()),
                i64::try_from(*n).unwrap_or(i64::MAX),
            );
        }
        on_pool!(self, pool => {
            flush_tally!(tally, pool);
            Ok(())
        })
    }

    /// Looks at a confirmation token without changing anything (for the GET page).
    ///
    /// # Errors
    /// When the database fails.
    /// Also returns the reader's language, when the token is known.
    pub async fn confirm_token_state(
        &self,
        hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> StoreResult<(TokenState, Option<Locale>)> {
        let row = self.find_confirm_token(hash).await?;
        let locale = row
            .as_ref()
            .and_then(|t| t.locale.as_deref())
            .and_then(|l| Locale::parse(l).ok());
        let state = match row {
            None => TokenState::Unknown,
            Some(t) if t.subscriber_id.is_none() => TokenState::Expired,
            Some(t)
                if t.status.as_deref() != Some("confirmed")
                    && t.expires_at.is_some_and(|e| e <= now) =>
            {
                TokenState::Expired
            }
            Some(_) => TokenState::Valid,
        };
        Ok((state, locale))
    }

    async fn find_confirm_token(&self, hash: &TokenHash) -> StoreResult<Option<TokenRow>> {
        let sql = "SELECT t.subscriber_id, t.expires_at, s.status, s.locale, s.delivery_time, \
                   s.timezone, s.weekdays, s.email FROM tokens t \
                   LEFT JOIN subscribers s ON s.id = t.subscriber_id \
                   WHERE t.hash = $1 AND t.purpose = 'confirm'";
        let row = on_pool!(self, pool => sqlx::query_as(sql).bind(&hash.0[..]).fetch_optional(pool).await)?;
        Ok(row)
    }

    /// Confirms the subscription a token belongs to. Idempotent: a second call
    /// reports [`ConfirmOutcome::AlreadyConfirmed`] and changes nothing. Also returns
    /// the reader's language, when the token is known. The first digest is due at the
    /// reader's next slot and reaches back to items that arrived `lookback` before
    /// the confirmation.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn confirm(
        &self,
        hash: &TokenHash,
        now: DateTime<Utc>,
        ip: Option<&str>,
        lookback: chrono::Duration,
    ) -> StoreResult<(ConfirmOutcome, Option<Locale>)> {
        let Some(token) = self.find_confirm_token(hash).await? else {
            return Ok((ConfirmOutcome::Unknown, None));
        };
        let locale = token.locale.as_deref().and_then(|l| Locale::parse(l).ok());
        let Some(subscriber_id) = token.subscriber_id else {
            return Ok((ConfirmOutcome::Expired, locale));
        };
        if token.status.as_deref() == Some("confirmed") {
            return Ok((ConfirmOutcome::AlreadyConfirmed, locale));
        }
        if token.expires_at.is_some_and(|e| e <= now) {
            return Ok((ConfirmOutcome::Expired, locale));
        }
        let next_slot = token.schedule().map(|s| s.next_after(now));
        let sql = "UPDATE subscribers SET status = 'confirmed', confirmed_at = $2, confirmed_ip = $3, \
                   updated_at = $2, unsubscribed_at = NULL, next_slot_at = $4, \
                   last_item_id = COALESCE((SELECT MAX(id) FROM items WHERE created_at < $5), 0) \
                   WHERE id = $1 AND status = 'pending'";
        let done = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(sql)
                .bind(subscriber_id)
                .bind(now)
                .bind(ip)
                .bind(next_slot)
                .bind(now - lookback)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let mut tally = Tally::default();
            tally.subscribers(Some("pending"), Some("confirmed"), done as i64);
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            done
        });
        if done == 1 {
            // A reader on the suppression list who came back through double opt-in
            // is welcome again.
            let email = token.email.unwrap_or_default();
            on_pool!(self, pool => sqlx::query("DELETE FROM suppressions WHERE email_hash = $1")
                .bind(super::address_hash(&email))
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))?;
        }
        // Zero rows: a concurrent confirmation won the race; the result is the same.
        let outcome = if done == 1 {
            ConfirmOutcome::Confirmed
        } else {
            ConfirmOutcome::AlreadyConfirmed
        };
        Ok((outcome, locale))
    }

    /// Everything stored about an address; `None` when nothing is.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn export_subscriber(
        &self,
        email: &EmailAddress,
    ) -> StoreResult<Option<SubscriberExport>> {
        on_pool!(self, pool => {
            let Some(s): Option<SubscriberRow> = sqlx::query_as(
                "SELECT id, email, status, locale, delivery_time, timezone, weekdays, created_at, \
                 updated_at, confirmed_at, confirmed_ip, unsubscribed_at FROM subscribers WHERE email = $1",
            )
            .bind(email.as_str())
            .fetch_optional(pool)
            .await? else {
                return Ok(None);
            };
            let topics: Vec<String> = sqlx::query_scalar(
                "SELECT t.slug FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id \
                 WHERE st.subscriber_id = $1 ORDER BY t.slug",
            )
            .bind(s.id)
            .fetch_all(pool)
            .await?;
            let consents: Vec<ConsentRecord> = sqlx::query_as(
                "SELECT given_at, ip, user_agent, consent_version, consent_text, topics, delivery_time, \
                 timezone, locale FROM consents WHERE subscriber_id = $1 ORDER BY id",
            )
            .bind(s.id)
            .fetch_all(pool)
            .await?;
            let deliveries: Vec<DeliveryRecord> = sqlx::query_as(
                "SELECT kind, status, attempts, last_error, created_at, finished_at FROM mail_jobs \
                 WHERE subscriber_id = $1 ORDER BY id",
            )
            .bind(s.id)
            .fetch_all(pool)
            .await?;
            let delivery_days: Vec<super::DeliveryDay> = sqlx::query_as(
                "SELECT day, kind, sent, failed, last_error FROM delivery_days WHERE subscriber_id = $1 \
                 ORDER BY day, kind",
            )
            .bind(s.id)
            .fetch_all(pool)
            .await?;
            let preference_changes: Vec<super::PreferenceChange> = sqlx::query_as(
                "SELECT changed_at, topics, delivery_time, timezone, weekdays, locale FROM preference_changes \
                 WHERE subscriber_id = $1 ORDER BY id",
            )
            .bind(s.id)
            .fetch_all(pool)
            .await?;
            let mail_events: Vec<super::MailEvent> = sqlx::query_as(
                "SELECT at, kind, detail FROM mail_events WHERE subscriber_id = $1 ORDER BY id",
            )
            .bind(s.id)
            .fetch_all(pool)
            .await?;
            let weekdays = crate::domain::Weekdays::from_bits(s.weekdays).unwrap_or_default();
            Ok(Some(SubscriberExport {
                email: s.email,
                status: s.status,
                topics,
                schedule: Schedule {
                    delivery_time: s.delivery_time,
                    timezone: s.timezone,
                    weekdays: weekdays.names(),
                    locale: s.locale,
                },
                created_at: s.created_at,
                updated_at: s.updated_at,
                confirmation: s.confirmed_at.map(|at| ConfirmationProof { at, ip: s.confirmed_ip }),
                unsubscribed_at: s.unsubscribed_at,
                consents,
                deliveries,
                delivery_days,
                preference_changes,
                mail_events,
            }))

        })
    }

    /// Deletes pending sign-ups not confirmed since `cutoff`, with everything
    /// attached to them except their token hashes, which answer "expired" for
    /// another 30 days, and the sign-up limits' counts older than `cutoff`.
    /// Returns how many sign-ups were deleted.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purge_pending(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut tally = Tally::default();
            // Their queued mail goes first, so that the queue counters see it go.
            let dropped: Vec<String> = sqlx::query_scalar(
                "DELETE FROM mail_jobs WHERE status = 'queued' AND subscriber_id IN (SELECT id FROM subscribers \
                 WHERE status = 'pending' AND confirmed_at IS NULL AND updated_at < $1) RETURNING kind",
            )
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
            for kind in &dropped {
                tally.mails(kind, Some("queued"), None, 1);
            }
            let purged = sqlx::query(
                "DELETE FROM subscribers WHERE status = 'pending' AND confirmed_at IS NULL AND updated_at < $1",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tally.subscribers(Some("pending"), None, purged as i64);
            // A former reader who signed up again and never confirmed goes back to
            // unsubscribed: an unconfirmed form must not erase their history.
            let returned = sqlx::query(
                "UPDATE subscribers SET status = 'unsubscribed' WHERE status = 'pending' \
                 AND confirmed_at IS NOT NULL AND updated_at < $1",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tally.subscribers(Some("pending"), Some("unsubscribed"), returned as i64);
            sqlx::query("DELETE FROM tokens WHERE subscriber_id IS NULL AND expires_at < $1")
                .bind(cutoff - chrono::Duration::days(30))
                .execute(&mut *tx)
                .await?;
            // The sign-up limits count the last hour; the lifetime is at least one.
            sqlx::query("DELETE FROM signup_mails WHERE created_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(purged)
        })
    }
}

/// A subscriber whose consent was given elsewhere (a CSV import).
#[derive(Debug, Clone)]
pub struct ImportedSubscriber {
    /// Address.
    pub email: EmailAddress,
    /// Topics (all offered).
    pub topics: Vec<TopicSlug>,
    /// Delivery schedule.
    pub schedule: DeliverySchedule,
    /// Language.
    pub locale: Locale,
    /// When consent was given, per the source.
    pub consent_at: DateTime<Utc>,
    /// From where, per the source.
    pub consent_ip: Option<String>,
    /// Where the record came from, e.g. `import:subscribers.csv`.
    pub source: String,
}

impl Store {
    /// Stores one subscriber as confirmed, with the consent proof the source gives
    /// (see [`Store::import_batch`]). An address already stored or suppressed is
    /// left alone: `None` then, else the new id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn import_confirmed(
        &self,
        s: &ImportedSubscriber,
        now: DateTime<Utc>,
        lookback: chrono::Duration,
    ) -> StoreResult<Option<i64>> {
        match self
            .import_batch(std::slice::from_ref(s), now, lookback)
            .await?
            .first()
        {
            Some(ImportResult::Imported) => self.subscriber_id(s.email.as_str()).await,
            _ => Ok(None),
        }
    }
}

/// What [`Store::import_batch`] did with each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportResult {
    /// Stored as a new confirmed reader.
    Imported,
    /// The address is stored already: nothing changed.
    Exists,
    /// The address is on the suppression list: skipped.
    Suppressed,
}

impl Store {
    /// Imports rows as confirmed readers in one transaction: a few statements per
    /// batch, not per row. Suppressed and already stored addresses are left alone.
    ///
    /// # Errors
    /// When the database fails; nothing of the batch is stored then.
    pub async fn import_batch(
        &self,
        rows: &[ImportedSubscriber],
        now: DateTime<Utc>,
        lookback: chrono::Duration,
    ) -> StoreResult<Vec<ImportResult>> {
        use std::collections::{HashMap, HashSet};
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let topic_ids: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>("SELECT slug, id FROM topics")
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
            let mut q = sqlx::QueryBuilder::new("SELECT email_hash FROM suppressions WHERE email_hash IN (");
            let mut list = q.separated(", ");
            for r in rows {
                list.push_bind(super::address_hash(r.email.as_str()));
            }
            list.push_unseparated(")");
            let suppressed: HashSet<Vec<u8>> = q.build_query_scalar::<Vec<u8>>().fetch_all(&mut *tx).await?.into_iter().collect();
            let last_item: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM items WHERE created_at < $1")
                .bind(now - lookback)
                .fetch_one(&mut *tx)
                .await?;

            let candidates: Vec<&ImportedSubscriber> = rows
                .iter()
                .filter(|r| !suppressed.contains(&super::address_hash(r.email.as_str())))
                .collect();
            let mut inserted: HashMap<String, i64> = HashMap::new();
            if !candidates.is_empty() {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO subscribers (email, status, locale, delivery_time, timezone, weekdays, created_at, \
                     updated_at, confirmed_at, confirmed_ip, next_slot_at, last_item_id) ",
                );
                q.push_values(&candidates, |mut b, r| {
                    b.push_bind(r.email.as_str())
                        .push_bind("confirmed")
                        .push_bind(r.locale.as_str())
                        .push_bind(r.schedule.time.to_string())
                        .push_bind(r.schedule.timezone.to_string())
                        .push_bind(r.schedule.weekdays.bits())
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(r.consent_at)
                        .push_bind(r.consent_ip.clone())
                        .push_bind(r.schedule.next_after(now))
                        .push_bind(last_item);
                });
                q.push(" ON CONFLICT (email) DO NOTHING RETURNING id, email");
                let rows: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                inserted = rows.into_iter().map(|(id, email)| (email, id)).collect();
            }
            let new_rows: Vec<(&ImportedSubscriber, i64)> = candidates
                .iter()
                .filter_map(|r| inserted.get(r.email.as_str()).map(|id| (*r, *id)))
                .collect();
            let pairs: Vec<(i64, i64)> = new_rows
                .iter()
                .flat_map(|(r, id)| r.topics.iter().filter_map(|t| topic_ids.get(t.as_str()).map(|tid| (*id, *tid))))
                .collect();
            for chunk in pairs.chunks(5000) {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO subscriber_topics (subscriber_id, topic_id) ");
                q.push_values(chunk, |mut b, (s, t)| {
                    b.push_bind(*s).push_bind(*t);
                });
                q.push(" ON CONFLICT DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            for chunk in new_rows.chunks(2000) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO consents (subscriber_id, given_at, ip, user_agent, consent_version, consent_text, \
                     topics, delivery_time, timezone, locale) ",
                );
                q.push_values(chunk, |mut b, (r, id)| {
                    b.push_bind(*id)
                        .push_bind(r.consent_at)
                        .push_bind(r.consent_ip.clone())
                        .push_bind(None::<String>)
                        .push_bind("import")
                        .push_bind(format!("consent given before import ({})", r.source))
                        .push_bind(r.topics.iter().map(TopicSlug::as_str).collect::<Vec<_>>().join(","))
                        .push_bind(r.schedule.time.to_string())
                        .push_bind(r.schedule.timezone.to_string())
                        .push_bind(r.locale.as_str());
                });
                q.build().execute(&mut *tx).await?;
            }
            let mut tally = Tally::default();
            tally.subscribers(None, Some("confirmed"), inserted.len() as i64);
            flush_tally!(tally, &mut *tx);
            tx.commit().await?;
            Ok(rows
                .iter()
                .map(|r| {
                    if suppressed.contains(&super::address_hash(r.email.as_str())) {
                        ImportResult::Suppressed
                    } else if inserted.contains_key(r.email.as_str()) {
                        ImportResult::Imported
                    } else {
                        ImportResult::Exists
                    }
                })
                .collect())
        })
    }
}
