//! Building the mails postbote sends: rendered from the template set, with the
//! headers every mail must carry.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use rand::RngCore;
use serde_json::json;

use super::templates::{RenderedMail, TemplateError, Templates};
use crate::domain::{EmailAddress, Locale, Token, hex};
use crate::store::NewMail;

/// Why a mail could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// A template failed to render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// lettre refused the message (should not happen with parsed addresses).
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
    /// An address lettre cannot use.
    #[error("address: {0}")]
    Address(#[from] lettre::address::AddressError),
}

/// Renders and assembles mails. Cheap to share.
#[derive(Debug, Clone)]
pub struct Composer {
    /// The template set.
    templates: Arc<Templates>,
    /// The `From:` of every mail.
    from: Mailbox,
    /// Base of every link.
    public_url: String,
    /// How long confirmation links live, shown in the mail.
    lifetime_days: i64,
}

impl Composer {
    /// A composer for these templates and settings.
    pub fn new(
        templates: Arc<Templates>,
        from: Mailbox,
        public_url: String,
        lifetime: chrono::Duration,
    ) -> Self {
        Self {
            templates,
            from,
            public_url,
            lifetime_days: lifetime.num_days().max(1),
        }
    }

    /// The base of every link.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The double opt-in mail with the confirmation link.
    ///
    /// # Errors
    /// A [`ComposeError`] when rendering or assembling fails.
    pub fn confirmation(
        &self,
        to: &EmailAddress,
        locale: Locale,
        token: &Token,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        let data = json!({
            "email": to.as_str(),
            "confirm_url": format!("{}/confirm/{}", self.public_url, token.as_str()),
            "lifetime_days": self.lifetime_days,
        });
        let rendered = self.templates.mail(locale, "confirm", &data)?;
        self.assemble("confirm", to, &rendered, now)
    }

    /// The notice to an already confirmed reader who signed up again, with a link
    /// to their preferences instead of any change.
    ///
    /// # Errors
    /// A [`ComposeError`] when rendering or assembling fails.
    pub fn already_subscribed(
        &self,
        to: &EmailAddress,
        locale: Locale,
        token: &Token,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        let data = json!({
            "email": to.as_str(),
            "preferences_url": format!("{}/preferences/{}", self.public_url, token.as_str()),
        });
        let rendered = self.templates.mail(locale, "already-subscribed", &data)?;
        self.assemble("already-subscribed", to, &rendered, now)
    }

    fn assemble(
        &self,
        kind: &'static str,
        to: &EmailAddress,
        mail: &RenderedMail,
        now: DateTime<Utc>,
    ) -> Result<NewMail, ComposeError> {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let domain = self.from.email.domain().to_owned();
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to.as_str().parse()?))
            .subject(mail.subject.clone())
            .date(now.into())
            .message_id(Some(format!("<{}@{domain}>", hex(&id))))
            // RFC 3834: an automatic mail; well-behaved autoresponders stay silent.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))?;
        Ok(NewMail {
            kind,
            recipient: to.as_str().to_owned(),
            envelope_from: self.from.email.to_string(),
            message: message.formatted(),
        })
    }
}
