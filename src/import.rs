//! `postbote import FILE.csv`: bring an existing list.
//!
//! Header row; columns `email` (required), `topics` (slugs separated by `;`),
//! `delivery_time`, `timezone`, `locale`, `consent_at` (RFC 3339), `consent_ip`.
//! Every bad row is reported with its line number and reason and skipped; good rows
//! are stored in batches, one transaction each; suppressed addresses are skipped;
//! addresses already stored are left as they are, so importing the same file twice
//! changes nothing. With `--send-confirmation` each good row goes through double
//! opt-in instead and is stored as pending with a confirmation mail.
//!
//! **Formulas.** The console's CSV export writes every cell through
//! [`export_cell`]: a cell a spreadsheet would run as a formula (it starts with
//! `=`, `+`, `-`, `@`, tab or CR, OWASP's list; an address may well start with
//! `=`, `+` or `-`) gets a `'` in front, which makes a spreadsheet show it as
//! text. The import takes exactly that `'` off again ([`import_cell`]), so the
//! export reads back to the same addresses. Both sides apply one rule: a cell
//! that is some `'`s followed by a formula character has one `'` more in the file
//! than in the data. Any other cell, a `'` at its start included, is taken as it
//! is. A third-party file whose cell reads `'=a@example.org` therefore imports
//! `=a@example.org`, which is also what a spreadsheet shows for that cell.

use std::fmt;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::domain::{
    DeliverySchedule, DeliveryTime, EmailAddress, Locale, TimeZone, Token, TopicSlug, Weekdays,
};
use crate::mail::compose::Composer;
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

/// A cell's value quoted for a report line, cut to 64 characters: a hostile file
/// cannot make one line of the report as long as itself.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((at, _)) => format!("{:?}…", &value[..at]),
        None => format!("{value:?}"),
    }
}

/// The characters that make a spreadsheet cell a formula at its start.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Whether `value` is some `'`s (`quotes` or more) followed by a formula character.
fn quoted_formula(value: &str, quotes: usize) -> bool {
    let rest = value.trim_start_matches('\'');
    value.len() - rest.len() >= quotes && rest.starts_with(FORMULA_START)
}

/// A cell as the CSV export writes it: a `'` in front of one that a spreadsheet
/// would run as a formula, or that is `'`s followed by a formula character (so
/// that [`import_cell`] can take off exactly what was added).
pub fn export_cell(value: &str) -> std::borrow::Cow<'_, str> {
    if quoted_formula(value, 0) {
        format!("'{value}").into()
    } else {
        value.into()
    }
}

/// A cell of an imported file as the data it stands for: the `'` that
/// [`export_cell`] put in front of a formula character taken off again.
pub fn import_cell(value: &str) -> &str {
    if quoted_formula(value, 1) {
        &value[1..]
    } else {
        value
    }
}

/// How the file is read: a header row, any number of fields per row (a short row
/// lacks the last columns), cells trimmed.
fn csv_reader() -> csv::ReaderBuilder {
    let mut builder = csv::ReaderBuilder::new();
    builder.flexible(true).trim(csv::Trim::All);
    builder
}

/// One record of the file, parsed: its line number, and the reader or why not.
fn parse_record(
    config: &Config,
    offered: &[String],
    headers: &[String],
    record: Result<csv::StringRecord, csv::Error>,
    source: &str,
    now: DateTime<Utc>,
) -> (u64, Result<ImportedSubscriber, String>) {
    match record {
        Ok(r) => {
            let line = r.position().map_or(0, |p| p.line());
            let get = |key: &str| {
                headers
                    .iter()
                    .position(|h| h == key)
                    .and_then(|i| r.get(i))
                    .map(|cell| import_cell(cell).to_owned())
            };
            (line, parse_row(config, offered, get, source, now))
        }
        Err(e) => (
            e.position().map_or(0, |p| p.line()),
            Err(format!("not readable as CSV: {e}")),
        ),
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
        let parsed = TopicSlug::parse(slug).map_err(|e| format!("topics: {} {e}", quoted(slug)))?;
        if !offered.iter().any(|o| o == slug) {
            return Err(format!("topics: unknown topic {}", quoted(slug)));
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

/// The columns a file may have (the console's CSV export writes the same).
pub const KNOWN: [&str; 7] = [
    "email",
    "topics",
    "delivery_time",
    "timezone",
    "locale",
    "consent_at",
    "consent_ip",
];

/// Imports a file: as confirmed readers, or, given a `composer`
/// (`--send-confirmation`), through double opt-in with a confirmation mail each.
///
/// # Errors
/// When the file cannot be read as CSV with a header row naming `email`, or the
/// database fails (rows of batches committed before stay imported).
pub async fn run(
    config: &Config,
    store: &Store,
    path: &Path,
    composer: Option<&Composer>,
) -> anyhow::Result<Report> {
    let (mut reader, headers) = open(path)?;
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
    let flush = async |batch: &mut Vec<ImportedSubscriber>, report: &mut Report| {
        store_batch(config, store, composer, batch, report, now).await
    };
    let mut report = Report::default();
    let mut batch: Vec<ImportedSubscriber> = Vec::with_capacity(BATCH);
    let mut seen = std::collections::HashSet::new();
    let progress = progress_bar(path);
    for record in reader.records() {
        if let Some(at) = record.as_ref().ok().and_then(|r| r.position()) {
            progress.set_position(at.byte());
        }
        let (line, parsed) = parse_record(config, &offered, &headers, record, &source, now);
        match parsed {
            Ok(row) if !seen.insert(row.email.clone()) => {
                report
                    .rejected
                    .push((line, "email: appears earlier in the file".into()));
            }
            Ok(row) => {
                batch.push(row);
                if batch.len() == BATCH {
                    flush(&mut batch, &mut report).await?;
                }
            }
            Err(reason) => report.rejected.push((line, reason)),
        }
    }
    flush(&mut batch, &mut report).await?;
    if report.imported > 0 {
        store.refresh_statistics().await?;
    }
    progress.finish_and_clear();
    Ok(report)
}

/// A progress bar over the file's bytes on a terminal; on anything else (a log, a
/// pipe) nothing is drawn and only the summary line is printed.
fn progress_bar(path: &Path) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Opens the file and reads its header row: lower-cased names, a byte order mark
/// dropped.
///
/// # Errors
/// When the file cannot be read, has no header row, no `email` column, or a
/// column that is not one of [`KNOWN`].
fn open(path: &Path) -> anyhow::Result<(csv::Reader<std::fs::File>, Vec<String>)> {
    let mut reader = csv_reader()
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
    if let Some(unknown) = headers.iter().find(|h| !KNOWN.contains(&h.as_str())) {
        anyhow::bail!(
            "{}: unknown column {unknown:?} (known: {})",
            path.display(),
            KNOWN.join(", ")
        );
    }
    Ok((reader, headers))
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
            weekdays: row.schedule.weekdays,
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

/// Whatever a file holds, reading it row by row never panics, reports each bad row
/// in a line of bounded length, and takes time linear in its size.
#[cfg(test)]
mod props {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Every record of `csv` (with its header row) as the import reads it.
    fn read_all(csv: &[u8]) -> Vec<(u64, Result<ImportedSubscriber, String>)> {
        let config = Config::from_sources(None, &HashMap::new()).unwrap();
        let offered = vec!["wirtschaft".to_owned(), "kultur".to_owned()];
        let mut reader = csv_reader().from_reader(csv);
        let headers: Vec<String> = match reader.headers() {
            Ok(h) => h.iter().map(str::to_ascii_lowercase).collect(),
            Err(_) => return Vec::new(),
        };
        let now: DateTime<Utc> = "2027-05-01T08:00:00Z".parse().unwrap();
        reader
            .records()
            .map(|r| parse_record(&config, &offered, &headers, r, "import:props.csv", now))
            .collect()
    }

    /// Cells that are nearly right, and anything at all.
    fn cell() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("leser@example.org".to_owned()),
            Just("wirtschaft;kultur;;wirtschaft".to_owned()),
            Just("07:30".to_owned()),
            Just("Europe/Berlin".to_owned()),
            Just("2024-05-01T09:30:00+02:00".to_owned()),
            Just("2999-01-01T00:00:00Z".to_owned()),
            Just("::ffff:192.0.2.1".to_owned()),
            Just("\"".to_owned()),
            "[a-z@.;:\"\\-]{0,80}",
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panic_with_short_reasons(
            csv in prop::collection::vec(any::<u8>(), 0..2000),
        ) {
            let header = b"email,topics,delivery_time,timezone,locale,consent_at,consent_ip\n";
            for input in [csv.clone(), [header.as_slice(), &csv].concat()] {
                for (_, parsed) in read_all(&input) {
                    if let Err(reason) = parsed {
                        prop_assert!(reason.len() <= 1_000, "{}", reason.len());
                    }
                }
            }
        }

        #[test]
        fn rows_of_any_cells_are_parsed_or_refused_with_a_short_reason(
            rows in prop::collection::vec(prop::collection::vec(cell(), 0..9), 0..20),
        ) {
            let mut csv = String::from("email,topics,delivery_time,timezone,consent_at,consent_ip,locale\n");
            for row in &rows {
                let quoted: Vec<String> = row.iter().map(|c| format!("\"{}\"", c.replace('"', "\"\""))).collect();
                csv.push_str(&quoted.join(","));
                csv.push('\n');
            }
            let read = read_all(csv.as_bytes());
            prop_assert!(read.len() <= rows.len());
            for (_, parsed) in read {
                match parsed {
                    Ok(r) => prop_assert!(!r.topics.is_empty() && r.topics.len() <= 2),
                    Err(reason) => prop_assert!(reason.len() <= 1_000, "{}", reason.len()),
                }
            }
        }
    }

    /// A megabyte in the shapes that could hurt: one enormous cell, a topics cell of
    /// a hundred thousand slugs, an unclosed quote, a hundred thousand columns, a
    /// hundred thousand short rows. Each is read (the suite would time out
    /// otherwise), with reasons of bounded length.
    #[test]
    fn a_megabyte_of_hostile_csv_is_read() {
        const MB: usize = 1 << 20;
        let header = "email,topics\n";
        let cases = [
            format!("{header}{}@example.org,wirtschaft\n", "a".repeat(MB)),
            format!(
                "{header}leser@example.org,{}\n",
                "wirtschaft;".repeat(MB / 11)
            ),
            format!("{header}leser@example.org,{}\n", "x-".repeat(MB / 2)),
            format!("{header}\"{}", "\"\"".repeat(MB / 2)),
            format!("{header}{}\n", ",".repeat(MB)),
            format!("{header}{}", "a@b.example,kultur\n".repeat(MB / 19)),
            format!("{header}{}", "\n".repeat(MB)),
        ];
        for csv in cases {
            for (_, parsed) in read_all(csv.as_bytes()) {
                if let Err(reason) = parsed {
                    assert!(reason.len() <= 1_000, "{}", reason.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formula_cells_are_quoted_and_read_back() {
        for (data, file) in [
            (
                "=cmd|'/ccalc'!a0@example.org",
                "'=cmd|'/ccalc'!a0@example.org",
            ),
            ("+49@example.org", "'+49@example.org"),
            ("-sport", "'-sport"),
            ("@x", "'@x"),
            ("\tx", "'\tx"),
            ("'=x@example.org", "''=x@example.org"),
            ("'anna@example.org", "'anna@example.org"),
            ("anna@example.org", "anna@example.org"),
            ("", ""),
        ] {
            assert_eq!(export_cell(data), file, "{data:?}");
            assert_eq!(import_cell(file), data, "{file:?}");
        }
        // A spreadsheet's own text marker is taken off too.
        assert_eq!(import_cell("'=a@example.org"), "=a@example.org");
    }

    proptest! {
        #[test]
        fn every_cell_survives_export_and_import(value in "['=+@a\\-\t\r]{0,6}[a-z@.]{0,4}") {
            let file = export_cell(&value);
            prop_assert!(!file.starts_with(FORMULA_START), "{:?}", file);
            prop_assert_eq!(import_cell(&file), value.as_str());
        }
    }
}
