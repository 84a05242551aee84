//! Building and running the whole service. [`App::build`] opens the services
//! ([`crate::services`]: templates, database migrated, composer) and binds its own
//! listener (port 0 works: tests start the real thing);
//! [`App::run`] serves until the cancellation token fires, then stops taking work,
//! lets in-flight deliveries finish and joins every task.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::digest::Digester;
use crate::domain::hex;
use crate::feeds::Poller;
use crate::mail::compose::Composer;
use crate::mail::delivery::{
    DeliveryContext, Pace, Recorder, release_handed, run_retention, run_worker,
};
use crate::mail::dkim::Signer;
use crate::mail::handoff::Handoff;
use crate::services::{Schema, Services};
use crate::store::Store;
use crate::web::error::ErrorChain;
use crate::web::{self, AppState};
use crate::webhooks::Deliverer;

/// How long in-flight HTTP requests may run on after shutdown was asked for.
const HTTP_DRAIN: Duration = Duration::from_secs(10);
/// How long the workers then get to finish their mail in progress. With the drain,
/// `serve` exits within 30 s of SIGTERM.
const TASKS_GRACE: Duration = Duration::from_secs(15);
/// How often pending sign-ups past their lifetime are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// The service, built and bound, not yet running.
pub struct App {
    /// The bound HTTP listener.
    listener: TcpListener,
    /// Shared by every handler.
    state: AppState,
    /// Shared by every delivery worker.
    delivery: DeliveryContext,
    /// Polls the feeds; no handler needs it, so it lives beside the state.
    poller: Poller,
    /// Delivers the signed webhooks, when `[webhooks]` has URLs.
    webhooks: Option<Deliverer>,
}

impl App {
    /// Opens the services (templates, database migrated), seeds the configured
    /// topics and feeds, settles the admin token, binds the listener and builds
    /// the composer, the delivery context, the `Digester` and the `Poller`.
    ///
    /// # Errors
    /// Any of those steps failing, with context saying which.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let services = Services::open(&config, Schema::Migrate).await?;
        let store = services.store.clone();
        seed_topics(&store, &config, clock.now()).await?;
        seed_feeds(&store, &config, clock.now()).await?;
        let admin_token = match &config.admin_token {
            Some(token) => token.expose().to_owned(),
            None => admin_token_file(&config.data_dir.join("admin-token"))?,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("Failed to listen on {}", config.listen))?;
        let public_url = config.public_url_for(listener.local_addr()?);
        let composer = services.composer(&config, public_url).await?;
        let wake = Arc::new(Notify::new());
        let delivery = delivery_context(&config, &store, &clock, &wake, &composer)?;
        let digester = Digester {
            store: store.clone(),
            composer: composer.clone(),
            settings: config.digest.clone(),
            clock: clock.clone(),
            mail_wake: wake.clone(),
            handoff: Some(delivery.handoff.clone()),
            bodies: Some(delivery.bodies.clone()),
        };
        let poller = Poller::new(
            store.clone(),
            clock.clone(),
            config.polling,
            composer.links().public_url(),
        )
        .context("Failed to set up the feed client")?;
        let webhooks = match config.webhooks.clone() {
            Some(settings) => Some(Deliverer::start(store.clone(), clock.clone(), settings).await?),
            None => {
                // URLs configured before stop getting events.
                store
                    .sync_webhook_endpoints(&[], clock.now())
                    .await
                    .context("Failed to store the webhook endpoints")?;
                None
            }
        };
        let stylesheet = Arc::new(web::assets::Stylesheet::new(&config.site.accent_color));
        let state = AppState::new(web::Shared {
            digester,
            store,
            client_limiter: Arc::new(web::rate_limit::ClientLimiter::new(
                config.rate_limit.per_client_per_minute,
            )),
            login_limiter: Arc::new(web::rate_limit::ClientLimiter::new(
                web::console::LOGIN_ATTEMPTS_PER_MINUTE,
            )),
            limit_tally: Arc::default(),
            config: Arc::new(config),
            clock,
            templates: services.templates,
            links: composer.links().clone(),
            composer,
            admin_token: admin_token.into(),
            mail_wake: wake,
            stylesheet,
            thanks_pages: Arc::default(),
            offered_topics: Arc::default(),
        });
        Ok(Self {
            listener,
            state,
            delivery,
            poller,
            webhooks,
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin API's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.state.admin_token
    }

    /// The store, for tests and commands that share the running app's pool.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Serves until `shutdown` fires, then stops gracefully.
    ///
    /// # Errors
    /// When the listener's address cannot be read. A failing connection ends only
    /// that connection.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            delivery,
            poller,
            webhooks,
        } = self;
        let store = state.store.clone();
        tracing::info!(address = %listener.local_addr()?, public_url = %state.links.public_url(), "postbote is serving");
        let mut tasks = JoinSet::new();

        // Workers get their own token: they stop only after the HTTP server has
        // stopped accepting sign-ups, so nothing queued at the end waits for a restart
        // longer than necessary.
        let workers_stop = CancellationToken::new();
        for worker in 0..delivery.settings.workers {
            tasks.spawn(run_worker(
                delivery.clone(),
                workers_stop.clone(),
                worker == 0,
            ));
        }
        tasks.spawn(purge_loop(state.clone(), workers_stop.clone()));
        tasks.spawn(run_retention(delivery.clone(), workers_stop.clone()));
        tasks.spawn(poller.run(workers_stop.clone()));
        if let Some(webhooks) = webhooks {
            tasks.spawn(webhooks.run(workers_stop.clone()));
        }
        if state.config.digest.run_scheduler {
            tasks.spawn(state.digester.clone().run_schedule(workers_stop.clone()));
        }

        let http = state.config.http;
        let router =
            web::router(state).layer(axum::extract::DefaultBodyLimit::max(web::BODY_LIMIT));
        let server = web::server::serve(listener, router, http, shutdown.clone());
        tokio::select! {
            () = server => {}
            // In-flight requests get the grace period too, not forever.
            () = async { shutdown.cancelled().await; tokio::time::sleep(HTTP_DRAIN).await } => {}
        }
        tracing::info!("HTTP server stopped; finishing deliveries in progress");
        workers_stop.cancel();
        release_handed(&store, delivery.handoff.close()).await;
        let joined = tokio::time::timeout(TASKS_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!("tasks did not finish within the grace period; their mails stay queued");
        }
        // Dropping the remaining tasks aborts them; the pool then closes promptly.
        drop(tasks);
        if tokio::time::timeout(Duration::from_secs(2), store.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections did not close in time");
        }
        tracing::info!("postbote stopped");
        Ok(())
    }
}

async fn purge_loop(state: AppState, stop: CancellationToken) {
    loop {
        let cutoff = state.clock.now() - state.config.confirmation_lifetime;
        match state.store.purge_pending(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "deleted sign-ups that were never confirmed"),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "purging unconfirmed sign-ups failed")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}

/// Creates or updates the topics declared in the configuration file.
///
/// # Errors
/// When the database fails.
pub async fn seed_topics(
    store: &Store,
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    for topic in &config.topics {
        store
            .upsert_topic(&topic.slug, &topic.name, topic.description.as_deref(), now)
            .await
            .with_context(|| {
                format!(
                    "Failed to store topic {} from the configuration",
                    topic.slug
                )
            })?;
    }
    Ok(())
}

/// Creates or updates the feeds declared in the configuration file; a feed naming
/// a topic that does not exist stops the start.
///
/// # Errors
/// Such a feed, or the database failing.
async fn seed_feeds(
    store: &Store,
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let topics = store.list_topics(true).await?;
    for feed in &config.feeds {
        let spec = crate::store::FeedSpec {
            name: feed.name.clone(),
            url: feed.url.clone(),
            topic: feed.topic.clone(),
            schedule: feed.schedule.clone(),
            next_poll_at: now,
        };
        // The configured topics are stored first, so the store knows them all.
        if !topics.iter().any(|t| t.slug == feed.topic.as_str()) {
            anyhow::bail!(
                "configuration: feeds: feed {:?} names topic {:?}, which does not exist",
                feed.name,
                feed.topic.as_str()
            );
        }
        store
            .put_feed(&spec, "config", now)
            .await
            .with_context(|| {
                format!("Failed to store feed {} from the configuration", feed.name)
            })?;
    }
    Ok(())
}

/// What the delivery workers share: the queue, the transport, the pace and the
/// DKIM signer (loaded now, so a bad key stops the start).
fn delivery_context(
    config: &Config,
    store: &Store,
    clock: &Arc<dyn Clock>,
    wake: &Arc<Notify>,
    composer: &Composer,
) -> anyhow::Result<DeliveryContext> {
    let signer = match &config.dkim {
        Some(dkim) => Some(Arc::new(
            Signer::load(dkim).context("Failed to load the DKIM keys")?,
        )),
        None => None,
    };
    Ok(DeliveryContext {
        store: store.clone(),
        clock: clock.clone(),
        settings: config.delivery,
        transport: config.transport.clone(),
        wake: wake.clone(),
        pace: Arc::new(Pace::new(config.delivery.max_per_second)),
        signer,
        composer: composer.clone(),
        bodies: Arc::default(),
        handoff: Arc::new(Handoff::for_workers(&config.delivery)),
        recorder: {
            let tasks = Recorder::tasks_for(store, config.delivery.workers);
            Recorder::start(
                store.with_relaxed_commits(tasks as u32),
                clock.clone(),
                tasks,
                config.delivery.workers,
            )
        },
    })
}

/// Reads the admin token from `path`, or makes one there (mode 0600) on first start.
fn admin_token_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let token = existing.trim().to_owned();
        if token.len() >= 16 {
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(token);
        }
        anyhow::bail!(
            "{} holds no usable admin token (under 16 characters); delete it to make a new one",
            path.display()
        );
    }
    let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("Failed to create {}", dir.display()))?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex(&bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("Failed to create {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    tracing::warn!(path = %path.display(), "no POSTBOTE_ADMIN_TOKEN set: generated an admin token and stored it in this file");
    Ok(token)
}
