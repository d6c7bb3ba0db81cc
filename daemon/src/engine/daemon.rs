//! `Daemon`: the state every server of the daemon shares (config, process table, sessions, PTYs, language
//! servers, the environment overlay), and how a process is started with the sandbox's environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};

use sandbar_proto::toolbox::{EnvUpdate, InitRequest, InitResponse};
use sandbar_support::sync;
use tokio_util::sync::CancellationToken;

use super::procs::ProcessTable;
use super::{Error, Result, interpreter, lsp, pty, session};
use crate::Config;

/// Everything a toolbox request can reach. Built once at start-up and shared by every handler.
#[derive(Debug)]
pub struct Daemon {
    pub config: Config,
    /// Checks the per-request credential of the toolbox and the terminal (one replay set for both servers).
    pub auth: sandbar_support::daemon_auth::Verifier,
    pub procs: Arc<ProcessTable>,
    pub sessions: session::Sessions,
    pub ptys: Arc<pty::Ptys>,
    /// Language servers of the HTTP LSP endpoints (the IDE WebSocket starts its own).
    pub lsp: lsp::Lsp,
    /// The code interpreter's contexts.
    pub interpreters: interpreter::Interpreters,
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
pub const PRIVATE_ENV: &[&str] = &[
    "SANDBAR_DAEMON_TOKEN",
    "SANDBAR_DAEMON_TOKEN_FD",
    "SANDBAR_SSH_HOST_KEY",
    "SANDBAR_SSH_HOST_KEY_FD",
    "SANDBAR_SSH_AUTHORIZED_KEYS",
    "SANDBAR_TRACE_SPANS",
    "SANDBAR_TRACEPARENT",
];

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
        let sessions = session::Sessions::new(state_dir.join("sessions"));
        let lsp_config =
            lsp::LspConfig::new(config.lsp_servers.as_deref(), config.lsp_timeout()).map_err(std::io::Error::other)?;
        let max_contexts = config.max_interpreter_contexts;
        Ok(Arc::new(Self {
            sandbox_id: RwLock::new(config.sandbox_id.clone()),
            auth: sandbar_support::daemon_auth::Verifier::new(&config.token),
            config,
            procs,
            sessions,
            ptys: Arc::new(pty::Ptys::new(state_dir.join("recordings"))),
            lsp: lsp::Lsp::new(lsp_config),
            interpreters: interpreter::Interpreters::new(max_contexts),
            shutdown: CancellationToken::new(),
            home,
            work_dir,
            shell,
            state_dir,
            env: RwLock::new(BTreeMap::new()),
        }))
    }

    pub fn sandbox_id(&self) -> Option<String> {
        sync::read(&self.sandbox_id).clone()
    }

    pub fn set_sandbox_id(&self, id: String) {
        *sync::write(&self.sandbox_id) = Some(id);
    }

    /// Applies `set` then `unset` to the environment of every process started from now on.
    pub fn update_env(&self, set: BTreeMap<String, String>, unset: &[String]) {
        let mut env = sync::write(&self.env);
        for (k, v) in set {
            env.insert(k, Some(v));
        }
        for k in unset {
            env.insert(k.clone(), None);
        }
    }

    /// `POST /env`: checks the names and values, applies them, and returns the environment now in effect.
    pub fn change_env(&self, req: EnvUpdate) -> Result<BTreeMap<String, String>> {
        if let Some(bad) = req.set.keys().chain(req.unset.iter()).find(|k| !valid_env_name(k)) {
            return Err(Error::bad_request(format!("invalid environment variable name {bad:?}")));
        }
        if let Some((k, _)) = req.set.iter().find(|(_, v)| v.contains('\0')) {
            return Err(Error::bad_request(format!("value of {k} contains a NUL byte")));
        }
        self.update_env(req.set, &req.unset);
        Ok(self.effective_env())
    }

    /// `POST /init`: a pooled sandbox gets its identity and environment.
    pub fn init(&self, req: InitRequest) -> Result<InitResponse> {
        if req.sandbox_id.trim().is_empty() {
            return Err(Error::bad_request("sandboxId must not be empty"));
        }
        if let Some(bad) = req.env.keys().find(|k| !valid_env_name(k)) {
            return Err(Error::bad_request(format!("invalid environment variable name {bad:?}")));
        }
        self.update_env(req.env, &[]);
        self.set_sandbox_id(req.sandbox_id.clone());
        tracing::info!(sandbox_id = %req.sandbox_id, "initialised");
        Ok(InitResponse { sandbox_id: req.sandbox_id })
    }

    /// The environment a new process gets (before per-request `envs`).
    pub fn effective_env(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| !PRIVATE_ENV.contains(&k.as_str()))
            .collect();
        let overlay = sync::read(&self.env);
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

fn valid_env_name(k: &str) -> bool {
    !k.is_empty() && !k.contains('=') && !k.contains('\0')
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
