//! The `postbote` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postbote::app::App;
use postbote::clock::SystemClock;
use postbote::config::Config;
use postbote::services::{Schema, Services};
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
    let message = match postbote::inbound::classify(&raw) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, bytes = raw.len(), "inbound message refused");
            return ExitCode::from(EX_DATAERR);
        }
    };
    match handle_inbound(&config, &message, recipient).await {
        Ok(outcome) => report_inbound(outcome),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

/// Acts on one classified message, with the database as it is (`serve` migrates).
async fn handle_inbound(
    config: &Config,
    message: &postbote::inbound::Inbound,
    recipient: Option<&str>,
) -> anyhow::Result<postbote::inbound::Outcome> {
    let services = Services::open(config, Schema::AsIs).await?;
    let composer = services
        .composer(config, config.public_url_for(config.listen))
        .await?;
    let handler = postbote::inbound::Handler {
        store: &services.store,
        composer: &composer,
        bounces: config.bounces,
        submissions: config.submissions.clone(),
        now: chrono::Utc::now(),
    };
    let outcome = handler.handle(message, recipient).await?;
    services.store.close().await;
    Ok(outcome)
}

/// Says what became of a handled message; every outcome is handled for the MTA.
fn report_inbound(outcome: postbote::inbound::Outcome) -> ExitCode {
    use postbote::inbound::Outcome;
    match outcome {
        Outcome::Recorded { event, status } => {
            tracing::info!(event, status, "inbound message handled");
            println!("{event}: reader is now {status}");
        }
        Outcome::Item { id, new } => {
            tracing::info!(item.id = id, new, "submission stored as an item");
            println!("item {id}{}", if new { "" } else { " (stored before)" });
        }
        Outcome::Unverified { claimed } => {
            println!("unverified: {claimed} without signed evidence recorded; nobody changed");
        }
        Outcome::Held { id, new } => {
            println!(
                "held: submission {id}{} waits for approval (sender not authenticated)",
                if new { "" } else { " (stored before)" }
            );
        }
        Outcome::Refused(why) => println!("refused: {why}"),
        Outcome::Ignored(why) => {
            tracing::info!(why, "inbound message ignored");
            println!("ignored: {why}");
        }
    }
    ExitCode::SUCCESS
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
            Services::database(&config, Schema::Migrate).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Check => check(&config).await,
        Command::Import {
            file,
            send_confirmation,
        } => import(&config, &file, send_confirmation).await,
        Command::Inbound { .. } => unreachable!("handled before"),
    }
}

/// `postbote check`: says what is fine, step by step, and stops at the first
/// problem. Changes nothing in the database.
async fn check(config: &Config) -> anyhow::Result<()> {
    println!("configuration: ok");
    Services::templates(config)?;
    println!("templates: ok");
    let store = Services::database(config, Schema::AsIs).await?;
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

/// `postbote import`: the database migrated and the configured topics stored
/// first; with `--send-confirmation` also the templates and the composer.
async fn import(
    config: &Config,
    file: &std::path::Path,
    send_confirmation: bool,
) -> anyhow::Result<()> {
    let (store, composer) = if send_confirmation {
        let services = Services::open(config, Schema::Migrate).await?;
        let composer = services
            .composer(config, config.public_url_for(config.listen))
            .await?;
        (services.store, Some(composer))
    } else {
        (Services::database(config, Schema::Migrate).await?, None)
    };
    postbote::app::seed_topics(&store, config, chrono::Utc::now()).await?;
    let report = postbote::import::run(config, &store, file, composer.as_ref()).await?;
    println!("{report}");
    Ok(())
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
