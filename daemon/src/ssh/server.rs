//! The SSH server proper: the accept loop, one russh `Handler` per connection, authentication (token password
//! or authorized key) and the channel requests, handed to `session`, `sftp` and `forward`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use russh::keys::ssh_key::{self, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use sandbar_support::ssh::{self, HostKeyError};
use sandbar_support::sync::lock;
use tokio_util::sync::CancellationToken;

use super::{forward, session};
use crate::AppState;

/// File name of the host key in the state directory (the public half sits beside it with `.pub`).
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// Largest authorized_keys file read.
const MAX_AUTHORIZED_KEYS: u64 = 1 << 20;

/// Public keys of an authorized_keys text. Entries with options are skipped (see the module doc).
pub fn parse_authorized_keys(text: &str) -> Vec<PublicKey> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<ssh_key::authorized_keys::Entry>() {
            Ok(entry) if entry.config_opts().is_empty() => keys.push(entry.public_key().clone()),
            Ok(_) => tracing::warn!("skipping an authorized key with options (options are not supported)"),
            Err(_) => tracing::warn!("skipping a line of authorized keys that is not an OpenSSH public key"),
        }
    }
    keys
}

/// The SSH server: its russh configuration and the keys handed over at creation.
#[derive(Debug)]
pub struct SshServer {
    config: Arc<russh::server::Config>,
    creation_keys: Arc<Vec<PublicKey>>,
}

impl SshServer {
    /// Takes the host key the runner handed over (`SANDBAR_SSH_HOST_KEY`), or loads (or makes) one in the state
    /// directory; call before announcing readiness so the key file exists by then.
    pub fn new(d: &AppState) -> Result<Self, HostKeyError> {
        let key = match d.config.ssh_host_key.as_deref() {
            Some(text) => ssh::HostKeyText::parse(text).map(|(key, _)| key).ok_or(HostKeyError::Invalid)?,
            None => ssh::load_or_create_host_key(&d.state_dir.join(HOST_KEY_FILE))?,
        };
        let creation_keys = parse_authorized_keys(d.config.ssh_authorized_keys.as_deref().unwrap_or(""));
        let config = ssh::server_config("sandbar", key, 6);
        Ok(Self { config: Arc::new(config), creation_keys: Arc::new(creation_keys) })
    }

    /// Serves SSH on `listener` until `d.shutdown` is cancelled; then every connection is told the sandbox is
    /// shutting down and disconnected.
    pub async fn run(self, d: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let connections = tokio_util::task::TaskTracker::new();
        while let Some((stream, peer)) = crate::accept(&listener, &d.shutdown).await {
            let local = stream.local_addr().unwrap_or(peer);
            let conn = Conn::new(d.clone(), self.creation_keys.clone(), peer, local);
            let config = self.config.clone();
            let shutdown = d.shutdown.clone();
            let span = tracing::info_span!("ssh", %peer, sandbox_id = d.sandbox_id().as_deref().unwrap_or(""));
            connections.spawn(tracing::Instrument::instrument(
                async move {
                    let session = match russh::server::run_stream(config, stream, conn).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "ssh handshake failed");
                            return;
                        }
                    };
                    let handle = session.handle();
                    tokio::select! {
                        r = session => if let Err(e) = r {
                            tracing::debug!(error = %e, "ssh connection ended with an error");
                        },
                        _ = shutdown.cancelled() => {
                            let _ = handle
                                .disconnect(russh::Disconnect::ByApplication, "sandbox shutting down".into(), "en".into())
                                .await;
                        }
                    }
                    tracing::debug!("ssh connection closed");
                },
                span,
            ));
        }
        drop(listener);
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

/// What the channel tasks of one connection share.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub d: AppState,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// SSH_AUTH_SOCK once the client asked for agent forwarding.
    pub agent: Arc<Mutex<Option<PathBuf>>>,
    /// Cancelled when the connection ends: stops its forwarding listeners.
    pub closed: CancellationToken,
}

impl ConnCtx {
    pub fn agent_socket(&self) -> Option<PathBuf> {
        lock(&self.agent).clone()
    }
}

/// One SSH connection.
struct Conn {
    ctx: ConnCtx,
    creation_keys: Arc<Vec<PublicKey>>,
    /// Session channels that already run a shell, a command or a subsystem.
    started: HashSet<ChannelId>,
    /// Remote forwards by (address, port) as the client asked for them.
    forwards: HashMap<(String, u32), CancellationToken>,
    /// Directory of the agent socket, removed when the connection ends.
    agent_dir: Option<PathBuf>,
}

impl Conn {
    fn new(d: AppState, creation_keys: Arc<Vec<PublicKey>>, peer: SocketAddr, local: SocketAddr) -> Self {
        let ctx = ConnCtx { d, peer, local, agent: Arc::new(Mutex::new(None)), closed: CancellationToken::new() };
        Self { ctx, creation_keys, started: HashSet::new(), forwards: HashMap::new(), agent_dir: None }
    }

    fn key_allowed(&self, key: &PublicKey) -> bool {
        if self.creation_keys.iter().any(|k| k.key_data() == key.key_data()) {
            return true;
        }
        let path = self.ctx.d.home.join(".ssh").join("authorized_keys");
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.len() <= MAX_AUTHORIZED_KEYS => std::fs::read_to_string(&path).unwrap_or_default(),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "authorized_keys is too big; ignored");
                return false;
            }
            Err(_) => return false,
        };
        parse_authorized_keys(&text).iter().any(|k| k.key_data() == key.key_data())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.ctx.closed.cancel();
        if let Some(dir) = self.agent_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let ok = sandbar_support::ct_eq(password.as_bytes(), self.ctx.d.config.token.as_bytes());
        tracing::info!(user, method = "password", ok, "ssh authentication");
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey_offered(&mut self, _user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.key_allowed(offer.public_key) { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let ok = self.key_allowed(key.public_key);
        let fingerprint = key.public_key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        tracing::info!(user, method = "publickey", %fingerprint, ok, "ssh authentication");
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(session::run(channel, self.ctx.clone(), session.handle()));
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.started.remove(&channel);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if session::pty_size(col_width, row_height).is_some() && !self.started.contains(&channel) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if session::env_allowed(name, value) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        if self.started.insert(channel) { session.channel_success(channel) } else { session.channel_failure(channel) }
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.started.insert(channel) { session.channel_success(channel) } else { session.channel_failure(channel) }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == session::SFTP && self.started.insert(channel) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn agent_request(&mut self, _channel: ChannelId, session: &mut Session) -> Result<bool, Self::Error> {
        if self.agent_dir.is_some() {
            return Ok(true);
        }
        match forward::agent_listener(&self.ctx, session.handle()) {
            Ok((dir, sock)) => {
                *lock(&self.ctx.agent) = Some(sock);
                self.agent_dir = Some(dir);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up agent forwarding");
                Ok(false)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Connect in a task: a slow target must not stall the connection's other channels.
        tokio::spawn(forward::direct_tcpip(channel, reply, host.to_owned(), port));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.forwards.len() >= forward::MAX_REMOTE_FORWARDS {
            return Ok(false);
        }
        let requested = *port;
        match forward::remote_listener(&self.ctx, session.handle(), address, requested).await {
            Ok((bound, token)) => {
                if requested == 0 {
                    *port = u32::from(bound);
                }
                self.forwards.insert((address.to_owned(), u32::from(bound)), token);
                Ok(true)
            }
            Err(e) => {
                tracing::info!(address, port = requested, error = %e, "remote forward refused");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match self.forwards.remove(&(address.to_owned(), port)) {
            Some(token) => {
                token.cancel();
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
