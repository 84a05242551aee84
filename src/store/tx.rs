//! An open write transaction on either backend ([`Tx`]) and [`on_tx!`], which runs
//! one body against its connection: the transaction-sized counterpart of
//! `on_pool!`. A long flow (a sign-up, a digest batch, an import) is a short
//! sequence of named steps, each a method on [`Tx`] in the file of the aggregate it
//! writes, each one SQL text that both drivers compile. Caller code that must run
//! inside the transaction (rendering a mail, planning digests) runs between steps
//! as plain Rust.

use sqlx::{PgPool, SqlitePool};

use super::counters::{Tally, flush_tally};
use super::{BeginWrite, Store, StoreResult};

/// A transaction that may write, on the configured backend. Dropped without
/// [`Tx::commit`], it rolls back.
pub(super) enum Tx {
    /// PostgreSQL.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    /// SQLite (started with `BEGIN IMMEDIATE`, see [`BeginWrite`]).
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// Runs `$body` with `$conn` bound to the open transaction's connection
/// (`&mut PgConnection` or `&mut SqliteConnection`), so the same statements
/// compile against both drivers.
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Postgres(open) => {
                let $conn: &mut sqlx::PgConnection = &mut **open;
                $body
            }
            $crate::store::Tx::Sqlite(open) => {
                let $conn: &mut sqlx::SqliteConnection = &mut **open;
                $body
            }
        }
    };
}
pub(super) use on_tx;

impl Store {
    /// Starts a transaction that may write (on SQLite with the write lock taken at
    /// once, see [`BeginWrite`]).
    pub(super) async fn begin(&self) -> StoreResult<Tx> {
        Ok(match self {
            Self::Postgres(pool) => Tx::Postgres(PgPool::begin_write(pool).await?),
            Self::Sqlite(pool) => Tx::Sqlite(SqlitePool::begin_write(pool).await?),
        })
    }
}

impl Tx {
    /// Whether this is a PostgreSQL transaction (row and advisory locks are taken
    /// there; SQLite's single connection makes transactions serial anyway).
    pub(super) fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Writes the counter changes, last before the commit (see `store::counters`),
    /// and commits.
    pub(super) async fn commit_with(mut self, tally: Tally) -> StoreResult<()> {
        on_tx!(&mut self, tx => flush_tally!(tally, &mut *tx));
        self.commit().await
    }

    /// Commits.
    pub(super) async fn commit(self) -> StoreResult<()> {
        match self {
            Self::Postgres(tx) => tx.commit().await?,
            Self::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Rolls back.
    pub(super) async fn rollback(self) -> StoreResult<()> {
        match self {
            Self::Postgres(tx) => tx.rollback().await?,
            Self::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}
