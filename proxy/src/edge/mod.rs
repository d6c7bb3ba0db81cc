//! The pingora `ProxyHttp` implementation: this module only wires pingora's phases, each step lives beside it.
//!
//! - `request_filter`: where the request goes ([`target`]), cross-origin requests to the daemon's ports
//!   ([`origin`]), the sandbox's route, what the request's credential opens ([`credentials`], asked of the API),
//!   the redirect that takes a query-string token out of a page's URL, waking an auto-stopped sandbox and the answer
//!   for every other state ([`wake`]); any refusal is answered here ([`reject`]).
//! - `upstream_peer`: the daemon the route names (also while its sandbox reads `unknown`: the runner fell silent,
//!   not the daemon); connect timeout 5 s, no read timeout (long calls are quiet), TCP keepalive with a 10 s user
//!   timeout so a black-holed daemon fails its connection ([`upgrade::daemon_keepalive`]); an upgrade request gets
//!   a gated connection of its own ([`upgrade`], which `request_body_filter` opens). `connected_to_upstream`: an upgrade keeps a handle on the
//!   daemon's side ([`revoke`]). `upstream_request_filter`: the request as the daemon gets it, every credential the proxy
//!   recognised removed ([`rewrite`], [`credentials::strip`]). `response_filter`: WebSocket accounting, the watch
//!   that closes an upgraded connection whose access is revoked ([`revoke`]), and the answer's headers
//!   ([`rewrite`]); `response_body_filter`: the close frame of a revoked WebSocket.
//! - `fail_to_proxy`: a daemon that did not answer ([`reject`]: 504 when in time, else 502), or a WebSocket whose
//!   daemon side failed (close frame 1014); `logging`: metrics, activity and the access line ([`access_log`]).
//! - The request id: the client's `X-Request-Id` when it is a valid one, else one the proxy makes; it goes to the
//!   API (`X-Request-Id` and `X-Sandbar-Request-Id`) or the daemon (`X-Request-Id`) and back to the client in both
//!   headers.
//! - W3C `traceparent`: the client's trace is continued (else one is started) with a server span of the proxy's
//!   own, sent to the API or the daemon as their parent; its trace id is in the access line, and with an
//!   `otlp_endpoint` the span is exported when the request is logged (`sandbar_support::otlp`).
//! - The dashboard and REST API paths skip all of that: they go to the API as they came ([`api_route`]).
//!
//! A new route rule is a [`target::Target`] variant, its access rule in the API, and its wiring here.

pub mod access_log;
pub mod api_route;
pub mod credentials;
#[cfg(test)]
mod fuzz;
pub mod headers;
pub mod origin;
pub mod reject;
pub mod revoke;
pub mod rewrite;
pub mod target;
pub mod upgrade;
pub mod wake;

use std::any::Any;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use self::credentials::PREVIEW_COOKIE;
use self::headers::{Scan, Strip};
pub use self::reject::PROXY_ERROR_SOURCE;
use self::reject::Reject;
use self::rewrite::{Forward, RequestIds};
use self::target::Destination;
use crate::control::activity::Activity;
use crate::control::cache::{AuthCache, RouteCache, Signers, Waker};
use crate::head_deadline::{HeadRead, KeptAlive};
use crate::metrics::Metrics;
use sandbar_proto::api::PREVIEW_TOKEN_QUERY;
use sandbar_support::otlp;
use sandbar_support::trace::{self, TraceParent};

/// What every proxy listener shares.
pub struct Shared {
    pub domain: String,
    pub routes: Arc<RouteCache>,
    pub auth: AuthCache,
    pub waker: Waker,
    /// How long a request waits for a sandbox it woke (zero: never wake).
    pub wake_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub activity: Arc<Activity>,
    pub request_ids: RequestIds,
    /// The request signer of each daemon token.
    pub signers: Signers,
    /// The API, for the dashboard and REST paths ([`api_route`]).
    pub api: api_route::Upstream,
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
    /// A toolbox request: a `Location` goes back under `/toolbox/{id}`.
    toolbox: bool,
    /// How the admitted request goes to the daemon.
    forward: Option<Forward>,
    /// Which headers the request to the daemon must lose ([`headers::Scan`]).
    strip: Strip,
    set_cookie: Option<String>,
    /// Answer with a redirect here instead of forwarding (a query-string token leaving the URL).
    redirect: Option<String>,
    /// What an upgraded connection is and the credential that opened it, for [`revoke`].
    session: Option<revoke::Session>,
    /// The daemon-side socket of an upgrade request (a duplicate, see [`revoke::dup_socket`]).
    upstream_socket: Option<OwnedFd>,
    /// The watch over an upgraded connection; dropped with the context when the connection ends.
    watch: Option<revoke::Watch>,
    /// An upgrade request's gate ([`upgrade`]).
    gate: Option<Arc<upgrade::Gate>>,
    upgraded: bool,
    /// A dashboard or REST API request, going to the API ([`api_route`]).
    to_api: bool,
    /// Counted in the in-flight gauge (so `logging` only undoes what `request_filter` did).
    counted: bool,
    /// The request's path as the access line shows it (no query), before it is rewritten for the daemon.
    log_path: Option<String>,
    /// This request's span of its trace ([`Ctx::trace`]: the parent of what the API or the daemon does for it);
    /// its timing is recorded at `logging` when an exporter is installed.
    span: Option<otlp::Span>,
}

impl Ctx {
    /// This request's span of its trace.
    fn trace(&self) -> Option<&TraceParent> {
        self.span.as_ref().map(otlp::Span::context)
    }
}

impl EdgeProxy {
    /// Everything before forwarding, in order; `Err(Reject)` is answered by `request_filter`.
    async fn admit(&self, session: &Session, scan: &Scan<'_>, ctx: &mut Ctx) -> std::result::Result<(), Reject> {
        let req = session.req_header();
        // One Content-Length of plain digits, or none: a list (`5, 5`) or a second header is a framing a server
        // behind might read another way than pingora did.
        if !scan.content_length_ok {
            return Err(Reject::new(400, "bad-request", "malformed Content-Length: one decimal number expected"));
        }
        ctx.strip = scan.strip;
        let host_header = scan.host;
        // An absolute-form target (or HTTP/2's `:authority`) that names another host than `Host` is refused rather
        // than guessed at: a server behind could pick the other one.
        if let (Some(authority), Some(h)) = (req.uri.authority(), host_header)
            && !authority.as_str().eq_ignore_ascii_case(h)
        {
            return Err(Reject::new(400, "bad-host", "the request target's host differs from the Host header"));
        }
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or(host_header)
            .ok_or_else(|| Reject::new(400, "bad-host", "missing Host header"))?
            .to_owned();
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = target::parse(&host, path_and_query, &self.shared.domain)
            .map_err(|e| Reject::new(400, "bad-request", e.to_string()))?;
        if let target::Target::Api { path } = target {
            if target::services_only(path) {
                return Err(Reject::new(404, "not-found", "no such path here"));
            }
            ctx.to_api = true;
            return Ok(());
        }
        let dest = Destination::of(&target).ok_or_else(|| {
            Reject::new(
                404,
                "no-sandbox",
                format!(
                    "no sandbox in this request: use /toolbox/{{sandboxId}}/... or a {{port}}-{{sandboxId}}.{} host \
                     (or /dashboard/, /api/...)",
                    self.shared.domain
                ),
            )
        })?;
        if origin::daemon_port(dest.port)
            && !origin::check(&req.method, session.is_upgrade_req(), scan.origin, self.https, &host)
        {
            return Err(Reject::new(
                403,
                "cross-origin",
                "cross-origin request to the sandbox's toolbox, SSH or terminal port refused: its Origin is not this host",
            ));
        }
        ctx.toolbox = dest.toolbox;
        // A signed preview URL carries its token where the sandbox id would be; the API says which sandbox it opens.
        let signed = credentials::signed_token(&dest);
        let sandbox_id = match &signed {
            None => dest.sandbox_id.clone(),
            Some(token) => self.resolve_signed(token, dest.port, None).await?.sandbox_id,
        };
        ctx.sandbox_id = Some(sandbox_id.clone());
        let route = self.route(&sandbox_id).await?;
        let access = self.access(session, scan, &dest, &sandbox_id, &route, signed.as_deref()).await?;
        ctx.set_cookie = access.set_cookie;
        if access.redirect {
            ctx.redirect = Some(rewrite::strip_query_param(path_and_query, PREVIEW_TOKEN_QUERY));
            return Ok(());
        }
        let (route, daemon_addr) = self.ready(&sandbox_id, route, access.credentialed).await?;
        self.shared.activity.touch(&sandbox_id);
        let signer = self.shared.signers.get(&route.daemon_token);
        ctx.forward = Some(Forward::new(&dest, host, signer, access.used_bearer)?);
        if session.is_upgrade_req() {
            ctx.session = Some(revoke::Session {
                sandbox_id,
                port: dest.port,
                daemon_addr: daemon_addr.clone(),
                grant: access.grant,
            });
        }
        ctx.daemon_addr = Some(daemon_addr);
        Ok(())
    }
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
            toolbox: false,
            forward: None,
            strip: Strip::default(),
            set_cookie: None,
            redirect: None,
            session: None,
            upstream_socket: None,
            watch: None,
            gate: None,
            upgraded: false,
            to_api: false,
            counted: false,
            log_path: None,
            span: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        if session.is_upgrade_req() {
            // An upgraded connection lives as long as its two ends do; pings and traffic keep it, not a timer.
            session.set_read_timeout(None);
        }
        let scan = Scan::of(&session.req_header().headers);
        if let Some(id) = access_log::client_request_id(&scan) {
            ctx.request_id = id;
        }
        let parent = scan.traceparent.and_then(TraceParent::parse);
        // The name is only read when spans are exported: no string is built for it otherwise.
        let name = if otlp::enabled() { format!("{} (proxy)", session.req_header().method) } else { String::new() };
        ctx.span = otlp::Span::start(name, otlp::Kind::Server, parent.as_ref());
        access_log::remember(session, ctx);
        self.shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        ctx.counted = true;
        match self.admit(session, &scan, ctx).await {
            Ok(()) => {
                if let Some(location) = ctx.redirect.take() {
                    reject::send_redirect(session, &location, ctx.set_cookie.as_deref(), &ctx.request_id).await?;
                    return Ok(true);
                }
                if let Some(forward) = &ctx.forward {
                    forward.set_path(session);
                }
                Ok(false)
            }
            Err(r) => {
                tracing::debug!(status = r.status, reason = r.reason, request_id = %ctx.request_id, "rejected");
                r.send(session, &ctx.request_id).await?;
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

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.to_api {
            return Ok(Box::new(self.shared.api.peer()));
        }
        let addr = ctx
            .daemon_addr
            .as_deref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no daemon address for this request"))?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.total_connection_timeout = Some(Duration::from_secs(10));
        // Long calls (process/execute with a timeout, logs follow, PTY) may be silent for a long time, so no read
        // timeout: a daemon that stopped answering is found by TCP instead (see [`upgrade::daemon_keepalive`]).
        peer.options.read_timeout = None;
        peer.options.write_timeout = None;
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.options.tcp_keepalive = Some(upgrade::daemon_keepalive());
        if session.is_upgrade_req() {
            let gate = Arc::new(upgrade::Gate::default());
            ctx.gate = Some(gate.clone());
            peer = upgrade::peer(peer, gate, Duration::from_secs(5));
        }
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.session.is_some() {
            // A gated (upgrade) connection has no descriptor pingora knows of: its gate kept a duplicate.
            ctx.upstream_socket = match &ctx.gate {
                Some(gate) => gate.take_socket(),
                None if fd >= 0 => revoke::dup_socket(fd),
                None => None,
            };
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if end_of_stream && let Some(gate) = &ctx.gate {
            gate.body_ended();
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(t) = ctx.trace() {
            req.insert_header(trace::HEADER, t.header())?;
        }
        if ctx.to_api {
            return api_route::apply(session, req, &ctx.request_id, self.https);
        }
        let forward = ctx
            .forward
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no forwarding plan for this request"))?;
        forward.apply(session, req, &ctx.request_id, self.https, ctx.strip)
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if resp.status.as_u16() == 101 && !ctx.upgraded {
            ctx.upgraded = true;
            self.shared.metrics.open_websockets.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = &ctx.sandbox_id {
                self.shared.activity.open(id);
            }
            if let (Some(s), Some(socket)) = (ctx.session.take(), ctx.upstream_socket.take()) {
                ctx.watch = Some(revoke::watch(self.shared.clone(), s, socket));
            }
        }
        let toolbox_id = ctx.sandbox_id.as_deref().filter(|_| ctx.toolbox);
        rewrite::response(resp, toolbox_id, ctx.daemon_addr.as_deref(), ctx.set_cookie.take(), &ctx.request_id)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if end_of_stream && ctx.upgraded && ctx.watch.as_ref().is_some_and(revoke::Watch::revoked) {
            let close = revoke::close_frame(revoke::CLOSE_POLICY_VIOLATION, revoke::REVOKED_REASON);
            *body = Some(match body.take() {
                Some(b) => [b, close].concat().into(),
                None => close,
            });
        }
        Ok(None)
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
        if e.esource() == &ErrorSource::Upstream {
            self.shared.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = &ctx.sandbox_id {
                // The daemon may have moved: look the route up again next time.
                self.shared.routes.invalidate(std::slice::from_ref(id));
            }
        }
        if ctx.upgraded && e.esource() == &ErrorSource::Upstream {
            // The tunnel's daemon side failed (a black-holed daemon is found by TCP keepalive): the client gets a
            // close frame saying so rather than a bare end of its connection.
            let close = revoke::close_frame(revoke::CLOSE_DAEMON_LOST, revoke::DAEMON_LOST_REASON);
            if let Err(we) = session.write_response_body(Some(close), true).await {
                tracing::debug!(error = %we, "could not send the close frame");
            }
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        let mut code = 0;
        let reject = if ctx.to_api && e.esource() == &ErrorSource::Upstream {
            Some(Reject::new(502, "api-unreachable", format!("the API did not answer: {}", e.etype().as_str())))
        } else {
            Reject::for_proxy_error(e, ctx.daemon_addr.as_deref())
        };
        if let Some(r) = reject {
            code = r.status;
            if session.response_written().is_none()
                && let Err(we) = r.send(session, &ctx.request_id).await
            {
                tracing::debug!(error = %we, "could not send the error response");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let m = &self.shared.metrics;
        if ctx.counted {
            m.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        ctx.watch = None;
        ctx.upstream_socket = None;
        if ctx.upgraded {
            m.open_websockets.fetch_sub(1, Ordering::Relaxed);
            if let Some(id) = &ctx.sandbox_id {
                self.shared.activity.close(id);
                self.shared.activity.touch(id);
            }
        }
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        m.record(status, ctx.start.elapsed());
        access_log::write(session, e, ctx);
        if let Some(mut span) = ctx.span.take()
            && span.recording()
        {
            access_log::describe(&mut span, session, e, ctx);
        }
    }
}
