//! `sandbar-runner`: one Docker host working for the control plane. Reads its options (defaults < `--config` file <
//! environment < flags; `--print-config` shows them, a bad one exits 2 naming it), prints
//! `sandbar-runner ready addr=ADDR` once its HTTP API listens; SIGTERM or Ctrl-C stops it (sandboxes keep running).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use sandbar_runner::service::{self, RunnerOptions};
use sandbar_support::config::ConfigArgs;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "sandbar-runner", version, about = "Runs sandboxes on one Docker host for the sandbar control plane")]
struct Cli {
    #[command(flatten)]
    runner: RunnerOptions,
    #[command(flatten)]
    file: ConfigArgs,
    /// Log as JSON lines.
    #[arg(long, env = "SANDBAR_LOG_JSON")]
    log_json: bool,
}

/// What masks in `--print-config` (the archive store's URL may carry S3 keys in its query).
const SECRETS: &[&str] = &["runner_token", "archive_store", "image_registry_password"];

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let file = cli.file.path(&["SANDBAR_RUNNER_CONFIG", "SANDBAR_CONFIG"]);
    cli.runner = match sandbar_support::config::load(cli.runner, &matches, file.as_deref()) {
        Ok(runner) => runner,
        Err(e) => return bad_config(e),
    };
    if let Err(e) = cli.runner.validate() {
        return bad_config(sandbar_support::config::invalid(e, file.as_deref()));
    }
    if cli.file.print_config {
        return match sandbar_support::config::to_toml(&cli.runner, SECRETS) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => bad_config(e),
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandbar-runner: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.runner))
}

async fn run(options: RunnerOptions) -> ExitCode {
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
    if let Err(e) = sandbar_support::otlp::install_configured(options.otlp_endpoint.as_deref(), "sandbar-runner") {
        eprintln!("sandbar-runner: {e}");
        return ExitCode::FAILURE;
    }
    let ran = service::run(options, shutdown, ready).await;
    sandbar_support::otlp::flush(std::time::Duration::from_secs(2));
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbar-runner: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration that cannot be used: the message, and exit 2 (as clap does for a bad flag).
fn bad_config(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sandbar-runner: {e}");
    ExitCode::from(2)
}
