//! sandbar-daemon: the static binary that runs as PID 1 in every sandbox.
//!
//! It owns the container's processes (reaping, the image entrypoint, signal forwarding, draining) and serves three
//! listeners: the toolbox HTTP API that the proxy forwards to (process execution, sessions, files, git, PTYs, LSP,
//! port forwarding, with Daytona's paths, fields and status codes so the official SDKs work unchanged), the web
//! terminal, and SSH. Every HTTP request but `GET /version` must carry a fresh credential signed with the per-sandbox
//! daemon token (`sandbar_support::daemon_auth`); SSH takes the token as password.
//!
//! - `engine/`: the sandbox's machinery (processes, sessions, PTYs, language servers, git, files); no HTTP.
//! - `toolbox/`: the toolbox HTTP API only: routes, the credential check, one thin handler file per area.
//! - `terminal`: the web terminal server; `ssh/`: the SSH server. Both drive the engine like the toolbox does.
//!
//! A new toolbox endpoint is a DTO in `sandbar_proto::toolbox`, an engine function in `engine/`, and a handler in
//! `toolbox/`.

pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod ssh;
pub mod terminal;
pub mod toolbox;
pub mod utf8;
pub mod util;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use engine::daemon::{AppState, Daemon};

/// Largest request head (request line + headers) accepted; a bigger one is answered 431.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Serves the toolbox API on `listener` until `daemon.shutdown` is cancelled; in-flight requests then finish
/// (the caller bounds how long it waits for that).
pub async fn run(daemon: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_http(listener, toolbox::router(daemon.clone()), daemon.shutdown.clone()).await
}

/// Serves the web terminal (page and WebSocket) on `listener` until `daemon.shutdown` is cancelled.
pub async fn run_terminal(daemon: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_http(listener, terminal::router(daemon.clone()), daemon.shutdown.clone()).await
}

/// HTTP/1.1 with upgrades, bounded request heads, and a graceful end: when `shutdown` is cancelled the listener
/// closes and each connection finishes the request in flight.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let connections = tokio_util::task::TaskTracker::new();
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_REQUEST_HEAD)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()))
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close instead of waiting for the next one.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The next connection (with `TCP_NODELAY` set), or `None` once `shutdown` is cancelled. An accept error (out of
/// file descriptors and the like) backs off instead of spinning.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    shutdown: &CancellationToken,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}
