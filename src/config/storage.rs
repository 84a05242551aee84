//! The storage keys at the top of the file: `data_dir` and `database_url`.

use std::path::PathBuf;

use super::{ConfigError, DatabaseUrl, Env};

/// `POSTBOTE_DATA_DIR` or `data_dir`; default `data`.
pub(super) fn data_dir(env: &Env<'_>, from_file: Option<PathBuf>) -> PathBuf {
    env.path("POSTBOTE_DATA_DIR")
        .or(from_file)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// `POSTBOTE_DATABASE_URL` or `database_url`; default SQLite in `data_dir`.
pub(super) fn database(
    env: &Env<'_>,
    from_file: Option<String>,
    data_dir: &std::path::Path,
) -> Result<DatabaseUrl, ConfigError> {
    match env.pick("POSTBOTE_DATABASE_URL", "database_url", from_file) {
        Some(url) => url.parse(DatabaseUrl::parse),
        None => Ok(DatabaseUrl::Sqlite(data_dir.join("postbote.db"))),
    }
}
