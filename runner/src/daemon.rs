//! Talking to a sandbox's daemon: readiness (`GET /version`, the one route without a token) and
//! `POST /process/execute` with the per-sandbox token.

use std::net::SocketAddr;
use std::time::Duration;

use sandbar_proto::DAEMON_TOKEN_HEADER;
use sandbar_proto::toolbox::{ExecuteRequest, ExecuteResponse, InitRequest, VersionResponse};

/// A fresh per-sandbox daemon token: 256 random bits, hex.
pub(crate) fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for the daemon token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
        let resp =
            self.http.get(format!("http://{addr}/version")).timeout(timeout).send().await.map_err(|e| e.to_string())?;
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
        let resp = self
            .http
            .post(format!("http://{addr}/process/execute"))
            .header(DAEMON_TOKEN_HEADER, token)
            .json(req)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("POST /process/execute answered {status}: {}", truncate(&body, 300)));
        }
        resp.json::<ExecuteResponse>().await.map_err(|e| e.to_string())
    }
}

impl DaemonClient {
    /// `POST /init`: hands a pooled sandbox its identity and environment.
    pub(crate) async fn init(&self, addr: SocketAddr, token: &str, req: &InitRequest) -> Result<(), String> {
        let resp = self
            .http
            .post(format!("http://{addr}/init"))
            .header(DAEMON_TOKEN_HEADER, token)
            .json(req)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("POST /init answered {status}: {}", truncate(&body, 300)));
        }
        Ok(())
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
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
