//! Talking to a sandbox's daemon: readiness (`GET /version`, the one route without a credential), `POST /init` (a
//! claimed warm-pool sandbox's identity) and `POST /process/execute`, both signed with the per-sandbox token
//! (`sandbar_support::daemon_auth`: the token itself never goes on the wire), and `POST /trace/spans` (the spans
//! the daemon kept, `crate::trace`). Calls made inside a job carry its `traceparent`. Also the per-sandbox secrets
//! the runner makes: the token and the daemon's SSH host key.

use std::net::SocketAddr;
use std::time::Duration;

use sandbar_proto::DAEMON_AUTH_HEADER;
use sandbar_proto::toolbox::{ExecuteRequest, ExecuteResponse, InitRequest, VersionResponse};
use sandbar_support::ssh::HostKeyText;
use serde::Serialize;

use crate::error::SandboxError;

/// A fresh per-sandbox daemon token: 256 random bits, lowercase hex.
pub(crate) fn new_token() -> Result<String, SandboxError> {
    sandbar_support::token::hex(32)
        .map_err(|e| SandboxError::Internal(format!("no randomness for the daemon token: {e}")))
}

/// A fresh SSH host key for one daemon (ed25519).
pub(crate) fn new_host_key() -> Result<HostKeyText, SandboxError> {
    HostKeyText::generate().map_err(|e| SandboxError::Internal(format!("cannot make the daemon's SSH host key: {e}")))
}

/// The public half (OpenSSH line) of a host key handed to a daemon; `None` if `private` is not a key.
pub(crate) fn host_key_public(private: &str) -> Option<String> {
    HostKeyText::parse(private).map(|(_, k)| k.public)
}

#[derive(Clone)]
pub(crate) struct DaemonClient {
    http: reqwest::Client,
}

impl DaemonClient {
    pub(crate) fn new() -> Result<Self, reqwest::Error> {
        // Daemons sit on a local bridge: anything slower than this is not an answer. No proxy: a configured
        // HTTP(S)_PROXY must never see container traffic or tokens.
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(1)).no_proxy().build()?;
        Ok(Self { http })
    }

    /// One `GET /version` with a short timeout.
    pub(crate) async fn version(&self, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
        let resp = self.http.get(format!("http://{addr}/version")).timeout(timeout).send().await.map_err(|e| {
            // The causes say which it was (refused, a connect timeout, no answer in time).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        })?;
        if !resp.status().is_success() {
            return Err(format!("GET /version answered {}", resp.status()));
        }
        resp.json::<VersionResponse>().await.map(|v| v.version).map_err(|e| e.to_string())
    }

    /// `POST /process/execute`.
    pub(crate) async fn execute(
        &self,
        addr: SocketAddr,
        token: &str,
        req: &ExecuteRequest,
    ) -> Result<ExecuteResponse, String> {
        // The daemon kills the command at `timeout`; give the HTTP request a little more.
        let timeout = Duration::from_secs(req.timeout.unwrap_or(60).saturating_add(5));
        let resp = self.post(addr, "/process/execute", token, req, timeout).await?;
        resp.json::<ExecuteResponse>().await.map_err(|e| e.to_string())
    }

    /// `POST /init`: hands a pooled sandbox its identity and environment.
    pub(crate) async fn init(&self, addr: SocketAddr, token: &str, req: &InitRequest) -> Result<(), String> {
        self.post(addr, "/init", token, req, Duration::from_secs(5)).await.map(drop)
    }

    /// `POST /trace/spans`: the daemon's finished spans, encoded for the collector, and its buffer emptied; `None`
    /// when it had none.
    pub(crate) async fn spans(&self, addr: SocketAddr, token: &str) -> Result<Option<Vec<u8>>, String> {
        let resp = self.post(addr, "/trace/spans", token, &serde_json::json!({}), Duration::from_secs(5)).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        // Read within the bound: what the sandbox's side of the bridge sends is not trusted to be small.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > sandbar_support::otlp::MAX_FORWARD_BYTES {
                return Err("more spans than a daemon keeps".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// A JSON `POST` signed with the daemon token; a status other than 2xx is an error that quotes the body's start.
    async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        token: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<reqwest::Response, String> {
        let mut req = self
            .http
            .post(format!("http://{addr}{path}"))
            .header(DAEMON_AUTH_HEADER, sandbar_support::daemon_auth::sign(token, "POST", path));
        if let Some(t) = crate::trace::current() {
            req = req.header(sandbar_support::trace::HEADER, t.header());
        }
        let resp = req.json(body).timeout(timeout).send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("POST {path} answered {status}: {}", truncate(&body, 300)));
        }
        Ok(resp)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_hex() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn host_keys_are_fresh_and_their_public_half_is_recovered() {
        let (a, b) = (new_host_key().unwrap(), new_host_key().unwrap());
        assert_ne!(a.public, b.public);
        assert_eq!(host_key_public(&a.private).as_deref(), Some(a.public.as_str()));
        assert_eq!(host_key_public("junk"), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
