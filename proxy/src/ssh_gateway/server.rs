//! The client's side of a gateway connection: one russh server handler per connection. Authentication is judged
//! by the token in the user name alone; channel opens are passed to the daemon and bridged; a session channel's
//! requests are answered with the daemon's own answer (the bridge forwards each request in order, and the handler
//! waits for the reply before answering the client). While a connection is open its token is asked about again
//! every `recheck_interval`, and a revoked one ends it with a disconnect naming the reason ([`GatewayConn::watch`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::server::{Auth, Msg as ServerMsg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect};
use tokio::sync::OnceCell;

use super::bridge::{SharedReplies, bridge, open_failure, reply_wait};
use super::client::{self, UpHandle};
use super::{ConnActivity, SshGatewayConfig, SshTarget, SshTargetResolver};

/// One client connection.
pub(super) struct GatewayConn {
    resolver: Arc<dyn SshTargetResolver>,
    config: Arc<SshGatewayConfig>,
    peer: SocketAddr,
    /// The client session's handle (set right after the handshake starts).
    down: Arc<OnceCell<russh::server::Handle>>,
    up: Option<Arc<UpHandle>>,
    activity: Option<Arc<ConnActivity>>,
    /// Why the token was refused: sent as the disconnect message right after authentication.
    refusal: Option<String>,
    /// Reply queues of the session channels, by client-side channel id.
    replies: HashMap<ChannelId, SharedReplies>,
    /// The task that ends the connection when its token is revoked (aborted when the connection ends).
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl GatewayConn {
    pub(super) fn new(
        resolver: Arc<dyn SshTargetResolver>,
        config: Arc<SshGatewayConfig>,
        peer: SocketAddr,
        down: Arc<OnceCell<russh::server::Handle>>,
    ) -> Self {
        Self {
            resolver,
            config,
            peer,
            down,
            up: None,
            activity: None,
            refusal: None,
            replies: HashMap::new(),
            watch: None,
        }
    }

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
            Ok(target) => self.connect(token, target).await,
            Err(reason) => Err(reason),
        };
        if let Err(reason) = outcome {
            tracing::info!(peer = %self.peer, %reason, "ssh gateway refused a connection");
            self.refusal = Some(reason);
        }
        Ok(Auth::Accept)
    }

    async fn connect(&mut self, token: &str, target: SshTarget) -> Result<(), String> {
        let down = self.down_handle().await.ok_or_else(|| "internal error: no session".to_owned())?;
        let activity = Arc::new(ConnActivity {
            resolver: self.resolver.clone(),
            sandbox_id: target.sandbox_id.clone(),
            last: Mutex::new(None),
        });
        let up = client::connect(&target, down, activity.clone(), self.config.connect_timeout).await?;
        tracing::info!(peer = %self.peer, sandbox_id = %target.sandbox_id, "ssh gateway connected");
        activity.touch();
        self.activity = Some(activity);
        let up = Arc::new(up);
        self.watch = Some(self.watch(token.to_owned(), target.sandbox_id, up.clone()));
        self.up = Some(up);
        Ok(())
    }

    /// Asks about `token` again every `recheck_interval` and, once it no longer opens `sandbox_id`, disconnects
    /// both sides with the reason the resolver gave (revocation closes open sessions).
    fn watch(&self, token: String, sandbox_id: String, up: Arc<UpHandle>) -> tokio::task::JoinHandle<()> {
        let (resolver, interval, down, peer) =
            (self.resolver.clone(), self.config.recheck_interval, self.down.clone(), self.peer);
        tokio::spawn(async move {
            let reason = loop {
                tokio::time::sleep(interval).await;
                if let Some(reason) = resolver.revoked(&token, &sandbox_id).await {
                    break reason;
                }
            };
            tracing::info!(%peer, %sandbox_id, %reason, "ssh gateway closing a connection whose access was revoked");
            if let Some(down) = down.get() {
                let message = format!("access revoked: {reason}");
                let _ = down.disconnect(Disconnect::ByApplication, message, "en".into()).await;
            }
            let _ = up.disconnect(Disconnect::ByApplication, "access revoked", "en").await;
        })
    }

    fn parts(&self) -> Option<(Arc<UpHandle>, Arc<ConnActivity>)> {
        Some((self.up.clone()?, self.activity.clone()?))
    }

    /// Answers a channel request of the client with the daemon's answer to the same request.
    async fn answer(&self, channel: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
        let ok = match self.replies.get(&channel) {
            Some(r) => matches!(tokio::time::timeout(self.config.request_timeout, reply_wait(r)).await, Ok(Ok(true))),
            None => false,
        };
        if ok { session.channel_success(channel) } else { session.channel_failure(channel) }
    }
}

impl Drop for GatewayConn {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.abort();
        }
        if let Some(up) = self.up.take() {
            tokio::spawn(async move {
                let _ = up.disconnect(Disconnect::ByApplication, "client went away", "en").await;
            });
        }
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
        self.answer(channel, session).await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _n: &str,
        _v: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.answer(channel, session).await
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
