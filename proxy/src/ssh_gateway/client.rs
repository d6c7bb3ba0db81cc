//! The gateway's side of the connection to a daemon: connecting with the daemon token as password, only to a
//! daemon that shows the host key its runner reported (a target without one is refused: the password would go to
//! whoever answers at that address), and the channels the daemon opens back (`forwarded-tcpip` for
//! `-R`, agent channels), each bridged to a new channel towards the client.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::Disconnect;
use russh::cipher;
use russh::keys::ssh_key::PublicKey;
use russh::{Channel, keys::PublicKeyOrCertificate};

use super::bridge::{bridge, open_failure};
use super::{ConnActivity, SshTarget};

pub(super) type UpHandle = russh::client::Handle<Upstream>;

/// The ciphers the gateway offers a daemon, AES-GCM first: every byte crosses this leg too, re-encrypted, and with
/// AES instructions (which `ring` uses when the CPU has them) AES-GCM costs a fraction of ChaCha20-Poly1305, russh's
/// first choice. The client's leg keeps whatever the client chose.
const UPSTREAM_CIPHERS: &[cipher::Name] =
    &[cipher::AES_256_GCM, cipher::AES_128_GCM, cipher::CHACHA20_POLY1305, cipher::AES_256_CTR, cipher::AES_128_CTR];

/// Connects to the daemon of `target` and authenticates; the error is the message for the SSH user.
pub(super) async fn connect(
    target: &SshTarget,
    down: russh::server::Handle,
    activity: Arc<ConnActivity>,
    timeout: Duration,
) -> Result<UpHandle, String> {
    let id = &target.sandbox_id;
    let pinned = match &target.daemon_host_key {
        Some(k) => PublicKey::from_openssh(k)
            .map_err(|_| format!("the SSH host key recorded for sandbox {id} is not a valid public key"))?,
        None => {
            return Err(format!(
                "sandbar does not know the SSH host key of sandbox {id} (made before runners reported one?), so it \
                 will not log in to it; recreate the sandbox to get one"
            ));
        }
    };
    let upstream = Upstream { pinned, down, activity };
    let config = Arc::new(russh::client::Config {
        nodelay: true,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        preferred: russh::Preferred { cipher: Cow::Borrowed(UPSTREAM_CIPHERS), ..Default::default() },
        ..Default::default()
    });
    let unreachable = |e: String| format!("sandbox {id} is not reachable ({e}); is it started?");
    let connecting = russh::client::connect(config, target.daemon_addr.as_str(), upstream);
    let mut up = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(h)) => h,
        Ok(Err(russh::Error::UnknownKey)) => {
            tracing::warn!(sandbox_id = %id, addr = %target.daemon_addr, "daemon SSH host key mismatch: refused");
            return Err(format!(
                "the SSH server at sandbox {id}'s address showed a host key other than the one its runner reported; \
                 the gateway refused to log in (something may be impersonating the sandbox)"
            ));
        }
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("timed out".into())),
    };
    match up.authenticate_password("sandbar", target.daemon_token.as_str()).await {
        Ok(r) if r.success() => Ok(up),
        Ok(_) => Err(format!("sandbox {} refused the gateway", target.sandbox_id)),
        Err(e) => Err(unreachable(e.to_string())),
    }
}

/// The gateway's side of the connection to a daemon.
pub(super) struct Upstream {
    pinned: PublicKey,
    down: russh::server::Handle,
    activity: Arc<ConnActivity>,
}

impl russh::client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.pinned.key_data(),
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
