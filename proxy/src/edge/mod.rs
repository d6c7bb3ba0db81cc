//! The pingora `ProxyHttp` implementation: this module only wires pingora's phases, each step lives beside it.
//!
//! - `request_filter`: where the request goes ([`target`]), the sandbox's route, what the request's credential
//!   opens ([`credentials`], asked of the API), waking an auto-stopped sandbox and the answer for every other state
//!   ([`wake`]); any refusal is answered here ([`reject`]).
//! - `upstream_peer`: the daemon the route names. `upstream_request_filter`: the request as the daemon gets it
//!   ([`rewrite`]). `response_filter`: WebSocket accounting and the answer's headers ([`rewrite`]).
//! - `fail_to_proxy`: a daemon that did not answer ([`reject`]); `logging`: metrics and activity.
//!
//! A new route rule is a [`target::Target`] variant, its access rule in the API, and its wiring here.

pub mod credentials;
pub mod reject;
pub mod rewrite;
pub mod target;
pub mod wake;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use self::credentials::PREVIEW_COOKIE;
pub use self::reject::PROXY_ERROR_SOURCE;
use self::reject::Reject;
use self::rewrite::{Forward, RequestIds};
use self::target::Destination;
use crate::control::activity::Activity;
use crate::control::cache::{AuthCache, RouteCache, Waker};
use crate::head_deadline::{HeadRead, KeptAlive};
use crate::metrics::Metrics;

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
    /// How the admitted request goes to the daemon.
    forward: Option<Forward>,
    set_cookie: Option<String>,
    upgraded: bool,
    /// Counted in the in-flight gauge (so `logging` only undoes what `request_filter` did).
    counted: bool,
}

impl EdgeProxy {
    /// Everything before forwarding, in order; `Err(Reject)` is answered by `request_filter`.
    async fn admit(&self, session: &Session, ctx: &mut Ctx) -> std::result::Result<(), Reject> {
        let req = session.req_header();
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| credentials::header_str(session, "host"))
            .ok_or_else(|| Reject::new(400, "bad-host", "missing Host header"))?
            .to_owned();
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = target::parse(&host, path_and_query, &self.shared.domain)
            .map_err(|e| Reject::new(400, "bad-request", e.to_string()))?;
        let dest = Destination::of(&target).ok_or_else(|| {
            Reject::new(
                404,
                "no-sandbox",
                format!(
                    "no sandbox in this request: use /toolbox/{{sandboxId}}/... or a {{port}}-{{sandboxId}}.{} host",
                    self.shared.domain
                ),
            )
        })?;
        ctx.toolbox_prefix = dest.toolbox_prefix.clone();
        // A signed preview URL carries its token where the sandbox id would be; the API says which sandbox it opens.
        let signed = credentials::signed_token(&dest);
        let sandbox_id = match &signed {
            None => dest.sandbox_id.clone(),
            Some(token) => self.resolve_signed(token, dest.port, None).await?.sandbox_id,
        };
        ctx.sandbox_id = Some(sandbox_id.clone());
        let route = self.route(&sandbox_id).await?;
        let access = self.access(session, &dest, &sandbox_id, &route, signed.as_deref()).await?;
        let (route, daemon_addr) = self.ready(&sandbox_id, route, access.credentialed).await?;
        self.shared.activity.touch(&sandbox_id);
        ctx.forward = Some(Forward::new(&dest, host, route.daemon_token.clone(), access.used_bearer)?);
        ctx.set_cookie = access.set_cookie;
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
            toolbox_prefix: None,
            forward: None,
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
            Ok(()) => {
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

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let forward = ctx
            .forward
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no forwarding plan for this request"))?;
        forward.apply(session, req, &ctx.request_id, self.https)
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if resp.status.as_u16() == 101 && !ctx.upgraded {
            ctx.upgraded = true;
            self.shared.metrics.open_websockets.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = &ctx.sandbox_id {
                self.shared.activity.open(id);
            }
        }
        let (prefix, addr) = (ctx.toolbox_prefix.as_deref(), ctx.daemon_addr.as_deref());
        rewrite::response(resp, prefix, addr, ctx.set_cookie.take(), &ctx.request_id)
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
        let mut code = 0;
        if let Some(r) = Reject::for_proxy_error(e, ctx.daemon_addr.as_deref()) {
            code = r.status;
            if session.response_written().is_none()
                && let Err(we) = r.send(session, &ctx.request_id).await
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
