//! "Send me my link": `GET /link` shows a form for an address, `POST /link` mails
//! that address its preferences link (the signed link digests carry) if it is a
//! confirmed reader's.
//!
//! The answer is the same page, byte for byte, whatever the address is (confirmed,
//! pending, unknown, unsubscribed, suppressed) and whether or not a limit held the
//! mail back: nobody learns from it who subscribes. The work is one store
//! transaction for every address ([`Store::send_link`](crate::store::Store::send_link)),
//! and the mail goes through the durable queue, so neither an error path nor the
//! SMTP relay's speed tells readers apart. The guards are the sign-up form's: a
//! post another site makes a browser send is refused (403), the per-client
//! allowance is shared with sign-ups, and the per-mailbox, per-domain and global
//! limits count these requests with the sign-up mails. Only an address that does
//! not parse gets its own answer: the form again with the sign-up's field error.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::error::{ErrorChain, InLocale, PageError};
use super::pages::{PageLang, message, render};
use super::subscribe::{limit_client, mail_limits, parse_email, refuse_cross_site};
use super::{AppState, BODY_LIMIT, client_ip};
use crate::domain::{EmailAddress, Locale};
use crate::store::{LimitScope, LinkOutcome, StoreError};

/// Longest address kept to show again: longer than any valid one (254), so a cut
/// value is still refused.
const MAX_EMAIL_CHARS: usize = 1024;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/link", get(page).post(request))
}

async fn page(State(state): State<AppState>, lang: PageLang) -> Response {
    form_page(&state, StatusCode::OK, lang.locale, "", None)
}

/// The form, with what was typed and its problem, if any.
fn form_page(
    state: &AppState,
    status: StatusCode,
    locale: Locale,
    email: &str,
    error: Option<String>,
) -> Response {
    let errors: BTreeMap<&str, String> = error.into_iter().map(|e| ("email", e)).collect();
    let data = json!({"email": email, "errors": errors});
    render(state, status, locale, "link", "link_heading", data, "/link")
}

async fn request(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    lang: PageLang,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PageError> {
    refuse_cross_site(&state, &headers)?;
    let Ok(bytes) = super::read_body(body).await else {
        let msg = format!(
            "the request body is larger than {} KiB\n",
            BODY_LIMIT / 1024
        );
        return Ok((StatusCode::PAYLOAD_TOO_LARGE, msg).into_response());
    };
    let (typed, form_locale) = read_form(&bytes);
    let locale = form_locale.unwrap_or(lang.locale);
    let email = match parse_email(&state, locale, &typed) {
        Ok(email) => email,
        Err(msg) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            return Ok(form_page(&state, status, locale, &typed, Some(msg)));
        }
    };
    // Over the client's allowance: no work, but the same answer (the allowance is
    // the client's, so skipping the store tells nothing about the address).
    let ip = client_ip(&state, &headers, &peer);
    if limit_client(&state, ip).is_ok() {
        send(&state, &email).await.in_locale(locale)?;
    }
    Ok(message(&state, StatusCode::OK, locale, "link_sent", false))
}

/// The `email` and `form_locale` fields of the posted form; the address cut to
/// [`MAX_EMAIL_CHARS`].
fn read_form(bytes: &[u8]) -> (String, Option<Locale>) {
    let mut email = String::new();
    let mut locale = None;
    for (key, value) in form_urlencoded::parse(bytes) {
        match key.as_ref() {
            "email" => email = value.chars().take(MAX_EMAIL_CHARS).collect(),
            "form_locale" => locale = Locale::parse(&value).ok(),
            _ => {}
        }
    }
    (email, locale)
}

/// Queues the mail if the address is a confirmed reader's, within the limits;
/// logs and counts what happened (without the address).
async fn send(state: &AppState, email: &EmailAddress) -> Result<(), PageError> {
    let now = state.clock.now();
    let limits = mail_limits(state, now);
    let composer = &state.composer;
    let outcome = state
        .store
        .send_link(email, &limits, now, |id, locale| {
            let mail = composer.preferences_link(email, locale, id, now);
            mail.map_err(Into::into)
        })
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        // Only a confirmed reader's mail is rendered: its failure (an operator's
        // broken template) must not answer differently from no mail at all.
        Err(e @ StoreError::Callback(_)) => {
            tracing::error!(error = %ErrorChain(&e), "rendering a preferences link mail failed");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let refused = match outcome {
        LinkOutcome::Queued => {
            state.mail_wake.notify_one();
            None
        }
        LinkOutcome::NoMail => None,
        LinkOutcome::Limited { .. } => Some(LimitScope::Mailbox),
        LinkOutcome::Capped { limit } => Some(limit),
    };
    tracing::info!(?outcome, "preferences link requested");
    if let Some(scope) = refused {
        state.limit_tally.count(scope, &state.store);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_keeps_the_address_cut_and_a_known_page_language() {
        let (email, locale) = read_form(b"email=a%40example.org&form_locale=en&x=1");
        assert_eq!(
            (email.as_str(), locale),
            ("a@example.org", Some(Locale::En))
        );
        let long = format!("email={}&form_locale=xx", "a".repeat(5000));
        let (email, locale) = read_form(long.as_bytes());
        assert_eq!((email.chars().count(), locale), (MAX_EMAIL_CHARS, None));
    }
}
