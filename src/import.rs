//! `postbote import FILE.csv`: bring an existing list.
//!
//! Header row; columns `email` (required), `topics` (slugs separated by `;`),
//! `delivery_time`, `timezone`, `locale`, `consent_at` (RFC 3339), `consent_ip`.
//! Every bad row is reported with its line number and reason and skipped; good rows
//! are stored in batches, one transaction each; suppressed addresses are skipped;
//! addresses already stored are left as they are, so importing the same file twice
//! changes nothing. With `--send-confirmation` each good row goes through double
//! opt-in instead and is stored as pending with a confirmation mail.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::domain::{
    DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, Token, TopicSlug, Weekdays,
};
use crate::mail::compose::Composer;
use crate::mail::templates::Templates;
use crate::store::{ConsentProof, ImportResult, ImportedSubscriber, SignUp, SignUpOutcome, Store};

/// Rows per transaction.
const BATCH: usize = 1000;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// New readers (confirmed, or pending with `--send-confirmation`).
    pub imported: usize,
    /// Addresses stored already: unchanged.
    pub existing: usize,
    /// Addresses on the suppression list: skipped.
    pub suppressed: usize,
    /// `(line, reason)` of every bad row.
    pub rejected: Vec<(u64, String)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (line, reason) in &self.rejected {
            writeln!(f, "line {line}: {reason}")?;
        }
        write!(
            f,
            "imported {}, already stored {}, suppressed {}, rejected {}",
            self.imported,
            self.existing,
            self.suppressed,
            self.rejected.len()
        )
    }
}

/// One row, parsed.
fn parse_row(
    config: &Config,
    offered: &[String],
    get: impl Fn(&str) -> Option<String>,
    source: &str,
    now: DateTime<Utc>,
) -> Result<ImportedSubscriber, String> {
    let email = get("email").unwrap_or_default();
    let email = EmailAddress::parse(&email).map_err(|e| format!("email: {e}"))?;
    let mut topics = Vec::new();
    for slug in get("topics")
        .unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let parsed = TopicSlug::parse(slug).map_err(|e| format!("topics: {slug:?} {e}"))?;
        if !offered.iter().any(|o| o == slug) {
            return Err(format!("topics: unknown topic {slug:?}"));
        }
        if !topics.contains(&parsed) {
            topics.push(parsed);
        }
    }
    if topics.is_empty() {
        return Err("topics: at least one topic is needed".into());
    }
    let optional = |key: &str| get(key).filter(|v| !v.trim().is_empty());
    let time = match optional("delivery_time") {
        Some(t) => DeliveryTime::parse(&t).map_err(|e| format!("delivery_time: {e}"))?,
        None => config.defaults.delivery_time,
    };
    let timezone = match optional("timezone") {
        Some(t) => TimeZone::parse(&t).map_err(|e| format!("timezone: {e}"))?,
        None => config.defaults.timezone,
    };
    let locale = match optional("locale") {
        Some(l) => Locale::parse(&l).map_err(|e| format!("locale: {e}"))?,
        None => config.defaults.locale,
    };
    let consent_at = match optional("consent_at") {
        Some(at) => DateTime::parse_from_rfc3339(at.trim())
            .map_err(|e| {
                format!("consent_at: {e}; expected RFC 3339, e.g. 2024-05-01T09:30:00+02:00")
            })?
            .with_timezone(&Utc),
        None => now,
    };
    if consent_at > now {
        return Err("consent_at: lies in the future".into());
    }
    let consent_ip = match optional("consent_ip") {
        Some(ip) => Some(
            ip.trim()
                .parse::<std::net::IpAddr>()
                .map_err(|e| format!("consent_ip: {e}"))?
                .to_string(),
        ),
        None => None,
    };
    Ok(ImportedSubscriber {
        email,
        topics,
        schedule: DeliverySchedule {
            time,
            timezone,
            weekdays: Weekdays::EVERY_DAY,
        },
        locale,
        consent_at,
        consent_ip,
        source: source.to_owned(),
    })
}

/// Imports a file.
///
/// # Errors
/// When the file cannot be read as CSV with a header row naming `email`, or the
/// database fails (rows of batches committed before stay imported).
pub async fn run(
    config: &Config,
    store: &Store,
    path: &Path,
    send_confirmation: bool,
) -> anyhow::Result<Report> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    if !headers.iter().any(|h| h == "email") {
        anyhow::bail!("{}: the header row has no email column", path.display());
    }
    let known = [
        "email",
        "topics",
        "delivery_time",
        "timezone",
        "locale",
        "consent_at",
        "consent_ip",
    ];
    if let Some(unknown) = headers.iter().find(|h| !known.contains(&h.as_str())) {
        anyhow::bail!(
            "{}: unknown column {unknown:?} (known: {})",
            path.display(),
            known.join(", ")
        );
    }
    let offered: Vec<String> = store
        .list_topics(false)
        .await?
        .into_iter()
        .map(|t| t.slug)
        .collect();
    let source = format!(
        "import:{}",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    let now = Utc::now();
    let composer = if send_confirmation {
        let templates = Arc::new(Templates::load(config.templates_dir.as_deref())?);
        Some(Composer::from_config(
            config,
            templates,
            store.link_key().await?,
            config.public_url_for(config.listen),
        ))
    } else {
        None
    };

    let mut report = Report::default();
    let mut batch: Vec<ImportedSubscriber> = Vec::with_capacity(BATCH);
    let mut seen = std::collections::HashSet::new();
    for record in reader.records() {
        let (line, parsed) = match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line());
                let get = |key: &str| {
                    headers
                        .iter()
                        .position(|h| h == key)
                        .and_then(|i| r.get(i))
                        .map(str::to_owned)
                };
                (line, parse_row(config, &offered, get, &source, now))
            }
            Err(e) => (
                e.position().map_or(0, |p| p.line()),
                Err(format!("not readable as CSV: {e}")),
            ),
        };
        match parsed {
            Ok(row) if !seen.insert(row.email.clone()) => {
                report
                    .rejected
                    .push((line, "email: appears earlier in the file".into()));
            }
            Ok(row) => {
                batch.push(row);
                if batch.len() == BATCH {
                    store_batch(
                        config,
                        store,
                        composer.as_ref(),
                        &mut batch,
                        &mut report,
                        now,
                    )
                    .await?;
                }
            }
            Err(reason) => report.rejected.push((line, reason)),
        }
    }
    store_batch(
        config,
        store,
        composer.as_ref(),
        &mut batch,
        &mut report,
        now,
    )
    .await?;
    Ok(report)
}

async fn store_batch(
    config: &Config,
    store: &Store,
    composer: Option<&Composer>,
    batch: &mut Vec<ImportedSubscriber>,
    report: &mut Report,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let rows = std::mem::take(batch);
    let Some(composer) = composer else {
        for result in store
            .import_batch(&rows, now, config.digest.lookback)
            .await?
        {
            match result {
                ImportResult::Imported => report.imported += 1,
                ImportResult::Exists => report.existing += 1,
                ImportResult::Suppressed => report.suppressed += 1,
            }
        }
        return Ok(());
    };
    for row in rows {
        // An import never mails a suppressed address (the reader may come back by
        // signing up themselves); an address stored already is left alone.
        if store.is_suppressed(row.email.as_str()).await? {
            report.suppressed += 1;
            continue;
        }
        if store.subscriber_id(row.email.as_str()).await?.is_some() {
            report.existing += 1;
            continue;
        }
        let token = Token::generate();
        let signup = SignUp {
            email: row.email.clone(),
            topics: row.topics.clone(),
            delivery_time: row.schedule.time,
            timezone: row.schedule.timezone,
            locale: row.locale,
            proof: ConsentProof {
                at: now,
                ip: row.consent_ip.clone(),
                user_agent: None,
                consent_version: "import".into(),
                consent_text: format!("double opt-in started by {}", row.source),
            },
            confirm_token: token.hash(),
            confirm_expires_at: now + config.confirmation_lifetime,
            mail_limit: None,
        };
        let outcome = store
            .sign_up(&signup, |_, id| {
                Ok(composer.confirmation(&row.email, row.locale, &token, id, now)?)
            })
            .await?;
        if matches!(outcome, SignUpOutcome::Accepted(_)) {
            report.imported += 1;
        }
    }
    Ok(())
}
