//! Example content for `postbote serve --demo`: a first try has topics to choose
//! and items for its first digest.

use crate::config::{Config, TopicSeed};
use crate::domain::TopicSlug;

/// The demo topics: slug, name, description.
const TOPICS: &[(&str, &str, &str)] = &[
    (
        "wirtschaft",
        "Wirtschaft",
        "Unternehmen, Märkte, Konjunktur",
    ),
    (
        "it-telekommunikation",
        "IT & Telekommunikation",
        "Software, Netze, Digitalisierung",
    ),
    (
        "gesundheit",
        "Gesundheit & Medizin",
        "Forschung, Kliniken, Pflege",
    ),
];

/// Adds the demo topics to the configured ones (configured slugs win).
pub fn add_topics(config: &mut Config) {
    for (slug, name, description) in TOPICS {
        let slug = TopicSlug::parse(slug).expect("demo slugs are valid");
        if !config.topics.iter().any(|t| t.slug == slug) {
            config.topics.push(TopicSeed {
                slug,
                name: (*name).to_owned(),
                description: Some((*description).to_owned()),
            });
        }
    }
}

/// The demo items: topic, title, summary.
const ITEMS: &[(&str, &str, &str)] = &[
    (
        "wirtschaft",
        "Mittelständler meldet Rekordumsatz",
        "Der Maschinenbauer steigert den Umsatz um zwölf Prozent und stellt 200 Fachkräfte ein.",
    ),
    (
        "it-telekommunikation",
        "Glasfaserausbau erreicht 500 Gemeinden",
        "Der Netzbetreiber schließt die Ausbauphase ein Jahr früher ab als geplant.",
    ),
    (
        "gesundheit",
        "Neue Klinik für Kinder- und Jugendmedizin eröffnet",
        "Das Haus bietet 120 Betten und eine Notaufnahme rund um die Uhr.",
    ),
];

/// Stores the demo items once (their guids make a second start a no-op).
///
/// # Errors
/// When the database fails.
pub async fn add_items(
    store: &crate::store::Store,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::store::StoreResult<()> {
    for (i, (topic, title, summary)) in ITEMS.iter().enumerate() {
        let item = crate::store::NewItem {
            topics: vec![TopicSlug::parse(topic).expect("demo slugs are valid")],
            title: (*title).to_owned(),
            url: None,
            summary: Some((*summary).to_owned()),
            body: Some(format!(
                "{summary}\n\nDies ist eine Beispielmeldung von postbote serve --demo."
            )),
            published_at: Some(now),
            guid: Some(format!("postbote-demo-{}", i + 1)),
            source: "demo".to_owned(),
        };
        store.add_item(&item, now).await?;
    }
    Ok(())
}
