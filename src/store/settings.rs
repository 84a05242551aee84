//! Table `settings`: installation-wide values kept in the database so every
//! instance on it shares them; today the link key.

use super::{Store, StoreResult, on_pool};
use crate::domain::{LinkKey, hex};

impl Store {
    /// The key that signs unsubscribe and preferences links: made once, on first
    /// use, and shared by every instance on the same database.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn link_key(&self) -> StoreResult<LinkKey> {
        use rand::RngCore;
        let mut fresh = [0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        let value: String = on_pool!(self, pool => {
            sqlx::query("INSERT INTO settings (key, value) VALUES ('link_key', $1) ON CONFLICT (key) DO NOTHING")
                .bind(hex(&fresh))
                .execute(pool)
                .await?;
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'link_key'").fetch_one(pool).await
        })?;
        Ok(LinkKey::new(value.into_bytes()))
    }
}
