//! The store's contract, run unchanged against PostgreSQL and SQLite.

use crate::harness::{Backend, TestDb};
use chrono::{DateTime, Duration, TimeZone as _, Utc};
use postbote::domain::{
    DeliveryTime, EmailAddress, FeedSchedule, HttpUrl, Locale, SubmissionStatus, SubscriberStatus,
    TimeZone, Token, TopicSlug, Weekdays,
};
use postbote::store::{
    BodyIds, ClaimedMail, ConfirmOutcome, ConsentProof, Decided, DeliveryDay, DigestBatch,
    DigestPlan, DigestPlanner, EventEffect, FeedSpec, LeaseTerms, NewBody, NewMail, NewSubmission,
    PassBodies, PlannedDigest, SignUp, SignUpKind, SignUpLimits, SignUpOutcome, Stats, Store,
    StoreError, TokenState, TopicChange,
};
use std::collections::BTreeMap;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 1, 9, 0, 0).unwrap()
}

fn slug(s: &str) -> TopicSlug {
    TopicSlug::parse(s).unwrap()
}

fn sign_up(email: &str, topics: &[&str], at: DateTime<Utc>, confirm: &Token) -> SignUp {
    SignUp {
        email: EmailAddress::parse(email).unwrap(),
        topics: topics.iter().map(|t| slug(t)).collect(),
        delivery_time: DeliveryTime::parse("07:00").unwrap(),
        timezone: TimeZone::parse("Europe/Berlin").unwrap(),
        weekdays: Weekdays::EVERY_DAY,
        locale: Locale::De,
        proof: ConsentProof {
            at,
            ip: Some("192.0.2.7".into()),
            user_agent: Some("ua".into()),
            consent_version: "v1".into(),
            consent_text: "Ich willige ein.".into(),
        },
        confirm_token: confirm.hash(),
        confirm_expires_at: at + Duration::days(7),
        mail_limit: Some((3, at - Duration::hours(1))),
    }
}

/// A digest planner for store tests: the closure plans, and every digest shares one
/// small body.
struct OneBody<F>(F);

/// [`OneBody`] queuing its mails under a lease.
struct Leasing<F>(OneBody<F>, LeaseTerms);

impl<F> DigestPlanner for Leasing<F>
where
    F: FnMut(&DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError>,
{
    fn plan(&mut self, batch: &DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError> {
        self.0.plan(batch)
    }

    fn render(
        &mut self,
        batch: &DigestBatch,
        key: &str,
    ) -> Result<NewBody, postbote::store::BoxError> {
        self.0.render(batch, key)
    }

    fn stored(&mut self, bodies: &BodyIds) {
        self.0.stored(bodies);
    }

    fn lease(&self) -> Option<LeaseTerms> {
        Some(self.1)
    }
}

impl<F> DigestPlanner for OneBody<F>
where
    F: FnMut(&DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError>,
{
    fn plan(&mut self, batch: &DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError> {
        (self.0)(batch)
    }

    fn render(
        &mut self,
        _batch: &DigestBatch,
        key: &str,
    ) -> Result<NewBody, postbote::store::BoxError> {
        Ok(NewBody {
            key: key.to_owned(),
            locale: Locale::De,
            subject: "Neues".into(),
            text: "Text\n".into(),
            html: "<p>Text</p>".into(),
            topics: "Wirtschaft".into(),
            item_count: 1,
        })
    }

    fn stored(&mut self, _bodies: &BodyIds) {}
}

fn mail(kind: &'static str, to: &str) -> NewMail {
    NewMail {
        kind,
        recipient: to.into(),
        envelope_from: "news@example.org".into(),
        message: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
    }
}

async fn store(backend: Backend) -> (Store, TestDb) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    store
        .create_topic(&slug("wirtschaft"), "Wirtschaft", None, t0())
        .await
        .unwrap();
    store
        .create_topic(&slug("kultur"), "Kultur", Some("Theater"), t0())
        .await
        .unwrap();
    (store, db)
}

async fn topics_are_created_renamed_retired_and_upserted(backend: Backend) {
    let (store, _db) = store(backend).await;
    assert!(matches!(
        store.create_topic(&slug("kultur"), "X", None, t0()).await,
        Err(StoreError::Conflict(_))
    ));
    let names: Vec<String> = store
        .list_topics(false)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["Kultur", "Wirtschaft"]);

    let change = TopicChange {
        name: Some("Kultur & Medien".into()),
        description: Some(None),
    };
    let t = store
        .update_topic(&slug("kultur"), &change)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.name.as_str(), t.description), ("Kultur & Medien", None));
    let keep = TopicChange {
        name: None,
        description: None,
    };
    assert_eq!(
        store
            .update_topic(&slug("kultur"), &keep)
            .await
            .unwrap()
            .unwrap()
            .name,
        "Kultur & Medien"
    );
    assert!(
        store
            .update_topic(&slug("nope"), &keep)
            .await
            .unwrap()
            .is_none()
    );

    let retired = store
        .retire_topic(&slug("kultur"), t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retired.retired_at, Some(t0()));
    assert_eq!(store.list_topics(false).await.unwrap().len(), 1);
    assert_eq!(store.list_topics(true).await.unwrap().len(), 2);
    store
        .upsert_topic(&slug("kultur"), "Kultur", None, t0())
        .await
        .unwrap();
    assert_eq!(
        store.list_topics(false).await.unwrap().len(),
        2,
        "a configured topic comes back into service"
    );
}

/// A retired topic is given to no one: a sign-up or a preferences form naming it
/// (a form loaded before the retirement, a copy of the offered topics not yet
/// read again, or a hand-made request) gets the others.
async fn a_retired_topic_is_given_to_no_one(backend: Backend) {
    let (store, _db) = store(backend).await;
    store
        .retire_topic(&slug("kultur"), t0())
        .await
        .unwrap()
        .unwrap();
    let req = sign_up(
        "a@example.org",
        &["wirtschaft", "kultur"],
        t0(),
        &Token::generate(),
    );
    let outcome = store
        .sign_up(&req, |_, _| Ok(mail("confirm", "a@example.org")))
        .await;
    assert_eq!(outcome.unwrap(), SignUpOutcome::Accepted(SignUpKind::New));
    let export = store.export_subscriber(&req.email).await.unwrap().unwrap();
    assert_eq!(export.topics, [slug("wirtschaft")], "new reader");

    // Again while pending: the newest choice replaces the topics.
    let again = sign_up(
        "a@example.org",
        &["kultur", "wirtschaft"],
        t0() + Duration::minutes(1),
        &Token::generate(),
    );
    let outcome = store
        .sign_up(&again, |_, _| Ok(mail("confirm", "a@example.org")))
        .await;
    assert_eq!(
        outcome.unwrap(),
        SignUpOutcome::Accepted(SignUpKind::Pending)
    );
    let export = store.export_subscriber(&req.email).await.unwrap().unwrap();
    assert_eq!(export.topics, [slug("wirtschaft")], "pending reader");
}

async fn a_sign_up_moves_through_its_states(backend: Backend) {
    let (store, _db) = store(backend).await;
    let token = Token::generate();
    let first = sign_up("a@example.org", &["wirtschaft"], t0(), &token);
    let outcome = store
        .sign_up(&first, |k, _| {
            assert_eq!(k, SignUpKind::New);
            Ok(mail("confirm", "a@example.org"))
        })
        .await;
    assert_eq!(outcome.unwrap(), SignUpOutcome::Accepted(SignUpKind::New));

    let second = Token::generate();
    let req = sign_up(
        "a@example.org",
        &["kultur"],
        t0() + Duration::minutes(1),
        &second,
    );
    let outcome = store
        .sign_up(&req, |_, _| Ok(mail("confirm", "a@example.org")))
        .await
        .unwrap();
    assert_eq!(outcome, SignUpOutcome::Accepted(SignUpKind::Pending));
    let export = store.export_subscriber(&req.email).await.unwrap().unwrap();
    assert_eq!(
        export.topics,
        [slug("kultur")],
        "a pending sign-up takes the newest choice"
    );
    assert_eq!(export.consents.len(), 2);

    assert_eq!(
        store
            .confirm_token_state(&token.hash(), t0())
            .await
            .unwrap(),
        (TokenState::Valid, Some(Locale::De))
    );
    let (outcome, _) = store
        .confirm(
            &token.hash(),
            t0() + Duration::hours(1),
            Some("198.51.100.1"),
            Duration::hours(24),
        )
        .await
        .unwrap();
    assert_eq!(outcome, ConfirmOutcome::Confirmed);
    let (outcome, _) = store
        .confirm(
            &second.hash(),
            t0() + Duration::hours(2),
            Some("203.0.113.9"),
            Duration::hours(24),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ConfirmOutcome::AlreadyConfirmed,
        "the other link of the same reader changes nothing"
    );
    let export = store.export_subscriber(&req.email).await.unwrap().unwrap();
    assert_eq!(export.status, SubscriberStatus::Confirmed);
    let proof = export.confirmation.unwrap();
    assert_eq!(
        (proof.at, proof.ip.as_deref()),
        (t0() + Duration::hours(1), Some("198.51.100.1"))
    );

    let req = sign_up(
        "a@example.org",
        &["wirtschaft"],
        t0() + Duration::minutes(3),
        &Token::generate(),
    );
    let outcome = store
        .sign_up(&req, |_, _| Ok(mail("already-subscribed", "a@example.org")))
        .await
        .unwrap();
    assert_eq!(outcome, SignUpOutcome::Accepted(SignUpKind::Confirmed));
    let export = store.export_subscriber(&req.email).await.unwrap().unwrap();
    assert_eq!(
        export.topics,
        [slug("kultur")],
        "a confirmed reader's topics are not changed by a sign-up"
    );
    assert_eq!(
        export
            .deliveries
            .iter()
            .map(|d| d.kind.as_str())
            .collect::<Vec<_>>(),
        ["confirm", "confirm", "already-subscribed"]
    );

    assert_eq!(
        store
            .confirm(&Token::generate().hash(), t0(), None, Duration::hours(24))
            .await
            .unwrap()
            .0,
        ConfirmOutcome::Unknown
    );
}

async fn expired_tokens_do_not_confirm_and_old_pending_sign_ups_are_purged(backend: Backend) {
    let (store, _db) = store(backend).await;
    let token = Token::generate();
    let req = sign_up("late@example.org", &["wirtschaft"], t0(), &token);
    store
        .sign_up(&req, |_, _| Ok(mail("confirm", "late@example.org")))
        .await
        .unwrap();
    let later = t0() + Duration::days(7);
    assert_eq!(
        store
            .confirm_token_state(&token.hash(), later)
            .await
            .unwrap()
            .0,
        TokenState::Expired
    );
    assert_eq!(
        store
            .confirm(&token.hash(), later, None, Duration::hours(24))
            .await
            .unwrap()
            .0,
        ConfirmOutcome::Expired
    );
    assert_eq!(
        store.purge_pending(t0()).await.unwrap(),
        0,
        "not older than the cutoff"
    );
    assert_eq!(
        store
            .purge_pending(later - Duration::days(7) + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert!(store.export_subscriber(&req.email).await.unwrap().is_none());
    let state = store
        .confirm_token_state(&token.hash(), later)
        .await
        .unwrap();
    assert_eq!(
        state.0,
        TokenState::Expired,
        "a purged sign-up's link says expired"
    );
    let outcome = store
        .confirm(&token.hash(), later, None, Duration::hours(24))
        .await
        .unwrap();
    assert_eq!(outcome.0, ConfirmOutcome::Expired);
    store
        .purge_pending(later + Duration::days(31))
        .await
        .unwrap();
    let state = store
        .confirm_token_state(&token.hash(), later)
        .await
        .unwrap();
    assert_eq!(
        state.0,
        TokenState::Unknown,
        "the tombstone goes after 30 days"
    );
}

async fn the_mail_limit_counts_mails_per_address_per_window(backend: Backend) {
    let (store, _db) = store(backend).await;
    for i in 0..3 {
        let req = sign_up(
            "busy@example.org",
            &["wirtschaft"],
            t0() + Duration::minutes(i),
            &Token::generate(),
        );
        let outcome = store
            .sign_up(&req, |_, _| Ok(mail("confirm", "busy@example.org")))
            .await
            .unwrap();
        assert!(matches!(outcome, SignUpOutcome::Accepted(_)));
    }
    let at = t0() + Duration::minutes(10);
    let req = sign_up("busy@example.org", &["wirtschaft"], at, &Token::generate());
    let outcome = store
        .sign_up(&req, |_, _| {
            panic!("no mail may be rendered into the queue")
        })
        .await
        .unwrap();
    assert_eq!(
        outcome,
        SignUpOutcome::Limited {
            retry_at: t0() + Duration::hours(1)
        }
    );
    assert_eq!(
        store
            .export_subscriber(&req.email)
            .await
            .unwrap()
            .unwrap()
            .consents
            .len(),
        3,
        "nothing stored"
    );
    let after = t0() + Duration::minutes(61);
    let req = sign_up(
        "busy@example.org",
        &["wirtschaft"],
        after,
        &Token::generate(),
    );
    assert!(matches!(
        store
            .sign_up(&req, |_, _| Ok(mail("confirm", "busy@example.org")))
            .await
            .unwrap(),
        SignUpOutcome::Accepted(_)
    ));
}

/// A sign-up purged unconfirmed takes all its mail along, the confirmation already
/// sent too (on PostgreSQL no foreign key does it since migration 0018), so the
/// retention purge finds nothing of it; and on PostgreSQL a mail whose reader is
/// gone anyway is purged without a history row instead of stopping the purge.
async fn a_purged_sign_up_takes_its_mail_along(backend: Backend) {
    let (store, _db) = store(backend).await;
    let req = sign_up(
        "gone@example.org",
        &["wirtschaft"],
        t0(),
        &Token::generate(),
    );
    store
        .sign_up(&req, |_, _| Ok(mail("confirm", "gone@example.org")))
        .await
        .unwrap();
    let claimed = store
        .claim_mail(t0(), t0(), t0() + Duration::minutes(5), 1, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    store.mails_sent(&[claimed[0].id], t0()).await.unwrap();
    let mails = |store: Store| async move {
        recount(&store)
            .await
            .mails
            .values()
            .flat_map(BTreeMap::values)
            .sum::<i64>()
    };
    assert_eq!(mails(store.clone()).await, 1);
    assert_eq!(
        store.purge_pending(t0() + Duration::days(1)).await.unwrap(),
        1
    );
    assert_eq!(
        mails(store.clone()).await,
        0,
        "the sent confirmation went along"
    );
    let long_after = t0() + Duration::days(100);
    assert_eq!(
        store.purge_finished_mail(long_after, 1000).await.unwrap(),
        0
    );
    if let Store::Postgres(pool) = &store {
        sqlx::query(
            "INSERT INTO mail_log (id, subscriber_id, kind, recipient, status, attempts, \
             created_at, finished_at) \
             VALUES (1, 424242, 'digest', 'x@example.org', 'sent', 1, $1, $1)",
        )
        .bind(t0())
        .execute(pool)
        .await
        .unwrap();
        assert_eq!(
            store.purge_finished_mail(long_after, 1000).await.unwrap(),
            1
        );
        let days: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_days")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(days, 0, "no history row for a reader who is gone");
    }
}

async fn claimed_mail_is_leased_retried_and_finished(backend: Backend) {
    let (store, _db) = store(backend).await;
    for who in ["one@example.org", "two@example.org"] {
        let req = sign_up(who, &["wirtschaft"], t0(), &Token::generate());
        store
            .sign_up(&req, |_, _| Ok(mail("confirm", who)))
            .await
            .unwrap();
    }
    let lease = t0() + Duration::minutes(5);
    let claimed = store.claim_mail(t0(), t0(), lease, 1, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        claimed
            .iter()
            .all(|m| m.attempts == 1 && m.message.starts_with(b"Subject"))
    );
    assert!(
        store
            .claim_mail(t0(), t0(), lease, 2, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased mail is not handed out twice"
    );
    assert_eq!(
        store
            .claim_mail(lease, lease, lease + Duration::minutes(5), 3, 10)
            .await
            .unwrap()
            .len(),
        2,
        "an expired lease frees the mail"
    );

    let (first, second) = (claimed[0].id, claimed[1].id);
    store.mails_sent(&[first], t0()).await.unwrap();
    store
        .mail_retry(second, 3, t0() + Duration::hours(1), "421 busy")
        .await
        .unwrap();
    assert!(
        store
            .claim_mail(
                t0() + Duration::minutes(59),
                t0() + Duration::minutes(59),
                t0() + Duration::hours(2),
                4,
                10
            )
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_mail(
            t0() + Duration::hours(1),
            t0() + Duration::hours(1),
            t0() + Duration::hours(2),
            5,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        [(second, 3)]
    );
    store
        .mail_release(second, 5, Some("relay unavailable"))
        .await
        .unwrap();
    store
        .mail_failed(second, t0(), "550 no such user")
        .await
        .unwrap();
    assert_eq!(store.mail_queue_depth().await.unwrap(), 0);

    let one = store
        .export_subscriber(&EmailAddress::parse("one@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    let two = store
        .export_subscriber(&EmailAddress::parse("two@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    let (d1, d2) = if claimed[0].recipient == "one@example.org" {
        (&one.deliveries[0], &two.deliveries[0])
    } else {
        (&two.deliveries[0], &one.deliveries[0])
    };
    assert_eq!((d1.status.as_str(), d1.finished_at), ("sent", Some(t0())));
    assert_eq!(
        (d2.status.as_str(), d2.attempts, d2.last_error.as_deref()),
        ("failed", 2, Some("550 no such user"))
    );
}

async fn migrations_can_run_twice(backend: Backend) {
    let (store, _db) = store(backend).await;
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
}

async fn an_unconfirmed_return_does_not_erase_a_former_readers_history(backend: Backend) {
    let (store, _db) = store(backend).await;
    let token = Token::generate();
    let req = sign_up("former@example.org", &["wirtschaft"], t0(), &token);
    store
        .sign_up(&req, |_, _| Ok(mail("confirm", "former@example.org")))
        .await
        .unwrap();
    store
        .confirm(&token.hash(), t0(), None, Duration::hours(24))
        .await
        .unwrap();
    let id = store
        .subscriber_id("former@example.org")
        .await
        .unwrap()
        .unwrap();
    store
        .unsubscribe(id, t0() + Duration::days(1))
        .await
        .unwrap();
    // Someone submits the form for the address; nobody confirms.
    let again = sign_up(
        "former@example.org",
        &["kultur"],
        t0() + Duration::days(2),
        &Token::generate(),
    );
    let outcome = store
        .sign_up(&again, |_, _| Ok(mail("confirm", "former@example.org")))
        .await
        .unwrap();
    assert_eq!(outcome, SignUpOutcome::Accepted(SignUpKind::Returning));
    store
        .purge_pending(t0() + Duration::days(30))
        .await
        .unwrap();
    let export = store
        .export_subscriber(&req.email)
        .await
        .unwrap()
        .expect("still stored");
    assert_eq!(export.status, SubscriberStatus::Unsubscribed);
    assert_eq!(export.consents.len(), 2, "the history is kept");
}

async fn a_lease_is_renewed_only_by_its_holder_and_a_lost_one_is_noticed(backend: Backend) {
    let (store, _db) = store(backend).await;
    for who in ["one@example.org", "two@example.org"] {
        let req = sign_up(who, &["wirtschaft"], t0(), &Token::generate());
        store
            .sign_up(&req, |_, _| Ok(mail("confirm", who)))
            .await
            .unwrap();
    }
    let s = |secs: i64| t0() + Duration::seconds(secs);
    let (a, b, c) = (11, 22, 33);
    let claimed = store.claim_mail(t0(), s(0), s(30), a, 10).await.unwrap();
    let ids: Vec<i64> = claimed.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 2);

    // The holder's heartbeat keeps the mail its own past the first lease.
    assert_eq!(
        store.renew_mail_leases(a, &ids, s(50)).await.unwrap().len(),
        2
    );
    assert!(
        store
            .claim_mail(t0(), s(40), s(70), b, 10)
            .await
            .unwrap()
            .is_empty(),
        "a renewed lease holds"
    );
    assert!(
        store
            .renew_mail_leases(b, &ids, s(90))
            .await
            .unwrap()
            .is_empty(),
        "nobody else can renew it"
    );

    // The holder stalls past its lease: another worker claims the mail, and the
    // stalled one learns it has lost it instead of sending.
    let taken = store.claim_mail(t0(), s(51), s(81), b, 10).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(
        store
            .renew_mail_leases(a, &ids, s(100))
            .await
            .unwrap()
            .is_empty()
    );
    store
        .mail_release(ids[0], a, Some("shutdown"))
        .await
        .unwrap();
    store
        .mail_retry(ids[1], a, s(60), "421 busy")
        .await
        .unwrap();
    assert!(
        store
            .claim_mail(s(61), s(61), s(91), c, 10)
            .await
            .unwrap()
            .is_empty(),
        "a lost holder can neither release nor reschedule the new holder's mail"
    );

    // A mail withdrawn while claimed is no longer renewed: its holder drops it.
    let withdrawn = taken
        .iter()
        .find(|m| m.recipient == "one@example.org")
        .unwrap()
        .id;
    store
        .mail_failed(withdrawn, s(60), "withdrawn")
        .await
        .unwrap();
    assert_eq!(
        store.renew_mail_leases(b, &ids, s(120)).await.unwrap(),
        ids.iter()
            .copied()
            .filter(|id| *id != withdrawn)
            .collect::<Vec<_>>()
    );
}

/// What `/api/v1/stats` shows, or what a recount of the rows says it should.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    subscribers: BTreeMap<String, i64>,
    mails: BTreeMap<String, BTreeMap<String, i64>>,
    queue_depth: i64,
    retried: i64,
    mail_events: BTreeMap<String, i64>,
}

fn counted(stats: &Stats) -> Counts {
    let digest = |status: &str| {
        stats
            .mails
            .get("digest")
            .and_then(|m| m.get(status))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        (stats.digests_sent, stats.digests_failed),
        (digest("sent"), digest("failed"))
    );
    Counts {
        subscribers: stats.subscribers.clone(),
        mails: stats.mails.clone(),
        queue_depth: stats.queue_depth,
        retried: stats.retried,
        mail_events: stats.mail_events.clone(),
    }
}

/// The same numbers counted from the rows, the way `stats` did before it had counters.
async fn recount(store: &Store) -> Counts {
    macro_rules! count {
        ($pool:expr) => {{
            let pool = $pool;
            let mut subscribers: BTreeMap<String, i64> =
                ["pending", "confirmed", "unsubscribed", "bounced"]
                    .into_iter()
                    .map(|s| (s.to_owned(), 0))
                    .collect();
            let by_status: Vec<(String, i64)> =
                sqlx::query_as("SELECT status, COUNT(*) FROM subscribers GROUP BY status")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            subscribers.extend(by_status);
            // Queued mail in the queue, finished mail in the log (migration 0020).
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT kind, status, COUNT(*) FROM (SELECT kind, status FROM mail_jobs \
                 UNION ALL SELECT kind, status FROM mail_log) AS mail GROUP BY kind, status",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let mut mails: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
            let mut queue_depth = 0;
            for (kind, status, n) in rows {
                if status == "queued" {
                    queue_depth += n;
                }
                mails.entry(kind).or_default().insert(status, n);
            }
            let retried: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT attempts FROM mail_jobs \
                     UNION ALL SELECT attempts FROM mail_log) AS mail WHERE attempts > 1",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            let events: Vec<(String, i64)> =
                sqlx::query_as("SELECT kind, COUNT(*) FROM mail_events GROUP BY kind")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            Counts {
                subscribers,
                mails,
                queue_depth,
                retried,
                mail_events: events.into_iter().collect(),
            }
        }};
    }
    match store {
        Store::Postgres(pool) => count!(pool),
        Store::Sqlite(pool) => count!(pool),
    }
}

/// Signs `who` up at `at`; returns the confirmation token.
async fn signed_up(store: &Store, who: &'static str, at: DateTime<Utc>) -> Token {
    let token = Token::generate();
    let req = sign_up(who, &["wirtschaft"], at, &token);
    store
        .sign_up(&req, |_, _| Ok(mail("confirm", who)))
        .await
        .unwrap();
    token
}

fn to(mails: &[ClaimedMail], who: &str) -> i64 {
    mails.iter().find(|m| m.recipient == who).unwrap().id
}

async fn reader(store: &Store, who: &str) -> i64 {
    store.subscriber_id(who).await.unwrap().unwrap()
}

/// A sign-up whose mail is queued leased for the workers of this process (the
/// web form's way; on PostgreSQL the mail's insert also writes the counters) is
/// counted like any other, and its mail is nobody else's while the lease holds.
async fn a_leased_sign_up_is_counted_like_any_other(backend: Backend) {
    let (store, _db) = store(backend).await;
    let until = t0() + Duration::minutes(5);
    let lease = LeaseTerms {
        until,
        per_owner: 1,
        limit: 1,
    };
    let mut leased = Vec::new();
    for who in ["anna@example.org", "ben@example.org"] {
        let req = sign_up(who, &["wirtschaft"], t0(), &Token::generate());
        let (outcome, batch) = store
            .sign_up_limited(&req, &SignUpLimits::none(t0()), Some(lease), |_, _| {
                Ok(mail("confirm", who))
            })
            .await
            .unwrap();
        assert_eq!(outcome, SignUpOutcome::Accepted(SignUpKind::New));
        let batch = batch.expect("the mail, leased");
        assert_eq!(
            batch
                .mails
                .iter()
                .map(|m| (m.recipient.as_str(), m.attempts))
                .collect::<Vec<_>>(),
            [(who, 1)]
        );
        leased.push(batch.mails[0].id);
    }
    let stats = counted(&store.stats().await.unwrap());
    assert_eq!(stats, recount(&store).await);
    assert_eq!(stats.subscribers["pending"], 2);
    assert_eq!(stats.mails["confirm"]["queued"], 2);
    assert_eq!(stats.queue_depth, 2);
    let claimed = store.claim_mail(t0(), t0(), until, 1, 10).await.unwrap();
    assert!(claimed.is_empty(), "leased: {claimed:?}");
    store.mails_sent(&leased, t0()).await.unwrap();
    let stats = counted(&store.stats().await.unwrap());
    assert_eq!(stats, recount(&store).await);
    assert_eq!(stats.mails["confirm"]["sent"], 2);
    assert_eq!(stats.queue_depth, 0);
}

/// Every kind of change the counters follow: sign-ups (new, returning), confirmations,
/// sent, retried, released and failed mail, digests, bounces, a complaint, an
/// unsubscribe, an erasure and the purge of unconfirmed sign-ups.
async fn a_month_of_traffic(store: &Store) {
    let day = |d: i64| t0() + Duration::days(d);
    let mut tokens = Vec::new();
    for who in [
        "anna@example.org",
        "ben@example.org",
        "cora@example.org",
        "emil@example.org",
    ] {
        tokens.push(signed_up(store, who, t0()).await);
    }
    let first = store.claim_mail(t0(), t0(), day(1), 1, 10).await.unwrap();
    assert_eq!(first.len(), 4);
    for who in ["anna@example.org", "ben@example.org", "cora@example.org"] {
        store.mails_sent(&[to(&first, who)], t0()).await.unwrap();
    }
    let emil = to(&first, "emil@example.org");
    store
        .mail_retry(emil, 1, t0() + Duration::hours(1), "421 busy")
        .await
        .unwrap();
    let again = store
        .claim_mail(t0() + Duration::hours(1), t0(), day(1), 2, 10)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        [(emil, 2)]
    );
    store
        .mail_failed(emil, t0() + Duration::hours(1), "550 no such user")
        .await
        .unwrap();
    for token in &tokens {
        store
            .confirm(
                &token.hash(),
                t0() + Duration::minutes(1),
                None,
                Duration::hours(24),
            )
            .await
            .unwrap();
    }

    signed_up(store, "dora@example.org", day(1)).await;
    let queued = store
        .digest_batch(
            day(2),
            0,
            500,
            51,
            day(2),
            &mut OneBody(all_get("one body", day(3))),
        )
        .await
        .unwrap();
    assert_eq!(queued.enqueued, 4);
    let digests = store
        .claim_mail(day(2), day(2), day(3), 3, 10)
        .await
        .unwrap();
    assert_eq!(digests.len(), 5, "four digests and dora's confirmation");
    store
        .mail_release(to(&digests, "dora@example.org"), 3, Some("shutdown"))
        .await
        .unwrap();
    store
        .mails_sent(&[to(&digests, "anna@example.org")], day(2))
        .await
        .unwrap();
    let anna = reader(store, "anna@example.org").await;
    let soft = EventEffect::Count {
        threshold: 3,
        since: day(-14),
    };
    store
        .record_mail_event(
            anna,
            postbote::domain::MailEventKind::SoftBounce,
            "4.2.2",
            Some("<m1@x>"),
            soft,
            day(2),
        )
        .await
        .unwrap();
    let ben = reader(store, "ben@example.org").await;
    store
        .record_mail_event(
            ben,
            postbote::domain::MailEventKind::HardBounce,
            "5.1.1",
            None,
            EventEffect::Bounce,
            day(2),
        )
        .await
        .unwrap();
    let cora = reader(store, "cora@example.org").await;
    store
        .record_mail_event(
            cora,
            postbote::domain::MailEventKind::Complaint,
            "abuse",
            None,
            EventEffect::UnsubscribeAndSuppress,
            day(2),
        )
        .await
        .unwrap();
    let emil = reader(store, "emil@example.org").await;
    store.unsubscribe(emil, day(2)).await.unwrap();
    store.unsubscribe(emil, day(2)).await.unwrap();

    signed_up(store, "emil@example.org", day(3)).await;
    signed_up(store, "fritz@example.org", day(3)).await;
    assert!(
        store
            .erase(&EmailAddress::parse("fritz@example.org").unwrap(), day(3))
            .await
            .unwrap()
    );
    store.purge_pending(day(10)).await.unwrap();

    signed_up(store, "gina@example.org", day(40)).await;
    signed_up(store, "hans@example.org", day(40)).await;
    let late = store
        .claim_mail(day(100), day(100), day(101), 5, 10)
        .await
        .unwrap();
    store
        .mails_sent(&[to(&late, "gina@example.org")], day(100))
        .await
        .unwrap();
    for m in late.iter().filter(|m| m.recipient != "gina@example.org") {
        store.mail_release(m.id, 5, None).await.unwrap();
    }
}

async fn counters_equal_a_recount_after_every_kind_of_change(backend: Backend) {
    let (store, _db) = store(backend).await;
    assert_eq!(
        counted(&store.stats().await.unwrap()),
        recount(&store).await
    );
    a_month_of_traffic(&store).await;
    let stats = counted(&store.stats().await.unwrap());
    assert_eq!(stats, recount(&store).await);
    // The story above, in numbers, so that a recount that is wrong in the same way
    // as the counters cannot pass.
    let n = |v: &[(&str, i64)]| {
        v.iter()
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        stats.subscribers,
        n(&[
            ("bounced", 1),
            ("confirmed", 1),
            ("pending", 2),
            ("unsubscribed", 2)
        ])
    );
    assert_eq!(
        stats.mails["confirm"],
        n(&[("failed", 1), ("queued", 2), ("sent", 4)])
    );
    assert_eq!(stats.mails["digest"], n(&[("failed", 3), ("sent", 1)]));
    assert_eq!((stats.queue_depth, stats.retried), (2, 1));
    assert_eq!(
        stats.mail_events,
        n(&[("complaint", 1), ("hard_bounce", 1), ("soft_bounce", 1)])
    );

    // The migration that introduced the counters filled them from the rows: its
    // statements, run again on empty counters, give the same numbers. It read the
    // queue, which held finished mail too then; since migration 0020 that is in the
    // mail log, so they read both.
    let migration = match store {
        Store::Postgres(_) => {
            include_str!("../../migrations/postgres/0007_leases_and_counters.sql")
        }
        Store::Sqlite(_) => include_str!("../../migrations/sqlite/0007_leases_and_counters.sql"),
    };
    let fill: String = migration
        .split(';')
        .filter(|statement| statement.contains("INSERT INTO counters"))
        .map(|statement| format!("{statement};"))
        .collect::<String>()
        .replace(
            "FROM mail_jobs",
            "FROM (SELECT kind, status, attempts FROM mail_jobs \
             UNION ALL SELECT kind, status, attempts FROM mail_log) AS mail_jobs",
        );
    assert_eq!(fill.matches("INSERT INTO counters").count(), 5);
    assert_eq!(fill.matches("FROM mail_log").count(), 3);
    let fill = format!("DELETE FROM counters;{fill}");
    match &store {
        Store::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(fill))
                .execute(pool)
                .await
                .unwrap();
        }
        Store::Sqlite(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(fill))
                .execute(pool)
                .await
                .unwrap();
        }
    }
    assert_eq!(counted(&store.stats().await.unwrap()), stats);
}

async fn the_retention_purge_deletes_old_finished_mail_and_keeps_the_history(backend: Backend) {
    let (store, _db) = store(backend).await;
    a_month_of_traffic(&store).await;
    let anna = EmailAddress::parse("anna@example.org").unwrap();
    let before = store.export_subscriber(&anna).await.unwrap().unwrap();
    assert_eq!(before.deliveries.len(), 2);
    assert!(before.delivery_days.is_empty());
    let stats = counted(&store.stats().await.unwrap());

    // keep_days = 90 on day 91: everything finished on days 0 to 2 goes, in batches.
    let cutoff = t0() + Duration::days(91);
    let mut deleted = 0;
    loop {
        let n = store.purge_finished_mail(cutoff, 2).await.unwrap();
        deleted += n;
        if n < 2 {
            break;
        }
    }
    assert_eq!(
        deleted, 8,
        "4 confirmations and 4 digests, finished before the cutoff"
    );
    assert_eq!(store.purge_finished_mail(cutoff, 2).await.unwrap(), 0);

    let left = recount(&store).await;
    assert_eq!(
        left.mails,
        BTreeMap::from([(
            "confirm".to_owned(),
            BTreeMap::from([("queued".to_owned(), 2), ("sent".to_owned(), 1)])
        )]),
        "queued mail and mail finished after the cutoff stay"
    );
    assert_eq!(
        counted(&store.stats().await.unwrap()),
        stats,
        "the counters are totals: the purge leaves them alone"
    );
    assert_eq!(
        (left.subscribers, left.queue_depth),
        (stats.subscribers, stats.queue_depth)
    );

    let after = store.export_subscriber(&anna).await.unwrap().unwrap();
    assert!(after.deliveries.is_empty());
    let day0 = t0().date_naive();
    let day2 = (t0() + Duration::days(2)).date_naive();
    assert_eq!(
        after.delivery_days,
        [
            DeliveryDay {
                day: day0,
                kind: "confirm".into(),
                sent: 1,
                failed: 0,
                last_error: None
            },
            DeliveryDay {
                day: day2,
                kind: "digest".into(),
                sent: 1,
                failed: 0,
                last_error: None
            },
        ]
    );
    let emil = store
        .export_subscriber(&EmailAddress::parse("emil@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        emil.delivery_days,
        [
            DeliveryDay {
                day: day0,
                kind: "confirm".into(),
                sent: 0,
                failed: 1,
                last_error: Some("550 no such user".into())
            },
            DeliveryDay {
                day: day2,
                kind: "digest".into(),
                sent: 0,
                failed: 1,
                last_error: Some("unsubscribed before delivery".into())
            },
        ]
    );
    assert_eq!(
        emil.deliveries
            .iter()
            .map(|d| d.status.as_str())
            .collect::<Vec<_>>(),
        ["queued"],
        "the new confirmation mail is still waiting"
    );
}

/// Sets one column of one reader's row (or of the rows of `table` that belong to
/// the reader) to `value` behind the store's back and past the schema's CHECK
/// constraints, as a damaged or hand-edited database would have it.
async fn damage(db: &TestDb, table: &str, column: &str, value: &str, email: &str) {
    let key = if table == "subscribers" {
        "id"
    } else {
        "subscriber_id"
    };
    let filter = format!("{key} = (SELECT id FROM subscribers WHERE email = $2)");
    overwrite(db, table, column, value, &filter, email).await;
}

/// Sets `column` of row `id` of `table` to `value` behind the store's back, as
/// [`damage`] does.
pub(crate) async fn damage_row(db: &TestDb, table: &str, id: i64, column: &str, value: &str) {
    overwrite(
        db,
        table,
        column,
        value,
        "CAST(id AS TEXT) = $2",
        &id.to_string(),
    )
    .await;
}

/// `UPDATE <table> SET <column> = value WHERE <filter>` (`$2` is `key`), past the
/// column's CHECK constraint: SQLite ignores it on this connection, PostgreSQL
/// loses it.
async fn overwrite(db: &TestDb, table: &str, column: &str, value: &str, filter: &str, key: &str) {
    use sqlx::Connection as _;
    let sql = sqlx::AssertSqlSafe(format!("UPDATE {table} SET {column} = $1 WHERE {filter}"));
    macro_rules! on {
        ($conn:ty, $lift:expr) => {{
            let mut c = <$conn>::connect(&db.url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe($lift))
                .execute(&mut c)
                .await
                .unwrap();
            let q = sqlx::query(sql).bind(value).bind(key);
            q.execute(&mut c).await.unwrap();
        }};
    }
    if db.url.starts_with("sqlite://") {
        on!(
            sqlx::SqliteConnection,
            "PRAGMA ignore_check_constraints = ON".to_owned()
        );
    } else {
        on!(
            sqlx::PgConnection,
            format!("ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {table}_{column}_check")
        );
    }
}

/// The message, table, row id and column an error names; a panic when the result
/// is anything else.
fn named_row<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
) -> (String, &'static str, i64, &'static str) {
    match result {
        Err(StoreError::Corrupt(c)) => (c.to_string(), c.table, c.id, c.column),
        other => panic!("expected an error naming the row, got {other:?}"),
    }
}

async fn a_stored_value_that_does_not_parse_is_an_error_naming_the_row(backend: Backend) {
    let (store, db) = store(backend).await;
    let anna_token = signed_up(&store, "anna@example.org", t0()).await;
    let anna = reader(&store, "anna@example.org").await;
    let anna_email = EmailAddress::parse("anna@example.org").unwrap();

    damage(&db, "subscribers", "locale", "fr", "anna@example.org").await;
    let expected = ("subscribers", anna, "locale");
    let (message, table, id, column) = named_row(store.preferences(anna).await);
    assert_eq!((table, id, column), expected, "not German by default");
    assert!(
        message.contains(&format!("subscribers row {anna}")) && message.contains("\"fr\""),
        "{message}"
    );
    let (_, table, id, column) = named_row(store.subscriber_status(anna).await);
    assert_eq!((table, id, column), expected);
    let (_, table, id, column) =
        named_row(store.confirm_token_state(&anna_token.hash(), t0()).await);
    assert_eq!((table, id, column), expected);
    let (_, table, id, column) = named_row(store.export_subscriber(&anna_email).await);
    assert_eq!((table, id, column), expected);
    let (_, table, id, column) = named_row(store.unsubscribe(anna, t0()).await);
    assert_eq!((table, id, column), expected);
    damage(&db, "subscribers", "locale", "de", "anna@example.org").await;
    let (status, _) = store.subscriber_status(anna).await.unwrap().unwrap();
    assert_eq!(status, SubscriberStatus::Pending, "nothing changed");

    damage(&db, "subscribers", "status", "paused", "anna@example.org").await;
    let (_, table, id, column) = named_row(store.list_subscribers(None, None, 0, 10).await);
    assert_eq!((table, id, column), ("subscribers", anna, "status"));
    let (_, _, _, column) = named_row(store.preferences(anna).await);
    assert_eq!(column, "status");
    damage(&db, "subscribers", "status", "pending", "anna@example.org").await;

    // An address that does not parse is named by its row; the value stays out of logs.
    damage(&db, "subscribers", "email", "kaputt", "anna@example.org").await;
    let (message, _, id, column) = named_row(store.preferences(anna).await);
    assert_eq!((id, column), (anna, "email"));
    assert!(!message.contains("kaputt"), "{message}");
    damage(&db, "subscribers", "email", "anna@example.org", "kaputt").await;

    store
        .record_mail_event(
            anna,
            postbote::domain::MailEventKind::SoftBounce,
            "4.2.2",
            None,
            EventEffect::Record,
            t0(),
        )
        .await
        .unwrap();
    damage(&db, "mail_events", "kind", "bounce", "anna@example.org").await;
    let (_, table, _, column) = named_row(store.export_subscriber(&anna_email).await);
    assert_eq!((table, column), ("mail_events", "kind"));
}

async fn a_stored_feed_or_submission_that_does_not_parse_is_an_error_naming_the_row(
    backend: Backend,
) {
    let (store, db) = store(backend).await;
    let spec = |name: &str| FeedSpec {
        name: name.into(),
        url: HttpUrl::parse("https://presse.example/rss.xml").unwrap(),
        topic: slug("wirtschaft"),
        schedule: FeedSchedule::parse("0 0 * * * *").unwrap(),
        next_poll_at: t0(),
    };
    let good = store.put_feed(&spec("gut"), "api", t0()).await.unwrap();
    let bad = store.put_feed(&spec("kaputt"), "api", t0()).await.unwrap();
    assert_eq!(
        (bad.url.as_str(), bad.schedule.as_str(), bad.topic.as_str()),
        (
            "https://presse.example/rss.xml",
            "0 0 * * * *",
            "wirtschaft"
        )
    );

    damage_row(&db, "feeds", bad.id, "schedule", "jede Stunde").await;
    let expected = ("feeds", bad.id, "schedule");
    let (message, table, id, column) = named_row(store.feed(bad.id).await);
    assert_eq!(
        (table, id, column),
        expected,
        "not polled hourly by default"
    );
    assert!(
        message.contains(&format!("feeds row {}", bad.id)) && message.contains("\"jede Stunde\""),
        "{message}"
    );
    let (_, table, id, column) = named_row(store.list_feeds().await);
    assert_eq!((table, id, column), expected);
    // Claimed together, the damaged feed comes back as its error and the other
    // as itself.
    let claimed = store
        .claim_due_feeds(t0(), t0() + Duration::hours(1), 10)
        .await
        .unwrap();
    let (ok, failed): (Vec<_>, Vec<_>) = claimed.into_iter().partition(Result::is_ok);
    assert_eq!(
        ok.into_iter().map(|f| f.unwrap().id).collect::<Vec<_>>(),
        [good.id]
    );
    let [failed] = <[_; 1]>::try_from(failed).unwrap();
    let (_, table, id, column) = named_row(failed);
    assert_eq!((table, id, column), expected);

    damage_row(&db, "feeds", bad.id, "schedule", "0 0 * * * *").await;
    damage_row(&db, "feeds", bad.id, "url", "javascript:alert(1)").await;
    let (_, table, id, column) = named_row(store.feed(bad.id).await);
    assert_eq!((table, id, column), ("feeds", bad.id, "url"));

    let held = NewSubmission {
        status: SubmissionStatus::Held,
        topic: "wirtschaft".into(),
        sender: "presse@example.org".into(),
        title: "Meldung".into(),
        summary: None,
        body: Some("Text".into()),
        guid: Some("mail:<1@example.org>".into()),
        reason: "not authenticated".into(),
    };
    let (sub, _) = store.add_submission(&held, t0()).await.unwrap();
    damage_row(&db, "submissions", sub, "status", "paused").await;
    let expected = ("submissions", sub, "status");
    let (message, table, id, column) = named_row(store.list_submissions(None, 0, 10).await);
    assert_eq!((table, id, column), expected);
    assert!(message.contains("\"paused\""), "{message}");
    let (_, table, id, column) = named_row(store.approve_submission(sub, t0()).await);
    assert_eq!((table, id, column), expected);
    damage_row(&db, "submissions", sub, "status", "held").await;
    match store.approve_submission(sub, t0()).await.unwrap() {
        Decided::Done(s) => assert_eq!(s.status, SubmissionStatus::Approved),
        other => panic!("{other:?}"),
    }
}

async fn a_due_reader_whose_row_does_not_parse_is_named_and_skipped_for_a_day(backend: Backend) {
    let (store, db) = store(backend).await;
    let day = |d: i64| t0() + Duration::days(d);
    for who in ["anna@example.org", "ben@example.org"] {
        let token = signed_up(&store, who, t0()).await;
        store
            .confirm(&token.hash(), t0(), None, Duration::hours(24))
            .await
            .unwrap();
    }
    let anna = reader(&store, "anna@example.org").await;
    let ben = reader(&store, "ben@example.org").await;
    damage(
        &db,
        "subscribers",
        "timezone",
        "Mars/Olympus",
        "anna@example.org",
    )
    .await;
    for pass in 0..2 {
        let mut served = Vec::new();
        let outcome = store
            .digest_batch(
                day(2),
                0,
                500,
                51,
                day(2),
                &mut OneBody(|batch: &DigestBatch| {
                    served = batch.readers.iter().map(|r| r.id).collect();
                    Ok(Vec::new())
                }),
            )
            .await
            .unwrap();
        assert_eq!(served, [ben], "pass {pass}: the others are served");
        // The first pass claims both; anna then waits a day (ben, planned
        // nothing here, stays due).
        assert_eq!(outcome.due, 2 - pass, "pass {pass}");
    }
    let (_, _, id, column) = named_row(store.preferences(anna).await);
    assert_eq!((id, column), (anna, "timezone"));
}

/// A pass's digests queued under a lease (the hand-over to the workers of its
/// process) come back in batches of the lease's size up to its limit (the rest is
/// queued for a claim), each under its own holder,
/// as a claim would leave them: nobody else claims them while the lease holds,
/// the holder renews them, and once it has run out they are claimed like any
/// other mail, as a second attempt.
async fn digests_queued_under_a_lease_are_claimed_by_nobody_else_until_it_runs_out(
    backend: Backend,
) {
    let (store, _db) = store(backend).await;
    let day = |d: i64| t0() + Duration::days(d);
    let readers = [
        "leser0@example.org",
        "leser1@example.org",
        "leser2@example.org",
        "leser3@example.org",
        "leser4@example.org",
    ];
    for who in readers {
        let token = signed_up(&store, who, t0()).await;
        store
            .confirm(&token.hash(), t0(), None, Duration::hours(24))
            .await
            .unwrap();
    }
    // The confirmation mails are out of the way.
    let confirmations = store.claim_mail(t0(), t0(), day(1), 1, 10).await.unwrap();
    let ids: Vec<i64> = confirmations.iter().map(|m| m.id).collect();
    store.mails_sent(&ids, t0()).await.unwrap();

    let lease_until = day(2) + Duration::seconds(30);
    let outcome = store
        .digest_batch(
            day(2),
            0,
            500,
            51,
            day(2),
            &mut Leasing(
                OneBody(all_get("one body", day(3))),
                LeaseTerms {
                    until: lease_until,
                    per_owner: 2,
                    limit: 4,
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(outcome.enqueued, 5);
    let sizes: Vec<usize> = outcome.leased.iter().map(|b| b.mails.len()).collect();
    assert_eq!(
        sizes,
        [2, 2],
        "batches of the lease's size, up to its limit"
    );
    let owners: std::collections::HashSet<i64> = outcome.leased.iter().map(|b| b.owner).collect();
    assert_eq!(owners.len(), 2, "each batch under its own holder");
    let mut leased: Vec<&ClaimedMail> = outcome.leased.iter().flat_map(|b| &b.mails).collect();
    leased.sort_by_key(|m| m.id);
    let mut to_whom: Vec<&str> = leased.iter().map(|m| m.recipient.as_str()).collect();
    to_whom.sort_unstable();
    assert_eq!(to_whom.len(), 4);
    assert!(to_whom.iter().all(|who| readers.contains(who)));
    for mail in &leased {
        assert_eq!(mail.kind, "digest");
        assert_eq!(mail.attempts, 1, "the first attempt, as a claim counts it");
        assert!(
            mail.message.is_empty() && mail.body_id.is_some(),
            "a reference to the body"
        );
        assert_eq!(mail.envelope_from, "bounces@example.org");
    }

    // While the lease holds nobody claims them (only the fifth, beyond the limit,
    // queued for a claim); their holder renews them.
    let claimed = store
        .claim_mail(day(2), day(2), day(2) + Duration::seconds(60), 7, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        1,
        "claimed under a running lease: {claimed:?}"
    );
    assert!(!leased.iter().any(|m| m.id == claimed[0].id));
    assert_eq!(claimed[0].attempts, 1);
    let first = &outcome.leased[0];
    let ids: Vec<i64> = first.mails.iter().map(|m| m.id).collect();
    let kept = store
        .renew_mail_leases(first.owner, &ids, lease_until + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(kept.len(), 2);
    let stranger = store
        .renew_mail_leases(first.owner ^ 1, &ids, lease_until)
        .await
        .unwrap();
    assert!(stranger.is_empty(), "only the holder renews");

    // Run out (the holder died): the others are claimed again, as second attempts;
    // the renewed batch only after its own lease.
    let later = lease_until + Duration::seconds(1);
    let again = store
        .claim_mail(later, later, later + Duration::seconds(30), 8, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 2, "the other batch: {again:?}");
    assert!(
        again
            .iter()
            .all(|m| m.attempts == 2 && !ids.contains(&m.id))
    );
}

/// A slot is served once: a reader whose next slot is set back to the slot their
/// last digest served (by hand, or by anything that would) is moved on without a
/// second mail, and keeps their watermark, so the news planned for it go into the
/// next digest; the next slot is served as usual. The last served slot is on the
/// reader's row (migration 0016, which took it over from the digest log).
async fn a_slot_already_served_gets_no_second_digest(backend: Backend) {
    let (store, _db) = store(backend).await;
    let day = |d: i64| t0() + Duration::days(d);
    let token = signed_up(&store, "leser@example.org", t0()).await;
    store
        .confirm(&token.hash(), t0(), None, Duration::hours(24))
        .await
        .unwrap();
    let confirmation = store.claim_mail(t0(), t0(), day(1), 1, 10).await.unwrap();
    let ids: Vec<i64> = confirmation.iter().map(|m| m.id).collect();
    store.mails_sent(&ids, t0()).await.unwrap();
    // Every pass plans a digest covering items up to `covered`, and moves the
    // reader a day on from the slot it serves.
    let pass = |at: DateTime<Utc>, covered: i64| {
        let store = store.clone();
        async move {
            store
                .digest_batch(
                    at,
                    0,
                    500,
                    51,
                    at,
                    &mut OneBody(move |batch: &DigestBatch| {
                        Ok(batch
                            .readers
                            .iter()
                            .map(|r| DigestPlan {
                                subscriber_id: r.id,
                                slot_at: r.next_slot_at,
                                next_slot_at: r.next_slot_at + Duration::days(1),
                                last_item_id: covered,
                                digest: Some(PlannedDigest {
                                    body_key: "one body".into(),
                                    recipient: r.email.as_str().to_owned(),
                                    envelope_from: "bounces@example.org".into(),
                                }),
                            })
                            .collect())
                    }),
                )
                .await
                .unwrap()
        }
    };
    let state = || async {
        let rows = _db
            .text_rows(
                "SELECT CAST(last_item_id AS TEXT), CAST(next_slot_at AS TEXT), CAST(last_slot_at AS TEXT) FROM subscribers",
                &[],
            )
            .await;
        rows[0].clone()
    };
    let first = pass(day(2), 5).await;
    assert_eq!((first.due, first.enqueued), (1, 1));
    let served = state().await;
    assert_eq!(served[0].as_deref(), Some("5"));
    assert!(served[2].is_some(), "the served slot is kept: {served:?}");

    // Set back to the slot just served: due again, but no second digest, and the
    // watermark stays where the digest left it.
    crate::harness::execute_sql(
        &store,
        "UPDATE subscribers SET next_slot_at = last_slot_at".to_owned(),
    )
    .await;
    let again = pass(day(2), 9).await;
    assert_eq!((again.due, again.enqueued), (1, 0), "{again:?}");
    let after = state().await;
    assert_eq!(after[0].as_deref(), Some("5"), "the watermark stays");
    assert_eq!(after[2], served[2], "the served slot stays");
    assert_ne!(after[1], served[2], "moved on to the next slot");

    // The next slot is served as usual.
    let next = pass(day(4), 9).await;
    assert_eq!((next.due, next.enqueued), (1, 1), "{next:?}");
    assert_eq!(state().await[0].as_deref(), Some("9"));
    let digests = store
        .claim_mail(day(4), day(4), day(5), 2, 10)
        .await
        .unwrap();
    assert_eq!(digests.len(), 2, "one digest per slot served");
}

/// Migration 0016 takes each reader's last served slot from the digest log it
/// replaces: the latest of their slots, none for a reader never served, and a
/// slot at or before it is then not served again. Migration 0019 then drops the
/// log, and the slots stay on the readers' rows.
async fn the_last_served_slot_is_taken_over_from_the_digest_log(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.database_url()).await.unwrap();
    store.migrate_to(15).await.unwrap();
    crate::harness::execute_sql(
        &store,
        "INSERT INTO subscribers (id, email, status, locale, delivery_time, timezone, created_at, updated_at, next_slot_at) VALUES \
         (1, 'served@example.org', 'confirmed', 'de', '07:00', 'Europe/Berlin', '2026-11-01 06:00:00+00:00', '2026-11-01 06:00:00+00:00', '2026-12-01 06:00:00+00:00'), \
         (2, 'never@example.org', 'confirmed', 'de', '07:00', 'Europe/Berlin', '2026-11-01 06:00:00+00:00', '2026-11-01 06:00:00+00:00', '2026-12-01 06:00:00+00:00'); \
         INSERT INTO digests (subscriber_id, slot_at, item_count, created_at) VALUES \
         (1, '2026-11-29 06:00:00+00:00', 3, '2026-11-29 06:00:01+00:00'), \
         (1, '2026-11-30 06:00:00+00:00', 2, '2026-11-30 06:00:01+00:00'), \
         (1, '2026-11-28 06:00:00+00:00', 4, '2026-11-28 06:00:01+00:00')"
            .to_owned(),
    )
    .await;
    store.migrate().await.unwrap();
    let rows = db
        .text_rows(
            "SELECT email, CAST(last_slot_at AS TEXT) FROM subscribers ORDER BY id",
            &[],
        )
        .await;
    assert_eq!(rows[0][0].as_deref(), Some("served@example.org"));
    let last = rows[0][1].as_deref().expect("a last served slot");
    assert!(
        last.starts_with("2026-11-30 06:00:00"),
        "the latest: {last}"
    );
    assert_eq!(rows[1][1], None, "never served: {rows:?}");
    let log = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'digests'"
        }
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name = 'digests'"
        }
    };
    assert_eq!(
        db.text_rows(log, &[]).await,
        Vec::<Vec<Option<String>>>::new(),
        "the digest log is gone"
    );
}

/// Migration 0020 moves finished mail out of the queue into the mail log, with
/// everything the export, the purge and the dashboard read; queued mail stays.
async fn finished_mail_moves_from_the_queue_into_the_log(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.database_url()).await.unwrap();
    store.migrate_to(19).await.unwrap();
    crate::harness::execute_sql(
        &store,
        "INSERT INTO subscribers (id, email, status, locale, delivery_time, timezone, created_at, updated_at, next_slot_at) VALUES \
         (1, 'anna@example.org', 'confirmed', 'de', '07:00', 'Europe/Berlin', '2026-11-01 06:00:00+00:00', '2026-11-01 06:00:00+00:00', '2026-12-01 06:00:00+00:00'); \
         INSERT INTO mail_jobs (id, subscriber_id, kind, recipient, envelope_from, status, attempts, next_attempt_at, created_at, finished_at, last_error) VALUES \
         (7, 1, 'confirm', 'anna@example.org', 'b@example.org', 'sent', 1, '2026-11-01 06:00:00+00:00', '2026-11-01 06:00:00+00:00', '2026-11-01 06:00:02+00:00', NULL), \
         (8, 1, 'digest', 'anna@example.org', 'b@example.org', 'failed', 3, '2026-11-02 06:00:00+00:00', '2026-11-02 06:00:00+00:00', '2026-11-02 07:00:00+00:00', '550 5.1.1 no such user'), \
         (9, 1, 'digest', 'anna@example.org', 'b@example.org', 'queued', 0, '2026-11-03 06:00:00+00:00', '2026-11-03 06:00:00+00:00', NULL, NULL), \
         (10, NULL, 'test', 'ops@example.org', 'b@example.org', 'sent', 1, '2026-11-03 08:00:00+00:00', '2026-11-03 08:00:00+00:00', '2026-11-03 08:00:01+00:00', NULL)"
            .to_owned(),
    )
    .await;
    let stats = counted(&store.stats().await.unwrap());
    store.migrate().await.unwrap();
    assert_eq!(
        db.text_rows(
            "SELECT CAST(id AS TEXT), status FROM mail_jobs ORDER BY id",
            &[]
        )
        .await,
        vec![vec![Some("9".to_owned()), Some("queued".to_owned())]],
        "only queued mail stays in the queue"
    );
    assert_eq!(
        db.text_rows(
            "SELECT CAST(id AS TEXT), CAST(subscriber_id AS TEXT), kind, recipient, status, \
             CAST(attempts AS TEXT), last_error FROM mail_log ORDER BY mail_log.id",
            &[]
        )
        .await,
        [
            ["7", "1", "confirm", "anna@example.org", "sent", "1", ""],
            [
                "8",
                "1",
                "digest",
                "anna@example.org",
                "failed",
                "3",
                "550 5.1.1 no such user"
            ],
            ["10", "", "test", "ops@example.org", "sent", "1", ""],
        ]
        .map(|row| row.map(|v| (!v.is_empty()).then(|| v.to_owned())).to_vec())
        .to_vec(),
    );
    assert_eq!(
        counted(&store.stats().await.unwrap()),
        stats,
        "nothing recounted"
    );
    let anna = EmailAddress::parse("anna@example.org").unwrap();
    let export = store.export_subscriber(&anna).await.unwrap().unwrap();
    type Delivery<'a> = (
        &'a str,
        &'a str,
        i32,
        Option<&'a str>,
        Option<DateTime<Utc>>,
    );
    let deliveries: Vec<Delivery> = export
        .deliveries
        .iter()
        .map(|d| {
            (
                d.kind.as_str(),
                d.status.as_str(),
                d.attempts,
                d.last_error.as_deref(),
                d.finished_at,
            )
        })
        .collect();
    let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
    assert_eq!(
        deliveries,
        vec![
            ("confirm", "sent", 1, None, at("2026-11-01T06:00:02Z")),
            (
                "digest",
                "failed",
                3,
                Some("550 5.1.1 no such user"),
                at("2026-11-02T07:00:00Z")
            ),
            ("digest", "queued", 0, None, None),
        ],
        "the export reads the log and the queue, oldest first"
    );
    // The purge takes the moved mail by its end, into the reader's days.
    assert_eq!(
        store
            .purge_finished_mail("2026-11-02T12:00:00Z".parse().unwrap(), 100)
            .await
            .unwrap(),
        2
    );
    let export = store.export_subscriber(&anna).await.unwrap().unwrap();
    assert_eq!(export.deliveries.len(), 1);
    assert_eq!(export.delivery_days.len(), 2);
}

/// A planner of lanes of one pass: the closure plans, every body is rendered
/// slowly (a lane started beside it comes to the body while it is rendered) and
/// counted.
struct Lane<F> {
    plan: F,
    pass: PassBodies,
    renders: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<F> DigestPlanner for Lane<F>
where
    F: FnMut(&DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError>,
{
    fn plan(&mut self, batch: &DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError> {
        (self.plan)(batch)
    }

    fn bodies(&self) -> Option<&PassBodies> {
        Some(&self.pass)
    }

    fn render(
        &mut self,
        batch: &DigestBatch,
        key: &str,
    ) -> Result<NewBody, postbote::store::BoxError> {
        self.renders
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(300));
        OneBody(|_: &DigestBatch| Ok(Vec::new())).render(batch, key)
    }

    fn stored(&mut self, _bodies: &BodyIds) {}
}

/// Rendering a batch's bodies holds up no other task of its thread: on a runtime
/// with one worker thread, a task ticking every 10 ms keeps ticking while a batch
/// renders thirty bodies of 10 ms each. (In `serve`, the delivery workers keep
/// sending while a pass renders its first batches, which hold most of its bodies.)
async fn rendering_holds_up_no_other_task(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (store, _db) = store(backend).await;
    let readers: Vec<&'static str> = (0..30)
        .map(|i| &*Box::leak(format!("reader{i}@example.org").into_boxed_str()))
        .collect();
    confirmed_readers(&store, &readers).await;
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let at = t0() + Duration::days(2);
    let before = ticks.load(Ordering::SeqCst);
    // On the worker thread, as a pass runs in `serve` (the test itself runs on
    // another thread).
    let batch = tokio::spawn(async move {
        store
            .digest_batch(at, 0, 100, 51, at, &mut SlowBodies)
            .await
            .unwrap()
    })
    .await
    .unwrap();
    let during = ticks.load(Ordering::SeqCst) - before;
    ticker.abort();
    assert_eq!(batch.enqueued, 30);
    assert!(
        during >= 10,
        "the ticker ran {during} times while thirty bodies rendered for 10 ms each"
    );
}

/// A body of its own for every reader, each taking 10 ms to render.
struct SlowBodies;

impl DigestPlanner for SlowBodies {
    fn plan(&mut self, batch: &DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError> {
        let mut plans = all_get("", t0() + Duration::days(30))(batch)?;
        for plan in &mut plans {
            if let Some(digest) = &mut plan.digest {
                digest.body_key = format!("body of {}", plan.subscriber_id);
            }
        }
        Ok(plans)
    }

    fn render(
        &mut self,
        batch: &DigestBatch,
        key: &str,
    ) -> Result<NewBody, postbote::store::BoxError> {
        std::thread::sleep(std::time::Duration::from_millis(10));
        OneBody(|_: &DigestBatch| Ok(Vec::new())).render(batch, key)
    }

    fn stored(&mut self, _bodies: &BodyIds) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sqlite_rendering_holds_up_no_other_task() {
    rendering_holds_up_no_other_task(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn postgres_rendering_holds_up_no_other_task() {
    rendering_holds_up_no_other_task(Backend::Postgres).await;
}

/// Every reader of `batch` gets a digest of the body `key`, next due at `next`.
fn all_get(
    key: &'static str,
    next: DateTime<Utc>,
) -> impl FnMut(&DigestBatch) -> Result<Vec<DigestPlan>, postbote::store::BoxError> {
    move |batch: &DigestBatch| {
        Ok(batch
            .readers
            .iter()
            .map(|r| DigestPlan {
                subscriber_id: r.id,
                slot_at: r.next_slot_at,
                next_slot_at: next,
                last_item_id: 0,
                digest: Some(PlannedDigest {
                    body_key: key.into(),
                    recipient: r.email.as_str().to_owned(),
                    envelope_from: "bounces@example.org".into(),
                }),
            })
            .collect())
    }
}

/// Confirmed readers `who` at `t0()`, their confirmation mails sent.
async fn confirmed_readers(store: &Store, who: &[&'static str]) {
    for who in who {
        let token = signed_up(store, who, t0()).await;
        store
            .confirm(&token.hash(), t0(), None, Duration::hours(24))
            .await
            .unwrap();
    }
    let confirmations = store
        .claim_mail(t0(), t0(), t0() + Duration::days(1), 1, 10)
        .await
        .unwrap();
    let ids: Vec<i64> = confirmations.iter().map(|m| m.id).collect();
    store.mails_sent(&ids, t0()).await.unwrap();
}

/// Two lanes of one pass that need the same body side by side: one renders and
/// stores it, the other waits for it and refers to the same row, so every
/// reader's digest names one body and it was rendered once.
async fn lanes_of_a_pass_render_a_body_they_share_once(backend: Backend) {
    let (store, _db) = store(backend).await;
    let day = |d: i64| t0() + Duration::days(d);
    confirmed_readers(
        &store,
        &[
            "leser0@example.org",
            "leser1@example.org",
            "leser2@example.org",
            "leser3@example.org",
        ],
    )
    .await;
    let pass = PassBodies::default();
    let renders = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // On PostgreSQL the lanes run side by side, one on each runtime thread;
    // SQLite's one connection makes the second wait for the first's commit.
    let lane = || {
        let store = store.clone();
        let mut lane = Lane {
            plan: all_get("shared body", day(3)),
            pass: pass.clone(),
            renders: renders.clone(),
        };
        tokio::spawn(async move {
            store
                .digest_batch(day(2), 0, 2, 51, day(2), &mut lane)
                .await
                .unwrap()
                .enqueued
        })
    };
    let (one, two) = (lane(), lane());
    assert_eq!((one.await.unwrap(), two.await.unwrap()), (2, 2));
    assert_eq!(renders.load(std::sync::atomic::Ordering::SeqCst), 1);
    let digests = store
        .claim_mail(day(2), day(2), day(3), 2, 10)
        .await
        .unwrap();
    assert_eq!(digests.len(), 4);
    let bodies: std::collections::BTreeSet<Option<i64>> =
        digests.iter().map(|m| m.body_id).collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies.iter().all(Option::is_some), "{bodies:?}");
}

/// Nothing but the body purge's conditions keeps a body: it is not deleted while
/// a queued mail names it, nor before it is a day old; a pass that reuses a
/// stored body older than an hour, even one it stored itself, gives it a new age
/// (so the purge cannot take it from under the pass), and once no queued mail
/// names it, it goes a day later.
async fn a_body_stays_while_queued_mail_needs_it_and_a_reused_one_is_given_a_new_age(
    backend: Backend,
) {
    let (store, _db) = store(backend).await;
    let day = |d: i64| t0() + Duration::days(d);
    confirmed_readers(&store, &["anna@example.org", "ben@example.org"]).await;
    let renders = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // One pass that runs for days: what it stored long ago is looked at again.
    let pass = PassBodies::default();
    let lane = || Lane {
        plan: all_get("kept body", day(30)),
        pass: pass.clone(),
        renders: renders.clone(),
    };
    let first = store
        .digest_batch(day(2), 0, 1, 51, day(2), &mut lane())
        .await
        .unwrap();
    assert_eq!(first.enqueued, 1);
    assert_eq!(
        store.purge_unused_bodies(day(10)).await.unwrap(),
        0,
        "a queued mail names it"
    );
    let anna = store
        .claim_mail(day(2), day(2), day(3), 2, 10)
        .await
        .unwrap();
    assert_eq!(anna.len(), 1);
    store.mails_sent(&[anna[0].id], day(2)).await.unwrap();
    assert_eq!(
        store.purge_unused_bodies(day(2)).await.unwrap(),
        0,
        "not older than the cutoff"
    );

    // Two days later ben's digest needs the same body: found, not rendered, and
    // given the pass's time as its age.
    let second = store
        .digest_batch(day(4), 0, 1, 51, day(4), &mut lane())
        .await
        .unwrap();
    assert_eq!(second.enqueued, 1);
    assert_eq!(renders.load(std::sync::atomic::Ordering::SeqCst), 1);
    let ben = store
        .claim_mail(day(4), day(4), day(5), 3, 10)
        .await
        .unwrap();
    assert_eq!(ben.len(), 1);
    assert_eq!(ben[0].recipient, "ben@example.org");
    assert_eq!(ben[0].body_id, anna[0].body_id, "the same body");
    store.mails_sent(&[ben[0].id], day(4)).await.unwrap();
    assert_eq!(
        store.purge_unused_bodies(day(3)).await.unwrap(),
        0,
        "its age is the second pass's"
    );
    assert_eq!(store.purge_unused_bodies(day(5)).await.unwrap(), 1);
    assert!(
        store
            .digest_bodies(&[anna[0].body_id.unwrap()])
            .await
            .unwrap()
            .is_empty()
    );
}

on_both_backends!(
    the_last_served_slot_is_taken_over_from_the_digest_log,
    finished_mail_moves_from_the_queue_into_the_log,
    lanes_of_a_pass_render_a_body_they_share_once,
    a_body_stays_while_queued_mail_needs_it_and_a_reused_one_is_given_a_new_age,
    a_slot_already_served_gets_no_second_digest,
    digests_queued_under_a_lease_are_claimed_by_nobody_else_until_it_runs_out,
    a_lease_is_renewed_only_by_its_holder_and_a_lost_one_is_noticed,
    counters_equal_a_recount_after_every_kind_of_change,
    a_leased_sign_up_is_counted_like_any_other,
    the_retention_purge_deletes_old_finished_mail_and_keeps_the_history,
    an_unconfirmed_return_does_not_erase_a_former_readers_history,
    topics_are_created_renamed_retired_and_upserted,
    a_retired_topic_is_given_to_no_one,
    a_sign_up_moves_through_its_states,
    expired_tokens_do_not_confirm_and_old_pending_sign_ups_are_purged,
    the_mail_limit_counts_mails_per_address_per_window,
    claimed_mail_is_leased_retried_and_finished,
    a_purged_sign_up_takes_its_mail_along,
    migrations_can_run_twice,
    a_stored_value_that_does_not_parse_is_an_error_naming_the_row,
    a_due_reader_whose_row_does_not_parse_is_named_and_skipped_for_a_day,
    a_stored_feed_or_submission_that_does_not_parse_is_an_error_naming_the_row,
);

/// A pooled connection that the server ended while it sat idle (a database
/// restart) is checked before it is used again and replaced: the first statement
/// afterwards succeeds instead of failing on the dead connection. (Connections
/// in use are not checked before each statement: sqlx's default check cost a
/// round trip per transaction.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_connection_ended_while_idle_is_replaced_before_use() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    store.ping().await.unwrap();
    let admin = sqlx::PgPool::connect(&std::env::var("POSTBOTE_TEST_PG_URL").unwrap())
        .await
        .unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!ended.is_empty() && ended.iter().all(|e| *e), "{ended:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&name)
                .fetch_one(&admin)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left} backends left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Idle for longer than the pool's check interval (one second): the time a
    // restart takes at the least.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    store
        .ping()
        .await
        .expect("the first statement after the restart");
    admin.close().await;
}

/// Queues two mails and has PostgreSQL take statistics: they say the queue is one
/// page of two mails, as a fresh database or an autovacuum run between two
/// fan-outs leaves them.
async fn queue_of_two_mails_analyzed(store: &Store) {
    crate::harness::execute_sql(
        store,
        "INSERT INTO mail_jobs (kind, recipient, envelope_from, status, next_attempt_at, created_at) \
         SELECT 'test', 'a@example.org', 'b@example.org', 'queued', now(), now() FROM generate_series(1, 2); \
         ANALYZE mail_jobs"
            .to_owned(),
    )
    .await;
}

/// The delivery record's plan, made on a nearly empty queue as the recorder's
/// connections make it (once each, `plan_cache_mode = force_generic_plan`), looks
/// each mail up by its key: a sequential scan or a hash join over the queue, the
/// cheapest plans while it is that small, would read all of it per record once a
/// fan-out has filled it.
#[tokio::test]
async fn postgres_the_delivery_record_looks_mails_up_by_key_whatever_the_queue() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    queue_of_two_mails_analyzed(&store).await;
    let recorder = store.with_relaxed_commits(1);
    let plan = recorder.mails_sent_plan().await.unwrap().unwrap();
    assert!(
        plan.contains("Index Cond: (id = ANY ($2))"),
        "by key, as a generic plan: {plan}"
    );
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Hash Join"),
        "{plan}"
    );
}

/// A claim runs its search of the queue once. Planned on a queue whose statistics
/// say it holds a couple of mails (a fresh database, or an autovacuum run between
/// two fan-outs), `id IN (SELECT … FOR UPDATE SKIP LOCKED)` became a semi join
/// that ran the search again for every row of the queue: in a fan-out whose
/// 20,000 mails were all leased, each such claim walked past all of them 20,000
/// times (1.1 s of the database's CPU per claim, seen in the fan-out bench).
#[tokio::test]
async fn postgres_a_claim_searches_the_queue_once_whatever_its_statistics_say() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    queue_of_two_mails_analyzed(&store).await;
    let plan = store.claim_mail_plan().await.unwrap().unwrap();
    assert!(
        plan.contains("InitPlan") && !plan.contains("Join") && !plan.contains("Nested Loop"),
        "the search once, then the claimed mails by key: {plan}"
    );
}

/// A pass moves each chunk of 500 readers to their next slot by their keys: with
/// the pass's settings the plan looks each reader up by id, where left to its
/// costs the planner hashed the chunk against all readers, so that a pass read
/// the readers' table once per chunk (N * N / 500 rows for N readers).
#[tokio::test]
async fn postgres_a_pass_moves_readers_on_by_key_not_by_reading_them_all() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    crate::harness::execute_sql(
        &store,
        "INSERT INTO subscribers (email, status, locale, delivery_time, timezone, created_at, updated_at) \
         SELECT 'reader' || n || '@example.org', 'confirmed', 'de', '07:00', 'Europe/Berlin', now(), now() \
         FROM generate_series(1, 20000) AS n; ANALYZE subscribers"
            .to_owned(),
    )
    .await;
    let ids: Vec<i64> = (1..=500).collect();
    let plan = store.advance_readers_plan(&ids).await.unwrap().unwrap();
    assert!(
        plan.contains("Nested Loop") && plan.contains("Index Cond: (id = v.id)"),
        "each reader by key: {plan}"
    );
    assert!(
        !plan.contains("Hash Join") && !plan.contains("Merge Join"),
        "{plan}"
    );
}
