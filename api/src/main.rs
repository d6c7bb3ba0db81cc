//! `sandbar-api`: read the configuration (defaults < `--config` file < environment < flags; `--print-config` shows
//! it), install tracing, bind, serve until SIGTERM/SIGINT; or `bootstrap` the first organization and API key. A bad
//! setting exits 2 with the key (and the file) that holds it.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sandbar_api::Config;
use sandbar_support::config::ConfigArgs;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// jemalloc: every request allocates and frees its JSON, rows and headers, and glibc's malloc took about a seventh
/// of the API's CPU under `benches/run`'s GET load (`perf record`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "sandbar-api", version, about = "sandbar control plane (Daytona-compatible REST API)")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    file: ConfigArgs,
    /// Log as JSON lines.
    #[arg(long, env = "SANDBAR_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create the organization (if missing) and a new API key for it; prints the key once.
    Bootstrap {
        #[arg(long, default_value = "default")]
        org: String,
    },
    /// Revoke an API key by its id.
    RevokeKey { id: String },
    /// Set what an organization's Dockerfile builds may reach: `none` (the default), `open` (what a sandbox without
    /// an egress policy reaches) or comma-separated IPv4 CIDRs. The runners' floor (host, metadata, `--deny-cidr`)
    /// always applies. Builds queued afterwards use it.
    OrgBuildNetwork {
        /// The organization's name or ID.
        #[arg(long)]
        org: String,
        value: String,
    },
}

/// What masks in `--print-config`.
const SECRETS: &[&str] = &["runner_token", "proxy_token", "metrics_token", "admin_token", "database_url"];

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let file = cli.file.path(&["SANDBAR_API_CONFIG", "SANDBAR_CONFIG"]);
    cli.config = match sandbar_support::config::load(cli.config, &matches, file.as_deref()) {
        Ok(config) => config,
        Err(e) => return bad_config(e),
    };
    if let Err(e) = cli.config.validate() {
        return bad_config(sandbar_support::config::invalid(e, file.as_deref()));
    }
    if cli.file.print_config {
        return match sandbar_support::config::to_toml(&cli.config, SECRETS) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => bad_config(e),
        };
    }
    init_tracing(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandbar-api: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(cli.config).await,
            Command::Bootstrap { org } => {
                let b = sandbar_api::bootstrap(&cli.config, &org).await?;
                println!("organization_id={}", b.organization_id);
                println!("key_id={}", b.key_id);
                println!("api_key={}", b.api_key);
                Ok(())
            }
            Command::RevokeKey { id } => {
                let db = sandbar_api::Db::open(&cli.config.database_url()).await?;
                let now = sandbar_api::Clock::now_ms(&sandbar_api::SystemClock);
                if sandbar_api::revoke_api_key(&db, &id, now).await? {
                    println!("revoked {id}");
                    Ok(())
                } else {
                    anyhow::bail!("no active key with id {id}")
                }
            }
            Command::OrgBuildNetwork { org, value } => {
                let policy = sandbar_api::domain::builds::parse_network(Some(&value)).map_err(anyhow::Error::msg)?;
                let db = sandbar_api::Db::open(&cli.config.database_url()).await?;
                let stored = policy.is_some().then_some(value.trim());
                if sandbar_api::auth::set_build_network(&db, &org, stored).await? {
                    println!("build network of {org}: {}", stored.unwrap_or("none"));
                    Ok(())
                } else {
                    anyhow::bail!("no organization named or identified {org}")
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbar-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration that cannot be used: the message, and exit 2 (as clap does for a bad flag).
fn bad_config(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sandbar-api: {e}");
    ExitCode::from(2)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context as _;
    sandbar_support::otlp::install_configured(config.otlp_endpoint.as_deref(), "sandbar-api")
        .map_err(anyhow::Error::msg)?;
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("bind {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        s.cancel();
    });
    let served = sandbar_api::serve(config, listener, shutdown).await;
    sandbar_support::otlp::flush(std::time::Duration::from_secs(2));
    served
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
