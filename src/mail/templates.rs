//! The template set: web pages, page texts per language, and mails per language
//! (`mail/<locale>/<name>/{subject,body.txt,body.html}.hbs`). The built-in set is
//! compiled into the binary; `templates_dir` replaces it file by file.

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

impl Templates {
    /// Compiles the built-in set, with files from `dir` replacing built-in ones.
    ///
    /// # Errors
    /// A [`TemplateError`] naming the file that cannot be read or compiled.
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
        let mut html = Handlebars::new();
        let mut text = Handlebars::new();
        text.register_escape_fn(handlebars::no_escape);
        for (file, builtin) in FILES {
            let content = source(file, builtin)?;
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
            let table: toml::Table =
                toml::from_str(&content).map_err(|e| TemplateError::Syntax {
                    file: (*file).to_owned(),
                    message: e.to_string(),
                })?;
            strings.insert(*locale, serde_json::to_value(table).unwrap_or_default());
        }
        Ok(Self {
            html,
            text,
            strings,
        })
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
        data: &impl Serialize,
    ) -> Result<RenderedMail, TemplateError> {
        let base = format!("mail/{locale}/{name}");
        let render = |reg: &Handlebars<'static>, part: &str| {
            let n = format!("{base}/{part}");
            reg.render(&n, data)
                .map_err(|e| TemplateError::Render(n, e.to_string()))
        };
        let subject = render(&self.text, "subject")?;
        Ok(RenderedMail {
            // A subject is one line, whatever the template or the data say.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: render(&self.text, "body.txt")?,
            html: render(&self.html, "body.html")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_templates_compile_and_render_both_languages() {
        let t = Templates::load(None).unwrap();
        for locale in Locale::ALL {
            let data = serde_json::json!({"email": "a@example.org", "confirm_url": "http://x/confirm/<t>", "lifetime_days": 7});
            let m = t.mail(locale, "confirm", &data).unwrap();
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
                &serde_json::json!({"email": "a@b.de"}),
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
}
