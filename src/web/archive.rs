//! The public archive: `GET /archive` (every offered topic with its newest items),
//! `GET /archive/{topic}` (a topic's items newest first, paged by arrival with
//! `?before=`), `GET /archive/{topic}/feed.atom` (the same as an Atom feed) and
//! `GET /digest` (a digest's "view in browser" page: the items of its topics that
//! arrived in its window, chosen and grouped as the mail chose them). Hidden items
//! never appear; held submissions are not items until approved.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::{PageError, Problem};
use super::pages::{PageLang, local_date, render, site_date};
use crate::domain::Locale;
use crate::store::{ArchiveEntry, Topic};

/// Items on one page of a topic's archive.
const PAGE: u32 = 20;
/// Items per topic on the archive's front page.
const FRONT: u32 = 3;
/// Entries in a topic's Atom feed.
const FEED: u32 = 50;
/// Topics a "view in browser" link may name.
const MAX_VIEW_TOPICS: usize = 100;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/archive", get(index))
        .route("/archive/{topic}", get(topic_page))
        .route("/archive/{topic}/feed.atom", get(feed))
        .route("/digest", get(digest_view))
}

/// An item as a page lists it.
fn entry_json(state: &AppState, locale: Locale, e: &ArchiveEntry) -> serde_json::Value {
    json!({
        "title": e.title,
        "url": e.url.clone().unwrap_or_else(|| state.links.item(e.id)),
        "summary": e.summary,
        "date": site_date(state, locale, e.published_at.unwrap_or(e.created_at)),
    })
}

/// The topic named by `slug` (offered or retired: old digests link to it).
async fn topic_by_slug(state: &AppState, slug: &str) -> Result<Topic, PageError> {
    let mut topics = state.store.topics_by_slugs(&[slug]).await?;
    Ok(topics.pop().ok_or(Problem::NotFound)?)
}

async fn index(State(state): State<AppState>, lang: PageLang) -> Result<Response, PageError> {
    let locale = lang.locale;
    let mut topics = Vec::new();
    let offered = state.store.list_topics(false).await?;
    let ids: Vec<i64> = offered.iter().map(|t| t.id).collect();
    let mut fronts = state.store.archive_fronts(&ids, FRONT).await?;
    for topic in offered {
        let items = fronts.remove(&topic.id).unwrap_or_default();
        topics.push(json!({
            "name": topic.name,
            "description": topic.description,
            "href": format!("/archive/{}?lang={locale}", topic.slug),
            "feed": format!("/archive/{}/feed.atom?lang={locale}", topic.slug),
            "items": items.iter().map(|e| entry_json(&state, locale, e)).collect::<Vec<_>>(),
        }));
    }
    let data = json!({ "topics": topics });
    Ok(render(
        &state,
        StatusCode::OK,
        locale,
        "archive",
        "archive_heading",
        data,
        "/archive",
    ))
}

/// `?before=` on a topic's page: the arrival the page starts below.
#[derive(Debug, Deserialize)]
struct PageQuery {
    before: Option<i64>,
}

async fn topic_page(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(q): Query<PageQuery>,
    lang: PageLang,
) -> Result<Response, PageError> {
    let locale = lang.locale;
    let topic = topic_by_slug(&state, &slug).await?;
    let mut items = state
        .store
        .archive_page(topic.id, q.before, PAGE + 1)
        .await?;
    let older = (items.len() > PAGE as usize).then(|| {
        items.truncate(PAGE as usize);
        let last = items.last().map_or(0, |e| e.arrival);
        format!("/archive/{}?before={last}&lang={locale}", topic.slug)
    });
    let data = json!({
        "title": topic.name,
        "topic": topic,
        "items": items.iter().map(|e| entry_json(&state, locale, e)).collect::<Vec<_>>(),
        "older_href": older,
        "newest_href": q.before.map(|_| format!("/archive/{}?lang={locale}", topic.slug)),
        "feed_href": format!("/archive/{}/feed.atom?lang={locale}", topic.slug),
        "archive_href": format!("/archive?lang={locale}"),
    });
    let path = format!("/archive/{}", topic.slug);
    Ok(render(
        &state,
        StatusCode::OK,
        locale,
        "archive-topic",
        "archive_heading",
        data,
        &path,
    ))
}

async fn feed(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    lang: PageLang,
) -> Result<Response, PageError> {
    let topic = topic_by_slug(&state, &slug).await?;
    let entries = state.store.archive_page(topic.id, None, FEED).await?;
    let site = state.composer.site_name(lang.locale);
    let atom = atom_feed(&AtomFeed {
        base: state.links.public_url(),
        site: &site,
        locale: lang.locale,
        topic: &topic,
        entries: &entries,
        item_page: &|id| state.links.item(id),
    });
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        atom,
    )
        .into_response())
}

/// What an Atom document of a topic is made from.
struct AtomFeed<'a> {
    base: &'a str,
    site: &'a str,
    locale: Locale,
    topic: &'a Topic,
    entries: &'a [ArchiveEntry],
    item_page: &'a dyn Fn(i64) -> String,
}

/// RFC 3339 in UTC, as Atom's date constructs want it.
fn atom_date(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The Atom document (RFC 4287): the feed's id, title, updated, self and alternate
/// links and author; each entry's id (the item's page, which never changes),
/// title, updated, link and summary.
fn atom_feed(f: &AtomFeed<'_>) -> String {
    let slug = &f.topic.slug;
    let page = format!("{}/archive/{slug}", f.base);
    let updated = f
        .entries
        .iter()
        .map(|e| e.created_at)
        .max()
        .unwrap_or(f.topic.created_at);
    let mut xml = String::with_capacity(1024 + f.entries.len() * 512);
    let _ = write!(
        xml,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\" xml:lang=\"{}\">\n\
         <id>{}</id>\n<title>{} – {}</title>\n<updated>{}</updated>\n\
         <link rel=\"self\" type=\"application/atom+xml\" href=\"{}/feed.atom\"/>\n\
         <link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>\n<author><name>{}</name></author>\n",
        f.locale,
        xml_text(&page),
        xml_text(f.site),
        xml_text(&f.topic.name),
        atom_date(updated),
        xml_text(&page),
        xml_text(&page),
        xml_text(f.site),
    );
    for e in f.entries {
        let link = e.url.clone().unwrap_or_else(|| (f.item_page)(e.id));
        let _ = write!(
            xml,
            "<entry>\n<id>{}</id>\n<title>{}</title>\n<updated>{}</updated>\n",
            xml_text(&(f.item_page)(e.id)),
            xml_text(&e.title),
            atom_date(e.created_at),
        );
        if let Some(published) = e.published_at {
            let _ = writeln!(xml, "<published>{}</published>", atom_date(published));
        }
        let _ = writeln!(
            xml,
            "<link rel=\"alternate\" href=\"{}\"/>",
            xml_text(&link)
        );
        if let Some(summary) = &e.summary {
            let _ = writeln!(xml, "<summary>{}</summary>", xml_text(summary));
        }
        xml.push_str("</entry>\n");
    }
    xml.push_str("</feed>\n");
    xml
}

/// `s` as XML character data or attribute value: markup escaped, and the control
/// characters XML 1.0 does not allow (a feed may have brought them) dropped.
fn xml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {}
            c => out.push(c),
        }
    }
    out
}

/// What a digest's "view in browser" link carries: its topics (slugs, comma
/// separated), the window of arrivals it covered and its date.
#[derive(Debug, Deserialize)]
struct ViewQuery {
    topics: String,
    since: i64,
    upto: i64,
    date: NaiveDate,
}

async fn digest_view(
    State(state): State<AppState>,
    Query(q): Query<ViewQuery>,
    lang: PageLang,
) -> Result<Response, PageError> {
    let locale = lang.locale;
    let wanted: Vec<&str> = q.topics.split(',').filter(|s| !s.is_empty()).collect();
    if wanted.is_empty() || wanted.len() > MAX_VIEW_TOPICS {
        return Err(Problem::NotFound.into());
    }
    // The mail's order: topics by name, an item under the first of its topics.
    let mut chosen = state.store.topics_by_slugs(&wanted).await?;
    chosen.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let ids: Vec<i64> = chosen.iter().map(|t| t.id).collect();
    let limit = u32::try_from(state.config.digest.max_items).unwrap_or(u32::MAX);
    let window = state
        .store
        .archive_window(&ids, q.since, q.upto, limit)
        .await?;
    let groups = view_groups(&state, locale, &chosen, &window.shown, q.upto).await?;
    let data = json!({
        "title": state.templates.strings(locale)["digest_view_heading"],
        "date": local_date(locale, q.date),
        "groups": groups,
        "count": window.total,
        "more": window.total.saturating_sub(window.shown.len()),
        "more_than": window.capped,
        "archive_href": format!("/archive?lang={locale}"),
    });
    Ok(render(
        &state,
        StatusCode::OK,
        locale,
        "digest-view",
        "digest_view_heading",
        data,
        "/archive",
    ))
}

/// The shown items grouped under the first of `chosen` (in order) they are in.
async fn view_groups(
    state: &AppState,
    locale: Locale,
    chosen: &[Topic],
    shown: &[ArchiveEntry],
    upto: i64,
) -> Result<Vec<serde_json::Value>, PageError> {
    let ids: Vec<i64> = shown.iter().map(|e| e.id).collect();
    let pairs = state.store.archive_topics_of(&ids, upto).await?;
    let mut placed = std::collections::HashSet::new();
    let mut groups = Vec::new();
    for topic in chosen {
        let items: Vec<_> = shown
            .iter()
            .filter(|e| pairs.contains(&(e.id, topic.id)) && placed.insert(e.id))
            .map(|e| entry_json(state, locale, e))
            .collect();
        if !items.is_empty() {
            groups.push(json!({
                "topic": topic.name,
                "archive_href": format!("/archive/{}?lang={locale}", topic.slug),
                "items": items,
            }));
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_escapes_markup_and_drops_what_xml_forbids() {
        assert_eq!(xml_text("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(xml_text("x\u{1}\u{8}y\tz\n"), "xy\tz\n");
        assert_eq!(xml_text("Grüße ✓"), "Grüße ✓");
    }
}
