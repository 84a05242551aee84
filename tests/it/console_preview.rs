//! The console's digest preview on both backends, against the real app: the
//! preview shows what a real pass then sends to a reader with the same topics and
//! language (same subject, same content up to the reader's own part), its HTML
//! part comes in a frame with a sandboxing policy of its own, and a test copy goes
//! through the queue to the typed address without creating a reader or touching
//! anyone's slots or watermark.

use postbote::clock::Clock;

use crate::console::{get, login, post};
use crate::harness::{Backend, app_at, delivered, parse};
use postbote::web::console::preview::FRAME_POLICY;

/// `(subscriber id, last item id, next slot, last served slot)` of every reader.
async fn digest_state(db: &crate::harness::TestDb) -> Vec<Vec<Option<String>>> {
    db.text_rows(
        "SELECT CAST(id AS TEXT), CAST(last_item_id AS TEXT), CAST(next_slot_at AS TEXT), \
         CAST(last_slot_at AS TEXT) FROM subscribers ORDER BY id",
        &[],
    )
    .await
}

/// The HTML-escaped `<pre>` of a page, unescaped enough for plain text.
fn pre(html: &str) -> String {
    let start = html
        .find("<pre class=\"digest-preview\">")
        .expect("a <pre>")
        + 28;
    let end = start + html[start..].find("</pre>").unwrap();
    html[start..end]
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x3D;", "=")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        // The page shows the part as the mail carries it (CRLF); the sink stores LF.
        .replace("\r\n", "\n")
}

async fn the_preview_is_the_digest_a_reader_then_gets_and_a_test_copy_changes_nobody(
    backend: Backend,
) {
    let (app, sink, db, clock) = app_at(backend, "2027-03-10T12:00:00Z", |_| {}).await;
    app.post_item(&["kultur"], "Museum opens a new wing").await;
    app.post_item(&["sport"], "Not in this digest").await;
    let c = login(&app).await;

    let page = get(
        &app,
        Some(&c.cookie),
        "/admin/preview?topics=kultur&locale=en",
    )
    .await;
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-security-policy"],
        postbote::web::CONTENT_SECURITY_POLICY
    );
    let html = page.text().await.unwrap();
    let text = pre(&html);
    assert!(text.contains("Museum opens a new wing"), "{text}");
    assert!(!text.contains("Not in this digest"), "{text}");
    assert!(html.contains("<iframe class=\"digest-preview\" sandbox src=\"/admin/preview/html?topics&#x3D;kultur&amp;locale&#x3D;en\""), "{html}");

    // The HTML part, in a document no script runs in and only the console frames.
    let frame = get(
        &app,
        Some(&c.cookie),
        "/admin/preview/html?topics=kultur&locale=en",
    )
    .await;
    assert_eq!(frame.status(), 200);
    assert_eq!(frame.headers()["content-security-policy"], FRAME_POLICY);
    assert!(FRAME_POLICY.contains("sandbox") && FRAME_POLICY.contains("frame-ancestors 'self'"));
    let part = frame.text().await.unwrap();
    assert!(
        part.contains("Museum opens a new wing") && part.contains("</html>"),
        "{part}"
    );
    // Without a session neither is shown.
    assert_eq!(
        get(&app, None, "/admin/preview/html?topics=kultur")
            .await
            .status(),
        303
    );

    // A test copy: queued, delivered to the typed address, nobody created or moved.
    let before = digest_state(&db).await;
    let fields = [
        ("topics", "kultur"),
        ("locale", "en"),
        ("to", "tester@example.net"),
    ];
    let refused = post(&app, &c, "/admin/preview/send", &fields).await;
    assert_eq!(refused.status(), 403, "no CSRF token, no mail");
    let mut with_csrf = fields.to_vec();
    with_csrf.push(("csrf", &c.csrf));
    let r = post(&app, &c, "/admin/preview/send", &with_csrf).await;
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("sent=1")
    );
    let mails = sink.wait_for(1).await;
    let test_copy = parse(&mails[0]);
    assert_eq!(
        test_copy.to().unwrap().first().unwrap().address().unwrap(),
        "tester@example.net"
    );
    assert_eq!(
        app.store.subscriber_id("tester@example.net").await.unwrap(),
        None
    );
    assert_eq!(digest_state(&db).await, before);

    // A reader with these topics and language, confirmed now, gets that digest.
    app.reader(
        "real@example.com",
        &["kultur"],
        "07:00",
        "Europe/Berlin",
        "en",
        clock.now(),
    )
    .await;
    app.run_pass("2027-03-11T06:00:00Z").await;
    let digests = delivered(&app, &sink).await;
    let real = parse(&digests["real@example.com"][0]);
    assert_eq!(real.subject(), test_copy.subject());
    let real_text = real.body_text(0).unwrap();
    let shared: String = real_text
        .chars()
        .zip(text.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    assert!(
        shared.contains("Museum opens a new wing"),
        "{shared}\n---\n{real_text}"
    );
    app.stop().await;
}

async fn topics_with_nothing_new_preview_no_digest(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-03-10T12:00:00Z", |_| {}).await;
    let c = login(&app).await;
    let html = get(&app, Some(&c.cookie), "/admin/preview?topics=sport")
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<iframe"), "{html}");
    assert!(
        html.contains("no digest would go out") || html.contains("es ginge kein Digest"),
        "{html}"
    );
    app.stop().await;
}

on_both_backends!(
    the_preview_is_the_digest_a_reader_then_gets_and_a_test_copy_changes_nobody,
    topics_with_nothing_new_preview_no_digest,
);
