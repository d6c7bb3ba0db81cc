//! `sandbar-runner`: one Docker host working for the control plane. Prints
//! `sandbar-runner ready addr=ADDR` once its HTTP API listens; SIGTERM or Ctrl-C stops it (sandboxes keep running).

use clap::Parser;
use sandbar_runner::service::{self, RunnerOptions};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "sandbar-runner", version, about = "Runs sandboxes on one Docker host for the sandbar control plane")]
struct Cli {
    #[command(flatten)]
    runner: RunnerOptions,
    /// Log as JSON lines.
    #[arg(long, env = "SANDBAR_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        signal.cancel();
    });
    let ready = |addr| println!("sandbar-runner ready addr={addr}");
    match service::run(cli.runner, shutdown, ready).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbar-runner: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
