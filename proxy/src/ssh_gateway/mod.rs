//! The SSH gateway (port 2222): `ssh -p 2222 <token>@host`, where the user name is an SSH-access token.
//!
//! For each connection the gateway asks an [`SshTargetResolver`] what the token opens (sandbox, daemon SSH
//! address, daemon token, daemon host key), connects to that daemon's SSH server, checks that it shows the host
//! key its runner reported (pinned: the token goes to no other server), logs in with the daemon token as password,
//! and lets the client in without asking anything more (the token is the credential; "none", password and publickey
//! attempts are all judged by the token alone). An unknown, expired or revoked token, or a sandbox whose daemon
//! cannot be reached, ends the connection with a disconnect message the client prints, never a hang. An open
//! connection is asked about again every few seconds ([`SshTargetResolver::revoked`]): once its token is revoked or
//! expires, or its sandbox stops or is deleted, the gateway disconnects it with the reason.
//!
//! - [`server`]: the client's side, one russh server handler per connection: authentication, channel opens, and
//!   channel requests answered with the daemon's own answer.
//! - [`client`]: the daemon's side, the russh client connection (host key pinning, channels the daemon opens back).
//! - [`bridge`]: one channel pair copied both ways (session channels with pty, shell, exec, env, window-change,
//!   signals, subsystems such as sftp, agent forwarding, exit-status and exit-signal; `direct-tcpip`,
//!   `forwarded-tcpip` and agent channels). Data uses russh's windowed writers on both legs, so a slow side slows
//!   the other instead of filling memory.
//! - [`resolver`]: the resolver backed by the API. Activity is reported through the resolver, at most every few
//!   seconds per connection, into the proxy's one activity reporter.

mod bridge;
mod client;
pub mod resolver;
mod server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::Disconnect;
use russh::keys::PrivateKey;
use sandbar_support::sync::lock;
use tokio::sync::OnceCell;

use self::server::GatewayConn;

/// The gateway's host key lives in `<data-dir>/ssh/gateway_host_ed25519_key`, made on first start.
pub use sandbar_support::ssh::{HostKeyError, load_or_create_host_key};

/// Where an SSH-access token leads.
#[derive(Clone)]
pub struct SshTarget {
    pub sandbox_id: String,
    /// The daemon's SSH server, `host:port`.
    pub daemon_addr: String,
    /// The per-sandbox daemon token (the daemon's SSH password). Never logged.
    pub daemon_token: String,
    /// The daemon's host key (OpenSSH public key line) as its runner reported it: the gateway refuses any other
    /// key, and refuses to log in at all (the password would go to whoever answers) when it is `None`.
    pub daemon_host_key: Option<String>,
}

impl std::fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("sandbox_id", &self.sandbox_id)
            .field("daemon_addr", &self.daemon_addr)
            .finish()
    }
}

/// Turns SSH-access tokens into targets (the API does it in production; tests use a map).
#[async_trait::async_trait]
pub trait SshTargetResolver: Send + Sync + 'static {
    /// The target of `token`, or the reason to show the user (unknown or expired token, stopped sandbox...).
    async fn resolve(&self, token: &str) -> Result<SshTarget, String>;

    /// Asked every [`SshGatewayConfig::recheck_interval`] while a connection `token` opened to `sandbox_id` is
    /// open: `Some(reason)` once the token no longer opens it (revoked, expired, the sandbox stopped or deleted),
    /// and the gateway then disconnects with that reason; `None` while it does, or when nobody can tell.
    async fn revoked(&self, token: &str, sandbox_id: &str) -> Option<String> {
        match self.resolve(token).await {
            Ok(t) if t.sandbox_id == sandbox_id => None,
            Ok(_) => Some("this SSH access token now opens another sandbox".to_owned()),
            Err(reason) => Some(reason),
        }
    }

    /// Called when a connection to `sandbox_id` carries traffic (at most every few seconds per connection), so
    /// the sandbox counts as active for auto-stop. Must not block.
    fn activity(&self, sandbox_id: &str) {
        let _ = sandbox_id;
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct SshGatewayConfig {
    /// How long connecting to a daemon may take.
    pub connect_timeout: Duration,
    /// How long a channel request may wait for the daemon's answer.
    pub request_timeout: Duration,
    /// How often an open connection's token is asked about again ([`SshTargetResolver::revoked`]).
    pub recheck_interval: Duration,
}

impl Default for SshGatewayConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            recheck_interval: Duration::from_secs(5),
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` completes; connections are then told so and closed.
pub async fn run(
    listener: tokio::net::TcpListener,
    host_key: PrivateKey,
    config: SshGatewayConfig,
    resolver: Arc<dyn SshTargetResolver>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let server_config = Arc::new(sandbar_support::ssh::server_config("sandbar_gateway", host_key, 3));
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ssh gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handle_cell = Arc::new(OnceCell::new());
        let conn = GatewayConn::new(resolver.clone(), config.clone(), peer, handle_cell.clone());
        let (server_config, mut stop) = (server_config.clone(), stop_rx.clone());
        let span = tracing::info_span!("ssh_gateway", %peer);
        connections.spawn(tracing::Instrument::instrument(
            async move {
                let session = match russh::server::run_stream(server_config, stream, conn).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "ssh handshake failed");
                        return;
                    }
                };
                let handle = session.handle();
                let _ = handle_cell.set(handle.clone());
                tokio::select! {
                    r = session => if let Err(e) = r {
                        tracing::debug!(error = %e, "ssh gateway connection ended with an error");
                    },
                    () = stopped(&mut stop) => {
                        let _ = handle
                            .disconnect(Disconnect::ByApplication, "the SSH gateway is shutting down".into(), "en".into())
                            .await;
                    }
                }
            },
            span,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once the watch says true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = *stop.borrow_and_update();
        if now || stop.changed().await.is_err() {
            return;
        }
    }
}

/// One connection's traffic, passed to the resolver at most every `ACTIVITY_EVERY`.
struct ConnActivity {
    resolver: Arc<dyn SshTargetResolver>,
    sandbox_id: String,
    last: Mutex<Option<Instant>>,
}

const ACTIVITY_EVERY: Duration = Duration::from_secs(5);

impl ConnActivity {
    fn touch(&self) {
        let mut last = lock(&self.last);
        if last.is_none_or(|t| t.elapsed() >= ACTIVITY_EVERY) {
            *last = Some(Instant::now());
            drop(last);
            self.resolver.activity(&self.sandbox_id);
        }
    }
}
