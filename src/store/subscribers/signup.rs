//! The sign-up: one transaction records the reader (new, or updated while still
//! pending), their topics, the proof of consent, the confirmation token and the
//! mail, after checking the form's limits against counts in the database.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::super::counters::{Tally, push_upsert};
use super::super::mail_queue::{LeaseTerms, LeasedBatch, NewMail, push_mail_insert};
use super::super::{BoxError, Store, StoreError, StoreResult, Tx, on_pool, on_tx};
use crate::domain::{
    DeliveryTime, EmailAddress, Locale, SubscriberStatus, TimeZone, TokenHash, TopicSlug, Weekdays,
};
use crate::store::counters::flush_tally;
use crate::store::suppressions::{address_hash, quiet_match};

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
    /// The days of the week the reader wants their digest on.
    pub weekdays: Weekdays,
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

/// What a sign-up (or a "send me my link" request) is counted under, and the
/// window it is counted in.
pub(super) struct Counting {
    /// SHA-256 of the mailbox key.
    mailbox: Vec<u8>,
    /// SHA-256 of the mailbox key's domain.
    domain: Vec<u8>,
    /// Start of the window.
    since: DateTime<Utc>,
    /// The request's time.
    pub(super) now: DateTime<Utc>,
}

impl Counting {
    /// The counting of a request for `email` at `now`.
    pub(super) fn new(email: &EmailAddress, limits: &SignUpLimits, now: DateTime<Utc>) -> Self {
        let mailbox = email.mailbox_key();
        let domain = mailbox.rsplit_once('@').map_or("", |(_, d)| d);
        Self {
            mailbox: Sha256::digest(mailbox.as_bytes()).to_vec(),
            domain: Sha256::digest(domain.as_bytes()).to_vec(),
            since: limits.since,
            now,
        }
    }

    /// When the oldest of the counted mails leaves the window.
    fn retry_at(&self, oldest: Option<DateTime<Utc>>) -> DateTime<Utc> {
        oldest.map_or(self.now, |o| o + (self.now - self.since))
    }
}

/// What the mailbox's limit and the address's quiet period say about a request,
/// before anything is stored (see [`Tx::mailbox_gate`]).
pub(super) enum Gate {
    /// The mailbox had its share of mails: refuse, nothing stored.
    Limited {
        /// When the oldest counted mail leaves the window.
        retry_at: DateTime<Utc>,
    },
    /// Suppressed for a bounce or complaint within the quiet period: counted, but
    /// no mail and no change.
    Quiet,
    /// Go on.
    Open,
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
        self.sign_up_limited(req, &limits, None, mail)
            .await
            .map(|(outcome, _)| outcome)
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
    /// With a `lease` the mail is queued leased (see [`LeaseTerms`]) and returned,
    /// for the workers of this process to take instead of claiming it.
    ///
    /// # Errors
    /// When the database fails or `mail` does; nothing is stored then.
    #[tracing::instrument(skip_all)]
    pub async fn sign_up_limited(
        &self,
        req: &SignUp,
        limits: &SignUpLimits,
        lease: Option<LeaseTerms>,
        mail: impl FnOnce(SignUpKind, i64) -> Result<NewMail, BoxError>,
    ) -> StoreResult<(SignUpOutcome, Option<LeasedBatch>)> {
        let counting = Counting::new(&req.email, limits, req.proof.at);
        let mut tx = self.begin().await?;
        let mut tally = Tally::default();
        let mailbox = (LimitScope::Mailbox, limits.per_mailbox);
        if let Some(retry_at) = tx.over_limit(mailbox, &counting).await? {
            tx.rollback().await?;
            return Ok((SignUpOutcome::Limited { retry_at }, None));
        }
        // The quiet period is checked by the reader's insert (see `insert_or_lock`).
        let (kind, mail) = match tx
            .record_sign_up(req, limits.quiet_since, &mut tally)
            .await?
        {
            None => (SignUpKind::Suppressed, None),
            Some((id, kind)) => {
                let mail = mail(kind, id).map_err(StoreError::Callback)?;
                (kind, Some((id, mail)))
            }
        };
        if let Some((limit, retry_at)) = tx.capped_or_counted(limits, &counting).await? {
            tx.rollback().await?;
            return Ok((SignUpOutcome::Capped { limit, retry_at }, None));
        }
        let leased = match (mail, lease, &mut tx) {
            (Some((id, mail)), lease, Tx::Postgres(conn)) if kind == SignUpKind::New => {
                queue_new_readers_mail(conn, (id, req), mail, counting.now, lease, &mut tally)
                    .await?
            }
            (Some((id, mail)), Some(lease), tx) => Some(
                tx.queue_leased_mail(id, mail, counting.now, lease, &mut tally)
                    .await?,
            ),
            (Some((id, mail)), None, tx) => {
                tx.queue_mail(id, &mail, counting.now, &mut tally).await?;
                None
            }
            (None, _, _) => None,
        };
        tx.commit_with(tally).await?;
        Ok((SignUpOutcome::Accepted(kind), leased))
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
}

impl Tx {
    /// The first step of a limited request: the mailbox's count (taken first, its
    /// lock held to the commit on PostgreSQL: different strings of one mailbox,
    /// `+tags`, are different subscriber rows, whose row locks do not order them),
    /// then the address's quiet period after a bounce or complaint.
    pub(super) async fn mailbox_gate(
        &mut self,
        email: &EmailAddress,
        limits: &SignUpLimits,
        counting: &Counting,
    ) -> StoreResult<Gate> {
        let mailbox = (LimitScope::Mailbox, limits.per_mailbox);
        if let Some(retry_at) = self.over_limit(mailbox, counting).await? {
            return Ok(Gate::Limited { retry_at });
        }
        let quiet = match limits.quiet_since {
            Some(since) => self.bounced_since(email.as_str(), since).await?,
            None => false,
        };
        Ok(if quiet { Gate::Quiet } else { Gate::Open })
    }

    /// The last step of a limited request: the domain's and the global cap, taken
    /// last and in this order so that no two requests wait for each other in a
    /// cycle and the global lock is held only for the final inserts. Returns the
    /// cap reached and when it frees up (the caller rolls back), or counts the
    /// request's mail and returns `None`.
    pub(super) async fn capped_or_counted(
        &mut self,
        limits: &SignUpLimits,
        counting: &Counting,
    ) -> StoreResult<Option<(LimitScope, DateTime<Utc>)>> {
        for cap in [
            (LimitScope::Domain, limits.per_domain),
            (LimitScope::Global, limits.global),
        ] {
            if let Some(retry_at) = self.over_limit(cap, counting).await? {
                return Ok(Some((cap.0, retry_at)));
            }
        }
        if limits.counted() {
            self.count_sign_up_mail(counting).await?;
        }
        Ok(None)
    }

    /// When a sign-up mail would be one too many for `(scope, max)` (0: no limit),
    /// when the oldest counted one leaves the window; `None` while there is room.
    /// On PostgreSQL the counter's advisory lock is held from here to the commit.
    async fn over_limit(
        &mut self,
        (scope, max): (LimitScope, u32),
        c: &Counting,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let (key, sql): (&[u8], &str) = match scope {
            _ if max == 0 => return Ok(None),
            LimitScope::Client => return Ok(None),
            LimitScope::Mailbox => (
                &c.mailbox,
                "SELECT COUNT(*), MIN(created_at) FROM signup_mails WHERE mailbox = $1 AND created_at > $2",
            ),
            LimitScope::Domain => (
                &c.domain,
                "SELECT COUNT(*), MIN(created_at) FROM signup_mails WHERE domain = $1 AND created_at > $2",
            ),
            LimitScope::Global => (
                &[],
                "SELECT COUNT(*), MIN(created_at) FROM signup_mails WHERE created_at > $1",
            ),
        };
        let postgres = self.is_postgres();
        let (count, oldest): (i64, Option<DateTime<Utc>>) = on_tx!(self, tx => {
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(limit_lock(scope, key))
                    .execute(&mut *tx)
                    .await?;
            }
            let q = sqlx::query_as(sql);
            let q = if scope == LimitScope::Global { q } else { q.bind(key) };
            q.bind(c.since).fetch_one(&mut *tx).await?
        });
        Ok((count >= i64::from(max)).then(|| c.retry_at(oldest)))
    }

    /// Counts one sign-up mail for the limits.
    async fn count_sign_up_mail(&mut self, c: &Counting) -> StoreResult<()> {
        on_tx!(self, tx => sqlx::query("INSERT INTO signup_mails (mailbox, domain, created_at) VALUES ($1, $2, $3)")
            .bind(&c.mailbox)
            .bind(&c.domain)
            .bind(c.now)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Stores what the sign-up changes: the reader (pending unless confirmed
    /// already, with the requested topics and settings), the consent proof and,
    /// unless confirmed, the confirmation token (on PostgreSQL a new reader's
    /// topics, proof and token are written with their mail instead, see
    /// `queue_new_readers_mail`). Returns the reader's id and what
    /// was found, or `None` (nothing stored) for an address bounced or complained
    /// about since `quiet_since`.
    async fn record_sign_up(
        &mut self,
        req: &SignUp,
        quiet_since: Option<DateTime<Utc>>,
        tally: &mut Tally,
    ) -> StoreResult<Option<(i64, SignUpKind)>> {
        let Some((id, kind)) = self.insert_or_lock(req, quiet_since, tally).await? else {
            return Ok(None);
        };
        if kind == SignUpKind::New && self.is_postgres() {
            // Topics, consent and token go with the mail (`queue_new_readers_mail`).
            return Ok(Some((id, kind)));
        }
        match kind {
            // The row was just written with the form's settings and has no topics.
            SignUpKind::New => self.add_topics(id, &req.topics).await?,
            SignUpKind::Confirmed => {}
            SignUpKind::Pending | SignUpKind::Returning | SignUpKind::Suppressed => {
                self.make_pending(id, req).await?;
                self.replace_topics(id, &req.topics).await?;
            }
        }
        self.insert_consent(id, req).await?;
        if kind != SignUpKind::Confirmed {
            self.insert_confirm_token(id, req).await?;
        }
        Ok(Some((id, kind)))
    }

    /// Inserts the reader as pending, or finds and locks the row that has the
    /// address: concurrent sign-ups for one address queue up here. `None` for an
    /// address in its quiet period after a bounce or complaint since
    /// `quiet_since`: nothing is stored. A new address, the common case, takes
    /// one statement: the insert itself checks the quiet period.
    async fn insert_or_lock(
        &mut self,
        req: &SignUp,
        quiet_since: Option<DateTime<Utc>>,
        tally: &mut Tally,
    ) -> StoreResult<Option<(i64, SignUpKind)>> {
        // With no quiet period (`$2` NULL) no suppression matches.
        let inserted: Option<i64> = on_tx!(self, tx => sqlx::query_scalar(concat!(
            "INSERT INTO subscribers (email, status, locale, delivery_time, timezone, weekdays, created_at, updated_at) \
             SELECT $3, 'pending', $4, $5, $6, $7, $8, $8 WHERE NOT EXISTS (SELECT 1 FROM suppressions WHERE ",
            quiet_match!(),
            ") ON CONFLICT (email) DO NOTHING RETURNING id",
        ))
        .bind(address_hash(req.email.as_str()))
        .bind(quiet_since)
        .bind(req.email.as_str())
        .bind(req.locale.as_str())
        .bind(req.delivery_time.to_string())
        .bind(req.timezone.to_string())
        .bind(req.weekdays.bits())
        .bind(req.proof.at)
        .fetch_optional(&mut *tx)
        .await)?;
        if let Some(id) = inserted {
            tally.subscribers(None, Some(SubscriberStatus::Pending), 1);
            return Ok(Some((id, SignUpKind::New)));
        }
        if let Some(since) = quiet_since
            && self.bounced_since(req.email.as_str(), since).await?
        {
            return Ok(None);
        }
        let found = self.lock_by_email(&req.email).await?;
        let found = found.ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
        let kind = match found.status {
            SubscriberStatus::Confirmed => SignUpKind::Confirmed,
            SubscriberStatus::Unsubscribed => SignUpKind::Returning,
            SubscriberStatus::Pending | SubscriberStatus::Bounced => SignUpKind::Pending,
        };
        if kind != SignUpKind::Confirmed {
            tally.subscribers(Some(found.status), Some(SubscriberStatus::Pending), 1);
        }
        Ok(Some((found.id, kind)))
    }

    /// Sets a reader pending with the requested settings (a pause from an earlier
    /// subscription ends: the new one starts as the form says).
    async fn make_pending(&mut self, id: i64, req: &SignUp) -> StoreResult<()> {
        on_tx!(self, tx => sqlx::query(
            "UPDATE subscribers SET status = 'pending', locale = $2, delivery_time = $3, \
             timezone = $4, updated_at = $5, weekdays = $6, paused_until = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(req.locale.as_str())
        .bind(req.delivery_time.to_string())
        .bind(req.timezone.to_string())
        .bind(req.proof.at)
        .bind(req.weekdays.bits())
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Keeps the request's proof of consent.
    async fn insert_consent(&mut self, id: i64, req: &SignUp) -> StoreResult<()> {
        let topics = consent_topics(req);
        on_tx!(self, tx => {
            let mut q = sqlx::QueryBuilder::new("");
            push_consent!(q, id, req, &topics);
            q.build().execute(&mut *tx).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Stores the hash of the confirmation token the mail will carry.
    async fn insert_confirm_token(&mut self, id: i64, req: &SignUp) -> StoreResult<()> {
        on_tx!(self, tx => {
            let mut q = sqlx::QueryBuilder::new("");
            push_confirm_token!(q, id, req);
            q.build().execute(&mut *tx).await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }
}

/// The topics of a consent proof as stored: the slugs, comma-separated.
fn consent_topics(req: &SignUp) -> String {
    req.topics
        .iter()
        .map(TopicSlug::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// Pushes the `INSERT` of reader `$id`'s consent proof from the request `$req` onto
/// the query builder `$q` (`$topics` from [`consent_topics`]). Expands in place for
/// either backend, alone or as a `WITH` query.
macro_rules! push_consent {
    ($q:expr, $id:expr, $req:expr, $topics:expr) => {{
        $q.push(
            "INSERT INTO consents (subscriber_id, given_at, ip, user_agent, consent_version, \
             consent_text, topics, delivery_time, timezone, locale) VALUES (",
        );
        $q.separated(", ")
            .push_bind($id)
            .push_bind($req.proof.at)
            .push_bind($req.proof.ip.as_deref())
            .push_bind($req.proof.user_agent.as_deref())
            .push_bind(&$req.proof.consent_version)
            .push_bind(&$req.proof.consent_text)
            .push_bind($topics)
            .push_bind($req.delivery_time.to_string())
            .push_bind($req.timezone.to_string())
            .push_bind($req.locale.as_str());
        $q.push(")");
    }};
}
use push_consent;

/// Pushes the `INSERT` of the hash of `$req`'s confirmation token for reader `$id`
/// onto the query builder `$q`, as [`push_consent!`] does.
macro_rules! push_confirm_token {
    ($q:expr, $id:expr, $req:expr) => {{
        $q.push(
            "INSERT INTO tokens (hash, subscriber_id, purpose, created_at, expires_at) VALUES (",
        );
        $q.separated(", ")
            .push_bind(&$req.confirm_token.0[..])
            .push_bind($id)
            .push_bind("confirm")
            .push_bind($req.proof.at)
            .push_bind($req.confirm_expires_at);
        $q.push(")");
    }};
}
use push_confirm_token;

/// PostgreSQL: a new reader's topics, consent proof, confirmation token and mail
/// queued at `now`, with the sign-up's counters, in one statement (the inserts of
/// `add_topics`, `insert_consent`, `insert_confirm_token` and `Tx::queue_mail` as
/// data-modifying `WITH` queries before the mail's insert, which SQLite lacks): one
/// round trip where they took two (three without a lease, whose counters the commit
/// wrote). It is the transaction's last write. The mail is leased under `lease`
/// if given, and returned for the workers of this process.
async fn queue_new_readers_mail(
    tx: &mut sqlx::PgConnection,
    (id, req): (i64, &SignUp),
    mail: NewMail,
    now: DateTime<Utc>,
    lease: Option<LeaseTerms>,
    tally: &mut Tally,
) -> StoreResult<Option<LeasedBatch>> {
    let topics = consent_topics(req);
    tally.mails(mail.kind, None, Some("queued"), 1);
    let counted = std::mem::take(tally);
    let rows = counted.rows();
    let held = lease.map(|terms| (terms.until, rand::random::<i64>()));
    let mut q = sqlx::QueryBuilder::new("WITH ");
    if !req.topics.is_empty() {
        q.push("t AS (");
        super::push_add_topics!(q, id, &req.topics);
        q.push("), ");
    }
    q.push("c AS (");
    push_consent!(q, id, req, &topics);
    q.push("), k AS (");
    push_confirm_token!(q, id, req);
    q.push("), counted AS (");
    push_upsert!(q, rows);
    q.push(") ");
    push_mail_insert!(q, Some(id), &mail, now, held);
    let mail_id: i64 = q.build_query_scalar().fetch_one(tx).await?;
    Ok(held.map(|(_, owner)| LeasedBatch::one(owner, mail_id, id, mail)))
}
