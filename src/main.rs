//! The `postbote` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postbote::app::App;
use postbote::clock::SystemClock;
use postbote::config::Config;
use postbote::mail::templates::Templates;
use postbote::store::Store;
use tokio_util::sync::CancellationToken;

/// Self-hosted topic newsletter: double opt-in sign-up and daily digests.
#[derive(Parser)]
#[command(name = "postbote", version, about)]
struct Cli {
    /// Configuration file (TOML); environment variables POSTBOTE_* override it.
    #[arg(long, global = true, env = "POSTBOTE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, then serve until SIGINT/SIGTERM.
    Serve {
        /// Seed example topics and items, so a first try has something to subscribe
        /// to and a first digest to read.
        #[arg(long)]
        demo: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Validate configuration, templates, DKIM keys and database connectivity.
    Check,
    /// Process ONE message from stdin (bounce, complaint, unsubscribe reply), as an
    /// MTA pipe transport hands it. Exit 0 handled or ignored, 65 unparseable,
    /// 75 temporary failure (the MTA retries).
    Inbound {
        /// The envelope recipient (Postfix: `${original_recipient}`); else the
        /// `X-Original-To`/`Delivered-To` header is used.
        #[arg(long)]
        recipient: Option<String>,
    },
    /// Import subscribers from a CSV file (header row; email, topics, delivery_time,
    /// timezone, locale, consent_at, consent_ip).
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Run double opt-in for each row instead of importing as confirmed.
        #[arg(long)]
        send_confirmation: bool,
    },
}

/// sysexits.h: the input data was incorrect.
const EX_DATAERR: u8 = 65;
/// sysexits.h: temporary failure; the MTA should try again later.
const EX_TEMPFAIL: u8 = 75;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTBOTE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Inbound { recipient } = &cli.command {
        // A bug must not make the MTA bounce the message: it keeps it and retries.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("error: internal error: {info}");
            std::process::exit(i32::from(EX_TEMPFAIL));
        }));
        return runtime.block_on(inbound(cli.config.as_deref(), recipient.as_deref()));
    }
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `postbote inbound`, with the exit codes an MTA understands.
async fn inbound(config: Option<&std::path::Path>, recipient: Option<&str>) -> ExitCode {
    use postbote::inbound::{Handler, Outcome, classify};
    use std::io::Read;
    // The configuration is ours to fix; the MTA keeps the message meanwhile.
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(25 * 1024 * 1024)
        .read_to_end(&mut raw)
    {
        eprintln!("error: reading the message: {e}");
        return ExitCode::from(EX_TEMPFAIL);
    }
    let message = match classify(&raw) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, bytes = raw.len(), "inbound message refused");
            return ExitCode::from(EX_DATAERR);
        }
    };
    let handled = async {
        let store = Store::connect(&config.database).await?;
        let link_key = store.link_key().await?;
        let templates = std::sync::Arc::new(
            Templates::load(config.templates_dir.as_deref()).map_err(|e| anyhow::anyhow!(e))?,
        );
        let composer = postbote::mail::compose::Composer::from_config(
            &config,
            templates,
            link_key,
            config.public_url_for(config.listen),
        );
        let handler = Handler {
            store: &store,
            composer: &composer,
            bounces: config.bounces,
            submissions: config.submissions.clone(),
            now: chrono::Utc::now(),
        };
        let outcome = handler.handle(&message, recipient).await?;
        store.close().await;
        anyhow::Ok(outcome)
    };
    match handled.await {
        Ok(Outcome::Recorded { event, status }) => {
            tracing::info!(event, status, "inbound message handled");
            println!("{event}: reader is now {status}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Item { id, new }) => {
            tracing::info!(item.id = id, new, "submission stored as an item");
            println!("item {id}{}", if new { "" } else { " (stored before)" });
            ExitCode::SUCCESS
        }
        Ok(Outcome::Unverified { claimed }) => {
            println!("unverified: {claimed} without signed evidence recorded; nobody changed");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Held { id, new }) => {
            println!(
                "held: submission {id}{} waits for approval (sender not authenticated)",
                if new { "" } else { " (stored before)" }
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::Refused(why)) => {
            println!("refused: {why}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Ignored(why)) => {
            tracing::info!(why, "inbound message ignored");
            println!("ignored: {why}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { demo } => {
            if demo {
                postbote::demo::add_topics(&mut config);
            }
            let app = App::build(config, Arc::new(SystemClock)).await?;
            if demo {
                postbote::demo::add_items(app.store(), chrono::Utc::now()).await?;
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app.run(shutdown).await
        }
        Command::Migrate => {
            let store = Store::connect(&config.database)
                .await
                .context("Failed to connect to the database")?;
            store
                .migrate()
                .await
                .context("Failed to apply the migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Check => {
            println!("configuration: ok");
            Templates::load(config.templates_dir.as_deref()).context("templates")?;
            println!("templates: ok");
            let store = Store::connect(&config.database)
                .await
                .context("database: cannot connect")?;
            store.ping().await.context("database: does not answer")?;
            println!("database: ok");
            if let Some(dkim) = &config.dkim {
                let signer = postbote::mail::dkim::Signer::load(dkim).context("dkim")?;
                for (name, value) in signer.dns_records() {
                    println!("dkim: ok; publish this TXT record:\n{name} IN TXT \"{value}\"");
                }
            }
            Ok(())
        }
        Command::Import {
            file,
            send_confirmation,
        } => {
            let store = Store::connect(&config.database)
                .await
                .context("Failed to connect to the database")?;
            store
                .migrate()
                .await
                .context("Failed to apply the migrations")?;
            postbote::app::seed_topics(&store, &config, chrono::Utc::now()).await?;
            let report = postbote::import::run(&config, &store, &file, send_confirmation).await?;
            println!("{report}");
            Ok(())
        }
        Command::Inbound { .. } => unreachable!("handled before"),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
