//! `sandbar-proxy`: read the configuration (defaults < `--config` file < environment < flags; `--print-config` shows
//! it, a bad value exits 2 naming it), bind (HTTP, HTTPS, metrics and the SSH gateway), print the ready line
//! `sandbar-proxy ready http=ADDR https=ADDR metrics=ADDR ssh=ADDR`, serve until SIGTERM/SIGINT, drain.

use std::io::Write;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use sandbar_support::config::ConfigArgs;

use sandbar_proxy::control::activity::Activity;
use sandbar_proxy::control::api::ApiClient;
use sandbar_proxy::ssh_gateway::resolver::ApiSshResolver;
use sandbar_proxy::{Config, Listeners, ssh_gateway};

/// jemalloc: pingora allocates and frees buffers of every size per request, and glibc's malloc cost the proxy a
/// large share of its CPU under load (measured by `benches/proxy-vs-nginx`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "sandbar-proxy", version, about = "sandbar's edge proxy (pingora): TLS, routing by sandbox id, auth")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    file: ConfigArgs,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let file = cli.file.path(&["SANDBAR_PROXY_CONFIG", "SANDBAR_CONFIG"]);
    let config = match sandbar_support::config::load(cli.config, &matches, file.as_deref()) {
        Ok(config) => config,
        Err(e) => return bad_config(e),
    };
    let config = match config.finish() {
        Ok(config) => config,
        Err(e) => return bad_config(sandbar_support::config::invalid(e, file.as_deref())),
    };
    if cli.file.print_config {
        return match sandbar_support::config::to_toml(&config, &["token"]) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => bad_config(e),
        };
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbar-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration that cannot be used: the message, and exit 2 (as clap does for a bad flag).
fn bad_config(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sandbar-proxy: {e}");
    ExitCode::from(2)
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing(config.log_json);
    sandbar_support::otlp::install_configured(config.otlp_endpoint.as_deref(), "sandbar-proxy")
        .map_err(anyhow::Error::msg)?;
    let served = serve_traced(config);
    sandbar_support::otlp::flush(std::time::Duration::from_secs(2));
    served
}

fn serve_traced(config: Config) -> anyhow::Result<()> {
    // On few cores shared with the backends, one thread serves more requests, at less CPU each, than work-stealing
    // workers (measured by benches/proxy-vs-nginx).
    let runtime = match config.worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .thread_name("sandbar-proxy")
            .build()?,
    };
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config)?;
        // The certificate exists before the ready line (run() loads it again, then reuses it).
        sandbar_proxy::tls::ensure_self_signed(&config.data_dir, &config.domain.to_ascii_lowercase())?;
        // The SSH gateway runs beside the HTTP edge in this process.
        let ssh_listener = tokio::net::TcpListener::bind(config.ssh_addr())
            .await
            .with_context(|| format!("binding the SSH gateway on {}", config.ssh_addr()))?;
        let ready = format!("{} ssh={}", listeners.ready_line()?, ssh_listener.local_addr()?);
        let host_key = ssh_gateway::load_or_create_host_key(&config.data_dir.join("ssh/gateway_host_ed25519_key"))?;
        let api = ApiClient::new(&config.api_url, config.token.clone())?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        // One activity reporter for the HTTP edge and the gateway: `run_with_activity` sends what both mark.
        let activity = Arc::new(Activity::default());
        let resolver = ApiSshResolver::new(api, activity.clone());
        let mut gateway_stop = rx.clone();
        let gateway = tokio::spawn(ssh_gateway::run(
            ssh_listener,
            host_key,
            ssh_gateway::SshGatewayConfig::default(),
            resolver,
            async move {
                let _ = gateway_stop.wait_for(|stop| *stop).await;
            },
        ));
        // Signal handlers go in before the ready line: a supervisor may send SIGTERM the moment it reads it.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut server = tokio::spawn(sandbar_proxy::run_with_activity(config, listeners, activity, rx));
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{ready}")?;
            out.flush()?;
        }
        tracing::info!("{ready}");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
            r = &mut server => return r.context("proxy task")?.context("proxy"),
        }
        let _ = tx.send(true);
        // `run` returns once connections drained or the grace period ended; a second signal cuts it short.
        tokio::select! {
            _ = term.recv() => tracing::warn!("second signal: exiting now"),
            _ = int.recv() => tracing::warn!("second signal: exiting now"),
            r = &mut server => r.context("proxy task")?.context("proxy")?,
        }
        gateway.abort();
        Ok(())
    })
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pingora=warn,pingora_core=warn,pingora_proxy=warn"));
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
