//! What rendering a fan-out's digests costs the CPU, without a database or a relay:
//! `cargo bench --bench render`.
//!
//! The shape of `scripts/bench`'s small fan-out: twenty topics, one item of 75
//! characters of summary each, 20,000 readers of three topics in two languages,
//! so 2,280 distinct bodies. Each body is rendered, prepared and measured with
//! the size probe as a pass does it; then every reader's copy is assembled as a
//! delivery worker does it. Prints the best of five rounds per step, in
//! microseconds per body and per reader, and the ratio of each to the
//! handlebars render alone (the share of a body's cost the templates take).
//! Compare two commits by running it on each: the figures are CPU time on one
//! thread, far steadier than the fan-out's ratio on a shared machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postbote::domain::{LinkKey, Locale};
use postbote::mail::compose::{Composer, DigestEntry, DigestGroup, PreparedBody, ReturnAddresses};
use postbote::mail::templates::Templates;

const TOPICS: usize = 20;
const READERS: usize = 20_000;
const ROUNDS: usize = 5;

fn main() {
    let composer = Composer::new(
        Arc::new(Templates::load(None).expect("built-in templates")),
        "Presse-Newsletter <news@example.org>"
            .parse()
            .expect("mailbox"),
        "https://news.example.org".into(),
        chrono::Duration::days(7),
        LinkKey::new(vec![7; 32]),
        "news.example.org".into(),
        ReturnAddresses::default(),
    );
    let groups: Vec<DigestGroup> = (1..=TOPICS)
        .map(|t| DigestGroup {
            topic: format!("Thema {t}"),
            items: vec![DigestEntry {
                title: format!("Meldung 1 zu Thema {t}: Zahlen, Köpfe und Pläne"),
                url: Some(format!("https://presse.example/thema-{t}/meldung-1")),
                summary: Some("Zusammenfassung ".repeat(5)[..75].to_owned()),
                source: Some("presse.example".into()),
            }],
            archive_url: format!("https://news.example.org/archive/thema-{t}"),
        })
        .collect();
    let mut specs = Vec::new();
    for locale in [Locale::De, Locale::En] {
        for a in 0..TOPICS {
            for b in a + 1..TOPICS {
                for c in b + 1..TOPICS {
                    specs.push((locale, [a, b, c]));
                }
            }
        }
    }
    let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 4).expect("date");
    let now = chrono::Utc::now();

    let mut bodies: Vec<PreparedBody> = Vec::new();
    let (mut handlebars, mut body) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        // The templates alone, as `digest_body` calls them.
        let started = Instant::now();
        for (locale, topics) in &specs {
            let chosen: Vec<DigestGroup> = topics.iter().map(|t| groups[*t].clone()).collect();
            let names: Vec<String> = chosen.iter().map(|g| g.topic.clone()).collect();
            std::hint::black_box(
                composer
                    .digest_body(
                        *locale,
                        date,
                        &chosen,
                        3,
                        &names,
                        "https://news.example.org/d",
                    )
                    .expect("rendered"),
            );
        }
        handlebars = handlebars.min(started.elapsed());
        // A pass's work per body: render, prepare, measure with the size probe
        // (the first reader of a body cuts its footer).
        let fresh = composer_without_cuts(&composer);
        let started = Instant::now();
        bodies = specs
            .iter()
            .map(|(locale, topics)| {
                let chosen: Vec<DigestGroup> = topics.iter().map(|t| groups[*t].clone()).collect();
                let names: Vec<String> = chosen.iter().map(|g| g.topic.clone()).collect();
                let prepared = fresh
                    .digest_body(
                        *locale,
                        date,
                        &chosen,
                        3,
                        &names,
                        "https://news.example.org/d",
                    )
                    .expect("rendered")
                    .prepare();
                std::hint::black_box(
                    fresh
                        .measured_digest(&prepared, "digest-size-probe@example.org", i64::MAX, now)
                        .expect("measured"),
                );
                prepared
            })
            .collect();
        body = body.min(started.elapsed());
    }
    // A delivery worker's work per reader: the reader's copy of their body.
    let mut reader = Duration::MAX;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for (i, body) in (1..=READERS).zip(bodies.iter().cycle()) {
            let email = format!("reader{i:07}@example.org");
            let id = i64::try_from(i).expect("small");
            std::hint::black_box(composer.digest(body, &email, id, now).expect("assembled"));
        }
        reader = reader.min(started.elapsed());
    }
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
    let base = per(handlebars, specs.len());
    println!(
        "render: {} bodies, {} readers; best of {ROUNDS} rounds, one thread",
        specs.len(),
        READERS
    );
    println!("handlebars, digest templates: {base:.1} µs per body (baseline)");
    for (what, d, n) in [
        (
            "a pass's work per body (render, prepare, size probe)",
            body,
            specs.len(),
        ),
        ("a worker's copy per reader", reader, READERS),
    ] {
        let us = per(d, n);
        println!("{what}: {us:.1} µs; ratio to the baseline {:.2}", us / base);
    }
    println!(
        "a 20,000-reader pass: {:.0} ms rendering bodies, {:.0} ms assembling copies",
        body.as_secs_f64() * 1e3,
        reader.as_secs_f64() * 1e3
    );
}

/// A composer with nothing cut yet: each round pays for the footer's cut again, as
/// a new `serve` does.
fn composer_without_cuts(composer: &Composer) -> Composer {
    composer
        .clone()
        .with_site(postbote::config::SiteSettings::default())
}
