//! Example content for `postbote serve --demo`: a first try has topics to choose.

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
