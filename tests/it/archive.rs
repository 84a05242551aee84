//! The public archive: topic pages paged by arrival, the Atom feed, and a digest's
//! "view in browser" page with the same items as the mail; a submission held by
//! the real `postbote inbound` shows nowhere until the operator approves it; on
//! both backends.

use crate::feeds::hold;
use crate::harness::{Backend, app_at, delivered, execute_sql, parse, utc};

/// GET `url`: status and body.
async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn the_archive_pages_a_topic_by_arrival_and_never_shows_hidden_items(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let mut ids = Vec::new();
    for n in 1..=25 {
        ids.push(
            app.post_item(&["wirtschaft"], &format!("Meldung Nummer {n:02}"))
                .await,
        );
    }
    app.post_item(&["kultur"], "Theaterpremiere").await;
    assert!(
        app.store
            .hide_item(ids[23], utc("2027-05-01T08:00:00Z"))
            .await
            .unwrap()
    );

    let (status, front) = get(&app.url("/archive?lang=de")).await;
    assert_eq!(status, 200);
    assert!(
        front.contains("Wirtschaft") && front.contains("Kultur"),
        "{front}"
    );
    assert!(front.contains("Meldung Nummer 25") && front.contains("Theaterpremiere"));
    assert!(
        !front.contains("Meldung Nummer 24"),
        "hidden on the front page"
    );

    let (status, first) = get(&app.url("/archive/wirtschaft?lang=de")).await;
    assert_eq!(status, 200);
    let listed = |page: &str| -> Vec<u32> {
        // The link texts (each summary repeats its title).
        page.match_indices("\">Meldung Nummer ")
            .map(|(i, m)| page[i + m.len()..i + m.len() + 2].parse().unwrap())
            .collect()
    };
    // The front page: each topic's newest visible items, newest first, under
    // that topic.
    fn section<'p>(page: &'p str, name: &str) -> &'p str {
        page.split("<section>")
            .find(|s| s.contains(&format!(">{name}</a></h2>")))
            .unwrap_or_else(|| panic!("no section {name}: {page}"))
    }
    assert_eq!(listed(section(&front, "Wirtschaft")), vec![25, 23, 22]);
    let kultur = section(&front, "Kultur");
    assert!(
        kultur.contains("Theaterpremiere") && !kultur.contains("Meldung Nummer"),
        "{kultur}"
    );
    assert!(!section(&front, "Wirtschaft").contains("Theaterpremiere"));
    let page_one = listed(&first);
    assert_eq!(page_one.len(), 20, "{page_one:?}");
    assert_eq!(page_one[0], 25, "newest first");
    assert!(page_one.windows(2).all(|w| w[0] > w[1]), "{page_one:?}");
    assert!(!page_one.contains(&24), "a hidden item is left out");
    let older = first
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|h| h.contains("before="))
        .expect("a link to older items")
        .replace("&amp;", "&");
    let (_, second) = get(&app.url(&older)).await;
    let page_two = listed(&second);
    assert_eq!(page_two, vec![4, 3, 2, 1], "the rest, no repeats");
    assert!(!second.contains("before="), "no older page after the last");

    assert_eq!(get(&app.url("/archive/unbekannt")).await.0, 404);
    assert!(
        !get(&app.url("/archive/wirtschaft/feed.atom"))
            .await
            .1
            .contains("Nummer 24")
    );
}

async fn the_atom_feed_carries_what_the_schema_requires_and_a_feed_reader_reads_it(
    backend: Backend,
) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let plain = app.post_item(&["kultur"], "Ohne eigene Seite").await;
    app.post_item(&["kultur"], "<b>Fett</b> & \u{1}Steuerzeichen")
        .await;
    let r = reqwest::get(app.url("/archive/kultur/feed.atom"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/atom+xml; charset=utf-8"
    );
    let xml = r.text().await.unwrap();
    // RFC 4287: atom:feed has exactly one id, title and updated, and an author
    // (or one in every entry); each entry an id, title, updated and a link.
    let head = &xml[..xml.find("<entry>").unwrap()];
    for element in ["<id>", "<title>", "<updated>", "<author>", "rel=\"self\""] {
        assert_eq!(head.matches(element).count(), 1, "{element} in {head}");
    }
    let entries: Vec<&str> = xml.split("<entry>").skip(1).collect();
    assert_eq!(entries.len(), 2);
    for e in &entries {
        for element in [
            "<id>",
            "<title>",
            "<updated>",
            "<link rel=\"alternate\" href=",
        ] {
            assert_eq!(e.matches(element).count(), 1, "{element} in {e}");
        }
    }
    assert!(
        xml.contains("&lt;b&gt;Fett&lt;/b&gt; &amp; Steuerzeichen"),
        "{xml}"
    );

    let feed = feed_rs::parser::parse(xml.as_bytes()).expect("a feed reader reads it");
    assert_eq!(feed.id, app.url("/archive/kultur"));
    assert!(feed.title.unwrap().content.contains("Kultur"));
    assert_eq!(feed.entries.len(), 2);
    assert_eq!(
        feed.entries[0].title.as_ref().unwrap().content,
        "<b>Fett</b> & Steuerzeichen"
    );
    let oldest = &feed.entries[1];
    assert_eq!(oldest.id, app.url(&format!("/items/{plain}")));
    assert_eq!(oldest.links[0].href, app.url(&format!("/items/{plain}")));
    assert!(oldest.updated.is_some());
}

async fn a_digest_links_its_browser_view_with_the_same_items_and_the_rest_in_the_archive(
    backend: Backend,
) {
    let (app, sink, _db, clock) =
        app_at(backend, "2027-05-01T08:00:00Z", |c| c.digest.max_items = 3).await;
    let now = utc("2027-05-01T08:00:00Z");
    app.reader(
        "leser@example.org",
        &["wirtschaft", "kultur"],
        "07:00",
        "Europe/Berlin",
        "de",
        now,
    )
    .await;
    clock.set(utc("2027-05-01T09:00:00Z"));
    for title in ["Erste Meldung", "Zweite Meldung", "Dritte Meldung"] {
        app.post_item(&["wirtschaft"], title).await;
    }
    app.post_item(&["wirtschaft", "kultur"], "Vierte in beiden")
        .await;
    app.post_item(&["kultur"], "Fünfte Meldung").await;
    app.post_item(&["sport"], "Nicht abonniert").await;
    assert_eq!(app.run_pass("2027-05-02T05:00:00Z").await, (1, 1));
    let got = delivered(&app, &sink).await;
    let raw = &got["leser@example.org"][0];
    let text = parse(raw).body_text(0).unwrap().into_owned();
    let listed: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("* "))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed.len(), 3, "{text}");
    assert!(
        text.contains("… und 2 weitere Meldungen im Archiv:"),
        "{text}"
    );
    assert!(
        text.contains(&app.url("/archive/kultur")),
        "the rest: the topic's archive"
    );
    assert!(text.contains(&app.url("/archive/wirtschaft")), "{text}");

    let view = text
        .lines()
        .find_map(|l| l.strip_prefix("Im Browser ansehen: "))
        .expect("a view-in-browser link")
        .trim()
        .to_owned();
    assert!(view.starts_with(&app.url("/digest?")), "{view}");
    let (status, page) = get(&view).await;
    assert_eq!(status, 200);
    let on_page: Vec<String> = page
        .match_indices("<h3><a href=\"")
        .map(|(i, _)| {
            let rest = &page[i..];
            let start = rest.find('>').unwrap() + 1;
            let start = start + rest[start..].find('>').unwrap() + 1;
            rest[start..start + rest[start..].find("</a>").unwrap()].to_owned()
        })
        .collect();
    assert_eq!(
        on_page, listed,
        "the page lists what the mail listed, in its order"
    );
    assert!(page.contains("… und 2 weitere Meldungen im"), "{page}");
    assert!(!page.contains("Nicht abonniert"));
    // The same link for every reader of that digest: it names no reader.
    assert!(!view.contains("leser"));
}

async fn hostile_archive_queries_are_refused_and_never_shown_back(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    app.post_item(&["kultur"], "Premiere").await;
    let script = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    for (path, status) in [
        ("/archive/kultur?before=abc", 400),
        (&format!("/archive/{script}") as &str, 404),
        (&format!("/archive/{script}/feed.atom"), 404),
        ("/digest?topics=kultur&since=x&upto=9&date=2027-05-02", 400),
        ("/digest?topics=kultur&since=0&upto=9&date=gestern", 400),
        ("/digest?topics=&since=0&upto=9&date=2027-05-02", 404),
    ] {
        let (got, body) = get(&app.url(path)).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(!body.contains("<script>"), "{path} shows markup back");
    }
    // More topics than a digest can name: refused, not a query with thousands of binds.
    let many = vec!["kultur"; 101].join(",");
    let path = format!("/digest?topics={many}&since=0&upto=9&date=2027-05-02");
    assert_eq!(get(&app.url(&path)).await.0, 404);
    // Topics that do not exist or markup in the list name nothing and show nothing.
    let path = format!("/digest?topics=kultur,{script}&since=0&upto=1000&date=2027-05-02");
    let (status, page) = get(&app.url(&path)).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Premiere") && !page.contains("<script>"),
        "{page}"
    );
}

async fn a_digest_view_window_from_the_url_reads_a_bounded_number_of_items(backend: Backend) {
    use postbote::store::WINDOW_CAP;
    let (app, _sink, _db, _clock) =
        app_at(backend, "2027-05-01T08:00:00Z", |c| c.digest.max_items = 5).await;
    app.post_item(&["kultur"], "Erste Premiere").await;
    let topic = app.store.topics_by_slugs(&["kultur"]).await.unwrap()[0].id;
    // More items in one topic than a view ever looks at, written straight into the
    // tables (thousands of API calls would only slow the test down).
    let bulk = WINDOW_CAP + 200;
    execute_sql(
        &app.store,
        format!(
            "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < {bulk}) \
             INSERT INTO items (dedup_key, title, source, created_at) \
             SELECT 'bulk:' || k, 'Massenmeldung ' || k, source, created_at \
             FROM n, items WHERE items.id = (SELECT MIN(id) FROM items); \
             INSERT INTO item_topics (item_id, topic_id, arrival) \
             SELECT id, {topic}, id FROM items WHERE dedup_key LIKE 'bulk:%';"
        ),
    )
    .await;

    // The whole history asked for at once: the newest `max_items`, a count that
    // says it stopped looking, and never more rows than the cap.
    let all = app
        .store
        .archive_window(&[topic], 0, i64::MAX, 5)
        .await
        .unwrap();
    assert_eq!(all.shown.len(), 5);
    assert!(all.capped, "more links than the cap: the count says so");
    assert!(all.total <= WINDOW_CAP as usize, "{}", all.total);
    assert!(all.shown[0].title.starts_with("Massenmeldung"));
    let path = format!(
        "/digest?topics=kultur&since=0&upto={}&date=2027-05-02&lang=de",
        i64::MAX
    );
    let (status, page) = get(&app.url(&path)).await;
    assert_eq!(status, 200);
    assert_eq!(page.matches("Massenmeldung ").count(), 5, "{page}");
    assert!(page.contains("… und mehr als "), "{page}");

    // A window of a real digest's size is counted exactly.
    let newest = all.shown[0].arrival;
    let small = app
        .store
        .archive_window(&[topic], newest - 7, newest, 5)
        .await
        .unwrap();
    assert_eq!(
        (small.shown.len(), small.total, small.capped),
        (5, 7, false)
    );
    // An empty or reversed window reads nothing.
    let none = app
        .store
        .archive_window(&[topic], newest, newest - 100, 5)
        .await
        .unwrap();
    assert_eq!((none.shown.len(), none.total), (0, 0));
}

/// The archive's front page, the topic's page and its feed.
const ARCHIVE_PAGES: [&str; 3] = [
    "/archive?lang=de",
    "/archive/wirtschaft?lang=de",
    "/archive/wirtschaft/feed.atom",
];

async fn a_held_submission_is_in_no_archive_until_it_is_approved(backend: Backend) {
    let (app, _sink, db, _clock) = app_at(backend, "2027-05-03T06:00:00Z", |_| {}).await;
    app.post_item(&["wirtschaft"], "Öffentliche Meldung").await;
    // From an allowed sender without authentication: held for a decision.
    hold(&db, "held-1", "Zurückgehaltene Mitteilung").await;
    let held: serde_json::Value = app
        .admin(reqwest::Method::GET, "/submissions", None)
        .await
        .json()
        .await
        .unwrap();
    let held = &held["submissions"][0];
    assert_eq!(held["title"], "Zurückgehaltene Mitteilung", "{held}");
    for path in ARCHIVE_PAGES {
        let (status, body) = get(&app.url(path)).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains("Öffentliche Meldung"), "{path}: {body}");
        assert!(
            !body.contains("Zurückgehaltene Mitteilung"),
            "{path} shows a held submission: {body}"
        );
    }

    let r = app
        .admin(
            reqwest::Method::POST,
            &format!("/submissions/{}/approve", held["id"]),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    for path in ARCHIVE_PAGES {
        let (status, body) = get(&app.url(path)).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains("Zurückgehaltene Mitteilung"),
            "{path}: approved, so published: {body}"
        );
    }
    // Dates on the pages are written with the month in words.
    let (_, de) = get(&app.url("/archive/wirtschaft?lang=de")).await;
    assert!(de.contains("3. Mai 2027"), "{de}");
    let (_, en) = get(&app.url("/archive/wirtschaft?lang=en")).await;
    assert!(en.contains("3 May 2027"), "{en}");
}

/// An item's date on the pages is its day where the site is (`defaults.timezone`),
/// not in UTC: at 22:30 UTC on 1 May it is already 2 May in Berlin, and still
/// 1 May in New York.
async fn an_item_is_dated_by_the_sites_time_zone(backend: Backend) {
    for (zone, de, en) in [
        ("Europe/Berlin", "2. Mai 2027", "2 May 2027"),
        ("America/New_York", "1. Mai 2027", "1 May 2027"),
    ] {
        let (app, _sink, _db, _clock) = app_at(backend, "2027-05-01T22:30:00Z", |c| {
            c.defaults.timezone = postbote::domain::TimeZone::parse(zone).unwrap();
        })
        .await;
        let id = app.post_item(&["wirtschaft"], "Spät am Abend").await;
        for path in [format!("/items/{id}"), "/archive/wirtschaft".to_owned()] {
            let (status, page) = get(&app.url(&format!("{path}?lang=de"))).await;
            assert_eq!(status, 200, "{path}");
            assert!(page.contains(de), "{zone} {path}: {de} in {page}");
            let (_, page) = get(&app.url(&format!("{path}?lang=en"))).await;
            assert!(page.contains(en), "{zone} {path}: {en} in {page}");
        }
    }
}

/// `Store::archive_fronts`, the front page's one statement: each topic's newest
/// visible items up to the limit, newest first, an item in two topics under both,
/// a topic named twice listed once, a topic without items absent, no topics no
/// query.
async fn the_front_page_reads_each_topics_newest_items_in_one_statement(backend: Backend) {
    let (app, _sink, _db, _clock) = app_at(backend, "2027-05-01T08:00:00Z", |_| {}).await;
    let both = app.post_item(&["wirtschaft", "kultur"], "Beides").await;
    let mut wirtschaft = vec![both];
    for n in 1..=4 {
        wirtschaft.push(app.post_item(&["wirtschaft"], &format!("W{n}")).await);
    }
    let hidden = app.post_item(&["kultur"], "Versteckt").await;
    assert!(
        app.store
            .hide_item(hidden, utc("2027-05-01T08:00:00Z"))
            .await
            .unwrap()
    );
    let ids = |slugs: &[&str]| {
        let store = app.store.clone();
        let slugs: Vec<String> = slugs.iter().map(|s| (*s).to_owned()).collect();
        async move {
            let wanted: Vec<&str> = slugs.iter().map(String::as_str).collect();
            let topics = store.topics_by_slugs(&wanted).await.unwrap();
            wanted
                .iter()
                .map(|w| topics.iter().find(|t| t.slug == *w).unwrap().id)
                .collect::<Vec<i64>>()
        }
    };
    let [w, k, empty]: [i64; 3] = ids(&["wirtschaft", "kultur", "sport"])
        .await
        .try_into()
        .unwrap();
    let fronts = app
        .store
        .archive_fronts(&[w, k, empty, w], 3)
        .await
        .unwrap();
    let titles =
        |topic: i64| -> Vec<String> { fronts[&topic].iter().map(|e| e.title.clone()).collect() };
    assert_eq!(
        titles(w),
        ["W4", "W3", "W2"],
        "the newest three, newest first"
    );
    assert_eq!(
        titles(k),
        ["Beides"],
        "in both topics; the hidden one left out"
    );
    assert!(!fronts.contains_key(&empty), "{:?}", fronts.keys());
    assert_eq!(fronts.len(), 2);
    assert!(app.store.archive_fronts(&[], 3).await.unwrap().is_empty());
    let all = app.store.archive_fronts(&[w], 10).await.unwrap();
    let newest_first: Vec<i64> = all[&w].iter().map(|e| e.id).collect();
    wirtschaft.reverse();
    assert_eq!(newest_first, wirtschaft, "every item, once each");
}

on_both_backends!(
    the_front_page_reads_each_topics_newest_items_in_one_statement,
    an_item_is_dated_by_the_sites_time_zone,
    a_digest_view_window_from_the_url_reads_a_bounded_number_of_items,
    a_held_submission_is_in_no_archive_until_it_is_approved,
    hostile_archive_queries_are_refused_and_never_shown_back,
    the_archive_pages_a_topic_by_arrival_and_never_shows_hidden_items,
    the_atom_feed_carries_what_the_schema_requires_and_a_feed_reader_reads_it,
    a_digest_links_its_browser_view_with_the_same_items_and_the_rest_in_the_archive,
);
