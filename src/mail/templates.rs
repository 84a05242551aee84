//! The template set: web pages, page texts per language, and mails per language
//! (`mail/<locale>/<name>/{subject,body.txt,body.html}.hbs`). The built-in set is
//! compiled into the binary; `templates_dir` replaces it file by file.
//!
//! A digest is two templates: `digest` renders the content every reader of the same
//! news shares (no reader's address or link), `digest-footer` (`body.txt`,
//! `body.html`, no subject) renders one reader's part: why they get it and their
//! links. The mail is the content followed by the footer, which also closes the HTML
//! document. [`Templates::load`] renders both with sample data and refuses a set that
//! breaks this split, e.g. a `digest` template of an older version that still uses
//! `{{email}}`.

use std::collections::HashMap;
use std::path::Path;

use handlebars::Handlebars;
use serde::Serialize;
use serde_json::Value;

use crate::domain::Locale;

/// Every template file, with its built-in content.
const FILES: &[(&str, &str)] = &[
    (
        "pages/layout.hbs",
        include_str!("../../templates/pages/layout.hbs"),
    ),
    (
        "pages/subscribe.hbs",
        include_str!("../../templates/pages/subscribe.hbs"),
    ),
    (
        "pages/confirm.hbs",
        include_str!("../../templates/pages/confirm.hbs"),
    ),
    (
        "pages/message.hbs",
        include_str!("../../templates/pages/message.hbs"),
    ),
    (
        "mail/de/confirm/subject.hbs",
        include_str!("../../templates/mail/de/confirm/subject.hbs"),
    ),
    (
        "mail/de/confirm/body.txt.hbs",
        include_str!("../../templates/mail/de/confirm/body.txt.hbs"),
    ),
    (
        "mail/de/confirm/body.html.hbs",
        include_str!("../../templates/mail/de/confirm/body.html.hbs"),
    ),
    (
        "mail/en/confirm/subject.hbs",
        include_str!("../../templates/mail/en/confirm/subject.hbs"),
    ),
    (
        "mail/en/confirm/body.txt.hbs",
        include_str!("../../templates/mail/en/confirm/body.txt.hbs"),
    ),
    (
        "mail/en/confirm/body.html.hbs",
        include_str!("../../templates/mail/en/confirm/body.html.hbs"),
    ),
    (
        "mail/de/already-subscribed/subject.hbs",
        include_str!("../../templates/mail/de/already-subscribed/subject.hbs"),
    ),
    (
        "mail/de/already-subscribed/body.txt.hbs",
        include_str!("../../templates/mail/de/already-subscribed/body.txt.hbs"),
    ),
    (
        "mail/de/already-subscribed/body.html.hbs",
        include_str!("../../templates/mail/de/already-subscribed/body.html.hbs"),
    ),
    (
        "mail/en/already-subscribed/subject.hbs",
        include_str!("../../templates/mail/en/already-subscribed/subject.hbs"),
    ),
    (
        "mail/en/already-subscribed/body.txt.hbs",
        include_str!("../../templates/mail/en/already-subscribed/body.txt.hbs"),
    ),
    (
        "mail/en/already-subscribed/body.html.hbs",
        include_str!("../../templates/mail/en/already-subscribed/body.html.hbs"),
    ),
    (
        "mail/de/digest/subject.hbs",
        include_str!("../../templates/mail/de/digest/subject.hbs"),
    ),
    (
        "mail/de/digest/body.txt.hbs",
        include_str!("../../templates/mail/de/digest/body.txt.hbs"),
    ),
    (
        "mail/de/digest/body.html.hbs",
        include_str!("../../templates/mail/de/digest/body.html.hbs"),
    ),
    (
        "mail/en/digest/subject.hbs",
        include_str!("../../templates/mail/en/digest/subject.hbs"),
    ),
    (
        "mail/en/digest/body.txt.hbs",
        include_str!("../../templates/mail/en/digest/body.txt.hbs"),
    ),
    (
        "mail/en/digest/body.html.hbs",
        include_str!("../../templates/mail/en/digest/body.html.hbs"),
    ),
    (
        "mail/de/digest-footer/body.txt.hbs",
        include_str!("../../templates/mail/de/digest-footer/body.txt.hbs"),
    ),
    (
        "mail/de/digest-footer/body.html.hbs",
        include_str!("../../templates/mail/de/digest-footer/body.html.hbs"),
    ),
    (
        "mail/en/digest-footer/body.txt.hbs",
        include_str!("../../templates/mail/en/digest-footer/body.txt.hbs"),
    ),
    (
        "mail/en/digest-footer/body.html.hbs",
        include_str!("../../templates/mail/en/digest-footer/body.html.hbs"),
    ),
    (
        "pages/unsubscribe.hbs",
        include_str!("../../templates/pages/unsubscribe.hbs"),
    ),
    (
        "pages/preferences.hbs",
        include_str!("../../templates/pages/preferences.hbs"),
    ),
    (
        "pages/item.hbs",
        include_str!("../../templates/pages/item.hbs"),
    ),
    (
        "pages/archive.hbs",
        include_str!("../../templates/pages/archive.hbs"),
    ),
    (
        "pages/archive-topic.hbs",
        include_str!("../../templates/pages/archive-topic.hbs"),
    ),
    (
        "pages/digest-view.hbs",
        include_str!("../../templates/pages/digest-view.hbs"),
    ),
    (
        "pages/weekdays.hbs",
        include_str!("../../templates/pages/weekdays.hbs"),
    ),
    (
        "pages/link.hbs",
        include_str!("../../templates/pages/link.hbs"),
    ),
    (
        "mail/de/preferences-link/subject.hbs",
        include_str!("../../templates/mail/de/preferences-link/subject.hbs"),
    ),
    (
        "mail/de/preferences-link/body.txt.hbs",
        include_str!("../../templates/mail/de/preferences-link/body.txt.hbs"),
    ),
    (
        "mail/de/preferences-link/body.html.hbs",
        include_str!("../../templates/mail/de/preferences-link/body.html.hbs"),
    ),
    (
        "mail/en/preferences-link/subject.hbs",
        include_str!("../../templates/mail/en/preferences-link/subject.hbs"),
    ),
    (
        "mail/en/preferences-link/body.txt.hbs",
        include_str!("../../templates/mail/en/preferences-link/body.txt.hbs"),
    ),
    (
        "mail/en/preferences-link/body.html.hbs",
        include_str!("../../templates/mail/en/preferences-link/body.html.hbs"),
    ),
    (
        "pages/console-nav.hbs",
        include_str!("../../templates/pages/console-nav.hbs"),
    ),
    (
        "pages/console-login.hbs",
        include_str!("../../templates/pages/console-login.hbs"),
    ),
    (
        "pages/console-dashboard.hbs",
        include_str!("../../templates/pages/console-dashboard.hbs"),
    ),
    (
        "pages/console-subscribers.hbs",
        include_str!("../../templates/pages/console-subscribers.hbs"),
    ),
    (
        "pages/console-subscriber.hbs",
        include_str!("../../templates/pages/console-subscriber.hbs"),
    ),
    (
        "pages/console-erase.hbs",
        include_str!("../../templates/pages/console-erase.hbs"),
    ),
    (
        "pages/console-topics.hbs",
        include_str!("../../templates/pages/console-topics.hbs"),
    ),
    (
        "pages/console-items.hbs",
        include_str!("../../templates/pages/console-items.hbs"),
    ),
    (
        "pages/console-feeds.hbs",
        include_str!("../../templates/pages/console-feeds.hbs"),
    ),
    (
        "pages/console-submissions.hbs",
        include_str!("../../templates/pages/console-submissions.hbs"),
    ),
    (
        "pages/console-webhooks.hbs",
        include_str!("../../templates/pages/console-webhooks.hbs"),
    ),
    (
        "pages/console-preview.hbs",
        include_str!("../../templates/pages/console-preview.hbs"),
    ),
];

/// Page texts per language.
const LOCALES: &[(Locale, &str, &str)] = &[
    (
        Locale::De,
        "locales/de.toml",
        include_str!("../../templates/locales/de.toml"),
    ),
    (
        Locale::En,
        "locales/en.toml",
        include_str!("../../templates/locales/en.toml"),
    ),
];

/// A template problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file of the operator's folder cannot be read.
    #[error("template {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A template does not compile.
    #[error("template {file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The compiler's message.
        message: String,
    },
    /// Rendering failed (a helper error, a missing partial).
    #[error("rendering {0}: {1}")]
    Render(String, String),
    /// A template compiles but does not do its part (see the module doc).
    #[error("template {file}: {message}")]
    Contract {
        /// The file.
        file: String,
        /// What is wrong and where it belongs.
        message: String,
    },
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    /// HTML: every `{{value}}` is escaped.
    html: Handlebars<'static>,
    /// Plain text and subjects: nothing is escaped.
    text: Handlebars<'static>,
    /// Page texts per language.
    strings: HashMap<Locale, Value>,
    /// A hash of every file's content: content rendered from other templates is
    /// other content (see [`Templates::fingerprint`]).
    fingerprint: String,
}

/// A rendered mail's three parts.
#[derive(Debug, Clone)]
pub struct RenderedMail {
    /// One line.
    pub subject: String,
    /// The `text/plain` part.
    pub text: String,
    /// The `text/html` part.
    pub html: String,
}

/// A mail body without a subject: what `digest-footer` renders.
#[derive(Debug, Clone)]
pub struct RenderedBody {
    /// Goes into the `text/plain` part.
    pub text: String,
    /// Goes into the `text/html` part.
    pub html: String,
}

/// What only one reader's part of a digest may show: the digest content is shared by
/// many readers and never gets these.
const READER_FIELDS: [&str; 3] = ["email", "unsubscribe_url", "preferences_url"];

impl Templates {
    /// Compiles the built-in set, with files from `dir` replacing built-in ones.
    ///
    /// # Errors
    /// A [`TemplateError`] naming the file that cannot be read or compiled, or a
    /// digest template that does not keep to its part
    /// ([`TemplateError::Contract`]).
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let source = |name: &str, builtin: &'static str| -> Result<String, TemplateError> {
            match dir.map(|d| d.join(name)).filter(|p| p.exists()) {
                Some(path) => {
                    std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
                        file: path.display().to_string(),
                        source,
                    })
                }
                None => Ok(builtin.to_owned()),
            }
        };
        use sha2::Digest as _;
        let mut fingerprint = sha2::Sha256::new();
        let mut html = Handlebars::new();
        let mut text = Handlebars::new();
        // A value the data lacks is an error, not an empty string: a misspelt
        // variable in a template fails at the check below or in a test.
        html.set_strict_mode(true);
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
        for (file, builtin) in FILES {
            let content = source(file, builtin)?;
            fingerprint.update(file.as_bytes());
            fingerprint.update(content.as_bytes());
            let name = file.trim_end_matches(".hbs");
            let syntax = |e: handlebars::TemplateError| TemplateError::Syntax {
                file: (*file).to_owned(),
                message: e.to_string(),
            };
            if name.ends_with("body.html") || name.starts_with("pages/") {
                html.register_template_string(name, &content)
                    .map_err(syntax)?;
            } else {
                text.register_template_string(name, &content)
                    .map_err(syntax)?;
            }
        }
        let mut strings = HashMap::new();
        for (locale, file, builtin) in LOCALES {
            let content = source(file, builtin)?;
            fingerprint.update(file.as_bytes());
            fingerprint.update(content.as_bytes());
            let table: toml::Table =
                toml::from_str(&content).map_err(|e| TemplateError::Syntax {
                    file: (*file).to_owned(),
                    message: e.to_string(),
                })?;
            strings.insert(*locale, serde_json::to_value(table).unwrap_or_default());
        }
        check_same_keys(&strings)?;
        let templates = Self {
            html,
            text,
            strings,
            fingerprint: crate::domain::hex(&fingerprint.finalize()),
        };
        templates.check_digest_split()?;
        Ok(templates)
    }

    /// Renders the digest templates of every language with sample data, strictly (a
    /// value the data lacks is an error), and checks the split: the content uses no
    /// reader's data and leaves the HTML document open; the footer shows both links
    /// in both parts.
    fn check_digest_split(&self) -> Result<(), TemplateError> {
        for locale in Locale::ALL {
            check_digest_content(&self.html, &self.text, locale)?;
            check_digest_footer(&self.html, &self.text, locale)?;
        }
        Ok(())
    }

    /// A hash of the whole set as loaded: what a digest body is rendered from
    /// includes it, so a changed template never reuses a body rendered before.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The page texts of a language.
    pub fn strings(&self, locale: Locale) -> &Value {
        &self.strings[&locale]
    }

    /// One page text, e.g. `consent_text`.
    pub fn string(&self, locale: Locale, key: &str) -> String {
        self.strings(locale)[key]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Renders a page (`pages/<name>`).
    ///
    /// # Errors
    /// [`TemplateError::Render`] when rendering fails.
    pub fn page(&self, name: &str, data: &impl Serialize) -> Result<String, TemplateError> {
        let name = format!("pages/{name}");
        self.html
            .render(&name, data)
            .map_err(|e| TemplateError::Render(name, e.to_string()))
    }

    /// Renders the three parts of mail `name` in `locale`.
    ///
    /// # Errors
    /// [`TemplateError::Render`] when rendering fails.
    pub fn mail(
        &self,
        locale: Locale,
        name: &str,
        data: Value,
    ) -> Result<RenderedMail, TemplateError> {
        let context = handlebars::Context::from(data);
        let subject = Self::render(&self.text, locale, name, "subject", &context)?;
        let body = self.body_with(locale, name, &context)?;
        Ok(RenderedMail {
            // A subject is one line, whatever the template or the data say.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: body.text,
            html: body.html,
        })
    }

    /// Renders the two body parts of mail `name` in `locale` (`body.txt`,
    /// `body.html`), e.g. a digest's footer.
    ///
    /// # Errors
    /// [`TemplateError::Render`] when rendering fails.
    pub fn mail_body(
        &self,
        locale: Locale,
        name: &str,
        data: Value,
    ) -> Result<RenderedBody, TemplateError> {
        self.body_with(locale, name, &handlebars::Context::from(data))
    }

    /// Whether mail `name` in `locale` (both parts, and its subject if it has one)
    /// shows each of `values` only as it is, `{{value}}` or `{{{value}}}`: never
    /// hands one to a helper (`{{len email}}`, `{{#if (eq email "…")}}`), opens a
    /// block with it, or reaches it otherwise (a partial, `this`, `.`, `@root`,
    /// `../`).
    /// Only such a template can be rendered once with stand-ins for the values and
    /// filled in for each reader (`compose::confirm`, the digest footer's cut).
    pub fn shows_values_plainly(&self, locale: Locale, name: &str, values: &[&str]) -> bool {
        let part = |registry: &Handlebars<'static>, part: &str, needed: bool| {
            registry
                .get_template(&format!("mail/{locale}/{name}/{part}"))
                .map_or(!needed, |t| plain::template(t, values))
        };
        part(&self.text, "subject", false)
            && part(&self.text, "body.txt", true)
            && part(&self.html, "body.html", true)
    }

    /// The body parts rendered from `context`: handlebars would copy data given
    /// as such into a context of its own for every part, and a digest's items are
    /// most of what a body costs to render.
    fn body_with(
        &self,
        locale: Locale,
        name: &str,
        context: &handlebars::Context,
    ) -> Result<RenderedBody, TemplateError> {
        Ok(RenderedBody {
            text: Self::render(&self.text, locale, name, "body.txt", context)?,
            html: Self::render(&self.html, locale, name, "body.html", context)?,
        })
    }

    /// Part `part` of mail `name` in `locale`, rendered by `registry`.
    fn render(
        registry: &Handlebars<'static>,
        locale: Locale,
        name: &str,
        part: &str,
        context: &handlebars::Context,
    ) -> Result<String, TemplateError> {
        let n = format!("mail/{locale}/{name}/{part}");
        registry
            .render_with_context(&n, context)
            .map_err(|e| TemplateError::Render(n, e.to_string()))
    }
}

/// Where a parsed template's values go (see [`Templates::shows_values_plainly`]).
mod plain {
    use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};

    /// Whether `template` shows `values` only as plain expressions.
    pub(super) fn template(template: &Template, values: &[&str]) -> bool {
        template.elements.iter().all(|e| element(e, values))
    }

    fn element(element: &TemplateElement, values: &[&str]) -> bool {
        match element {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => true,
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h)
                if matches!(h.name, Parameter::Path(_))
                    && h.params.is_empty()
                    && h.hash.is_empty()
                    && !h.block =>
            {
                // `{{value}}`, or a helper without arguments; not `{{(eq email
                // "…")}}`, a subexpression shown as it comes out.
                true
            }
            TemplateElement::Expression(h)
            | TemplateElement::HtmlExpression(h)
            | TemplateElement::HelperBlock(h) => helper(h, values),
            // A partial or decorator sees the whole context.
            TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_)
            | TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_) => false,
            // What a later handlebars adds: unknown, so not cut.
            _ => false,
        }
    }

    /// A helper or block: none of its arguments may reach a value, and its
    /// blocks must show them plainly.
    fn helper(h: &HelperTemplate, values: &[&str]) -> bool {
        !reaches(&h.name, values)
            && !h.params.iter().any(|p| reaches(p, values))
            && !h.hash.values().any(|p| reaches(p, values))
            && [&h.template, &h.inverse]
                .into_iter()
                .flatten()
                .all(|t| template(t, values))
    }

    /// Whether a helper's name or argument may reach one of `values`: a path
    /// that starts with one, or with the whole context, or a subexpression with
    /// such an argument.
    fn reaches(parameter: &Parameter, values: &[&str]) -> bool {
        match parameter {
            Parameter::Name(name) => values.contains(&name.as_str()),
            Parameter::Path(path) => {
                let raw = match path {
                    handlebars::Path::Relative((_, raw)) => raw.as_str(),
                    handlebars::Path::Local((_, _, raw)) => raw.as_str(),
                };
                // `.`, `./x`, `../x` and `[x]` begin with an empty segment.
                let first = raw.split(['.', '/', '[']).next().unwrap_or_default();
                first.is_empty() || ["this", "@root"].contains(&first) || values.contains(&first)
            }
            Parameter::Literal(_) => false,
            Parameter::Subexpression(sub) => match sub.as_element() {
                TemplateElement::Expression(h) => !helper(h, values),
                _ => true,
            },
            _ => true,
        }
    }
}

/// `mail/<locale>/<name>/<part>.hbs`: the file a template came from.
fn mail_file(locale: Locale, name: &str, part: &str) -> String {
    format!("mail/{locale}/{name}/{part}.hbs")
}

/// The digest content of `locale` renders with sample data, uses no reader's
/// data (saying where it belongs when it does) and leaves the HTML document open.
fn check_digest_content(
    html: &Handlebars<'static>,
    text: &Handlebars<'static>,
    locale: Locale,
) -> Result<(), TemplateError> {
    let item = serde_json::json!({"title": "Titel", "url": "https://example.org/a", "summary": "Text", "source": "example.org"});
    let bare = serde_json::json!({"title": "Titel", "url": null, "summary": null, "source": null});
    let content = serde_json::json!({
        "date": "01.01.2027",
        "count": 3,
        "groups": [{"topic": "Thema", "items": [item, bare], "archive_url": "https://example.org/archive/thema"}],
        "more": 1,
        "archive_url": "https://example.org/archive",
        "view_url": "https://example.org/digest?topics=thema&since=0&upto=3&date=2027-01-01&lang=de",
        "topics": "Thema",
        "site": {"name": "Presse-Newsletter", "logo_url": "https://example.org/logo.png", "logo_width": 40, "accent": "#004a8f", "imprint_url": "https://example.org/impressum", "privacy_url": null},
    });
    let contract = |part: &str, message: String| TemplateError::Contract {
        file: mail_file(locale, "digest", part),
        message,
    };
    let mut content_html = String::new();
    for (reg, part) in [(text, "subject"), (text, "body.txt"), (html, "body.html")] {
        let rendered = reg
            .render(&format!("mail/{locale}/digest/{part}"), &content)
            .map_err(|e| contract(part, reader_data_message(&e, locale, part)))?;
        if part == "body.html" {
            content_html = rendered;
        }
    }
    if content_html.to_ascii_lowercase().contains("</body") {
        return Err(contract(
            "body.html",
            format!(
                "closes the HTML document; the reader's part follows the content, \
                 and {} closes it",
                mail_file(locale, "digest-footer", "body.html")
            ),
        ));
    }
    Ok(())
}

/// Why rendering a digest content part failed: when it uses a reader's field, that
/// this is not allowed and where the field belongs; otherwise the renderer's text.
fn reader_data_message(e: &handlebars::RenderError, locale: Locale, part: &str) -> String {
    match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(path))
            if READER_FIELDS
                .iter()
                .any(|f| path.trim_start_matches("../").trim_start_matches("@root.") == *f) =>
        {
            let belongs = match part {
                "subject" => "a digest's subject is the same for all of them".to_owned(),
                _ => format!(
                    "they belong in {}",
                    mail_file(locale, "digest-footer", part)
                ),
            };
            format!(
                "uses `{path}`, but the digest content is rendered once for all \
                 readers and has no reader's address or links; {belongs}"
            )
        }
        _ => e.to_string(),
    }
}

/// The digest footer of `locale` renders with sample data and shows both of the
/// reader's links in both parts.
fn check_digest_footer(
    html: &Handlebars<'static>,
    text: &Handlebars<'static>,
    locale: Locale,
) -> Result<(), TemplateError> {
    let (unsubscribe, preferences) = (
        "https://example.org/unsubscribe/1.check",
        "https://example.org/preferences/1.check",
    );
    let footer = serde_json::json!({
        "email": "leser@example.org",
        "topics": "Thema",
        "unsubscribe_url": unsubscribe,
        "preferences_url": preferences,
        "link_url": "https://example.org/link",
        "site": {"name": "Presse-Newsletter", "logo_url": "https://example.org/logo.png", "logo_width": 40, "accent": "#004a8f", "imprint_url": "https://example.org/impressum", "privacy_url": null},
    });
    for (reg, part) in [(text, "body.txt"), (html, "body.html")] {
        let contract = |message: String| TemplateError::Contract {
            file: mail_file(locale, "digest-footer", part),
            message,
        };
        let rendered = reg
            .render(&format!("mail/{locale}/digest-footer/{part}"), &footer)
            .map_err(|e| contract(e.to_string()))?;
        if !(rendered.contains(unsubscribe) && rendered.contains(preferences)) {
            return Err(contract(
                "must show {{unsubscribe_url}} and {{preferences_url}}: \
                 every digest carries both links"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// Every language has the same page texts: a key one file lacks would show an
/// empty text on that language's pages. Names the file and the keys it lacks.
fn check_same_keys(strings: &HashMap<Locale, Value>) -> Result<(), TemplateError> {
    let keys = |locale: &Locale| -> std::collections::BTreeSet<String> {
        strings[locale]
            .as_object()
            .map(|table| table.keys().cloned().collect())
            .unwrap_or_default()
    };
    let all: std::collections::BTreeSet<String> = LOCALES
        .iter()
        .flat_map(|(locale, _, _)| keys(locale))
        .collect();
    for (locale, file, _) in LOCALES {
        let lacking: Vec<String> = all.difference(&keys(locale)).cloned().collect();
        if !lacking.is_empty() {
            return Err(TemplateError::Contract {
                file: (*file).to_owned(),
                message: format!("lacks {}, which another language has", lacking.join(", ")),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_templates_compile_and_render_both_languages() {
        let t = Templates::load(None).unwrap();
        for locale in Locale::ALL {
            let data = serde_json::json!({"email": "a@example.org", "confirm_url": "http://x/confirm/<t>", "lifetime_days": 7, "site": {"name": "Presse-Newsletter", "logo_url": null, "logo_width": 40, "accent": "#004a8f", "imprint_url": null, "privacy_url": null}});
            let m = t.mail(locale, "confirm", data).unwrap();
            assert!(!m.subject.is_empty() && !m.subject.contains('\n'));
            assert!(
                m.text.contains("http://x/confirm/<t>"),
                "text is not escaped"
            );
            assert!(
                m.html.contains("http://x/confirm/&lt;t&gt;"),
                "html is escaped"
            );
            assert!(!t.string(locale, "consent_text").is_empty());
        }
    }

    #[test]
    fn an_operator_folder_replaces_a_file_and_bad_syntax_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mail/en/confirm")).unwrap();
        std::fs::write(
            dir.path().join("mail/en/confirm/subject.hbs"),
            "Welcome {{email}}",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let m = t
            .mail(
                Locale::En,
                "confirm",
                serde_json::json!({"email": "a@b.de", "confirm_url": "http://x/confirm/t", "lifetime_days": 7, "site": {"name": "Presse-Newsletter", "logo_url": null, "logo_width": 40, "accent": "#004a8f", "imprint_url": null, "privacy_url": null}}),
            )
            .unwrap();
        assert_eq!(m.subject, "Welcome a@b.de");
        std::fs::write(dir.path().join("mail/en/confirm/subject.hbs"), "{{#if}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(
            err.to_string().contains("mail/en/confirm/subject.hbs"),
            "{err}"
        );
    }

    /// Loads the built-in set with one file replaced; the error's text, if any.
    fn load_with(file: &str, content: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        Templates::load(Some(dir.path()))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_digest_content_template_with_the_readers_data_is_refused_naming_the_footer() {
        for (file, content) in [
            ("mail/de/digest/body.txt.hbs", "{{date}}\nAn {{email}}\n"),
            (
                "mail/en/digest/body.html.hbs",
                "<body>{{#each groups}}{{topic}} <a href=\"{{../unsubscribe_url}}\">x</a>{{/each}}",
            ),
            ("mail/en/digest/subject.hbs", "News for {{email}}"),
        ] {
            let err = load_with(file, content).expect("refused");
            let part = file.rsplit('/').next().unwrap();
            let footer = file.replace("/digest/", "/digest-footer/");
            assert!(err.contains(file), "{err}");
            assert!(
                err.contains(if part == "subject.hbs" {
                    "the same for all"
                } else {
                    &footer
                }),
                "says where the reader's data belongs: {err}"
            );
        }
    }

    #[test]
    fn a_digest_content_that_closes_the_document_or_a_footer_without_links_is_refused() {
        let err = load_with(
            "mail/de/digest/body.html.hbs",
            "<html><body>{{date}}</body></html>",
        )
        .expect("refused");
        assert!(err.contains("mail/de/digest-footer/body.html.hbs"), "{err}");
        let err = load_with(
            "mail/en/digest-footer/body.txt.hbs",
            "--\nUnsubscribe: {{unsubscribe_url}}\n",
        )
        .expect("refused");
        assert!(
            err.contains("mail/en/digest-footer/body.txt.hbs") && err.contains("preferences_url"),
            "{err}"
        );
        assert_eq!(
            load_with(
                "mail/en/digest-footer/body.txt.hbs",
                "--\n{{email}}: {{preferences_url}} {{unsubscribe_url}}\n"
            ),
            None,
            "a footer of one's own is fine"
        );
    }

    #[test]
    fn every_language_has_the_same_page_texts_and_a_missing_one_is_named() {
        let t = Templates::load(None).expect("the built-in languages agree");
        let de = t.strings(Locale::De).as_object().unwrap();
        let en = t.strings(Locale::En).as_object().unwrap();
        assert_eq!(de.keys().collect::<Vec<_>>(), en.keys().collect::<Vec<_>>());
        let mut lacking = include_str!("../../templates/locales/en.toml")
            .lines()
            .filter(|line| !line.starts_with("consent_text"))
            .collect::<Vec<_>>()
            .join("\n");
        lacking.push('\n');
        let err = load_with("locales/en.toml", &lacking).expect("refused");
        assert!(
            err.contains("locales/en.toml") && err.contains("consent_text"),
            "{err}"
        );
    }

    #[test]
    fn a_value_the_data_lacks_is_an_error_naming_the_template() {
        let t = Templates::load(None).unwrap();
        let err = t
            .mail(
                Locale::De,
                "confirm",
                serde_json::json!({"email": "a@b.de", "site": {"name": "Presse-Newsletter", "logo_url": null, "logo_width": 40, "accent": "#004a8f", "imprint_url": null, "privacy_url": null}}),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mail/de/confirm") && err.contains("confirm_url"),
            "{err}"
        );
    }
}
