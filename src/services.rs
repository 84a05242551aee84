//! Opening what the commands work with, wired once for all of them: the template
//! set, the database (connected, and migrated where the command may change the
//! schema), and for commands that build mails or links the link key, [`Links`]
//! and the [`Composer`]. `serve` ([`crate::app::App::build`]), `migrate`,
//! `check`, `import` and `inbound` each open what they need through [`Services`].

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::links::Links;
use crate::mail::compose::Composer;
use crate::mail::templates::Templates;
use crate::store::Store;

/// Whether opening the database applies the embedded migrations first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Apply them (`serve`, `migrate`, `import`).
    Migrate,
    /// Use the database as it is: `check` changes nothing, and `inbound` runs
    /// once per message beside `serve`, which migrates.
    AsIs,
}

/// The template set and the database, opened. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    /// The database.
    pub store: Store,
    /// Pages, page texts and mails, loaded and checked.
    pub templates: Arc<Templates>,
}

impl Services {
    /// Loads the templates, then connects to the database (migrating it when
    /// `schema` says so).
    ///
    /// # Errors
    /// When a template does not load or the database cannot be reached or
    /// migrated, with context saying which.
    pub async fn open(config: &Config, schema: Schema) -> anyhow::Result<Self> {
        let templates = Self::templates(config)?;
        let store = Self::database(config, schema).await?;
        Ok(Self { store, templates })
    }

    /// The template set: the built-in one, with `templates_dir`'s files in place
    /// of their built-in namesakes.
    ///
    /// # Errors
    /// When a template does not parse or breaks the digest's split.
    pub fn templates(config: &Config) -> anyhow::Result<Arc<Templates>> {
        let templates = Templates::load(config.templates_dir.as_deref())
            .context("Failed to load the templates")?;
        Ok(Arc::new(templates))
    }

    /// The database, connected and, with [`Schema::Migrate`], migrated.
    ///
    /// # Errors
    /// When it cannot be reached or a migration fails.
    pub async fn database(config: &Config, schema: Schema) -> anyhow::Result<Store> {
        let store = Store::connect(&config.database)
            .await
            .context("Failed to connect to the database")?;
        if schema == Schema::Migrate {
            store
                .migrate()
                .await
                .context("Failed to apply the database migrations")?;
        }
        Ok(store)
    }

    /// The mail composer, with [`Links`] under `public_url` signed by the
    /// installation's link key (read, or made on first use: the database must be
    /// migrated).
    ///
    /// # Errors
    /// When the link key cannot be read.
    pub async fn composer(&self, config: &Config, public_url: String) -> anyhow::Result<Composer> {
        let key = self
            .store
            .link_key()
            .await
            .context("Failed to read the link key")?;
        let links = Links::new(public_url, key);
        Ok(Composer::from_config(config, self.templates.clone(), links))
    }
}
