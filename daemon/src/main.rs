//! `sandbar-daemon`: parse config, start reaping, bind, print the ready line, run the entrypoint (with
//! `SANDBAR_ENTRYPOINT_GATE=1`, once the runner sends SIGUSR2: its network rules are in), serve until SIGTERM/SIGINT,
//! then drain within the grace period and exit 0. Before anything else it takes the token out of its own environment
//! (a re-exec) and makes itself non-dumpable, so the sandbox's user cannot read its memory.

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use sandbar_daemon::engine::procs::ProcessTable;
use sandbar_daemon::{Config, Daemon};
use sandbar_support::config::ConfigArgs;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "sandbar-daemon", version, about = "sandbar's in-sandbox daemon (PID 1, toolbox API)")]
struct Cli {
    #[command(flatten)]
    file: ConfigArgs,
    #[command(flatten)]
    config: Config,
}

/// The secrets the runner hands over in the environment, and the variables naming the pipes that carry them
/// across the re-exec: the daemon token and the SSH host key.
const SECRETS: [(&str, &str); 2] =
    [("SANDBAR_DAEMON_TOKEN", "SANDBAR_DAEMON_TOKEN_FD"), ("SANDBAR_SSH_HOST_KEY", "SANDBAR_SSH_HOST_KEY_FD")];
/// Set to `1` by the runner: hold the image's entrypoint until SIGUSR2, which the runner sends once the sandbox's
/// network rules are in place (so no code of the image ever runs without them).
const GATE_ENV: &str = "SANDBAR_ENTRYPOINT_GATE";

fn main() -> ExitCode {
    // /proc/1/environ is readable by processes of the daemon's own user: take the secrets out of it by executing
    // ourselves again without them, handing them over through pipes.
    let present = |name: &str| std::env::var_os(name).is_some_and(|t| !t.is_empty());
    let handed_over = SECRETS.iter().any(|(_, fd_env)| std::env::var_os(fd_env).is_some());
    if !handed_over && SECRETS.iter().any(|(env, _)| present(env)) {
        let err = reexec_without_secrets();
        eprintln!("sandbar-daemon: cannot hide the secrets from the environment ({err}); going on with them there");
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The defaults < file < environment < flags model (`sandbar_support::config`); the secrets that came through
    // pipes are environment, so they go over the file below.
    let file = cli.file.path(&["SANDBAR_DAEMON_CONFIG", "SANDBAR_CONFIG"]);
    let mut config = match sandbar_support::config::load(cli.config, &matches, file.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sandbar-daemon: {e}");
            return ExitCode::from(2);
        }
    };
    for (env, fd_env) in SECRETS {
        let Some(fd) = std::env::var(fd_env).ok().and_then(|v| v.parse::<i32>().ok()) else { continue };
        match std::fs::read_to_string(format!("/proc/self/fd/{fd}")) {
            Ok(value) if env == "SANDBAR_DAEMON_TOKEN" => config.token = value,
            Ok(value) => config.ssh_host_key = Some(value),
            Err(e) => eprintln!("sandbar-daemon: cannot read {env} from fd {fd}: {e}"),
        }
        let _ = nix::unistd::close(fd);
    }
    // The token (and every session's secrets) live in our memory, and the sandbox user usually runs as our own
    // uid: without this, `cat /proc/1/mem`, `/proc/1/environ` or a ptrace by that user would read them. A
    // non-dumpable process's /proc files belong to root and need CAP_SYS_PTRACE, which no sandbox gets. Our
    // children are not affected: exec makes a process dumpable again. After the re-exec above, which resets it.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("sandbar-daemon: cannot make the daemon undumpable ({e}); its memory is readable by its user");
    }
    if let Err(e) = config.validate() {
        eprintln!("sandbar-daemon: {}", sandbar_support::config::invalid(e, file.as_deref()));
        return ExitCode::from(2);
    }
    if cli.file.print_config {
        return match sandbar_support::config::to_toml(&config, &["token", "ssh_host_key"]) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sandbar-daemon: {e}");
                ExitCode::from(2)
            }
        };
    }
    init_tracing(config.log_json);
    // Two workers, not one: a current-thread runtime (tried 2026-12 to save ~160 KiB per idle sandbox) lets any
    // call that blocks the thread (a slow fork, a stuck syscall) stop every listener at once. With it, a CI run saw
    // every sandbox's daemon print its ready line and then answer nothing (not reproduced here; reverted).
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
    use sandbar_support::otlp;
    // Spans wait in memory for the runner (`POST /trace/spans`): no collector is reachable from a sandbox.
    let parent = config.traceparent.as_deref().and_then(sandbar_support::trace::TraceParent::parse);
    if config.trace_spans
        && let Err(e) = otlp::install_buffer("sandbar-daemon")
    {
        tracing::warn!(error = %e, "cannot keep spans");
    }
    let mut start_span = parent.as_ref().and_then(|p| otlp::Span::start("daemon start", otlp::Kind::Internal, Some(p)));
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
    // Before the listeners: the runner sends the go-ahead only after `GET /version` answers.
    let gate = match std::env::var(GATE_ENV).as_deref() {
        Ok("1") => Some(signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?),
        _ => None,
    };

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
    let ssh_listener = tokio::net::TcpListener::bind(config.ssh_addr)
        .await
        .with_context(|| format!("binding the SSH listener on {}", config.ssh_addr))?;
    let ssh_addr = ssh_listener.local_addr()?;
    let daemon = Daemon::new(config, procs.clone()).context("creating the state directory")?;
    let ssh_server = sandbar_daemon::ssh::SshServer::new(&daemon).context("starting the SSH server")?;

    let server = tokio::spawn(sandbar_daemon::run(daemon.clone(), listener));
    let terminal = tokio::spawn(sandbar_daemon::run_terminal(daemon.clone(), terminal_listener));
    let ssh = tokio::spawn(ssh_server.run(daemon.clone(), ssh_listener));
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{} toolbox={toolbox_addr} ssh={ssh_addr} terminal={terminal_addr}",
            sandbar_proto::DAEMON_READY_PREFIX
        )?;
        out.flush()?;
    }
    tracing::info!(%toolbox_addr, %ssh_addr, %terminal_addr, sandbox_id = daemon.sandbox_id().as_deref().unwrap_or(""), "listening");
    if let Some(s) = &mut start_span {
        s.attr("sandbar.toolbox_addr", toolbox_addr);
    }
    drop(start_span);

    if !entrypoint.is_empty() || gate.is_some() {
        let d = daemon.clone();
        if gate.is_some() && otlp::enabled() {
            sandbar_daemon::toolbox::spans::entrypoint_held();
        }
        let start = async move {
            if let Some(mut go) = gate {
                go.recv().await;
                tracing::info!("released by the runner: starting the entrypoint");
            }
            // The spawn of the image's entrypoint, in the create's trace.
            let mut span = parent.as_ref().and_then(|p| otlp::Span::start("entrypoint", otlp::Kind::Internal, Some(p)));
            if let Some(s) = &mut span {
                s.attr("process.executable.name", entrypoint.first().map_or("(none)", String::as_str));
            }
            if !d.shutdown.is_cancelled()
                && !entrypoint.is_empty()
                && let Err(e) = d.sessions.start_entrypoint(&d, &entrypoint)
            {
                tracing::error!(error = %e.message, "cannot start the entrypoint");
                if let Some(s) = &mut span {
                    s.fail(&e.message);
                }
            }
            drop(span);
            sandbar_daemon::toolbox::spans::entrypoint_spawned();
            // Start-up is over.
            sandbar_daemon::util::release_free_memory();
        };
        tokio::spawn(start);
    } else {
        // Start-up is over once the servers' tasks (spawned before this one) have built their routers.
        tokio::spawn(async { sandbar_daemon::util::release_free_memory() });
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
        r = tokio::time::timeout_at(deadline, async { let _ = tokio::join!(server, terminal, ssh); }) => r.is_ok(),
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

/// Replaces this process with itself minus the secrets in its environment, each handed over in a pipe; returns
/// only on failure.
fn reexec_without_secrets() -> std::io::Error {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // The resolved path (not /proc/self/exe) keeps the process name `sandbar-daemon` for ps and top.
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(exe);
    cmd.arg0(argv0).args(args);
    // The read ends stay open until the exec (which they survive: no close-on-exec flag); each write end is
    // closed once its secret is in the pipe (far below a pipe's buffer).
    let mut reads = Vec::new();
    for (env, fd_env) in SECRETS {
        let Some(value) = std::env::var_os(env) else { continue };
        let (read, write) = match nix::unistd::pipe() {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let mut write = std::fs::File::from(write);
        if let Err(e) = write.write_all(value.as_encoded_bytes()) {
            return e;
        }
        drop(write);
        cmd.env_remove(env).env(fd_env, read.as_raw_fd().to_string());
        reads.push(read);
    }
    cmd.exec()
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the ready line and the entrypoint's output.
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
