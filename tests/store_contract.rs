//! The store's contract, run unchanged against PostgreSQL and SQLite.

mod common;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use common::{Backend, TestDb};
use postbote::domain::{DeliveryTime, EmailAddress, Locale, TimeZone, Token, TopicSlug};
use postbote::store::{
    ConfirmOutcome, ConsentProof, NewMail, SignUp, SignUpKind, SignUpOutcome, Store, StoreError,
    TokenState, TopicChange,
};

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
        ["kultur"],
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
    assert_eq!(export.status, "confirmed");
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
        ["kultur"],
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
    let claimed = store.claim_mail(t0(), t0(), lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        claimed
            .iter()
            .all(|m| m.attempts == 1 && m.message.starts_with(b"Subject"))
    );
    assert!(
        store
            .claim_mail(t0(), t0(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased mail is not handed out twice"
    );
    assert_eq!(
        store
            .claim_mail(lease, lease, lease + Duration::minutes(5), 10)
            .await
            .unwrap()
            .len(),
        2,
        "an expired lease frees the mail"
    );

    let (first, second) = (claimed[0].id, claimed[1].id);
    store.mails_sent(&[first], t0()).await.unwrap();
    store
        .mail_retry(second, t0() + Duration::hours(1), "421 busy")
        .await
        .unwrap();
    assert!(
        store
            .claim_mail(
                t0() + Duration::minutes(59),
                t0() + Duration::minutes(59),
                t0() + Duration::hours(2),
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
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(),
        [(second, 3)]
    );
    store
        .mail_release(second, Some("relay unavailable"))
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
    assert_eq!(export.status, "unsubscribed");
    assert_eq!(export.consents.len(), 2, "the history is kept");
}

on_both_backends!(
    an_unconfirmed_return_does_not_erase_a_former_readers_history,
    topics_are_created_renamed_retired_and_upserted,
    a_sign_up_moves_through_its_states,
    expired_tokens_do_not_confirm_and_old_pending_sign_ups_are_purged,
    the_mail_limit_counts_mails_per_address_per_window,
    claimed_mail_is_leased_retried_and_finished,
    migrations_can_run_twice,
);
