//! sandbar-daemon: the static binary that runs as PID 1 in every sandbox.
//!
//! It owns the container's processes (reaping, the image entrypoint, signal forwarding, draining) and serves the
//! toolbox HTTP API that the proxy forwards to: process execution, sessions, files and git, with Daytona's paths,
//! fields and status codes so the official SDKs work unchanged. Every request but `GET /version` must carry the
//! per-sandbox daemon token.

pub mod config;
pub mod error;
pub mod lsp;
pub mod procs;
pub mod pty;
pub mod ssh;
pub mod terminal;
pub mod toolbox;
pub mod utf8;
pub mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, PoisonError, RwLock};

use tokio_util::sync::CancellationToken;

pub use config::Config;
use procs::ProcessTable;

/// Everything a toolbox request can reach. Built once at start-up and shared by every handler.
#[derive(Debug)]
pub struct Daemon {
    pub config: Config,
    pub procs: Arc<ProcessTable>,
    pub sessions: toolbox::session::Sessions,
    pub ptys: Arc<pty::Ptys>,
    /// Language servers of the HTTP LSP endpoints (the IDE WebSocket starts its own).
    pub lsp: lsp::Lsp,
    /// Cancelled when the daemon starts to drain: long streams (log follow) end with close code 1001.
    pub shutdown: CancellationToken,
    pub home: PathBuf,
    pub work_dir: PathBuf,
    pub shell: PathBuf,
    pub state_dir: PathBuf,
    sandbox_id: RwLock<Option<String>>,
    /// Changes to the environment made through `POST /env` and `POST /init`: `None` unsets an inherited variable.
    env: RwLock<BTreeMap<String, Option<String>>>,
}

pub type AppState = Arc<Daemon>;

/// Variables of the daemon's own environment that children must not inherit.
pub(crate) const PRIVATE_ENV: &[&str] =
    &["SANDBAR_DAEMON_TOKEN", "SANDBAR_DAEMON_TOKEN_FD", "SANDBAR_SSH_AUTHORIZED_KEYS"];

impl Daemon {
    pub fn new(config: Config, procs: Arc<ProcessTable>) -> std::io::Result<Arc<Self>> {
        let home = home_dir();
        let work_dir = match &config.work_dir {
            Some(d) => d.clone(),
            None => std::env::current_dir().unwrap_or_else(|_| home.clone()),
        };
        let shell = config.shell.clone().unwrap_or_else(default_shell);
        let state_dir = config.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("sandbar-daemon"));
        std::fs::create_dir_all(state_dir.join("sessions"))?;
        let sessions = toolbox::session::Sessions::new(state_dir.join("sessions"));
        let lsp_config =
            lsp::LspConfig::new(config.lsp_servers.as_deref(), config.lsp_timeout()).map_err(std::io::Error::other)?;
        Ok(Arc::new(Self {
            sandbox_id: RwLock::new(config.sandbox_id.clone()),
            config,
            procs,
            sessions,
            ptys: Arc::new(pty::Ptys::new(state_dir.join("recordings"))),
            lsp: lsp::Lsp::new(lsp_config),
            shutdown: CancellationToken::new(),
            home,
            work_dir,
            shell,
            state_dir,
            env: RwLock::new(BTreeMap::new()),
        }))
    }

    pub fn sandbox_id(&self) -> Option<String> {
        self.sandbox_id.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_sandbox_id(&self, id: String) {
        *self.sandbox_id.write().unwrap_or_else(PoisonError::into_inner) = Some(id);
    }

    /// Applies `set` then `unset` to the environment of every process started from now on.
    pub fn update_env(&self, set: BTreeMap<String, String>, unset: &[String]) {
        let mut env = self.env.write().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in set {
            env.insert(k, Some(v));
        }
        for k in unset {
            env.insert(k.clone(), None);
        }
    }

    /// The environment a new process gets (before per-request `envs`).
    pub fn effective_env(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| !PRIVATE_ENV.contains(&k.as_str()))
            .collect();
        let overlay = self.env.read().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in overlay.iter() {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        out.entry("HOME".into()).or_insert_with(|| self.home.to_string_lossy().into_owned());
        out
    }

    /// A command with the daemon's environment applied, stdin from /dev/null and the work dir as cwd.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear().envs(self.effective_env());
        cmd.current_dir(&self.work_dir);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The shell command for a command line: `<shell> -c <line>`, so pipes, `&&` and `$VARS` work.
    pub fn shell_command(&self, line: &str) -> Command {
        let mut cmd = self.command(&self.shell);
        cmd.arg("-c").arg(line);
        cmd
    }

    /// Resolves a request path: relative paths are taken from the work dir.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() { p.to_path_buf() } else { self.work_dir.join(p) }
    }
}

fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn default_shell() -> PathBuf {
    let login = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.shell)
        .filter(|s| s.is_file() && !s.ends_with("nologin") && !s.ends_with("false"));
    if let Some(s) = login {
        return s;
    }
    for s in ["/bin/bash", "/usr/bin/bash", "/bin/sh"] {
        if Path::new(s).is_file() {
            return PathBuf::from(s);
        }
    }
    PathBuf::from("/bin/sh")
}

/// Largest request head (request line + headers) accepted; a bigger one is answered 431.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Serves the toolbox API on `listener` until `daemon.shutdown` is cancelled; in-flight requests then finish
/// (the caller bounds how long it waits for that).
pub async fn run(daemon: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_http(listener, toolbox::router(daemon.clone()), daemon.shutdown.clone()).await
}

/// Serves the web terminal (page and WebSocket) on `listener` until `daemon.shutdown` is cancelled.
pub async fn run_terminal(daemon: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_http(listener, terminal::router(daemon.clone()), daemon.shutdown.clone()).await
}

/// HTTP/1.1 with upgrades, bounded request heads, and a graceful end: when `shutdown` is cancelled the listener
/// closes and each connection finishes the request in flight.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_REQUEST_HEAD)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()))
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close instead of waiting for the next one.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}
