//! The pingora `ProxyHttp` implementation: parse the target, look the route up, authenticate, check the sandbox's
//! state (starting an auto-stopped sandbox for an authorized request and waiting for it), rewrite the request for
//! the daemon, and answer the proxy's own errors (JSON or small HTML, always with `X-Sandbar-Error`).
//!
//! Who may wake a sandbox: a request that carries a credential for it (an API key of its organization, a preview
//! token, a signed preview URL), when the API says the sandbox was stopped by its auto-stop timer
//! (`Route::wake_on_request`). A sandbox a user stopped stays stopped, and anonymous traffic to a public sandbox
//! does not start it (crawlers would keep it running). Archived and deleted sandboxes are never started here.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use sandbar_proto::api::{
    PREVIEW_TOKEN_HEADER, PREVIEW_TOKEN_QUERY, PROXY_ERROR_HEADER, REQUEST_ID_HEADER, Route, is_signed_preview_token,
};
use sandbar_proto::runner::SandboxState;
use sandbar_proto::{DAEMON_TOKEN_HEADER, ErrorBody, ports};

use crate::api::{Authorization, SignedPreview, Wake};
use crate::cache::{AuthCache, CredentialKind, RouteCache, Waker};
use crate::head_deadline::{HeadRead, KeptAlive};
use crate::metrics::Metrics;
use crate::target::{self, Target};

/// Cookie the proxy sets on a preview host after a valid preview token, so a browser keeps access.
pub const PREVIEW_COOKIE: &str = "sandbar_preview_token";

/// `source` of the errors the proxy makes itself.
pub const PROXY_ERROR_SOURCE: &str = "SANDBAR_PROXY";

/// Headers a client must never set on what reaches a daemon: the proxy owns them.
const INTERNAL_HEADERS: [&str; 9] = [
    DAEMON_TOKEN_HEADER,
    REQUEST_ID_HEADER,
    PREVIEW_TOKEN_HEADER,
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// Sandboxes with traffic since the last report, and open upgraded connections per sandbox.
#[derive(Debug, Default)]
pub struct Activity {
    touched: Mutex<std::collections::HashSet<String>>,
    open: Mutex<HashMap<String, usize>>,
}

impl Activity {
    pub fn touch(&self, id: &str) {
        let mut t = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        if !t.contains(id) {
            t.insert(id.to_owned());
        }
    }

    fn open(&self, id: &str) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_owned()).or_default() += 1;
    }

    fn close(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(id);
            }
        }
    }

    /// Everything to report now: sandboxes touched since the last call plus those with open upgrades.
    pub fn drain(&self) -> Vec<String> {
        let mut ids: std::collections::BTreeSet<String> =
            std::mem::take(&mut *self.touched.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
        ids.extend(self.open.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned());
        ids.into_iter().collect()
    }
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
        format!("{:016x}{:016x}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// What every proxy listener shares.
pub struct Shared {
    pub domain: String,
    pub routes: Arc<RouteCache>,
    pub auth: AuthCache,
    pub waker: Waker,
    /// How long a request waits for a sandbox it woke (zero: never wake).
    pub wake_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub activity: Activity,
    pub request_ids: RequestIds,
}

/// One listener's proxy logic (`https` says which scheme clients used).
pub struct EdgeProxy {
    pub shared: Arc<Shared>,
    pub https: bool,
}

pub struct Ctx {
    start: Instant,
    request_id: String,
    sandbox_id: Option<String>,
    daemon_addr: Option<String>,
    /// `/toolbox/{id}` for toolbox requests, to re-prefix `Location`.
    toolbox_prefix: Option<String>,
    set_cookie: Option<String>,
    upgraded: bool,
    /// Counted in the in-flight gauge (so `logging` only undoes what `request_filter` did).
    counted: bool,
}

/// An error response the proxy makes itself.
struct Reject {
    status: u16,
    /// Short machine-readable reason, sent as `X-Sandbar-Error` and as the body's `code`.
    reason: &'static str,
    message: String,
}

impl Reject {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into() }
    }
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session.req_header().headers.get(name).and_then(|v| v.to_str().ok())
}

fn wants_html(session: &Session) -> bool {
    let accept = header_str(session, "accept").unwrap_or("");
    accept.contains("text/html") && !accept.contains("application/json")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The value of the query parameter `name`, if present.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// `path_and_query` without the `name` query parameter.
fn strip_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else { return path_and_query.to_owned() };
    let kept: Vec<&str> = query.split('&').filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name).collect();
    if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) }
}

fn cookie_value<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// `Cookie` without the proxy's own cookie, or `None` when nothing is left.
fn strip_cookie(cookies: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> =
        cookies.split(';').map(str::trim).filter(|c| c.split_once('=').map_or(*c, |(k, _)| k) != name).collect();
    (!kept.is_empty() && kept.iter().any(|c| !c.is_empty())).then(|| kept.join("; "))
}

/// Whether `port` is one of the daemon's own servers, which always need a credential.
fn daemon_port(port: u16) -> bool {
    port == ports::TOOLBOX || port == ports::SSH || port == ports::TERMINAL
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = ((*h as char).to_digit(16), (*l as char).to_digit(16))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl EdgeProxy {
    async fn send_reject(&self, session: &mut Session, ctx: &Ctx, r: &Reject) -> Result<()> {
        let path = session.req_header().uri.path().to_owned();
        let method = session.req_header().method.to_string();
        let (body, content_type) = if wants_html(session) {
            let title = format!(
                "{} {}",
                r.status,
                http::StatusCode::from_u16(r.status).map(|s| s.canonical_reason().unwrap_or("")).unwrap_or("")
            );
            (
                format!(
                    "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1><p>{m}</p><p><small>sandbar-proxy, request {id}</small></p></body></html>\n",
                    t = html_escape(&title),
                    m = html_escape(&r.message),
                    id = html_escape(&ctx.request_id)
                ),
                "text/html; charset=utf-8",
            )
        } else {
            let body = ErrorBody {
                status_code: r.status,
                message: r.message.clone(),
                code: Some(r.reason.to_ascii_uppercase().replace('-', "_")),
                source: Some(PROXY_ERROR_SOURCE.to_owned()),
                path: Some(path),
                method: Some(method),
                timestamp: Some(now_rfc3339()),
            };
            (serde_json::to_string(&body).unwrap_or_default(), "application/json")
        };
        let mut resp = ResponseHeader::build(r.status, Some(6))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header(PROXY_ERROR_HEADER, r.reason)?;
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        if r.status == 401 {
            resp.insert_header("www-authenticate", "Bearer realm=\"sandbar\"")?;
        }
        if r.status == 503 {
            resp.insert_header("retry-after", "2")?;
        }
        // A request body we did not read would be taken for the next request: close instead.
        let has_body = session.req_header().headers.contains_key("content-length")
            || session.req_header().headers.contains_key("transfer-encoding");
        if has_body || session.is_upgrade_req() {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(Bytes::from(body)), true).await?;
        Ok(())
    }

    /// Everything before forwarding; `Err(Reject)` is answered by the caller.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> std::result::Result<(), Reject> {
        let shared = &self.shared;
        let req = session.req_header();
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| header_str(session, "host").map(str::to_owned))
            .ok_or_else(|| Reject::new(400, "bad-host", "missing Host header"))?;
        let path_and_query = req.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let target = target::parse(&host, &path_and_query, &shared.domain)
            .map_err(|e| Reject::new(400, "bad-request", e.to_string()))?;
        let (sandbox_id, port, forward_path) = match target {
            Target::Toolbox { sandbox_id, rest } => {
                ctx.toolbox_prefix = Some(format!("{}/{sandbox_id}", target::TOOLBOX_PREFIX));
                let rest = if rest.starts_with('?') { format!("/{rest}") } else { rest.to_owned() };
                (sandbox_id.to_owned(), ports::TOOLBOX, rest)
            }
            Target::Preview { sandbox_id, port, path } => {
                let forward = if port == ports::TOOLBOX { path.to_owned() } else { format!("/proxy/{port}{path}") };
                (sandbox_id.to_owned(), port, forward)
            }
            Target::Other => {
                return Err(Reject::new(
                    404,
                    "no-sandbox",
                    format!(
                        "no sandbox in this request: use /toolbox/{{sandboxId}}/... or a {{port}}-{{sandboxId}}.{} host",
                        shared.domain
                    ),
                ));
            }
        };
        let preview_host = ctx.toolbox_prefix.is_none();

        // A signed preview URL carries its token where the sandbox id would be: `{port}-{token}.{domain}`. The
        // token is the credential; the API says which sandbox it opens.
        let signed_token = (preview_host && is_signed_preview_token(&sandbox_id)).then(|| sandbox_id.clone());
        let sandbox_id = match &signed_token {
            None => sandbox_id,
            Some(token) => self.resolve_signed(token, port, None).await?.sandbox_id,
        };
        ctx.sandbox_id = Some(sandbox_id.clone());
        let not_found = || Reject::new(404, "sandbox-not-found", format!("sandbox {sandbox_id} not found"));

        let mut route = match shared.routes.get(&sandbox_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(not_found()),
            Err(e) => {
                shared.metrics.api_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "route lookup failed");
                return Err(Reject::new(502, "api-unavailable", format!("{e} while looking up sandbox {sandbox_id}")));
            }
        };

        // Credentials, in order of precedence.
        let query = session.req_header().uri.query().unwrap_or("");
        let query_token = query_param(query, PREVIEW_TOKEN_QUERY).map(percent_decode).filter(|t| !t.is_empty());
        let header_token = header_str(session, PREVIEW_TOKEN_HEADER).map(str::to_owned).filter(|t| !t.is_empty());
        let bearer = header_str(session, "authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let cookie_token =
            header_str(session, "cookie").and_then(|c| cookie_value(c, PREVIEW_COOKIE)).map(str::to_owned);
        let needs_auth = !preview_host || !route.public || daemon_port(port);
        let mut used_bearer = false;
        // Whether the caller proved a right to this sandbox (only such requests may wake it).
        let mut credentialed = false;
        if let Some(token) = &signed_token {
            // The answer may predate a change of the route (expiring the URL bumps it): then ask again.
            let grant = self.resolve_signed(token, port, Some(route.version)).await?;
            if grant.sandbox_id != sandbox_id || grant.organization_id != route.organization_id {
                return Err(not_found());
            }
            credentialed = true;
        } else {
            let picked = if let Some(t) = header_token.clone() {
                Some((CredentialKind::PreviewToken, t, true))
            } else if let Some(t) = query_token.clone() {
                Some((CredentialKind::PreviewToken, t, true))
            } else if let Some(t) = bearer.clone() {
                Some((CredentialKind::ApiKey, t, false))
            } else {
                cookie_token.clone().filter(|_| preview_host).map(|t| (CredentialKind::PreviewToken, t, false))
            };
            // A public sandbox's preview ports need no credential while it runs; one that is not running is
            // checked when given, because only a credentialed request may start it.
            let check = needs_auth || route.state != SandboxState::Started;
            match picked {
                None if needs_auth => {
                    return Err(Reject::new(
                        401,
                        "unauthorized",
                        "authentication required: send Authorization: Bearer <API key> or a preview token",
                    ));
                }
                Some((kind, credential, from_request)) if check => {
                    match shared.auth.authorize(kind, &credential, &sandbox_id, port, route.version).await {
                        Ok(Authorization::Allowed(ok)) if ok.organization_id == route.organization_id => {}
                        Ok(Authorization::Allowed(_)) | Ok(Authorization::NotFound) => return Err(not_found()),
                        Ok(Authorization::Unauthorized) => {
                            return Err(Reject::new(
                                401,
                                "unauthorized",
                                "invalid or expired API key or preview token",
                            ));
                        }
                        Err(e) => {
                            shared.metrics.api_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "authorize failed");
                            return Err(Reject::new(502, "api-unavailable", format!("{e} while authorizing")));
                        }
                    }
                    credentialed = true;
                    used_bearer = kind == CredentialKind::ApiKey;
                    let cookie_safe = credential.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b));
                    if from_request && preview_host && kind == CredentialKind::PreviewToken && cookie_safe {
                        let secure = if self.https { "; Secure" } else { "" };
                        ctx.set_cookie = Some(format!(
                            "{PREVIEW_COOKIE}={credential}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400{secure}"
                        ));
                    }
                }
                // Anonymous (or unchecked) on a public sandbox's preview port.
                _ => {}
            }
        }

        let may_wake = credentialed && !shared.wake_timeout.is_zero();
        let wakeable = (route.state == SandboxState::Stopped && route.wake_on_request)
            || matches!(route.state, SandboxState::Starting | SandboxState::Restoring);
        if may_wake && wakeable {
            route = self.wake_and_wait(&sandbox_id, route).await?;
        }

        let daemon_addr = match (route.state, route.daemon_addr.as_deref()) {
            (SandboxState::Started, Some(addr)) => addr.to_owned(),
            (SandboxState::Stopped, _) if route.wake_on_request && !credentialed => {
                return Err(Reject::new(
                    409,
                    "sandbox-stopped",
                    format!(
                        "sandbox {sandbox_id} is stopped (auto-stop): a request with an API key or preview token \
                         starts it"
                    ),
                ));
            }
            (SandboxState::Stopped | SandboxState::Stopping | SandboxState::Paused | SandboxState::Pausing, _) => {
                return Err(Reject::new(
                    409,
                    "sandbox-stopped",
                    format!("sandbox {sandbox_id} is {}: start it first", route.state.as_str()),
                ));
            }
            (SandboxState::Archived | SandboxState::Archiving, _) => {
                return Err(Reject::new(
                    410,
                    "sandbox-archived",
                    format!("sandbox {sandbox_id} is {}: start it to restore it", route.state.as_str()),
                ));
            }
            (SandboxState::Destroyed | SandboxState::Destroying, _) => {
                return Err(Reject::new(410, "sandbox-deleted", format!("sandbox {sandbox_id} was deleted")));
            }
            (SandboxState::Error | SandboxState::BuildFailed, _) => {
                return Err(Reject::new(
                    409,
                    "sandbox-error",
                    format!("sandbox {sandbox_id} is in state {}", route.state.as_str()),
                ));
            }
            (state, _) => {
                return Err(Reject::new(
                    503,
                    "sandbox-not-ready",
                    format!("sandbox {sandbox_id} is not started yet (state {})", state.as_str()),
                ));
            }
        };
        shared.activity.touch(&sandbox_id);

        // Rewrite for the daemon.
        let forward_path = strip_query_param(&forward_path, PREVIEW_TOKEN_QUERY);
        let uri: http::Uri =
            forward_path.parse().map_err(|_| Reject::new(400, "bad-request", "malformed request path"))?;
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string());
        let cookies = header_str(session, "cookie").map(|c| strip_cookie(c, PREVIEW_COOKIE));
        let https = self.https;
        let request_id = ctx.request_id.clone();
        let toolbox = ctx.toolbox_prefix.is_some();
        let req = session.req_header_mut();
        req.set_uri(uri);
        // One pass over the (few) headers the client sent finds the internal ones, which are rarely there; a lookup
        // or removal per name costs a parse and a hash each.
        let strip: Vec<http::HeaderName> =
            req.headers.keys().filter(|k| INTERNAL_HEADERS.contains(&k.as_str())).cloned().collect();
        for h in &strip {
            req.remove_header(h);
        }
        // The API key is the caller's credential for us, never something a sandbox should see.
        if (used_bearer || toolbox) && req.headers.contains_key("authorization") {
            req.remove_header("authorization");
        }
        match cookies {
            Some(Some(c)) => {
                let _ = req.insert_header("cookie", c);
            }
            Some(None) => {
                req.remove_header("cookie");
            }
            None => {}
        }
        let internal = |e: Box<Error>| Reject::new(500, "internal", format!("building the upstream request: {e}"));
        req.insert_header(DAEMON_TOKEN_HEADER, route.daemon_token.as_str()).map_err(internal)?;
        req.insert_header(REQUEST_ID_HEADER, request_id.as_str()).map_err(internal)?;
        if toolbox {
            req.insert_header("x-request-id", request_id.as_str()).map_err(internal)?;
        }
        if let Some(ip) = client_ip {
            req.insert_header("x-forwarded-for", ip).map_err(internal)?;
        }
        req.insert_header("x-forwarded-proto", if https { "https" } else { "http" }).map_err(internal)?;
        req.insert_header("x-forwarded-host", host.as_str()).map_err(internal)?;
        ctx.daemon_addr = Some(daemon_addr);
        Ok(())
    }

    /// What the signed preview token opens (`newer_than`: the route version the answer must not predate).
    async fn resolve_signed(
        &self,
        token: &str,
        port: u16,
        newer_than: Option<i64>,
    ) -> std::result::Result<sandbar_proto::api::SignedPreviewResolveResponse, Reject> {
        match self.shared.auth.resolve_signed(token, port, newer_than).await {
            Ok(SignedPreview::Allowed(ok)) => Ok(ok),
            Ok(SignedPreview::Refused(message)) => Err(Reject::new(401, "signed-url-invalid", message)),
            Err(e) => {
                self.shared.metrics.api_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "signed preview URL check failed");
                Err(Reject::new(502, "api-unavailable", format!("{e} while checking the signed preview URL")))
            }
        }
    }

    /// Starts an auto-stopped sandbox (once for all the requests that want it) and waits, up to the wake timeout,
    /// for the route-changes feed to show it started. A sandbox already starting is only waited for.
    async fn wake_and_wait(&self, id: &str, route: Arc<Route>) -> std::result::Result<Arc<Route>, Reject> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.wake_timeout;
        let not_found = || Reject::new(404, "sandbox-not-found", format!("sandbox {id} not found"));
        if route.state == SandboxState::Stopped {
            match shared.waker.wake(id).await {
                Ok(None | Some(Wake::Started(_))) => {}
                Ok(Some(Wake::Refused(message))) => return Err(Reject::new(409, "sandbox-stopped", message)),
                Ok(Some(Wake::NotFound)) => return Err(not_found()),
                Err(e) => {
                    shared.metrics.api_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "wake failed");
                    return Err(Reject::new(502, "api-unavailable", format!("{e} while starting sandbox {id}")));
                }
            }
        }
        let on_the_way =
            |r: &Route| matches!(r.state, SandboxState::Stopped | SandboxState::Starting | SandboxState::Restoring);
        let last = match shared.routes.wait_for(id, deadline, |r| !on_the_way(r)).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(not_found()),
            Err(e) => {
                shared.metrics.api_errors.fetch_add(1, Ordering::Relaxed);
                return Err(Reject::new(502, "api-unavailable", format!("{e} while waiting for sandbox {id}")));
            }
        };
        if on_the_way(last.as_ref()) {
            shared.metrics.wake_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(Reject::new(
                409,
                "sandbox-starting",
                format!(
                    "sandbox {id} was stopped and is being started, but it is still {} after {} s: retry shortly",
                    last.state.as_str(),
                    shared.wake_timeout.as_secs()
                ),
            ));
        }
        Ok(last)
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: self.shared.request_ids.next(),
            sandbox_id: None,
            daemon_addr: None,
            toolbox_prefix: None,
            set_cookie: None,
            upgraded: false,
            counted: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        self.shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        ctx.counted = true;
        if session.is_upgrade_req() {
            // An upgraded connection lives as long as its two ends do; pings and traffic keep it, not a timer.
            session.set_read_timeout(None);
        }
        match self.admit(session, ctx).await {
            Ok(()) => Ok(false),
            Err(r) => {
                tracing::debug!(status = r.status, reason = r.reason, request_id = %ctx.request_id, "rejected");
                self.send_reject(session, ctx, &r).await?;
                Ok(true)
            }
        }
    }

    /// pingora hands over the connection's user context right after parsing a request head on HTTP/1: it is the
    /// [`HeadRead`] of [`crate::head_deadline`], whose deadline stops counting now.
    fn on_connection_reuse(&self, _session: &mut Session, _ctx: &mut Ctx, prev: Box<dyn Any + Send + Sync>) {
        if let Some(head) = prev.downcast_ref::<HeadRead>() {
            head.mark();
        }
    }

    fn persist_connection_context(&self, _session: &Session, _ctx: &Ctx) -> Option<Box<dyn Any + Send + Sync>> {
        Some(Box::new(KeptAlive))
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let addr = ctx
            .daemon_addr
            .as_deref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no daemon address for this request"))?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.total_connection_timeout = Some(Duration::from_secs(10));
        // Long calls (process/execute with a timeout, logs follow, PTY) may be silent for a long time.
        peer.options.read_timeout = None;
        peer.options.write_timeout = None;
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if resp.status.as_u16() == 101 && !ctx.upgraded {
            ctx.upgraded = true;
            self.shared.metrics.open_websockets.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = &ctx.sandbox_id {
                self.shared.activity.open(id);
            }
        }
        if let (Some(prefix), Some(addr)) = (&ctx.toolbox_prefix, &ctx.daemon_addr)
            && let Some(loc) = resp.headers.get("location").and_then(|v| v.to_str().ok())
        {
            let absolute = format!("http://{addr}");
            let rewritten = if let Some(rest) = loc.strip_prefix(&absolute) {
                Some(format!("{prefix}{}", if rest.is_empty() { "/" } else { rest }))
            } else if loc.starts_with('/') && !loc.starts_with("//") {
                Some(format!("{prefix}{loc}"))
            } else {
                None
            };
            if let Some(new) = rewritten {
                resp.insert_header("location", new)?;
            }
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            resp.append_header("set-cookie", cookie)?;
        }
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The route may be stale (the sandbox moved): never retry on a connection we could not open.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reject = match e.esource() {
            ErrorSource::Upstream => {
                self.shared.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = &ctx.sandbox_id {
                    // The daemon may have moved: look the route up again next time.
                    self.shared.routes.invalidate(std::slice::from_ref(id));
                }
                Some(Reject::new(
                    502,
                    "daemon-unreachable",
                    format!(
                        "the sandbox's daemon{} did not answer: {}",
                        ctx.daemon_addr.as_deref().map(|a| format!(" at {a}")).unwrap_or_default(),
                        e.etype().as_str()
                    ),
                ))
            }
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
                _ => Some(Reject::new(400, "bad-request", format!("malformed request: {}", e.etype().as_str()))),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                tracing::error!(error = %e, "proxy error");
                Some(Reject::new(500, "internal", "internal proxy error"))
            }
        };
        let mut code = 0;
        if let Some(r) = reject {
            code = r.status;
            if session.response_written().is_none()
                && let Err(we) = self.send_reject(session, ctx, &r).await
            {
                tracing::debug!(error = %we, "could not send the error response");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let m = &self.shared.metrics;
        if ctx.counted {
            m.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if ctx.upgraded {
            m.open_websockets.fetch_sub(1, Ordering::Relaxed);
            if let Some(id) = &ctx.sandbox_id {
                self.shared.activity.close(id);
                self.shared.activity.touch(id);
            }
        }
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        m.record(status, ctx.start.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_cookie_helpers() {
        assert_eq!(query_param("a=1&DAYTONA_SANDBOX_AUTH_KEY=tok&b", PREVIEW_TOKEN_QUERY), Some("tok"));
        assert_eq!(strip_query_param("/x?a=1&DAYTONA_SANDBOX_AUTH_KEY=t&b=2", PREVIEW_TOKEN_QUERY), "/x?a=1&b=2");
        assert_eq!(strip_query_param("/x?DAYTONA_SANDBOX_AUTH_KEY=t", PREVIEW_TOKEN_QUERY), "/x");
        assert_eq!(strip_query_param("/x", PREVIEW_TOKEN_QUERY), "/x");
        assert_eq!(cookie_value("a=1; sandbar_preview_token=abc; b=2", PREVIEW_COOKIE), Some("abc"));
        assert_eq!(strip_cookie("a=1; sandbar_preview_token=abc; b=2", PREVIEW_COOKIE).as_deref(), Some("a=1; b=2"));
        assert_eq!(strip_cookie("sandbar_preview_token=abc", PREVIEW_COOKIE), None);
        assert_eq!(percent_decode("a%2Bb+c%zz"), "a+b c%zz");
    }

    #[test]
    fn request_ids_are_distinct_and_uuid_sized() {
        let (a, b) = (RequestIds::default(), RequestIds::default());
        let ids = [a.next(), a.next(), b.next()];
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit())), "{ids:?}");
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0][..16], ids[2][..16], "each process draws its own prefix");
    }

    #[test]
    fn activity_reports_touched_and_open() {
        let a = Activity::default();
        a.touch("x");
        a.open("y");
        assert_eq!(a.drain(), vec!["x".to_owned(), "y".to_owned()]);
        assert_eq!(a.drain(), vec!["y".to_owned()]);
        a.close("y");
        assert!(a.drain().is_empty());
    }
}
