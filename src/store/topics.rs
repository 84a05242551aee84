//! Topics: what readers can choose.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError, StoreResult, on_pool, push_list};
use crate::domain::TopicSlug;

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Topic {
    /// Internal key.
    #[serde(skip)]
    pub id: i64,
    /// Stable public key.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Optional longer text shown on the sign-up page.
    pub description: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stopped being offered; `None` while offered.
    pub retired_at: Option<DateTime<Utc>>,
}

/// A change to a topic's texts; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TopicChange {
    /// New display name.
    pub name: Option<String>,
    /// New description; `Some(None)` removes it.
    pub description: Option<Option<String>>,
}

impl Store {
    /// Topics, ordered by name; retired ones only when asked for.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list_topics(&self, include_retired: bool) -> StoreResult<Vec<Topic>> {
        let sql = if include_retired {
            "SELECT id, slug, name, description, created_at, retired_at FROM topics ORDER BY name, slug"
        } else {
            "SELECT id, slug, name, description, created_at, retired_at FROM topics \
             WHERE retired_at IS NULL ORDER BY name, slug"
        };
        let topics = on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        Ok(topics)
    }

    /// The topics (retired ones too) whose slugs are among `slugs`, ordered by
    /// name; a slug that names no topic is left out.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn topics_by_slugs(&self, slugs: &[&str]) -> StoreResult<Vec<Topic>> {
        if slugs.is_empty() {
            return Ok(Vec::new());
        }
        let topics = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT id, slug, name, description, created_at, retired_at FROM topics WHERE slug IN (",
            );
            push_list(&mut q, slugs.iter().copied());
            q.push(") ORDER BY name, id");
            q.build_query_as().fetch_all(pool).await
        })?;
        Ok(topics)
    }

    /// Creates a topic.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the slug exists (retired or not).
    pub async fn create_topic(
        &self,
        slug: &TopicSlug,
        name: &str,
        description: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Topic> {
        let sql = "INSERT INTO topics (slug, name, description, created_at) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (slug) DO NOTHING \
                   RETURNING id, slug, name, description, created_at, retired_at";
        let topic: Option<Topic> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(slug.as_str())
            .bind(name)
            .bind(description)
            .bind(now)
            .fetch_optional(pool)
            .await)?;
        topic.ok_or(StoreError::Conflict("topic"))
    }

    /// Creates a topic or brings an existing one in line (and back into service):
    /// for topics declared in the configuration file.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn upsert_topic(
        &self,
        slug: &TopicSlug,
        name: &str,
        description: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let sql = "INSERT INTO topics (slug, name, description, created_at) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (slug) DO UPDATE SET name = excluded.name, \
                   description = excluded.description, retired_at = NULL";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(slug.as_str())
            .bind(name)
            .bind(description)
            .bind(now)
            .execute(pool)
            .await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Changes a topic's name or description; `None` when there is no such topic.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn update_topic(
        &self,
        slug: &TopicSlug,
        change: &TopicChange,
    ) -> StoreResult<Option<Topic>> {
        let sql = "UPDATE topics SET name = COALESCE($2, name), \
                   description = CASE WHEN $3 THEN $4 ELSE description END \
                   WHERE slug = $1 RETURNING id, slug, name, description, created_at, retired_at";
        let topic = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(slug.as_str())
            .bind(change.name.as_deref())
            .bind(change.description.is_some())
            .bind(change.description.clone().flatten())
            .fetch_optional(pool)
            .await)?;
        Ok(topic)
    }

    /// Stops offering a topic. Readers keep their other topics; the retired one is
    /// kept for history. `None` when there is no such topic.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn retire_topic(
        &self,
        slug: &TopicSlug,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Topic>> {
        let sql = "UPDATE topics SET retired_at = COALESCE(retired_at, $2) WHERE slug = $1 \
                   RETURNING id, slug, name, description, created_at, retired_at";
        let topic = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(slug.as_str())
            .bind(now)
            .fetch_optional(pool)
            .await)?;
        Ok(topic)
    }
}
