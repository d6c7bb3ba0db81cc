//! The control plane's internal surface: what runners and the proxy (and its SSH gateway) call on the API, beside
//! the Daytona-shaped public REST API. Paths are relative to the API's `/api` prefix. Callers authenticate with a
//! service credential (`Authorization: Bearer <service token>`), never with a user's API key; the API answers
//! 401 without one and 403 with the wrong kind (a runner token on a proxy path and the other way round).
//!
//! Runners:
//! - `POST /runners/{runnerId}/heartbeat` body [`RunnerStatus`](crate::runner::RunnerStatus) -> 200
//!   [`HeartbeatResponse`]. The first heartbeat registers the runner; one is expected every
//!   [`HEARTBEAT_INTERVAL_SECS`], and a runner silent for [`RUNNER_UNREACHABLE_AFTER_SECS`] is unreachable.
//! - `GET /runners/{runnerId}/jobs?wait=SECS` -> 200 `[Job]` (see [`crate::runner::Job`]). Long-poll: answers as
//!   soon as at least one job is claimed for this runner, or with `[]` after `wait` seconds (at most
//!   [`MAX_POLL_WAIT_SECS`]). Jobs claimed earlier and not yet completed are handed out again on every poll, so a
//!   runner that restarted resumes them (runner jobs are idempotent by sandbox id).
//! - `POST /runners/{runnerId}/jobs/{jobId}/result` body [`JobResult`](crate::runner::JobResult) -> 204. A result
//!   for a job that is already completed is accepted and ignored (retries are safe).
//! - `POST /runners/{runnerId}/jobs/{jobId}/log` body [`BuildLog`] -> 204: output lines of a running build job, in
//!   order, as they come. A batch already stored (same `attempt` and `offset`) is accepted and ignored, so retries
//!   are safe; lines for a job that is already completed are accepted and dropped.
//! - `GET /runners/{runnerId}/jobs/{jobId}/registry-auth` -> 200 `[RegistryAuth]`
//!   (see [`crate::runner::RegistryAuth`]): the credentials of the job's organization for the registries of the
//!   images the job pulls, asked for right before a pull. Only the runner the job was handed to gets them (404
//!   otherwise); no credential is ever part of a job itself.
//! - `POST /runners/{runnerId}/states` body `[StateChange]` -> 204: state changes nobody asked for (a container
//!   died, was OOM-killed).
//! - `POST /runners/{runnerId}/sandboxes` body `[SandboxInfo]` -> 204: the runner's full picture after a restart
//!   (or periodically); the API reconciles its rows with it.
//!
//! Proxy and SSH gateway:
//! - `GET /internal/routes/{sandboxId}` -> 200 [`Route`], 404 unknown id.
//! - `GET /internal/routes/changes?since=SEQ&wait=SECS` -> 200 [`RouteChanges`]: long-poll for routes that changed
//!   after `since` (state change, new daemon address, deleted, public flag); the proxy drops them from its cache.
//! - `POST /internal/authorize` body [`AuthorizeRequest`] -> 200 [`AuthorizeResponse`]: is this API key or preview
//!   token good for this sandbox and port. 401 when the credential is unknown/expired, 404 when the sandbox is
//!   unknown or belongs to another organization (existence does not leak).
//! - `POST /internal/ssh/resolve` body [`SshResolveRequest`] -> 200 [`SshResolveResponse`], 401 with a message
//!   the gateway shows the user (unknown, expired or revoked token), 409 when the sandbox is not started.
//! - `POST /internal/activity` body [`ActivityReport`] -> 204: batched activity (proxied requests, open
//!   WebSockets, SSH sessions) for auto-stop.
//! - `POST /internal/sandboxes/{sandboxId}/wake` -> 200 [`Route`] (the sandbox after the start was asked for:
//!   `starting`, or already `started`), 404 unknown id, 409 with a message when the sandbox may not be woken
//!   ([`Route::wake_on_request`] is false: stopped by a user, auto-stop off, archived...) or the start was refused
//!   (quota). The proxy calls it for an authorized request to a stopped sandbox, then waits for the route to turn
//!   `started` through the route-changes long-poll.
//! - `POST /internal/preview/resolve` body [`SignedPreviewResolveRequest`] -> 200 [`SignedPreviewResolveResponse`]:
//!   which sandbox a signed preview URL (`{port}-{token}.{domain}`, token shaped as [`is_signed_preview_token`])
//!   opens; 401 with a message when the token is unknown, expired, revoked or for another port.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::runner::SandboxState;

pub const HEARTBEAT_INTERVAL_SECS: u64 = 5;
pub const RUNNER_UNREACHABLE_AFTER_SECS: u64 = 20;
pub const MAX_POLL_WAIT_SECS: u64 = 30;

/// Environment variable with the service token runners present (`sandbar-runner`) and the API accepts.
pub const RUNNER_TOKEN_ENV: &str = "SANDBAR_RUNNER_TOKEN";
/// The body of `POST /runners/{id}/register` (optional: none is an empty list): the IPv4 networks the runner's
/// daemon addresses lie in (its sandboxes' bridge subnet, or its `--advertise-addr` as a `/32`). The API refuses a
/// report of that runner naming a daemon or SSH address outside them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerRegistrationRequest {
    #[serde(default)]
    pub daemon_networks: Vec<String>,
}

/// What `POST /runners/{id}/register` (with the join token, [`RUNNER_TOKEN_ENV`]) answers: the credential bound to
/// that runner id which every later call of the runner carries instead of the join token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerRegistration {
    pub credential: String,
}

impl fmt::Debug for RunnerRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerRegistration").finish_non_exhaustive()
    }
}

/// Environment variable with the service token the proxy presents and the API accepts.
pub const PROXY_TOKEN_ENV: &str = "SANDBAR_PROXY_TOKEN";

/// Header the proxy uses for the id it gives every request it forwards.
pub const REQUEST_ID_HEADER: &str = "x-sandbar-request-id";
/// Header on every error response the proxy makes itself (not the sandbox's): a short machine-readable reason.
pub const PROXY_ERROR_HEADER: &str = "x-sandbar-error";
/// Daytona's preview token header and query parameter.
pub const PREVIEW_TOKEN_HEADER: &str = "x-daytona-preview-token";
pub const PREVIEW_TOKEN_QUERY: &str = "DAYTONA_SANDBOX_AUTH_KEY";

/// A build keeps at most this much log text; the rest is dropped with a note.
pub const MAX_BUILD_LOG_BYTES: u64 = 8 << 20;
/// Longer build output lines are cut to this many bytes.
pub const MAX_BUILD_LOG_LINE: usize = 16 << 10;

/// Lines of a build's output (`POST /runners/{runnerId}/jobs/{jobId}/log`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildLog {
    /// Random per run of the job: a runner that restarted and builds again starts a new attempt.
    pub attempt: String,
    /// Index of the first line within the attempt.
    pub offset: u64,
    /// Lines without their newline.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// False when the API has marked this runner unschedulable (it keeps its sandboxes but gets no new ones).
    pub schedulable: bool,
}

/// Where a sandbox's daemon is and how to talk to it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub sandbox_id: String,
    pub organization_id: String,
    pub state: SandboxState,
    /// `ip:port` of the daemon's toolbox API; absent unless the sandbox is started (or was when its runner fell
    /// silent: see [`Route::serves`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_addr: Option<String>,
    /// `ip:port` of the daemon's SSH server; absent unless the sandbox is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_addr: Option<String>,
    /// `ip` of the sandbox, for preview ports (the daemon's address without the port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_ip: Option<String>,
    pub daemon_token: String,
    pub public: bool,
    /// Auto-stop interval in minutes (0 = never): lets the proxy decide whether to start a stopped sandbox.
    #[serde(default)]
    pub auto_stop_interval: i64,
    /// True when the sandbox is stopped because its auto-stop timer stopped it (not a user): an authorized request
    /// may start it again through `POST /internal/sandboxes/{id}/wake`.
    #[serde(default)]
    pub wake_on_request: bool,
    /// Monotonic version of this route; bumped on every change.
    pub version: i64,
}

impl Route {
    /// The daemon address requests go to: that of a started sandbox, or of one whose runner fell silent while it
    /// was started (`unknown` with an address: the API cannot vouch for it, but the runner is not in the data path
    /// and the daemon authenticates every request).
    pub fn serves(&self) -> Option<&str> {
        match self.state {
            SandboxState::Started | SandboxState::Unknown => self.daemon_addr.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("sandbox_id", &self.sandbox_id)
            .field("organization_id", &self.organization_id)
            .field("state", &self.state)
            .field("daemon_addr", &self.daemon_addr)
            .field("ssh_addr", &self.ssh_addr)
            .field("sandbox_ip", &self.sandbox_ip)
            .field("daemon_token", &"<redacted>")
            .field("public", &self.public)
            .field("wake_on_request", &self.wake_on_request)
            .field("version", &self.version)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteChanges {
    /// Pass this as `since` on the next call.
    pub seq: i64,
    pub sandbox_ids: Vec<String>,
}

/// The dashboard's session cookie. The API sets it (HttpOnly, SameSite=Strict); the proxy forwards it to the API on
/// the dashboard's paths, takes it as a credential for toolbox paths asked by the dashboard's own page, and never
/// lets it reach a sandbox.
pub const DASHBOARD_SESSION_COOKIE: &str = "sandbar_session";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeRequest {
    pub sandbox_id: String,
    /// The port asked for (2280 for toolbox calls).
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_token: Option<String>,
    /// A dashboard session (its cookie, sent by the dashboard's own page to a toolbox path through the proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl fmt::Debug for AuthorizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeRequest")
            .field("sandbox_id", &self.sandbox_id)
            .field("port", &self.port)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("preview_token", &self.preview_token.as_ref().map(|_| "<redacted>"))
            .field("session", &self.session.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    pub organization_id: String,
    /// Seconds the proxy may cache this answer for this credential.
    pub ttl_secs: u64,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshResolveRequest {
    pub token: String,
}

impl fmt::Debug for SshResolveRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SshResolveRequest { token: <redacted> }")
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshResolveResponse {
    pub sandbox_id: String,
    pub ssh_addr: String,
    pub daemon_token: String,
    /// The daemon's SSH host key (OpenSSH public key line) as its runner reported it; the gateway refuses any
    /// other. Absent when no runner reported one (a sandbox made before runners did): the gateway then refuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_host_key: Option<String>,
}

impl fmt::Debug for SshResolveResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshResolveResponse")
            .field("sandbox_id", &self.sandbox_id)
            .field("ssh_addr", &self.ssh_addr)
            .field("daemon_token", &"<redacted>")
            .finish()
    }
}

/// Length of the tokens of signed preview URLs: lowercase hexadecimal (128 random bits), so the token fits a DNS
/// label beside the port (`{port}-{token}`), survives the lowercasing browsers apply to host names, and never looks
/// like a sandbox id (UUIDs have dashes).
pub const SIGNED_PREVIEW_TOKEN_LEN: usize = 32;

/// Whether the `{sandboxId}` part of a preview host is really the token of a signed preview URL.
pub fn is_signed_preview_token(s: &str) -> bool {
    s.len() == SIGNED_PREVIEW_TOKEN_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPreviewResolveRequest {
    pub token: String,
    /// The port of the host the token came in (`{port}-{token}.{domain}`); a token opens only its own port.
    pub port: u16,
}

impl fmt::Debug for SignedPreviewResolveRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreviewResolveRequest").field("token", &"<redacted>").field("port", &self.port).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPreviewResolveResponse {
    pub sandbox_id: String,
    pub organization_id: String,
    /// Seconds the proxy may cache this answer: never past the token's expiry.
    pub ttl_secs: u64,
    /// The sandbox's route version when this was answered: expiring a token bumps it, so a proxy that sees a
    /// newer route asks again instead of trusting its cache.
    pub version: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityReport {
    /// Sandboxes that saw traffic since the last report.
    pub sandbox_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_wire_format_and_redaction() {
        let r = Route {
            sandbox_id: "s".into(),
            organization_id: "o".into(),
            state: SandboxState::Started,
            daemon_addr: Some("172.17.0.2:2280".into()),
            ssh_addr: None,
            sandbox_ip: Some("172.17.0.2".into()),
            daemon_token: "secret".into(),
            public: false,
            auto_stop_interval: 15,
            wake_on_request: false,
            version: 3,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["daemonAddr"], "172.17.0.2:2280");
        assert_eq!(v["state"], "started");
        assert!(v.get("sshAddr").is_none());
        assert_eq!(serde_json::from_value::<Route>(v).unwrap(), r);
        assert!(!format!("{r:?}").contains("secret"));
        // Older peers that do not send `wakeOnRequest` read as "do not wake".
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("wakeOnRequest");
        assert!(!serde_json::from_value::<Route>(v).unwrap().wake_on_request);
    }

    #[test]
    fn signed_preview_tokens_never_look_like_sandbox_ids() {
        assert!(is_signed_preview_token("0123456789abcdef0123456789abcdef"));
        assert!(!is_signed_preview_token("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_signed_preview_token("0123456789abcdef0123456789abcde"));
        assert!(!is_signed_preview_token("3f2b9c1e-8a7d-4e6f-9b0a-1c2d3e4f5a6b"));
    }
}
