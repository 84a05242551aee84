//! The console's subscriber search (address prefix, status, topic; paged), the
//! CSV export of a search result in the columns `postbote import` reads, and
//! resending the confirmation mail to a pending reader.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::super::counters::Tally;
use super::super::subscribers::SummaryRow;
use super::super::{
    BoxError, NewMail, Store, StoreError, StoreResult, SubscriberSummary, on_pool, on_tx,
};
use crate::domain::{EmailAddress, Locale, SubscriberStatus, TokenHash, TopicSlug};

/// What the operator searches for; every part is optional.
#[derive(Debug, Clone, Default)]
pub struct SubscriberQuery {
    /// The address starts with this (compared in lower case).
    pub prefix: Option<String>,
    /// Only readers in this status.
    pub status: Option<SubscriberStatus>,
    /// Only readers of this topic.
    pub topic: Option<TopicSlug>,
}

/// One row of the search result.
pub type SubscriberRow = SubscriberSummary;

/// One confirmed reader as a row of the import format.
#[derive(Debug, Clone, FromRow)]
pub struct ExportRow {
    /// Subscriber id (not exported; orders the rows).
    pub id: i64,
    /// Address.
    pub email: String,
    /// `HH:MM`.
    pub delivery_time: String,
    /// IANA zone.
    pub timezone: String,
    /// `de` or `en`.
    pub locale: String,
    /// When they confirmed: their consent, for the import.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// From where they confirmed.
    pub confirmed_ip: Option<String>,
    /// Their topic slugs, `;`-separated as the import reads them.
    #[sqlx(skip)]
    pub topics: String,
}

/// The search's condition on `subscribers s`, binding `$1` (LIKE pattern), `$2`
/// (status) and `$3` (topic slug).
const FILTER: &str = "($1 IS NULL OR s.email LIKE $1 ESCAPE '\\') AND ($2 IS NULL OR s.status = $2) \
     AND ($3 IS NULL OR EXISTS (SELECT 1 FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id \
     WHERE st.subscriber_id = s.id AND t.slug = $3))";

impl SubscriberQuery {
    /// The prefix as a LIKE pattern, its wildcards taken literally.
    fn pattern(&self) -> Option<String> {
        self.prefix.as_ref().map(|p| {
            let mut pattern = String::with_capacity(p.len() + 1);
            for c in p.to_lowercase().chars() {
                if matches!(c, '%' | '_' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push('%');
            pattern
        })
    }
}

impl Store {
    /// A page of the readers `query` finds, in address order: `limit` rows after
    /// skipping `offset`.
    ///
    /// # Errors
    /// When the database fails, or a row does not parse.
    pub async fn search_subscribers(
        &self,
        query: &SubscriberQuery,
        offset: u32,
        limit: u32,
    ) -> StoreResult<Vec<SubscriberRow>> {
        let sql = format!(
            "SELECT s.id, s.email, s.status, s.locale, s.delivery_time, s.timezone, s.created_at \
             FROM subscribers s WHERE {FILTER} ORDER BY s.email LIMIT $4 OFFSET $5"
        );
        let rows: Vec<SummaryRow> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(query.pattern())
            .bind(query.status.map(SubscriberStatus::as_str))
            .bind(query.topic.as_ref().map(TopicSlug::as_str))
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(SubscriberSummary::try_from).collect()
    }

    /// The confirmed readers among those `query` finds, at most `limit`, as rows of
    /// the import format. Readers in any other status are left out: `import`
    /// stores every row as confirmed.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn export_rows(
        &self,
        query: &SubscriberQuery,
        limit: u32,
    ) -> StoreResult<Vec<ExportRow>> {
        let readers = format!(
            "SELECT s.id, s.email, s.delivery_time, s.timezone, s.locale, s.confirmed_at, s.confirmed_ip \
             FROM subscribers s WHERE {FILTER} AND s.status = 'confirmed' ORDER BY s.id LIMIT $4"
        );
        let topics = format!(
            "SELECT st.subscriber_id, t.slug FROM subscriber_topics st JOIN topics t ON t.id = st.topic_id \
             WHERE st.subscriber_id IN (SELECT s.id FROM subscribers s WHERE {FILTER} AND s.status = 'confirmed' \
             ORDER BY s.id LIMIT $4) ORDER BY st.subscriber_id, t.slug"
        );
        // Both statements take the filter's three parameters and the limit.
        macro_rules! filtered {
            ($sql:expr) => {
                sqlx::query_as(sqlx::AssertSqlSafe($sql.clone()))
                    .bind(query.pattern())
                    .bind(query.status.map(SubscriberStatus::as_str))
                    .bind(query.topic.as_ref().map(TopicSlug::as_str))
                    .bind(i64::from(limit))
            };
        }
        let (mut rows, slugs): (Vec<ExportRow>, Vec<(i64, String)>) = on_pool!(self, pool => {
            let rows = filtered!(readers).fetch_all(pool).await?;
            let slugs = filtered!(topics).fetch_all(pool).await?;
            Ok::<_, sqlx::Error>((rows, slugs))
        })?;
        for row in &mut rows {
            let mine: Vec<&str> = slugs
                .iter()
                .filter(|(id, _)| *id == row.id)
                .map(|(_, slug)| slug.as_str())
                .collect();
            row.topics = mine.join(";");
        }
        Ok(rows)
    }

    /// The address of reader `id`, if stored.
    ///
    /// # Errors
    /// When the database fails, or the stored address does not parse.
    pub async fn subscriber_email(&self, id: i64) -> StoreResult<Option<EmailAddress>> {
        let email: Option<String> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT email FROM subscribers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await)?;
        email
            .map(|e| {
                super::super::decode::StoredRow::subscriber(id).parse(
                    "email",
                    e.as_str(),
                    EmailAddress::parse,
                )
            })
            .transpose()
    }

    /// Sends a pending reader a new confirmation link: stores the new token's hash
    /// (the older links stay valid until they expire) and queues the mail `mail`
    /// renders for their address and language, in one transaction. `false` when
    /// the reader is gone or not pending; nothing is stored then.
    ///
    /// # Errors
    /// When the database fails or `mail` does; nothing is stored then.
    pub async fn resend_confirmation(
        &self,
        id: i64,
        token: &TokenHash,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
        mail: impl FnOnce(&EmailAddress, Locale) -> Result<NewMail, BoxError>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let Some(reader) = tx.lock_by_id(id).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        if reader.status != SubscriberStatus::Pending {
            tx.rollback().await?;
            return Ok(false);
        }
        let email = super::super::decode::StoredRow::subscriber(id).parse(
            "email",
            reader.email.as_str(),
            EmailAddress::parse,
        )?;
        on_tx!(&mut tx, conn => sqlx::query(
            "INSERT INTO tokens (hash, subscriber_id, purpose, created_at, expires_at) \
             VALUES ($1, $2, 'confirm', $3, $4)",
        )
        .bind(&token.0[..])
        .bind(id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))?;
        let mail = mail(&email, reader.locale).map_err(StoreError::Callback)?;
        let mut tally = Tally::default();
        tx.queue_mail(id, &mail, now, &mut tally).await?;
        tx.commit_with(tally).await?;
        Ok(true)
    }
}
