//! Revocation closes open sessions. An upgraded connection (a PTY, terminal, LSP or app WebSocket) lives far longer
//! than the request that opened it, so the proxy asks about it again while it lives: every [`RECHECK_INTERVAL`],
//! and at once whenever the route-changes feed drops any route (a sandbox made private, stopped, deleted or moved
//! bumps its route). It asks the same questions as at admission, through the same cache
//! ([`super::EdgeProxy::still_granted`]), so a deleted API key is seen within the authorization's cache TTL (at
//! most 30 s, the API's) plus the interval, and a route change within one API round trip. An API that cannot be
//! reached closes nothing: only an answer that refuses does.
//!
//! Closing: pingora owns the two sockets of an upgraded connection and has no handle to abort one, so at the
//! upstream connect the proxy keeps its own duplicate of the daemon-side socket ([`dup_socket`]; a duplicate keeps
//! the socket alive, so the descriptor can never name another connection) and shuts it down. pingora then sees the
//! daemon's side end; the client gets a WebSocket close frame with [`CLOSE_POLICY_VIOLATION`] and the reason
//! ([`close_frame`], written by `response_body_filter` at the end of the upgraded stream) before the connection
//! closes.

use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::credentials::Grant;
use super::{EdgeProxy, Shared};

/// How often an upgraded connection's credential is asked about again when no route changed.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(5);
/// WebSocket close code sent when the credential that opened a connection was revoked (RFC 6455: policy violation).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// The close frame's reason.
pub const REVOKED_REASON: &str = "access revoked";
/// WebSocket close code sent when the daemon side of an upgraded connection failed (a daemon that stopped
/// answering, found by TCP keepalive; RFC 6455's registry: 1014, bad gateway).
pub const CLOSE_DAEMON_LOST: u16 = 1014;
/// Its reason.
pub const DAEMON_LOST_REASON: &str = "the sandbox stopped answering";

/// A duplicate of the upstream socket `fd`, which pingora passes to `connected_to_upstream` while it is open.
#[allow(unsafe_code)]
pub fn dup_socket(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: pingora calls `connected_to_upstream` with the descriptor of the connection it has just opened (or
    // taken from its pool) and still owns for the whole call; we only borrow it for the duration of the dup.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().ok()
}

/// What an upgraded connection is: the sandbox, port and daemon it reached, and the credential that opened it.
#[derive(Debug, Clone)]
pub struct Session {
    pub sandbox_id: String,
    pub port: u16,
    pub daemon_addr: String,
    pub grant: Grant,
}

/// The watch over one upgraded connection; dropping it (when the connection ends) stops the watch.
#[derive(Debug)]
pub struct Watch {
    revoked: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Whether the connection was closed because its access was revoked.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `session`, whose daemon-side socket is `upstream` (a duplicate, see [`dup_socket`]).
pub fn watch(shared: Arc<Shared>, session: Session, upstream: OwnedFd) -> Watch {
    let revoked = Arc::new(AtomicBool::new(false));
    let flag = revoked.clone();
    let task = tokio::spawn(async move {
        let why = loop {
            tokio::select! {
                () = tokio::time::sleep(RECHECK_INTERVAL) => {}
                () = shared.routes.changed() => {}
            }
            if let Some(why) = refused(&shared, &session).await {
                break why;
            }
        };
        tracing::info!(sandbox_id = %session.sandbox_id, port = session.port, reason = why, "closing a connection whose access was revoked");
        flag.store(true, Ordering::Release);
        if let Err(e) = std::net::TcpStream::from(upstream).shutdown(Shutdown::Both) {
            tracing::debug!(error = %e, "shutting down a revoked connection's daemon side");
        }
    });
    Watch { revoked, task }
}

/// Why the connection may no longer stay open, or `None` while it may (or the API cannot say).
async fn refused(shared: &Shared, s: &Session) -> Option<&'static str> {
    let route = match shared.routes.get(&s.sandbox_id).await {
        Ok(Some(route)) => route,
        Ok(None) => return Some("sandbox deleted"),
        Err(_) => return None,
    };
    // `unknown` (the runner fell silent, the daemon did not) keeps its connections.
    let Some(addr) = route.serves() else { return Some("sandbox not running") };
    if addr != s.daemon_addr {
        return Some("sandbox moved");
    }
    match EdgeProxy::still_granted(shared, &s.grant, &s.sandbox_id, s.port, &route).await {
        Ok(false) => Some("credential revoked"),
        Ok(true) | Err(_) => None,
    }
}

/// A server-to-client WebSocket close frame (unmasked) with `code` and `reason` (at most 123 bytes).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = reason.get(..reason.len().min(123)).unwrap_or("");
    let mut b = BytesMut::with_capacity(4 + reason.len());
    b.put_u8(0x88);
    b.put_u8((2 + reason.len()) as u8);
    b.put_u16(code);
    b.put_slice(reason.as_bytes());
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames() {
        let f = close_frame(CLOSE_POLICY_VIOLATION, REVOKED_REASON);
        assert_eq!(&f[..4], &[0x88, 16, 0x03, 0xf0]);
        assert_eq!(&f[4..], REVOKED_REASON.as_bytes());
        assert_eq!(close_frame(1000, &"x".repeat(200)).len(), 4 + 123);
    }
}
