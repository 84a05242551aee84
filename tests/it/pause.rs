//! "Pause until" on the preferences page: set through the real form (signed link and
//! form token), no digest on the paused days, the first digest after the pause lists
//! what came meanwhile (at most `digest.max_items`, the rest counted), clearing the
//! pause resumes, and a date in the past or more than a year ahead is refused with
//! nothing changed; on both backends with the real app and a real SMTP server.
//! Also a pause the planner meets on a reader who is due already (written straight
//! into the row, as a race or an older row would leave it): the pass skips them.

use crate::harness::{Backend, SmtpSink, TestApp, app_at, delivered, find_link, form, parse, utc};
use postbote::clock::ManualClock;

const READER: &str = "urlaub@example.org";

/// A reader of Wirtschaft at 07:00 Berlin (05:00 UTC in May) who got a first digest
/// on 2 May 2027; returns the app and their preferences link.
async fn reader_with_a_digest(
    backend: Backend,
) -> (
    TestApp,
    SmtpSink,
    crate::harness::TestDb,
    ManualClock,
    String,
) {
    let (app, sink, db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |c| {
        c.digest.max_items = 3;
    })
    .await;
    let now = utc("2027-05-01T08:00:00Z");
    app.reader(READER, &["wirtschaft"], "07:00", "Europe/Berlin", "en", now)
        .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    app.post_item(&["wirtschaft"], "Before the pause").await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (1, 1));
    let raw = &delivered(&app, &sink).await[READER][0];
    let text = parse(raw).body_text(0).unwrap().into_owned();
    let link = find_link(&text, "preferences").expect("a preferences link");
    (app, sink, db, clock, link)
}

/// Shows the preferences form and posts it with the reader's settings and
/// `paused_until`; returns the status and the page.
async fn save_pause(app: &TestApp, link: &str, paused_until: &str) -> (u16, String) {
    save_pause_in(app, link, paused_until, "en").await
}

/// [`save_pause`] with the form's language set to `locale`.
async fn save_pause_in(
    app: &TestApp,
    link: &str,
    paused_until: &str,
    locale: &str,
) -> (u16, String) {
    let page = app
        .http
        .get(link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let needle = "name=\"csrf\" value=\"";
    let at = page.find(needle).expect("a form token") + needle.len();
    let csrf = page[at..].split('"').next().unwrap();
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("csrf", csrf),
            ("action", "save"),
            ("topics", "wirtschaft"),
            ("delivery_time", "07:00"),
            ("timezone", "Europe/Berlin"),
            ("weekdays", ""),
            ("weekdays", "mon"),
            ("weekdays", "tue"),
            ("weekdays", "wed"),
            ("weekdays", "thu"),
            ("weekdays", "fri"),
            ("weekdays", "sat"),
            ("weekdays", "sun"),
            ("locale", locale),
            ("paused_until", paused_until),
        ])
        .finish();
    let r = app
        .http
        .post(link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The digests the reader got so far, as text.
async fn texts(app: &TestApp, sink: &SmtpSink) -> Vec<String> {
    delivered(app, sink).await[READER]
        .iter()
        .map(|raw| parse(raw).body_text(0).unwrap().into_owned())
        .collect()
}

async fn a_pause_sends_nothing_and_the_next_digest_lists_what_came_meanwhile(backend: Backend) {
    let (app, sink, _db, clock, link) = reader_with_a_digest(backend).await;
    // Paused up to and including the very next slot's day, 3 May; on 3 May,
    // after its slot, the reader extends the pause to 5 May.
    let pauses = [
        ("03", "2027-05-02T10:00:00Z", "2027-05-03"),
        ("04", "2027-05-03T10:00:00Z", "2027-05-05"),
    ];
    for (i, day) in ["03", "04", "05"].iter().enumerate() {
        if let Some((_, set_at, until)) = pauses.iter().find(|p| p.0 == *day) {
            clock.set(utc(set_at));
            let (status, page) = save_pause(&app, &link, until).await;
            assert_eq!(status, 200, "{page}");
            assert!(page.contains("Your changes are saved"));
            assert!(page.contains(&format!("value=\"{until}\"")));
            let changes = &app.export(READER).await.unwrap()["preference_changes"];
            assert_eq!(
                changes[i.min(1)]["paused_until"],
                *until,
                "kept with the change"
            );
        }
        clock.set(utc(&format!("2027-05-{day}T03:00:00Z")));
        for n in 0..2 {
            app.post_item(&["wirtschaft"], &format!("During the pause {i}{n}"))
                .await;
        }
        let (_, enqueued) = app.run_pass(&format!("2027-05-{day}T05:00:00Z")).await;
        assert_eq!(enqueued, 0, "no digest on 2027-05-{day}, a paused day");
    }
    assert_eq!(texts(&app, &sink).await.len(), 1, "only the digest before");

    // 6 May, the first day after the pause: one digest with the newest three of
    // the six items that came during it, and the other three counted.
    assert_eq!(app.run_pass("2027-05-06T05:00:00Z").await, (1, 1));
    let texts = texts(&app, &sink).await;
    assert_eq!(texts.len(), 2);
    let after = &texts[1];
    assert_eq!(after.matches("* During the pause").count(), 3, "{after}");
    assert!(after.contains("During the pause 21") && !after.contains("During the pause 00"));
    assert!(after.contains("… and 3 more"), "{after}");
    assert!(!after.contains("Before the pause"), "listed before already");
    assert_eq!(
        app.run_pass("2027-05-07T05:00:00Z").await.1,
        0,
        "nothing new"
    );
}

async fn clearing_the_pause_resumes_the_digests(backend: Backend) {
    let (app, sink, _db, clock, link) = reader_with_a_digest(backend).await;
    clock.set(utc("2027-05-02T10:00:00Z"));
    assert_eq!(save_pause(&app, &link, "2027-06-30").await.0, 200);
    app.post_item(&["wirtschaft"], "While paused").await;
    assert_eq!(app.run_pass("2027-05-03T05:00:00Z").await.1, 0, "paused");

    clock.set(utc("2027-05-03T10:00:00Z"));
    let (status, page) = save_pause(&app, &link, "").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"paused_until\" name=\"paused_until\" value=\"\""));
    let export = app.export(READER).await.unwrap();
    assert_eq!(
        export["preference_changes"][1]["paused_until"],
        serde_json::Value::Null
    );
    assert_eq!(app.run_pass("2027-05-04T05:00:00Z").await, (1, 1));
    let texts = texts(&app, &sink).await;
    assert!(texts[1].contains("While paused"), "nothing lost");
}

async fn a_past_or_far_pause_is_refused_and_nothing_changes(backend: Backend) {
    let (app, sink, _db, clock, link) = reader_with_a_digest(backend).await;
    clock.set(utc("2027-05-02T10:00:00Z"));
    for (date, message) in [
        ("2027-05-01", "This date is in the past."),
        ("2028-06-01", "A pause can last at most one year."),
        ("next week", "Please enter a date (YYYY-MM-DD)"),
    ] {
        let (status, page) = save_pause(&app, &link, date).await;
        assert_eq!(status, 422, "{date}");
        assert!(page.contains(message), "{date}: {page}");
        assert!(page.contains(&format!("value=\"{date}\"")), "shown again");
    }
    let export = app.export(READER).await.unwrap();
    assert_eq!(export["preference_changes"], serde_json::json!([]));
    // In German too, and still nothing changed.
    let (status, page) = save_pause_in(&app, &link, "2027-04-30", "de").await;
    assert_eq!(status, 422);
    assert!(
        page.contains("Dieses Datum liegt in der Vergangenheit."),
        "{page}"
    );
    let export = app.export(READER).await.unwrap();
    assert_eq!(export["preference_changes"], serde_json::json!([]));
    assert_eq!(export["schedule"]["locale"], "en");
    // A year ahead and today itself are fine.
    assert_eq!(save_pause(&app, &link, "2028-05-01").await.0, 200);
    app.post_item(&["wirtschaft"], "Later").await;
    assert_eq!(save_pause(&app, &link, "2027-05-02").await.0, 200);
    assert_eq!(app.run_pass("2027-05-03T05:00:00Z").await, (1, 1));
    assert!(texts(&app, &sink).await[1].contains("Later"));
}

async fn signing_up_again_after_unsubscribing_ends_an_old_pause(backend: Backend) {
    let (app, sink, _db, clock, link) = reader_with_a_digest(backend).await;
    clock.set(utc("2027-05-02T10:00:00Z"));
    assert_eq!(save_pause(&app, &link, "2027-05-20").await.0, 200);
    let digest = texts(&app, &sink).await.remove(0);
    let unsubscribe = find_link(&digest, "unsubscribe").expect("an unsubscribe link");
    assert_eq!(
        app.http.post(&unsubscribe).send().await.unwrap().status(),
        200
    );
    assert_eq!(app.export(READER).await.unwrap()["status"], "unsubscribed");

    // Back through the sign-up form (07:30 Berlin) and its confirmation link: a new
    // subscription, with the settings of the new form and no pause left over.
    let r = app.sign_up_form(&form(READER, &["wirtschaft"])).await;
    assert_eq!(r.status(), 200);
    let mail = parse(&sink.wait_for(2).await[1])
        .body_text(0)
        .unwrap()
        .into_owned();
    let confirm = find_link(&mail, "confirm").expect("a confirmation link");
    assert_eq!(app.http.post(&confirm).send().await.unwrap().status(), 200);
    assert_eq!(app.export(READER).await.unwrap()["status"], "confirmed");
    clock.set(utc("2027-05-02T11:00:00Z"));
    app.post_item(&["wirtschaft"], "After coming back").await;
    assert_eq!(
        app.run_pass("2027-05-03T05:30:00Z").await,
        (1, 1),
        "3 May lies inside the old pause, which the new sign-up ended"
    );
}

async fn a_reader_already_due_when_the_pause_is_written_gets_nothing_until_it_ends(
    backend: Backend,
) {
    let (app, sink, db, clock) = app_at(backend, "2027-05-01T08:00:00Z", |c| {
        c.digest.max_items = 3;
    })
    .await;
    let now = utc("2027-05-01T08:00:00Z");
    let other = "weiter@example.org";
    for email in [READER, other] {
        app.reader(email, &["wirtschaft"], "07:00", "Europe/Berlin", "en", now)
            .await;
    }
    // Both are due at 05:00 UTC on 2 May. The pause goes into the row without
    // moving the reader's slot, so the planner itself has to see it.
    db.text_rows(
        "UPDATE subscribers SET paused_until = '2027-05-03' WHERE email = $1",
        &[READER],
    )
    .await;
    let slots = db
        .text_rows(
            "SELECT CAST(next_slot_at AS TEXT) FROM subscribers ORDER BY email",
            &[],
        )
        .await;
    assert_eq!(slots[0], slots[1], "both still due at the same slot");
    clock.set(utc("2027-05-01T09:00:00Z"));
    for n in 1..=2 {
        app.post_item(&["wirtschaft"], &format!("During the pause {n}"))
            .await;
    }
    assert_eq!(
        app.run_pass("2027-05-02T05:00:00Z").await,
        (2, 1),
        "both due, only the reader who is not paused gets a digest"
    );
    clock.set(utc("2027-05-02T09:00:00Z"));
    for n in 3..=4 {
        app.post_item(&["wirtschaft"], &format!("During the pause {n}"))
            .await;
    }
    assert_eq!(
        app.run_pass("2027-05-03T05:00:00Z").await.1,
        1,
        "3 May: paused"
    );
    let got = delivered(&app, &sink).await;
    assert!(!got.contains_key(READER), "no digest during the pause");
    assert_eq!(got[other].len(), 2);

    // 4 May, the day after the pause: the four items of the pause, newest three
    // listed and the fourth counted.
    assert_eq!(app.run_pass("2027-05-04T05:00:00Z").await.1, 1);
    let texts = texts(&app, &sink).await;
    assert_eq!(texts.len(), 1, "one digest after the pause");
    let after = &texts[0];
    assert_eq!(after.matches("* During the pause").count(), 3, "{after}");
    assert!(after.contains("During the pause 4") && !after.contains("During the pause 1"));
    assert!(after.contains("… and 1 more"), "{after}");
}

crate::on_both_backends!(
    a_reader_already_due_when_the_pause_is_written_gets_nothing_until_it_ends,
    signing_up_again_after_unsubscribing_ends_an_old_pause,
    a_pause_sends_nothing_and_the_next_digest_lists_what_came_meanwhile,
    clearing_the_pause_resumes_the_digests,
    a_past_or_far_pause_is_refused_and_nothing_changes,
);
