//! What the operator's console (`web::console`) reads and writes beyond the other
//! aggregates: its sessions (table `admin_sessions`, here), the dashboard's figures
//! (`dashboard`) and the subscriber search with its CSV export (`search`), plus
//! resending a confirmation to a pending reader (`search`), and what the content
//! pages list: topics with reader counts, items by topic and source, feed item
//! counts, "poll now" (`content`).

mod content;
mod dashboard;
mod search;

use chrono::{DateTime, Utc};

use super::{Store, StoreResult, on_pool};
use crate::domain::TokenHash;

pub use content::{ItemQuery, TopicReaders};
pub use dashboard::{Dashboard, DayCounts, FeedHealth, HourCount, QueueHealth, Rate};
pub use search::{ExportRow, SubscriberQuery, SubscriberRow};

impl Store {
    /// Opens a console session: stores the hash of the cookie's token with its CSRF
    /// token and expiry, and drops the sessions that have expired.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn open_console_session(
        &self,
        token: &TokenHash,
        csrf: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO admin_sessions (token_hash, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&token.0[..])
            .bind(csrf)
            .bind(now)
            .bind(expires_at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// The CSRF token of the session whose cookie token hashes to `token`, if that
    /// session exists and has not expired at `now`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn console_session(
        &self,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        let sql = "SELECT csrf FROM admin_sessions WHERE token_hash = $1 AND expires_at > $2";
        let csrf = on_pool!(self, pool => sqlx::query_scalar(sql)
            .bind(&token.0[..])
            .bind(now)
            .fetch_optional(pool)
            .await)?;
        Ok(csrf)
    }

    /// Ends a console session (logout). Ending one that does not exist is no error.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn close_console_session(&self, token: &TokenHash) -> StoreResult<()> {
        on_pool!(self, pool => sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
            .bind(&token.0[..])
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
