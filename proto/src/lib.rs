//! Wire types shared by every sandbar component: the toolbox API's request and response bodies, the error body,
//! header names and port numbers. This crate is the contract between the daemon, the runner, the API, the proxy
//! and the CLI, so it depends on serde alone: no runtime, no framework.

pub mod api;
pub mod error;
pub mod network;
pub mod runner;
pub mod toolbox;

pub use error::ErrorBody;

/// Header that carries the signed per-request credential (`sandbar_support::daemon_auth`) on every request to a
/// daemon's toolbox and terminal except `GET /version`.
pub const DAEMON_AUTH_HEADER: &str = "x-sandbar-daemon-auth";

/// The header that once carried the daemon token itself. No daemon accepts it any more; the proxy and the daemon's
/// port proxy still strip it, so nothing a client sends under this name reaches an app.
pub const DAEMON_TOKEN_HEADER: &str = "x-sandbar-daemon-token";

/// `source` of errors the daemon produces; the Daytona SDK maps `(source, code)` pairs to typed exceptions.
pub const DAEMON_ERROR_SOURCE: &str = "DAYTONA_DAEMON";

/// Default ports (see ARCHITECTURE.md). Every server also accepts port 0.
pub mod ports {
    pub const TOOLBOX: u16 = 2280;
    pub const SSH: u16 = 22220;
    pub const TERMINAL: u16 = 22222;
    pub const API: u16 = 3000;
    pub const PROXY_HTTP: u16 = 4000;
    pub const PROXY_HTTPS: u16 = 4443;
    pub const SSH_GATEWAY: u16 = 2222;
}

/// The line prefix `sandbar-daemon` prints on stdout once every listener is bound.
pub const DAEMON_READY_PREFIX: &str = "sandbar-daemon ready";

/// Name of the reserved session that runs the image's entrypoint.
pub const ENTRYPOINT_SESSION: &str = "entrypoint";
