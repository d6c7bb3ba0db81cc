//! Port and agent forwarding: `direct-tcpip` channels (ssh -L), `tcpip-forward` listeners that open
//! `forwarded-tcpip` channels back to the client (ssh -R), and the agent socket (ssh -A).

use std::path::PathBuf;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio_util::sync::CancellationToken;

use super::ConnCtx;

/// Remote forwards one connection may hold.
pub const MAX_REMOTE_FORWARDS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `host:port` inside the sandbox, then accepts the channel and copies both ways; refuses the
/// channel with "connect failed" if nothing listens there.
pub async fn direct_tcpip(channel: Channel<Msg>, reply: ChannelOpenHandle, host: String, port: u32) {
    let Ok(port) = u16::try_from(port) else {
        return reply.reject(ChannelOpenFailure::ConnectFailed).await;
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%host, port, error = %e, "direct-tcpip connect failed");
            return reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
        Err(_) => return reply.reject(ChannelOpenFailure::ConnectFailed).await,
    };
    let _ = tcp.set_nodelay(true);
    reply.accept().await;
    splice(channel, tcp).await;
}

/// Copies between a channel and a socket until both directions are done; EOF is passed on each way.
async fn splice<S>(channel: Channel<Msg>, mut sock: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stream = channel.into_stream();
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut sock, 64 * 1024, 64 * 1024).await;
}

/// What a `tcpip-forward` address means: "" and "0.0.0.0" every IPv4 address, "localhost" loopback.
fn bind_addr(address: &str, port: u16) -> String {
    match address {
        "" | "*" | "0.0.0.0" => format!("0.0.0.0:{port}"),
        "localhost" => format!("127.0.0.1:{port}"),
        "::" => format!("[::]:{port}"),
        a if a.contains(':') && !a.starts_with('[') => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

/// Binds a listener for `tcpip-forward` and serves it until the forward is cancelled or the connection ends.
/// Returns the bound port and the forward's cancel token.
pub async fn remote_listener(
    ctx: &ConnCtx,
    handle: Handle,
    address: &str,
    port: u32,
) -> std::io::Result<(u16, CancellationToken)> {
    let port = u16::try_from(port).map_err(|_| std::io::Error::other("port out of range"))?;
    let listener = tokio::net::TcpListener::bind(bind_addr(address, port)).await?;
    let bound = listener.local_addr()?.port();
    let token = ctx.closed.child_token();
    let (stop, address) = (token.clone(), address.to_owned());
    tracing::info!(%address, port = bound, "remote forward listening");
    tokio::spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = stop.cancelled() => return,
            };
            let _ = sock.set_nodelay(true);
            let (handle, address) = (handle.clone(), address.clone());
            tokio::spawn(async move {
                let opened = handle
                    .channel_open_forwarded_tcpip(
                        address,
                        u32::from(bound),
                        peer.ip().to_string(),
                        u32::from(peer.port()),
                    )
                    .await;
                match opened {
                    Ok(ch) => splice(ch, sock).await,
                    Err(e) => tracing::debug!(error = %e, "client refused a forwarded-tcpip channel"),
                }
            });
        }
    });
    Ok((bound, token))
}

/// Makes the agent socket (a 0700 directory under the temporary directory) and serves it: each connection to it
/// opens an `auth-agent@openssh.com` channel to the client. Returns the directory and the socket path.
pub fn agent_listener(ctx: &ConnCtx, handle: Handle) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("sandbar-ssh-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let sock = dir.join("agent.sock");
    let listener = match std::os::unix::net::UnixListener::bind(&sock)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::UnixListener::from_std)
    {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let stop = ctx.closed.clone();
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                a = listener.accept() => match a {
                    Ok((c, _)) => c,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = stop.cancelled() => return,
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                match handle.channel_open_agent().await {
                    Ok(ch) => splice(ch, conn).await,
                    Err(e) => tracing::debug!(error = %e, "client refused an agent channel"),
                }
            });
        }
    });
    Ok((dir, sock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(bind_addr("", 80), "0.0.0.0:80");
        assert_eq!(bind_addr("localhost", 80), "127.0.0.1:80");
        assert_eq!(bind_addr("::1", 80), "[::1]:80");
        assert_eq!(bind_addr("10.0.0.1", 0), "10.0.0.1:0");
    }
}
