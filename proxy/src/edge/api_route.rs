//! The dashboard and the REST API through the edge ([`super::target::Target::Api`]): `/dashboard...` and
//! `/api/...` on any host that is not a preview host go to the API as they came (method, path, Host, cookies,
//! body), so a browser has the dashboard, its REST calls and the toolbox paths of its terminal and file browser on
//! one origin, under the proxy's TLS, and SDKs may use the proxy as their API URL too.
//!
//! Who may reach it: anyone who reaches the proxy, as anyone who reaches the API's own listener; the API
//! authenticates every call itself. The paths of sandbar's own services (`/api/internal/...` for the proxy,
//! `/api/runners/...` for runners) are refused here with 404 ([`super::target::services_only`]) whatever they
//! carry. The proxy sets `X-Forwarded-Proto` (the API marks the session cookie `Secure` behind HTTPS) and the
//! request id (`X-Sandbar-Request-Id` and `X-Request-Id`), in place of any copies the client sent.

use pingora::Result;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use sandbar_proto::api::REQUEST_ID_HEADER;
use sandbar_support::request_id;
use std::time::Duration;

/// Where the API listens, from the proxy's `--api-url`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`.
    addr: String,
    tls: bool,
    /// The host name for SNI and certificate checks (TLS only).
    sni: String,
}

impl Upstream {
    /// From an `http://` or `https://` URL (any path is ignored: the API serves `/api` and `/dashboard` at its root).
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("--api-url {url:?}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("--api-url {url:?} must be an http:// or https:// URL")),
        };
        let host = uri.host().ok_or_else(|| format!("--api-url {url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addr = if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") };
        Ok(Self { addr, tls, sni: bare.to_owned() })
    }

    pub fn peer(&self) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr.as_str(), self.tls, self.sni.clone());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.total_connection_timeout = Some(Duration::from_secs(10));
        // The dashboard's live list is a server-sent event stream, and a create may wait for its sandbox.
        peer.options.read_timeout = None;
        peer.options.write_timeout = None;
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer
    }
}

/// Client copies of what the proxy says about the request (the client's `X-Request-Id`, when valid, is the id
/// the proxy sends on).
const OURS: [&str; 7] = [
    REQUEST_ID_HEADER,
    request_id::HEADER,
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

/// The request as the API gets it.
pub fn apply(session: &Session, req: &mut RequestHeader, request_id: &str, https: bool) -> Result<()> {
    for h in OURS {
        req.remove_header(h);
    }
    req.insert_header(REQUEST_ID_HEADER, request_id)?;
    req.insert_header(request_id::HEADER, request_id)?;
    req.insert_header("x-forwarded-proto", if https { "https" } else { "http" })?;
    if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()) {
        req.insert_header("x-forwarded-for", ip)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_from_url() {
        let u = Upstream::from_url("http://127.0.0.1:3000/api").unwrap();
        assert_eq!((u.addr.as_str(), u.tls), ("127.0.0.1:3000", false));
        let u = Upstream::from_url("https://api.example.com").unwrap();
        assert_eq!((u.addr.as_str(), u.tls, u.sni.as_str()), ("api.example.com:443", true, "api.example.com"));
        let u = Upstream::from_url("http://[::1]:3000").unwrap();
        assert_eq!(u.addr, "[::1]:3000");
        assert!(Upstream::from_url("ftp://x").is_err());
        assert!(Upstream::from_url("/api").is_err());
    }
}
