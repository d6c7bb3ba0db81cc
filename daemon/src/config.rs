//! Daemon configuration, in the model every service shares (`sandbar_support::config`): defaults < a TOML file
//! (`--config`, `SANDBAR_DAEMON_CONFIG` or `SANDBAR_CONFIG`; keys as the field names below, durations as `"30s"`) <
//! `SANDBAR_*` environment < flags. The environment variables' names are a contract with the runner and the CLI:
//! never rename one. `sandbar-daemon --print-config` prints the result with the token and host key masked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sandbar_support::config::{duration, secs_or_duration};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Per-sandbox token (required, never logged): the key of the credential every request must carry in
    /// `X-Sandbar-Daemon-Auth` (`sandbar_support::daemon_auth`), and the SSH password. (The daemon re-executes
    /// itself once to take it out of its own environment, so it never shows in /proc/1/environ; it then arrives
    /// through a pipe named by SANDBAR_DAEMON_TOKEN_FD.)
    #[arg(long, env = "SANDBAR_DAEMON_TOKEN", hide_env_values = true, default_value = "", hide_default_value = true)]
    pub token: String,

    /// The sandbox this daemon serves; a pooled sandbox gets it later through `POST /init`.
    #[arg(long, env = "SANDBAR_SANDBOX_ID")]
    pub sandbox_id: Option<String>,

    /// Toolbox HTTP listener. Port 0 picks a free port (the ready line reports it).
    #[arg(long, env = "SANDBAR_TOOLBOX_ADDR", default_value = "0.0.0.0:2280")]
    pub toolbox_addr: SocketAddr,

    /// SSH server listener (password = the daemon token, or an authorized public key).
    #[arg(long, env = "SANDBAR_SSH_ADDR", default_value = "0.0.0.0:22220")]
    pub ssh_addr: SocketAddr,

    /// The SSH server's host key (an OpenSSH private key), made by the runner, which reports its public half so
    /// the SSH gateway can pin it. Kept out of the daemon's own environment (like the token, through a pipe named by
    /// SANDBAR_SSH_HOST_KEY_FD) and every child's. Without it the daemon makes one in its state directory.
    #[arg(long, env = "SANDBAR_SSH_HOST_KEY", hide_env_values = true)]
    pub ssh_host_key: Option<String>,

    /// Public keys (OpenSSH format, one a line) the SSH server accepts besides `~/.ssh/authorized_keys`;
    /// handed over at creation. Kept out of every child's environment.
    #[arg(long, env = "SANDBAR_SSH_AUTHORIZED_KEYS", hide_env_values = true)]
    pub ssh_authorized_keys: Option<String>,

    /// Web terminal listener (page and WebSocket).
    #[arg(long, env = "SANDBAR_TERMINAL_ADDR", default_value = "0.0.0.0:22222")]
    pub terminal_addr: SocketAddr,

    /// Default working directory of commands (`GET /work-dir`). Default: the daemon's own working directory.
    #[arg(long, env = "SANDBAR_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// Where session logs and FIFOs live. Default: `$TMPDIR/sandbar-daemon`.
    #[arg(long, env = "SANDBAR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Shell for commands. Default: the user's login shell from /etc/passwd if it exists, else bash, else sh.
    #[arg(long, env = "SANDBAR_SHELL")]
    pub shell: Option<PathBuf>,

    /// How long to drain requests and stop child processes after SIGTERM/SIGINT (keep it below `docker stop -t`);
    /// a bare number is seconds. Default 5 s.
    #[arg(long, alias = "shutdown-grace-secs", env = "SANDBAR_SHUTDOWN_GRACE", default_value = "5s",
          value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,

    /// Largest `result` `process/execute` returns, in bytes; output beyond it is drained and dropped.
    #[arg(long, env = "SANDBAR_MAX_EXEC_OUTPUT", default_value_t = 64 << 20)]
    pub max_exec_output: usize,

    /// Most code interpreter contexts a client may create (the default context is not counted).
    #[arg(long, env = "SANDBAR_MAX_INTERPRETER_CONTEXTS", default_value_t = 16)]
    pub max_interpreter_contexts: usize,

    /// Language servers by language id, over the defaults (python=pylsp, typescript/javascript=
    /// typescript-language-server --stdio, c/cpp=clangd, rust=rust-analyzer, go=gopls):
    /// `python=pylsp;go=/opt/bin/gopls serve` (an empty command removes a language).
    #[arg(long, env = "SANDBAR_LSP_SERVERS")]
    pub lsp_servers: Option<String>,

    /// How long the daemon waits for a language server's answer (`initialize` included); a bare number is
    /// seconds. Default 30 s.
    #[arg(long, alias = "lsp-timeout-secs", env = "SANDBAR_LSP_TIMEOUT", default_value = "30s",
          value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub lsp_timeout: Duration,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "SANDBAR_LOG_JSON", default_value_t = false)]
    pub log_json: bool,

    /// Keep spans (this daemon's start, the entrypoint's spawn, each request that carries a `traceparent`) for the
    /// runner to collect with `POST /trace/spans`: a sandbox cannot reach a collector itself. The runner sets it
    /// when it exports spans. Kept out of every child's environment.
    /// (`1`, `true`, ...; empty, as a snapshot's image leaves it, is off.)
    #[arg(long, env = "SANDBAR_TRACE_SPANS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub trace_spans: bool,

    /// The trace context (W3C `traceparent`) this daemon's start belongs to: the runner's create job. Kept out of
    /// every child's environment.
    #[arg(long, env = "SANDBAR_TRACEPARENT")]
    pub traceparent: Option<String>,

    /// The image's entrypoint and arguments, run in the reserved session `entrypoint` (never from the file).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    #[serde(skip)]
    pub entrypoint: Vec<String>,
}

impl Config {
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    pub fn lsp_timeout(&self) -> Duration {
        self.lsp_timeout.max(Duration::from_secs(1))
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.token.trim().is_empty() {
            return Err("SANDBAR_DAEMON_TOKEN must not be empty".into());
        }
        crate::engine::lsp::LspConfig::new(self.lsp_servers.as_deref(), self.lsp_timeout())?;
        Ok(())
    }
}
