//! What the proxy changes on the way through. To the daemon: the path it serves the request at, the
//! `DAYTONA_SANDBOX_AUTH_KEY` query parameter and the proxy's cookie removed, every header the proxy owns
//! ([`INTERNAL_HEADERS`]) stripped from what the client sent and set by the proxy (the request credential, the
//! request id, and `X-Forwarded-*` on requests the daemon passes to an app, `/proxy/{port}/...`: the daemon's own
//! API reads none of them), and an API key never passed on. The credential is signed for this one request
//! (`sandbar_support::daemon_auth`: method, path and query, time, nonce, keyed by the daemon token); the token itself
//! never goes on the wire, so a request seen on the sandbox network cannot be replayed or bent to another path. Back to the client: a `Location` of a toolbox answer
//! re-prefixed with `/toolbox/{id}`, the preview cookie, and the request id ([`set_request_id`]).
//!
//! The request id goes to the daemon as `X-Request-Id` (the daemon logs it, and a preview's app gets it too),
//! replacing the client's copy: it is the client's own id when that one was valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pingora::Result;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use sandbar_proto::api::{PREVIEW_TOKEN_HEADER, PREVIEW_TOKEN_QUERY, REQUEST_ID_HEADER};
use sandbar_proto::{DAEMON_AUTH_HEADER, DAEMON_TOKEN_HEADER};
use sandbar_support::daemon_auth::Signer;
use sandbar_support::request_id;

use super::reject::Reject;
use super::target::Destination;

/// Headers a client must never set on what reaches a daemon: the proxy owns them (`super::headers::Scan` notes
/// their presence; a name added here goes there too).
pub(super) const INTERNAL_HEADERS: [&str; 11] = [
    DAEMON_AUTH_HEADER,
    DAEMON_TOKEN_HEADER,
    REQUEST_ID_HEADER,
    request_id::HEADER,
    PREVIEW_TOKEN_HEADER,
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// Where the daemon's API passes a request on to a port of the sandbox.
const APP_PREFIX: &str = "/proxy/";

/// How an admitted request is sent on: decided in `request_filter`, applied in `upstream_request_filter`.
#[derive(Debug)]
pub struct Forward {
    uri: http::Uri,
    /// Signs the request with the sandbox's daemon token.
    signer: Arc<Signer>,
    /// The Host the client asked for (`X-Forwarded-Host`).
    host: String,
    /// A toolbox path (not a preview host): never gets `Authorization`.
    toolbox: bool,
    /// The daemon passes the request to an app in the sandbox (`/proxy/{port}/...`): it gets `X-Forwarded-*`.
    to_app: bool,
    /// The request authenticated with an API key: `Authorization` stays with the proxy.
    used_bearer: bool,
}

impl Forward {
    pub fn new(dest: &Destination, host: String, signer: Arc<Signer>, used_bearer: bool) -> Result<Self, Reject> {
        let path = strip_query_param(&dest.path, PREVIEW_TOKEN_QUERY);
        let to_app = path.starts_with(APP_PREFIX);
        let uri = path.parse().map_err(|_| Reject::new(400, "bad-request", "malformed request path"))?;
        Ok(Self { uri, signer, host, toolbox: !dest.preview_host(), to_app, used_bearer })
    }

    /// Puts the daemon's path in place of the client's, at the end of `request_filter`. This stays on the
    /// session's request rather than in [`Self::apply`] so that nothing changes with the split into phases:
    /// pingora derives an HTTP/2 client's upstream `Host` from this URI (a relative one gives an empty `Host`), and
    /// the error answers made after forwarding name this path.
    pub fn set_path(&self, session: &mut Session) {
        session.req_header_mut().set_uri(self.uri.clone());
    }

    /// Rewrites `req`, the request about to go to the daemon (its path is set by [`Self::set_path`]).
    /// `present` says which of the headers it removes the request has ([`super::headers::Scan`]).
    pub fn apply(
        &self,
        session: &Session,
        req: &mut RequestHeader,
        request_id: &str,
        https: bool,
        present: super::headers::Strip,
    ) -> Result<()> {
        // The internal headers are rarely there: the scan said whether any is.
        if present.internal {
            let strip: Vec<http::HeaderName> =
                req.headers.keys().filter(|k| INTERNAL_HEADERS.contains(&k.as_str())).cloned().collect();
            for h in &strip {
                req.remove_header(h);
            }
        }
        // The API key is the caller's credential for us, never something a sandbox should see; nor is any other
        // credential the proxy recognises.
        super::credentials::strip(req, self.used_bearer || self.toolbox, present);
        // Signed last thing before sending, over the method and the path the daemon will see.
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let credential = self.signer.sign(req.method.as_str(), path);
        // Each is absent now (stripped above): appending is inserting without the look for an old value.
        req.append_header(DAEMON_AUTH_HEADER, credential)?;
        req.append_header(request_id::HEADER, request_id)?;
        if self.to_app {
            if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()) {
                req.append_header("x-forwarded-for", ip)?;
            }
            req.append_header("x-forwarded-proto", if https { "https" } else { "http" })?;
            req.append_header("x-forwarded-host", self.host.as_str())?;
        }
        Ok(())
    }
}

/// The daemon's answer on its way back: `Location` of a toolbox answer under `/toolbox/{id}` (`toolbox_id`, the
/// sandbox of a toolbox request, with `daemon_addr` the daemon the request went to), the preview cookie, the
/// request id.
pub fn response(
    resp: &mut ResponseHeader,
    toolbox_id: Option<&str>,
    daemon_addr: Option<&str>,
    set_cookie: Option<String>,
    request_id: &str,
) -> Result<()> {
    if let (Some(id), Some(addr)) = (toolbox_id, daemon_addr)
        && let Some(loc) = resp.headers.get("location").and_then(|v| v.to_str().ok())
        && let Some(new) = toolbox_location(loc, &super::target::toolbox_prefix(id), addr)
    {
        resp.insert_header("location", new)?;
    }
    if let Some(cookie) = set_cookie {
        resp.append_header("set-cookie", cookie)?;
    }
    set_request_id(resp, request_id)
}

/// The request id on an answer to the client: `X-Request-Id`, and `X-Sandbar-Request-Id` as before it.
pub fn set_request_id(resp: &mut ResponseHeader, request_id: &str) -> Result<()> {
    resp.insert_header(REQUEST_ID_HEADER, request_id)?;
    resp.insert_header(request_id::HEADER, request_id)?;
    Ok(())
}

/// A daemon's `Location` as the client must see it: absolute URLs of the daemon and absolute paths go under the
/// toolbox prefix, anything else is left alone.
fn toolbox_location(loc: &str, prefix: &str, daemon_addr: &str) -> Option<String> {
    let absolute = format!("http://{daemon_addr}");
    if let Some(rest) = loc.strip_prefix(&absolute) {
        Some(format!("{prefix}{}", if rest.is_empty() { "/" } else { rest }))
    } else if loc.starts_with('/') && !loc.starts_with("//") {
        Some(format!("{prefix}{loc}"))
    } else {
        None
    }
}

/// `path_and_query` without the `name` query parameter.
pub(super) fn strip_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else { return path_and_query.to_owned() };
    let kept: Vec<&str> = query.split('&').filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name).collect();
    if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) }
}

/// Request ids: 32 hex digits (the length of a simple UUID), a random prefix drawn once per process and a counter
/// from a random start. Unique within the process and, with overwhelming probability, across proxies, without a
/// `getrandom` call per request.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let (prefix, start) = uuid::Uuid::new_v4().as_u64_pair();
        Self { prefix, next: AtomicU64::new(start) }
    }
}

impl RequestIds {
    pub fn next(&self) -> String {
        let mut id = String::with_capacity(32);
        sandbar_support::token::push_hex(&mut id, &self.prefix.to_be_bytes());
        sandbar_support::token::push_hex(&mut id, &self.next.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_cookie_stripping() {
        assert_eq!(strip_query_param("/x?a=1&DAYTONA_SANDBOX_AUTH_KEY=t&b=2", PREVIEW_TOKEN_QUERY), "/x?a=1&b=2");
        assert_eq!(strip_query_param("/x?DAYTONA_SANDBOX_AUTH_KEY=t", PREVIEW_TOKEN_QUERY), "/x");
        assert_eq!(strip_query_param("/x", PREVIEW_TOKEN_QUERY), "/x");
    }

    #[test]
    fn toolbox_locations_stay_under_the_prefix() {
        let loc = |l| toolbox_location(l, "/toolbox/s1", "127.0.0.1:9");
        assert_eq!(loc("http://127.0.0.1:9").as_deref(), Some("/toolbox/s1/"));
        assert_eq!(loc("http://127.0.0.1:9/a?b").as_deref(), Some("/toolbox/s1/a?b"));
        assert_eq!(loc("/files").as_deref(), Some("/toolbox/s1/files"));
        assert_eq!(loc("//elsewhere/x"), None);
        assert_eq!(loc("https://example.com/"), None);
    }

    #[test]
    fn a_toolbox_answer_keeps_its_location_under_its_sandbox_and_a_preview_answer_as_it_was() {
        let answer = |toolbox_id| {
            let mut resp = ResponseHeader::build(302, None).unwrap();
            resp.insert_header("location", "/files?x=1").unwrap();
            response(&mut resp, toolbox_id, Some("127.0.0.1:9"), None, "rid").unwrap();
            let h = |n: &str| resp.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            (h("location"), h("x-request-id"), h("x-sandbar-request-id"))
        };
        let (loc, rid, sandbar_rid) = answer(Some("s1"));
        assert_eq!(loc.as_deref(), Some("/toolbox/s1/files?x=1"));
        assert_eq!((rid.as_deref(), sandbar_rid.as_deref()), (Some("rid"), Some("rid")));
        assert_eq!(answer(None).0.as_deref(), Some("/files?x=1"));
    }

    #[test]
    fn request_ids_are_distinct_and_uuid_sized() {
        let (a, b) = (RequestIds::default(), RequestIds::default());
        let ids = [a.next(), a.next(), b.next()];
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit())), "{ids:?}");
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0][..16], ids[2][..16], "each process draws its own prefix");
    }
}
