//! The daemon-side connection of an upgrade request (WebSocket), gated so that pingora never reads the daemon's
//! `101` before it has taken the end of the request's own, empty body.
//!
//! Why: pingora 0.9.1's HTTP/1 proxy loop (`proxy_handle_upstream`) waits on two things at once, the next task of
//! the daemon's response and the next piece of the client's request body, and picks at random when both are ready.
//! An upgrade request has an empty body, whose end is queued the moment forwarding starts. If the `101` is read
//! first, that queued end is then taken for the end of the upgraded tunnel, and pingora closes the connection the
//! client has just seen upgraded (cloudflare/pingora#946, open at the time of writing). On an idle machine the
//! daemon's `101` arrives after the end is taken; under CPU load both are ready at once and about half of those
//! upgrades die.
//!
//! How: an upgrade request gets its own connection ([`peer`]: a fresh one, never a pooled one), whose socket
//! ([`GatedSocket`]) holds every read until the proxy's `request_body_filter` has seen the end of the request body
//! ([`Gate::body_ended`]), then for one more poll (the end is queued in the same poll that saw it, so after one
//! more round pingora has taken it). Reads then go straight to the TCP socket. Nothing waits on a timer; writes
//! are never held. Remove this module once pingora ships a fix.
//!
//! The gated socket is a pingora "virtual" socket, so pingora has no descriptor for it: [`Gate::take_socket`] hands
//! [`super::revoke`] the duplicate it needs instead.

use std::io;
use std::net::SocketAddr as InetAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::ext::{TcpKeepalive, set_tcp_keepalive};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, OrErr, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// TCP keepalive on every daemon connection (pooled ones and tunnels): probes after 10 s of silence, every 5 s, 3
/// of them, and at most 10 s for sent data to be acknowledged (`TCP_USER_TIMEOUT`). A daemon whose network is
/// black-holed then fails its connection within about 10 s of a request sent on it (25 s for an idle tunnel)
/// instead of after the kernel's retransmissions (about 15 minutes), while a long call the daemon is merely
/// quiet about lives on: its kernel answers the probes.
pub fn daemon_keepalive() -> TcpKeepalive {
    TcpKeepalive {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(5),
        count: 3,
        user_timeout: Duration::from_secs(10),
    }
}

/// What the request side tells the daemon side of one upgrade request.
#[derive(Debug, Default)]
pub struct Gate {
    ended: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// A duplicate of the daemon-side socket, for [`super::revoke`].
    socket: Mutex<Option<OwnedFd>>,
}

impl Gate {
    /// The request's body has ended (its end is being queued for the daemon side now).
    pub fn body_ended(&self) {
        if !self.ended.swap(true, Ordering::AcqRel)
            && let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            w.wake();
        }
    }

    /// The duplicate of the daemon-side socket, once connected.
    pub fn take_socket(&self) -> Option<OwnedFd> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn is_open(&self, cx: &Context<'_>) -> bool {
        if self.ended.load(Ordering::Acquire) {
            return true;
        }
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // The end may have come between the load and storing the waker.
        self.ended.load(Ordering::Acquire)
    }
}

/// The peer for an upgrade request to `addr`: connected through [`Connector`], and in a pool group of its own so
/// that no pooled (ungated) connection serves it.
pub fn peer(mut peer: HttpPeer, gate: Arc<Gate>, connect_timeout: Duration) -> HttpPeer {
    static GROUP: AtomicU64 = AtomicU64::new(1);
    peer.group_key = GROUP.fetch_add(1, Ordering::Relaxed);
    peer.options.custom_l4 = Some(Arc::new(Connector { gate, connect_timeout }));
    peer
}

#[derive(Debug)]
struct Connector {
    gate: Arc<Gate>,
    connect_timeout: Duration,
}

#[async_trait]
impl L4Connect for Connector {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let inet: InetAddr = addr
            .as_inet()
            .copied()
            .ok_or_else(|| Error::explain(ErrorType::ConnectError, "a daemon address is an IP address and port"))?;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(inet)).await {
            Ok(r) => r.or_err_with(ErrorType::ConnectError, || format!("connecting to {inet}"))?,
            Err(_) => return Error::e_explain(ErrorType::ConnectTimedout, format!("connecting to {inet}")),
        };
        let _ = tcp.set_nodelay(true);
        // A tunnel never goes back to the pool, but its daemon can stop answering all the same.
        if let Err(e) = set_tcp_keepalive(&tcp, &daemon_keepalive()) {
            tracing::debug!(error = %e, "cannot set TCP keepalive on a tunnel");
        }
        if let Ok(dup) = tcp.as_fd().try_clone_to_owned() {
            *self.gate.socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(dup);
        }
        let socket = GatedSocket { tcp, gate: self.gate.clone(), state: Held::Closed };
        Ok(VirtualSocketStream::new(Box::new(socket)).into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The request body has not ended.
    Closed,
    /// It has; one more poll before reads go through.
    Yielded,
    Open,
}

/// A TCP connection whose reads wait for the [`Gate`].
#[derive(Debug)]
struct GatedSocket {
    tcp: TcpStream,
    gate: Arc<Gate>,
    state: Held,
}

impl AsyncRead for GatedSocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.state {
            Held::Open => {}
            Held::Closed if !self.gate.is_open(cx) => return Poll::Pending,
            Held::Closed => {
                // Let the loop that polls this read take the queued end of the body first.
                self.state = Held::Yielded;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Held::Yielded => self.state = Held::Open,
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl VirtualSocket for GatedSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            // Keepalive is set at connect ([`daemon_keepalive`]).
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(gate: Arc<Gate>) -> (GatedSocket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (GatedSocket { tcp: tcp.unwrap(), gate, state: Held::Closed }, accepted.unwrap().0)
    }

    fn poll_once(s: &mut GatedSocket, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut rb = ReadBuf::new(buf);
        Pin::new(s).poll_read(&mut cx, &mut rb).map_ok(|()| rb.filled().len())
    }

    #[tokio::test]
    async fn reads_wait_for_the_end_of_the_request_body_and_one_more_poll() {
        let gate = Arc::new(Gate::default());
        let (mut s, mut daemon) = pair(gate.clone()).await;
        daemon.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut buf = [0u8; 64];
        // The answer is there, but the body has not ended: held, however often polled.
        for _ in 0..3 {
            assert!(poll_once(&mut s, &mut buf).is_pending());
        }
        gate.body_ended();
        assert!(poll_once(&mut s, &mut buf).is_pending(), "one more round for the queued end");
        match poll_once(&mut s, &mut buf) {
            Poll::Ready(Ok(n)) => assert!(buf[..n].starts_with(b"HTTP/1.1 101")),
            other => panic!("the answer should be read now: {other:?}"),
        }
        // Writes were never held; after the gate, reads are plain reads.
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        daemon.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        daemon.write_all(b"pong").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
    }

    #[tokio::test]
    async fn the_end_of_the_body_wakes_a_held_read() {
        let gate = Arc::new(Gate::default());
        let (mut s, mut daemon) = pair(gate.clone()).await;
        daemon.write_all(b"x").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut buf);
                Pin::new(&mut s).poll_read(cx, &mut rb).map_ok(|()| rb.filled().len())
            })
            .await
            .unwrap();
            buf[..n].to_vec()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "held until the body ends");
        gate.body_ended();
        let got = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("woken").unwrap();
        assert_eq!(got, b"x");
    }

    #[tokio::test]
    async fn the_connector_keeps_a_duplicate_of_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Gate::default());
        let c = Connector { gate: gate.clone(), connect_timeout: Duration::from_secs(5) };
        let _stream = c.connect(&SocketAddr::Inet(addr)).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let dup = gate.take_socket().expect("a duplicate");
        // Shutting the duplicate down ends the connection for the daemon too (what revocation does).
        nix_shutdown(&dup);
        let mut buf = [0u8; 1];
        assert_eq!(accepted.read(&mut buf).await.unwrap(), 0);

        let refused = Connector { gate: Arc::new(Gate::default()), connect_timeout: Duration::from_secs(5) };
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = refused.connect(&SocketAddr::Inet(closed)).await.unwrap_err();
        assert_eq!(err.etype(), &ErrorType::ConnectError);
    }

    fn nix_shutdown(fd: &OwnedFd) {
        let s = std::net::TcpStream::from(fd.try_clone().unwrap());
        s.shutdown(std::net::Shutdown::Both).unwrap();
    }
}
