//! The SSH gateway (port 2222): `ssh -p 2222 <token>@host`, where the user name is an SSH-access token.
//!
//! For each connection the gateway asks an [`SshTargetResolver`] what the token opens (sandbox, daemon SSH
//! address, daemon token), connects to that daemon's SSH server with the daemon token as password, and lets the
//! client in without asking anything more (the token is the credential; "none", password and publickey
//! attempts are all judged by the token alone). An unknown, expired or revoked token, or a sandbox whose daemon
//! cannot be reached, ends the connection with a disconnect message the client prints, never a hang.
//!
//! Then every channel and request is bridged both ways: session channels (pty, shell, exec, env, window-change,
//! signals, subsystems such as sftp, agent forwarding, exit-status and exit-signal), `direct-tcpip` channels,
//! `tcpip-forward` with the `forwarded-tcpip` channels coming back, and agent channels. Channel requests are
//! answered with the daemon's own answer: the bridge forwards each request in order and the handler waits for
//! the reply before answering the client. Data uses russh's windowed writers on both legs, so a slow side slows
//! the other instead of filling memory. Activity is reported through the resolver, at most every few seconds.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::{self, LineEnding, PrivateKey, PublicKey};
use russh::server::{Auth, Msg as ServerMsg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use tokio::sync::{OnceCell, oneshot};

/// Where an SSH-access token leads.
#[derive(Clone)]
pub struct SshTarget {
    pub sandbox_id: String,
    /// The daemon's SSH server, `host:port`.
    pub daemon_addr: String,
    /// The per-sandbox daemon token (the daemon's SSH password). Never logged.
    pub daemon_token: String,
    /// The daemon's host key (OpenSSH public key line) when known: the gateway then refuses any other key.
    /// `None` trusts the network between gateway and daemon.
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

    /// Called when a connection to `sandbox_id` carries traffic (at most every few seconds per connection), so
    /// the sandbox counts as active for auto-stop. Must not block.
    fn activity(&self, sandbox_id: &str) {
        let _ = sandbox_id;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshGatewayError {
    #[error("cannot read the gateway host key {path}: {source}")]
    ReadKey { path: String, source: std::io::Error },
    #[error("the gateway host key {path} is not an OpenSSH private key: {source}")]
    BadKey { path: String, source: ssh_key::Error },
    #[error("cannot make a gateway host key: {0}")]
    MakeKey(String),
    #[error("cannot write the gateway host key {path}: {source}")]
    WriteKey { path: String, source: std::io::Error },
}

/// Loads the gateway's host key from `path`, making an ed25519 key there (mode 0600) the first time.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, SshGatewayError> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(pem) => {
            return PrivateKey::from_openssh(pem).map_err(|source| SshGatewayError::BadKey { path: shown, source });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(SshGatewayError::ReadKey { path: shown, source }),
    }
    let mut seed = [0u8; 32];
    {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| SshGatewayError::MakeKey(e.to_string()))?;
    }
    let key = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    let pem = key.to_openssh(LineEnding::LF).map_err(|e| SshGatewayError::MakeKey(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| SshGatewayError::WriteKey { path: shown, source })?;
    Ok(key)
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct SshGatewayConfig {
    /// How long connecting to a daemon may take.
    pub connect_timeout: Duration,
    /// How long a channel request may wait for the daemon's answer.
    pub request_timeout: Duration,
}

impl Default for SshGatewayConfig {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), request_timeout: Duration::from_secs(30) }
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
    let server_config = Arc::new(server_config(host_key));
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
        let conn = GatewayConn {
            resolver: resolver.clone(),
            config: config.clone(),
            peer,
            down: handle_cell.clone(),
            up: None,
            activity: None,
            refusal: None,
            replies: std::collections::HashMap::new(),
        };
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

fn server_config(key: PrivateKey) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    russh::server::Config {
        server_id: russh::SshId::Standard(format!("SSH-2.0-sandbar_gateway_{}", env!("CARGO_PKG_VERSION")).into()),
        methods,
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts: 3,
        inactivity_timeout: Some(Duration::from_secs(600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    }
}

/// Reports activity at most every `ACTIVITY_EVERY`.
struct Activity {
    resolver: Arc<dyn SshTargetResolver>,
    sandbox_id: String,
    last: Mutex<Option<Instant>>,
}

const ACTIVITY_EVERY: Duration = Duration::from_secs(5);

impl Activity {
    fn touch(&self) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= ACTIVITY_EVERY) {
            *last = Some(Instant::now());
            drop(last);
            self.resolver.activity(&self.sandbox_id);
        }
    }
}

type UpHandle = russh::client::Handle<Upstream>;

/// One client connection.
struct GatewayConn {
    resolver: Arc<dyn SshTargetResolver>,
    config: Arc<SshGatewayConfig>,
    peer: SocketAddr,
    /// The client session's handle (set right after the handshake starts).
    down: Arc<OnceCell<russh::server::Handle>>,
    up: Option<Arc<UpHandle>>,
    activity: Option<Arc<Activity>>,
    /// Why the token was refused: sent as the disconnect message right after authentication.
    refusal: Option<String>,
    /// Reply queues of the session channels, by client-side channel id.
    replies: std::collections::HashMap<ChannelId, SharedReplies>,
}

impl GatewayConn {
    async fn down_handle(&self) -> Option<russh::server::Handle> {
        for _ in 0..200 {
            if let Some(h) = self.down.get() {
                return Some(h.clone());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Judges an authentication attempt by the token in the user name: resolves it and connects to the daemon.
    ///
    /// A refused token is "accepted" and the connection is then closed at once with the reason
    /// (`auth_succeeded`): a rejection would reach the client before any disconnect message, and OpenSSH would
    /// print a bare "Permission denied". No channel can open in between (the disconnect follows the success in
    /// the same write, and channel opens find no daemon connection).
    async fn admit(&mut self, token: &str) -> Result<Auth, russh::Error> {
        if self.up.is_some() || self.refusal.is_some() {
            return Ok(Auth::Accept);
        }
        let outcome = match self.resolver.resolve(token).await {
            Ok(target) => self.connect(target).await,
            Err(reason) => Err(reason),
        };
        if let Err(reason) = outcome {
            tracing::info!(peer = %self.peer, %reason, "ssh gateway refused a connection");
            self.refusal = Some(reason);
        }
        Ok(Auth::Accept)
    }

    async fn connect(&mut self, target: SshTarget) -> Result<(), String> {
        let pinned = match &target.daemon_host_key {
            Some(k) => Some(PublicKey::from_openssh(k).map_err(|_| "the sandbox's host key is invalid".to_owned())?),
            None => None,
        };
        let down = self.down_handle().await.ok_or_else(|| "internal error: no session".to_owned())?;
        let activity = Arc::new(Activity {
            resolver: self.resolver.clone(),
            sandbox_id: target.sandbox_id.clone(),
            last: Mutex::new(None),
        });
        let upstream = Upstream { pinned, down, activity: activity.clone() };
        let config = Arc::new(russh::client::Config {
            nodelay: true,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            ..Default::default()
        });
        let unreachable = |e: String| format!("sandbox {} is not reachable ({e}); is it started?", target.sandbox_id);
        let connecting = russh::client::connect(config, target.daemon_addr.as_str(), upstream);
        let mut up = match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("timed out".into())),
        };
        match up.authenticate_password("sandbar", target.daemon_token.as_str()).await {
            Ok(r) if r.success() => {}
            Ok(_) => return Err(format!("sandbox {} refused the gateway", target.sandbox_id)),
            Err(e) => return Err(unreachable(e.to_string())),
        }
        tracing::info!(peer = %self.peer, sandbox_id = %target.sandbox_id, "ssh gateway connected");
        activity.touch();
        self.activity = Some(activity);
        self.up = Some(Arc::new(up));
        Ok(())
    }

    fn parts(&self) -> Option<(Arc<UpHandle>, Arc<Activity>)> {
        Some((self.up.clone()?, self.activity.clone()?))
    }
}

impl Drop for GatewayConn {
    fn drop(&mut self) {
        if let Some(up) = self.up.take() {
            tokio::spawn(async move {
                let _ = up.disconnect(Disconnect::ByApplication, "client went away", "en").await;
            });
        }
    }
}

/// The daemon's answers to a channel's requests, matched in order with the client's requests waiting for them.
#[derive(Default)]
struct Replies {
    waiting: VecDeque<oneshot::Sender<bool>>,
    early: VecDeque<bool>,
}

type SharedReplies = Arc<Mutex<Replies>>;

fn reply_wait(r: &SharedReplies) -> oneshot::Receiver<bool> {
    let (tx, rx) = oneshot::channel();
    let mut r = r.lock().unwrap_or_else(PoisonError::into_inner);
    match r.early.pop_front() {
        Some(ok) => {
            let _ = tx.send(ok);
        }
        None => r.waiting.push_back(tx),
    }
    rx
}

fn reply_answer(r: &SharedReplies, ok: bool) {
    let mut r = r.lock().unwrap_or_else(PoisonError::into_inner);
    match r.waiting.pop_front() {
        Some(tx) => {
            let _ = tx.send(ok);
        }
        None => r.early.push_back(ok),
    }
}

impl GatewayConn {
    async fn answer(
        &self,
        channel: ChannelId,
        session: &mut Session,
        replies: Option<SharedReplies>,
    ) -> Result<(), russh::Error> {
        let ok = match replies {
            Some(r) => matches!(tokio::time::timeout(self.config.request_timeout, reply_wait(&r)).await, Ok(Ok(true))),
            None => false,
        };
        if ok { session.channel_success(channel) } else { session.channel_failure(channel) }
    }
}

impl russh::server::Handler for GatewayConn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.admit(user).await
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(reason) = self.refusal.take() {
            session.disconnect(Disconnect::NoMoreAuthMethodsAvailable, &reason, "en")?;
        }
        Ok(())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.admit(user).await
    }

    async fn auth_publickey_offered(&mut self, user: &str, _offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        self.admit(user).await
    }

    async fn auth_publickey(&mut self, user: &str, _key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        self.admit(user).await
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<ServerMsg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((up, activity)) = self.parts() else { return Ok(()) };
        let replies: SharedReplies = Arc::default();
        self.replies.insert(channel.id(), replies.clone());
        let down = session.handle();
        tokio::spawn(async move {
            match up.channel_open_session().await {
                Ok(up_channel) => {
                    reply.accept().await;
                    bridge(channel, up_channel, down, activity, Some(replies)).await;
                }
                Err(e) => reply.reject(open_failure(&e)).await,
            }
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<ServerMsg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((up, activity)) = self.parts() else { return Ok(()) };
        let (host, originator) = (host.to_owned(), originator_address.to_owned());
        let down = session.handle();
        tokio::spawn(async move {
            match up.channel_open_direct_tcpip(host, port, originator, originator_port).await {
                Ok(up_channel) => {
                    reply.accept().await;
                    bridge(channel, up_channel, down, activity, None).await;
                }
                Err(e) => reply.reject(open_failure(&e)).await,
            }
        });
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        let _ = session;
        self.replies.remove(&channel);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let r = self.replies.get(&channel).cloned();
        self.answer(channel, session, r).await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _n: &str,
        _v: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let r = self.replies.get(&channel).cloned();
        self.answer(channel, session, r).await
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        let r = self.replies.get(&channel).cloned();
        self.answer(channel, session, r).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let r = self.replies.get(&channel).cloned();
        self.answer(channel, session, r).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let r = self.replies.get(&channel).cloned();
        self.answer(channel, session, r).await
    }

    async fn agent_request(&mut self, channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        let Some(r) = self.replies.get(&channel).cloned() else { return Ok(false) };
        Ok(matches!(tokio::time::timeout(self.config.request_timeout, reply_wait(&r)).await, Ok(Ok(true))))
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Not forwarded (the bridge drops it too): say so instead of leaving the client waiting.
        session.channel_failure(channel)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(up) = self.up.clone() else { return Ok(false) };
        match up.tcpip_forward(address, *port).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                Ok(true)
            }
            Err(e) => {
                tracing::debug!(address, port = *port, error = %e, "daemon refused a remote forward");
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
        let Some(up) = self.up.clone() else { return Ok(false) };
        Ok(up.cancel_tcpip_forward(address, port).await.is_ok())
    }
}

fn open_failure(e: &russh::Error) -> ChannelOpenFailure {
    match e {
        russh::Error::ChannelOpenFailure(r) => r.clone(),
        _ => ChannelOpenFailure::ConnectFailed,
    }
}

/// Copies one channel pair both ways until both sides have closed. `replies` is set for session channels: the
/// client's channel requests go to the daemon in order and the daemon's answers come back through it.
async fn bridge(
    down: Channel<ServerMsg>,
    up: Channel<russh::client::Msg>,
    down_handle: russh::server::Handle,
    activity: Arc<Activity>,
    replies: Option<SharedReplies>,
) {
    let down_id = down.id();
    let (mut down_rx, down_tx) = down.split();
    let (mut up_rx, up_tx) = up.split();
    let act = activity.clone();
    // Client -> daemon.
    let to_up = async move {
        while let Some(msg) = down_rx.wait().await {
            act.touch();
            let sent = match msg {
                ChannelMsg::Data { data } => up_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => up_tx.extended_data_bytes(ext, data).await,
                ChannelMsg::Eof => up_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term, col_width, row_height, pix_width, pix_height, terminal_modes, ..
                } => {
                    up_tx.request_pty(true, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
                }
                ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
                    up_tx.set_env(true, variable_name, variable_value).await
                }
                ChannelMsg::RequestShell { .. } => up_tx.request_shell(true).await,
                ChannelMsg::Exec { command, .. } => up_tx.exec(true, command).await,
                ChannelMsg::RequestSubsystem { name, .. } => up_tx.request_subsystem(true, name).await,
                ChannelMsg::AgentForward { .. } => up_tx.agent_forward(true).await,
                ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                    up_tx.window_change(col_width, row_height, pix_width, pix_height).await
                }
                ChannelMsg::Signal { signal } => up_tx.signal(signal).await,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
    };
    // Daemon -> client.
    let to_down = async move {
        while let Some(msg) = up_rx.wait().await {
            activity.touch();
            let sent = match msg {
                ChannelMsg::Data { data } => down_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => down_tx.extended_data_bytes(ext, data).await,
                ChannelMsg::Eof => down_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::ExitStatus { exit_status } => down_tx.exit_status(exit_status).await,
                ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => down_handle
                    .exit_signal_request(down_id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .map_err(|()| russh::Error::SendError),
                ChannelMsg::XonXoff { client_can_do } => {
                    down_handle.xon_xoff_request(down_id, client_can_do).await.map_err(|()| russh::Error::SendError)
                }
                ChannelMsg::Success => {
                    if let Some(r) = &replies {
                        reply_answer(r, true);
                    }
                    Ok(())
                }
                ChannelMsg::Failure => {
                    if let Some(r) = &replies {
                        reply_answer(r, false);
                    }
                    Ok(())
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = down_tx.close().await;
    };
    tokio::join!(to_up, to_down);
}

/// The gateway's side of the connection to a daemon.
struct Upstream {
    pinned: Option<PublicKey>,
    down: russh::server::Handle,
    activity: Arc<Activity>,
}

impl russh::client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let Some(pinned) = &self.pinned else { return Ok(true) };
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == pinned.key_data(),
            _ => false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<russh::client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        let (down, activity) = (self.down.clone(), self.activity.clone());
        let (address, originator) = (connected_address.to_owned(), originator_address.to_owned());
        tokio::spawn(async move {
            match down.channel_open_forwarded_tcpip(address, connected_port, originator, originator_port).await {
                Ok(down_channel) => {
                    reply.accept().await;
                    bridge(down_channel, channel, down.clone(), activity, None).await;
                }
                Err(e) => reply.reject(open_failure(&e)).await,
            }
        });
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<russh::client::Msg>,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        let (down, activity) = (self.down.clone(), self.activity.clone());
        tokio::spawn(async move {
            match down.channel_open_agent().await {
                Ok(down_channel) => {
                    reply.accept().await;
                    bridge(down_channel, channel, down.clone(), activity, None).await;
                }
                Err(e) => reply.reject(open_failure(&e)).await,
            }
        });
        Ok(())
    }

    async fn disconnected(&mut self, reason: russh::client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        let message = match &reason {
            russh::client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the sandbox closed the connection: {}", info.message)
            }
            russh::client::DisconnectReason::Error(e) => format!("the connection to the sandbox failed: {e}"),
        };
        let _ = self.down.disconnect(Disconnect::ByApplication, message, "en".into()).await;
        match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            russh::client::DisconnectReason::Error(e) => Err(e),
        }
    }
}
