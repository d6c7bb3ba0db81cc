//! The floor under sandbar-proxy's cost per request: a pingora `ProxyHttp` that does what the nginx of
//! benches/proxy-vs-nginx does and nothing more (every request to one upstream, one header added), run the way
//! sandbar-proxy runs pingora (its services on a current-thread tokio runtime, jemalloc). The gap between this and
//! sandbar-proxy is our own work per request (routing, auth, header rewriting, metrics); the gap between this and
//! nginx is pingora's.
//!
//! `--sandbar-work DAEMON_TOKEN` adds, written as plainly as pingora allows, only the work sandbar-proxy cannot
//! leave out of a request without dropping a security property, an answer the SDK reads or auto-stop: the
//! request-head deadline (slowloris; `sandbar_proxy::head_deadline`, the same wrapper); sandbar-proxy's own checks
//! of the head, called as they are (one pass over the headers for a framing-safe `Content-Length` and the
//! credentials, `Host` against the target's authority, the Host/path parser, the cross-origin rule of the daemon's
//! ports); the caller's API key looked up in a map of grants keyed by its SHA-256 (no raw key held); the sandbox's
//! route looked up and its activity marked (auto-stop); the daemon's path put in place; every recognised credential
//! stripped (sandbar-proxy's `credentials::strip`); the per-request daemon credential signed
//! (`sandbar_support::daemon_auth`: the daemon token never crosses the network); a request id sent to the daemon
//! and back in both headers the SDK and our logs read. Left out: tracing, metrics, the other credential kinds
//! (preview tokens, cookies, signed URLs), sandbox states and waking, error pages. Its cost above the bare floor is
//! what the mandatory work costs (`--no-head-deadline` leaves the deadline out, to price it); sandbar-proxy's above
//! it is what the rest and our structure cost.
//! Usage: pingora_floor --upstream HOST:PORT [--header NAME:VALUE] [--sandbar-work DAEMON_TOKEN
//! [--no-head-deadline]]; prints `pingora-floor ready http=ADDR`. With `--sandbar-work` it serves
//! `/toolbox/sbx1/...` to `Authorization: Bearer k` (what benches/peers/api_standin.py grants) and 401 to others.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds, ShutdownWatch};
use pingora::services::Service as _;
use pingora::services::listening::Service;
use sandbar_proto::DAEMON_AUTH_HEADER;
use sandbar_proto::api::REQUEST_ID_HEADER;
use sandbar_proxy::control::activity::Activity;
use sandbar_proxy::edge::headers::{Scan, Strip};
use sandbar_proxy::edge::target::{self, Target};
use sandbar_proxy::edge::{credentials, origin};
use sandbar_proxy::head_deadline::{HeadDeadline, HeadRead, KeptAlive};
use sandbar_support::daemon_auth::Signer;
use sandbar_support::request_id;
use sandbar_support::token::push_hex;
use sha2::{Digest, Sha256};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    upstream: String,
    header: Option<(String, String)>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> pingora::Result<()> {
        if let Some((name, value)) = &self.header {
            req.insert_header(name.clone(), value.as_str())?;
        }
        Ok(())
    }
}

/// The API key and sandbox benches/peers/api_standin.py grants.
const BENCH_KEY: &str = "k";
const BENCH_SANDBOX: &str = "sbx1";
/// sandbar-proxy's default domain (preview hosts are `{port}-{id}.{domain}`).
const BENCH_DOMAIN: &str = "localhost";

/// A grant's key: never the raw credential (as in sandbar-proxy's authorization cache).
fn grant_key(credential: &str, sandbox_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((credential.len() as u64).to_le_bytes());
    h.update(credential.as_bytes());
    h.update(sandbox_id.as_bytes());
    h.finalize().into()
}

struct Route {
    addr: String,
    signer: Signer,
}

/// The floor plus what sandbar-proxy must do to every request (the module's doc says what and why).
struct Mandatory {
    grants: HashSet<[u8; 32]>,
    routes: HashMap<String, Arc<Route>>,
    activity: Activity,
    id_prefix: u64,
    next_id: AtomicU64,
}

#[derive(Default)]
struct MandatoryCtx {
    request_id: String,
    route: Option<Arc<Route>>,
    /// Which credential headers the request has, to strip.
    strip: Strip,
}

impl Mandatory {
    fn new(upstream: String, daemon_token: &str) -> Self {
        let (id_prefix, start) = uuid::Uuid::new_v4().as_u64_pair();
        let route = Arc::new(Route { addr: upstream, signer: Signer::new(daemon_token) });
        Self {
            grants: HashSet::from([grant_key(BENCH_KEY, BENCH_SANDBOX)]),
            routes: HashMap::from([(BENCH_SANDBOX.to_owned(), route)]),
            activity: Activity::default(),
            id_prefix,
            next_id: AtomicU64::new(start),
        }
    }

    /// The route, the daemon's path and the headers to strip of an admitted request; `Err(status)` otherwise.
    fn admit(&self, session: &Session) -> Result<(Arc<Route>, http::Uri, Strip), u16> {
        let req = session.req_header();
        let scan = Scan::of(&req.headers);
        if !scan.content_length_ok {
            return Err(400);
        }
        if let (Some(authority), Some(h)) = (req.uri.authority(), scan.host)
            && !authority.as_str().eq_ignore_ascii_case(h)
        {
            return Err(400);
        }
        let host = req.uri.authority().map(|a| a.as_str()).or(scan.host).ok_or(400u16)?;
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(Target::Toolbox { sandbox_id, rest }) = target::parse(host, path_and_query, BENCH_DOMAIN) else {
            return Err(404);
        };
        if !origin::check(&req.method, session.is_upgrade_req(), scan.origin, false, host) {
            return Err(403);
        }
        let credential = scan.authorization.and_then(|v| v.strip_prefix("Bearer ")).ok_or(401u16)?;
        if !self.grants.contains(&grant_key(credential, sandbox_id)) {
            return Err(401);
        }
        let route = self.routes.get(sandbox_id).ok_or(404u16)?.clone();
        self.activity.touch(sandbox_id);
        let uri = rest.parse().map_err(|_| 400u16)?;
        Ok((route, uri, scan.strip))
    }
}

#[async_trait]
impl ProxyHttp for Mandatory {
    type CTX = MandatoryCtx;

    fn new_ctx(&self) -> MandatoryCtx {
        let mut request_id = String::with_capacity(32);
        push_hex(&mut request_id, &self.id_prefix.to_be_bytes());
        push_hex(&mut request_id, &self.next_id.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        MandatoryCtx { request_id, route: None, strip: Strip::default() }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut MandatoryCtx) -> pingora::Result<bool> {
        match self.admit(session) {
            Ok((route, uri, strip)) => {
                ctx.route = Some(route);
                ctx.strip = strip;
                session.req_header_mut().set_uri(uri);
                Ok(false)
            }
            Err(status) => {
                session.respond_error(status).await?;
                Ok(true)
            }
        }
    }

    fn on_connection_reuse(&self, _: &mut Session, _: &mut MandatoryCtx, prev: Box<dyn Any + Send + Sync>) {
        if let Some(head) = prev.downcast_ref::<HeadRead>() {
            head.mark();
        }
    }

    fn persist_connection_context(&self, _: &Session, _: &MandatoryCtx) -> Option<Box<dyn Any + Send + Sync>> {
        Some(Box::new(KeptAlive))
    }

    async fn upstream_peer(&self, _: &mut Session, ctx: &mut MandatoryCtx) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx.route.as_ref().ok_or_else(|| pingora::Error::new(pingora::ErrorType::InternalError))?;
        Ok(Box::new(HttpPeer::new(route.addr.as_str(), false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut MandatoryCtx,
    ) -> pingora::Result<()> {
        let route = ctx.route.as_ref().ok_or_else(|| pingora::Error::new(pingora::ErrorType::InternalError))?;
        credentials::strip(req, true, ctx.strip);
        let credential = route.signer.sign(req.method.as_str(), req.uri.path_and_query().map_or("/", |p| p.as_str()));
        req.append_header(DAEMON_AUTH_HEADER, credential)?;
        req.append_header(request_id::HEADER, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut MandatoryCtx,
    ) -> pingora::Result<()> {
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut upstream = None;
    let mut header = None;
    let mut sandbar_work = None;
    let mut head_deadline = true;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-head-deadline" {
            head_deadline = false;
            continue;
        }
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upstream" => upstream = Some(v),
            "--header" => {
                let (n, v) = v.split_once(':').context("--header takes NAME:VALUE")?;
                header = Some((n.trim().to_owned(), v.trim().to_owned()));
            }
            "--sandbar-work" => sandbar_work = Some(v),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let upstream = upstream.context("--upstream HOST:PORT is required")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let mut fds = Fds::new();
        fds.add(addr.clone(), listener.into_raw_fd());
        let fds: ListenFds = Arc::new(fds.into());
        let conf = Arc::new(ServerConf { upstream_keepalive_pool_size: 256, ..ServerConf::default() });
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let Some(token) = sandbar_work else {
            let app = pingora::proxy::http_proxy(&conf, Bare { upstream, header });
            serve(app, &addr, fds, rx).await;
            return Ok(());
        };
        let app = pingora::proxy::http_proxy(&conf, Mandatory::new(upstream, &token));
        if head_deadline {
            // sandbar-proxy's default header timeout.
            let limit = Duration::from_secs(10);
            serve(HeadDeadline::new(app, limit, Arc::default()), &addr, fds, rx).await;
        } else {
            serve(app, &addr, fds, rx).await;
        }
        Ok(())
    })
}

async fn serve<A: HttpServerApp + Send + Sync + 'static>(app: A, addr: &str, fds: ListenFds, shutdown: ShutdownWatch) {
    let mut svc = Service::new("pingora-floor".to_owned(), app);
    svc.add_tcp(addr);
    println!("pingora-floor ready http={addr}");
    svc.start_service(Some(fds), shutdown, 1).await;
}
