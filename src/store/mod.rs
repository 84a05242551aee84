//! The only place with SQL. One [`Store`] with two backends:
//!
//! - **PostgreSQL**, the reference: several `postbote serve` processes may share one
//!   database; work is claimed with `FOR UPDATE SKIP LOCKED`.
//! - **SQLite**, the zero-setup default (`data/postbote.db`, WAL): one process, one
//!   writer connection, so transactions never race; `import` and `inbound` run beside
//!   it as processes of their own, so write transactions start with `BEGIN IMMEDIATE`
//!   ([`BeginWrite`]) and wait for the write lock instead of failing.
//!
//! The SQL is written once, in the dialect both understand (`$1` placeholders,
//! `RETURNING`, `ON CONFLICT`); the few statements that differ are picked by
//! backend. [`on_pool!`] runs one body against whichever pool is configured, so
//! every query is type-checked against both drivers; `on_tx!` does the same for an
//! open transaction (`Tx`), so long flows are sequences of named steps. The
//! contract test suite (`tests/it/store_contract.rs`) runs the same cases against both
//! backends.
//!
//! One file per aggregate: `subscribers/` (sign-up, confirmation, preferences,
//! unsubscribe, export, erasure, import), `suppressions`, `mail_events`, `items`,
//! `digest_log`, `feeds`, `submissions`, `topics`, `mail_queue`, `counters`,
//! `settings`, `console` (the operator console's sessions, dashboard and
//! search), `webhooks` (the signed webhooks' endpoints and delivery queue); `decode` reads stored text back into domain types, and a value that
//! does not parse is [`StoreError::Corrupt`] naming the row.

mod archive;
mod console;
mod counters;
mod database_url;
mod decode;
mod digest_bodies;
mod digest_log;
mod feeds;
mod items;
mod mail_events;
mod mail_queue;
mod migrations;
mod settings;
mod submissions;
mod subscribers;
mod suppressions;
mod topics;
mod tx;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use archive::{ArchiveEntry, WINDOW_CAP, Window};
pub use console::{
    Dashboard, DayCounts, ExportRow, FeedHealth, HourCount, QueueHealth, Rate, SubscriberQuery,
    SubscriberRow,
};
pub use console::{ItemQuery, TopicReaders};
pub use counters::{FeedStats, Stats};
pub use database_url::DatabaseUrl;
pub use decode::CorruptValue;
pub use digest_bodies::{BodyIds, NewBody, PassBodies, StoredBody};
pub use digest_log::{
    BatchOutcome, DigestBatch, DigestPlan, DigestPlanner, DueReader, PlannedDigest, TopicName,
};
pub use feeds::{Feed, FeedSpec};
pub use items::{
    DigestItems, Item, ItemError, ItemOutcome, MAX_BODY, MAX_SUMMARY, MAX_TITLE, MAX_URL, NewItem,
    PoolItem,
};
pub use mail_events::{EventEffect, MailEvent};
pub use mail_queue::{ClaimedMail, DeliveryDay, LeaseTerms, LeasedBatch, NewMail};
pub use submissions::{Decided, NewSubmission, Submission, SubmissionStatus};
pub use subscribers::{
    ConfirmOutcome, ConfirmationProof, ConsentProof, ConsentRecord, DeliveryRecord, ImportResult,
    ImportedSubscriber, LimitScope, LinkOutcome, PreferenceChange, Preferences, Schedule, SignUp,
    SignUpKind, SignUpLimits, SignUpOutcome, SubscriberExport, SubscriberSummary, TokenState,
};
pub use suppressions::address_hash;
pub use topics::{Topic, TopicChange};
use tx::{Tx, on_tx};
pub use webhooks::{ClaimedWebhook, WebhookAttempt, WebhookDelivery, WebhookEvent};

/// Runs `$body` with `$pool` bound to the configured backend's pool.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($pool) => $body,
            $crate::store::Store::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Starts a transaction that may write. On SQLite that is `BEGIN IMMEDIATE`, which
/// takes the write lock at once and waits for it under the busy timeout: a deferred
/// `BEGIN` that has read and then writes fails at once with "database is locked"
/// (SQLite does not wait then) whenever another process, `postbote import` or
/// `inbound` beside `serve`, holds or has just taken the write lock.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error> {
        self.begin().await
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// A store failure, sorted by what the caller can do about it. The driver's error
/// stays attached as the source: log it with its cause chain (e.g.
/// `web::error::ErrorChain`), not with `Display` alone.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists (e.g. a topic slug).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The database cannot be reached right now (pool timeout, connection refused
    /// or cut, server shutting down or full, SQLite still locked after the busy
    /// timeout): retry later (HTTP 503 with `Retry-After`, exit 75).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken database.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Code the caller ran inside a transaction failed (e.g. rendering a mail).
    #[error("preparing the change failed")]
    Callback(#[source] BoxError),
    /// An item over the limits every source shares (HTTP 422 naming the field).
    #[error("invalid item: {0}")]
    InvalidItem(ItemError),
    /// A stored value does not parse (a damaged or hand-edited row): names the
    /// table, the row and the column instead of falling back to a default.
    #[error(transparent)]
    Corrupt(#[from] CorruptValue),
}

/// An error from caller-supplied code run inside a store transaction.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => {
                let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
                db.code().is_some_and(|code| temporary(&code, sqlite))
            }
            _ => false,
        };
        if unavailable {
            Self::Unavailable(e)
        } else {
            Self::Database(e)
        }
    }
}

/// Whether a database error code says "not now" rather than "never": PostgreSQL's
/// connection exceptions (class 08), a server shutting down or starting
/// (57P01–57P03) or out of connections (53300); SQLite's `SQLITE_BUSY` (5, and
/// its extended codes) once the busy timeout has passed.
fn temporary(code: &str, sqlite: bool) -> bool {
    if sqlite {
        code.parse::<u32>().is_ok_and(|c| c & 0xff == 5)
    } else {
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A pooled connection idle for this long is checked (a round trip) before it is
/// used again: one idle while the database restarted is replaced instead of
/// failing its first statement.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// `options` checking a connection only when it was idle for [`IDLE_CHECK`].
/// sqlx's default checks every connection taken from the pool: one round trip
/// more per transaction or pooled statement (a sign-up's statements became one
/// more). The pool still checks each connection when it comes back, so one broken
/// while in use is not reused. The price: a connection the server ended less than
/// a second after it was last used (a restart under load) fails its first
/// statement, once per pooled connection, as `StoreError::Unavailable` (503, or a
/// retry for the workers), and sqlx logs the replaced ones at WARN.
fn checked_when_idle<DB: sqlx::Database>(
    options: sqlx::pool::PoolOptions<DB>,
) -> sqlx::pool::PoolOptions<DB> {
    options
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_CHECK {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// A connection pool to one of the two backends. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// The settings of the delivery recorder's connections
/// ([`Store::with_relaxed_commits`]).
const RECORDER_SETTINGS: [(&str, &str); 3] = [
    ("synchronous_commit", "off"),
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

impl Store {
    /// Opens a pool. SQLite files (and their folder) are created when missing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub async fn connect(url: &DatabaseUrl) -> StoreResult<Self> {
        match url {
            DatabaseUrl::Postgres(url) => {
                let pool = checked_when_idle(PgPoolOptions::new())
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            DatabaseUrl::Sqlite(path) => Self::open_sqlite(path).await,
        }
    }

    async fn open_sqlite(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.into()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // One connection: SQLite has one writer anyway, and a single connection makes
        // every transaction serial, so read-then-write sequences need no locks.
        let pool = checked_when_idle(SqlitePoolOptions::new())
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self::Sqlite(pool))
    }

    /// A second, small pool to the same database for writes that may skip the wait
    /// for the write-ahead log to reach the disk (PostgreSQL's
    /// `synchronous_commit = off`, set when its connections open): the server has
    /// each commit at once, a crash of postbote loses none, and only a crash of the
    /// database server itself can lose the last fraction of a second of them. On
    /// SQLite, the same pool (it has a single writer, and its commits are cheap).
    /// Connections open when first used.
    ///
    /// Its one statement, the delivery record, is planned once per connection
    /// (`plan_cache_mode = force_generic_plan`) with sequential scans ruled out
    /// (`enable_seqscan = off`): the record writes to the mail queue, which a
    /// fan-out fills from empty within seconds, and a plan made while it was
    /// nearly empty would otherwise go on reading all of it (a sequential scan
    /// per record). So it looks each mail up by its key at any size of the
    /// queue, without the planning of every execution that kept it right before
    /// (about 100 µs of the server's time a round, a sixth of the record's cost).
    pub fn with_relaxed_commits(&self, connections: u32) -> Self {
        match self {
            Self::Postgres(pool) => {
                let options = (*pool.connect_options()).clone().options(RECORDER_SETTINGS);
                let pool = checked_when_idle(PgPoolOptions::new())
                    .max_connections(connections.max(1))
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy_with(options);
                Self::Postgres(pool)
            }
            Self::Sqlite(_) => self.clone(),
        }
    }

    /// Whether this is the PostgreSQL backend.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Applies the embedded migrations up to and including `version` only: a
    /// database as an older release left it, for tests of a later migration.
    ///
    /// # Errors
    /// As [`Store::migrate`].
    #[doc(hidden)]
    pub async fn migrate_to(&self, version: i64) -> StoreResult<()> {
        match self {
            Self::Postgres(pool) => migrations::postgres().run_to(version, pool).await?,
            Self::Sqlite(pool) => migrations::sqlite().run_to(version, pool).await?,
        }
        Ok(())
    }

    /// Applies the embedded migrations of this backend.
    ///
    /// # Errors
    /// [`StoreError::Migrate`] when a migration fails or the recorded ones differ.
    pub async fn migrate(&self) -> StoreResult<()> {
        match self {
            Self::Postgres(pool) => migrations::postgres().run(pool).await?,
            Self::Sqlite(pool) => migrations::sqlite().run(pool).await?,
        }
        Ok(())
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when it does not.
    pub async fn ping(&self) -> StoreResult<()> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections to return.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

/// Appends `values` to `q` as a comma-separated list of binds (the inside of an
/// `IN (…)`).
fn push_list<'t, DB, T>(q: &mut sqlx::QueryBuilder<DB>, values: impl IntoIterator<Item = T>)
where
    DB: sqlx::Database,
    T: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut list = q.separated(", ");
    for value in values {
        list.push_bind(value);
    }
}
