//! Daemon configuration: flags and `SANDBAR_*` environment variables (their names are a contract with the runner
//! and the CLI: never rename one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "sandbar-daemon", version, about = "sandbar's in-sandbox daemon (PID 1, toolbox API)")]
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

    /// Seconds to drain requests and stop child processes after SIGTERM/SIGINT (keep it below `docker stop -t`).
    #[arg(long, env = "SANDBAR_SHUTDOWN_GRACE", default_value_t = 5)]
    pub shutdown_grace_secs: u64,

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

    /// Seconds the daemon waits for a language server's answer (`initialize` included).
    #[arg(long, env = "SANDBAR_LSP_TIMEOUT", default_value_t = 30)]
    pub lsp_timeout_secs: u64,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "SANDBAR_LOG_JSON", default_value_t = false)]
    pub log_json: bool,

    /// The image's entrypoint and arguments, run in the reserved session `entrypoint`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub entrypoint: Vec<String>,
}

impl Config {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn lsp_timeout(&self) -> Duration {
        Duration::from_secs(self.lsp_timeout_secs.max(1))
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
