//! The suppression list, table `suppressions`: the SHA-256 of each address that
//! gets no mail (lower-cased, unsalted: enough to recognise an address, not to read
//! it back), with why. An erasure, a hard bounce and a complaint put an address on
//! it; a confirmation through double opt-in takes it off; `import` skips what is on
//! it, and a sign-up in the quiet period after a bounce or complaint changes nothing.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{Store, StoreResult, Tx, on_pool, on_tx};

/// The suppression list's key for an address.
pub fn address_hash(email: &str) -> Vec<u8> {
    Sha256::digest(email.to_lowercase().as_bytes()).to_vec()
}

/// Why an address is on the list (column `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// Erased on request (GDPR Art. 17).
    Erased,
    /// Bounced for good.
    Bounced,
    /// The reader complained.
    Complaint,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Erased => "erased",
            Self::Bounced => "bounced",
            Self::Complaint => "complaint",
        }
    }
}

impl Store {
    /// Whether an address is on the suppression list.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn is_suppressed(&self, email: &str) -> StoreResult<bool> {
        let sql = "SELECT COUNT(*) FROM suppressions WHERE email_hash = $1";
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(sql).bind(address_hash(email)).fetch_one(pool).await)?;
        Ok(n > 0)
    }

    /// Takes an address off the list: a reader who came back through double
    /// opt-in is welcome again.
    pub(super) async fn unsuppress(&self, email: &str) -> StoreResult<()> {
        on_pool!(self, pool => sqlx::query("DELETE FROM suppressions WHERE email_hash = $1")
            .bind(address_hash(email))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }
}

impl Tx {
    /// Puts an address on the list; one already there keeps its first reason.
    pub(super) async fn suppress(
        &mut self,
        email: &str,
        reason: Reason,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_tx!(self, tx => sqlx::query(
            "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (email_hash) DO NOTHING",
        )
        .bind(address_hash(email))
        .bind(reason.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Whether the address was suppressed for a bounce or a complaint after `since`
    /// (the sign-up form's quiet period; a new reader's insert checks the same,
    /// `Tx::insert_or_lock`).
    pub(super) async fn bounced_since(
        &mut self,
        email: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let n: i64 = on_tx!(self, tx => sqlx::query_scalar(
            concat!("SELECT COUNT(*) FROM suppressions WHERE ", quiet_match!()),
        )
        .bind(address_hash(email))
        .bind(since)
        .fetch_one(&mut *tx)
        .await)?;
        Ok(n > 0)
    }

    /// The hashes of those of `emails` that are on the list.
    pub(super) async fn suppressed_among<'a>(
        &mut self,
        emails: impl IntoIterator<Item = &'a str>,
    ) -> StoreResult<HashSet<Vec<u8>>> {
        let hashes: Vec<Vec<u8>> = on_tx!(self, tx => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT email_hash FROM suppressions WHERE email_hash IN (",
            );
            let mut list = q.separated(", ");
            for email in emails {
                list.push_bind(address_hash(email));
            }
            list.push_unseparated(")");
            q.build_query_scalar().fetch_all(&mut *tx).await
        })?;
        Ok(hashes.into_iter().collect())
    }
}

/// The suppressions that keep an address quiet after a bounce or complaint: the
/// condition on table `suppressions`, with the address's hash as `$1` and the
/// start of the quiet period as `$2` (NULL: none holds). A literal, for `concat!`.
macro_rules! quiet_match {
    () => {
        "email_hash = $1 AND reason IN ('bounced', 'complaint') AND created_at > $2"
    };
}
pub(super) use quiet_match;
