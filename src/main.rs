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
        /// Seed example topics, so a first try has something to subscribe to.
        #[arg(long)]
        demo: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Validate configuration, templates and database connectivity.
    Check,
}

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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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
            Ok(())
        }
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
