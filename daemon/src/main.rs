//! `sandbar-daemon`: parse config, start reaping, bind, print the ready line, run the entrypoint, serve until
//! SIGTERM/SIGINT, then drain within the grace period and exit 0.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sandbar_daemon::procs::ProcessTable;
use sandbar_daemon::{Config, Daemon};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let config = Config::parse();
    init_tracing(config.log_json);
    if let Err(e) = config.validate() {
        eprintln!("sandbar-daemon: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandbar-daemon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbar-daemon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    // Outside a container (not PID 1) become the subreaper, so orphans of our children still come to us.
    if nix::unistd::getpid().as_raw() != 1
        && let Err(e) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    let procs = ProcessTable::new();
    tokio::spawn(procs.clone().reap_forever());
    // Signal handlers first: as PID 1 an unhandled SIGTERM would be ignored, not fatal.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let grace = config.shutdown_grace();
    let entrypoint = config.entrypoint.clone();
    let listener = tokio::net::TcpListener::bind(config.toolbox_addr)
        .await
        .with_context(|| format!("binding the toolbox listener on {}", config.toolbox_addr))?;
    let toolbox_addr = listener.local_addr()?;
    let terminal_listener = tokio::net::TcpListener::bind(config.terminal_addr)
        .await
        .with_context(|| format!("binding the terminal listener on {}", config.terminal_addr))?;
    let terminal_addr = terminal_listener.local_addr()?;
    let daemon = Daemon::new(config, procs.clone()).context("creating the state directory")?;

    let server = tokio::spawn(sandbar_daemon::run(daemon.clone(), listener));
    let terminal = tokio::spawn(sandbar_daemon::run_terminal(daemon.clone(), terminal_listener));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{} toolbox={toolbox_addr} terminal={terminal_addr}", sandbar_proto::DAEMON_READY_PREFIX)?;
        out.flush()?;
    }
    tracing::info!(%toolbox_addr, %terminal_addr, sandbox_id = daemon.sandbox_id().as_deref().unwrap_or(""), "listening");

    if !entrypoint.is_empty()
        && let Err(e) = daemon.sessions.start_entrypoint(&daemon, &entrypoint)
    {
        tracing::error!(error = %e.message, "cannot start the entrypoint");
    }

    let forwarded = tokio::select! {
        _ = sigterm.recv() => nix::sys::signal::Signal::SIGTERM,
        _ = sigint.recv() => nix::sys::signal::Signal::SIGINT,
    };
    tracing::info!(signal = %forwarded, ?grace, "draining");
    let deadline = tokio::time::Instant::now() + grace;
    daemon.sessions.signal_entrypoint(forwarded);
    daemon.shutdown.cancel();
    // Interactive shells ignore SIGTERM: hang their terminals up, as closing a terminal window would.
    daemon.ptys.hangup_all();

    // In-flight requests get the grace period; a second signal cuts it short.
    let drained = tokio::select! {
        r = tokio::time::timeout_at(deadline, async { let _ = tokio::join!(server, terminal); }) => r.is_ok(),
        _ = sigterm.recv() => false,
        _ = sigint.recv() => false,
    };
    if !drained {
        tracing::warn!("requests still in flight at the deadline; closing them");
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    procs.stop_all(left.max(Duration::from_millis(200))).await;
    daemon.sessions.cleanup();
    tracing::info!("stopped");
    Ok(())
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the ready line and the entrypoint's output.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
