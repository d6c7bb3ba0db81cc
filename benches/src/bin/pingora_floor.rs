//! The floor under sandbar-proxy's cost per request: a pingora `ProxyHttp` that does what the nginx of
//! benches/proxy-vs-nginx does and nothing more (every request to one upstream, one header added), run the way
//! sandbar-proxy runs pingora (its services on a current-thread tokio runtime, jemalloc). The gap between this and
//! sandbar-proxy is our own work per request (routing, auth, header rewriting, metrics); the gap between this and
//! nginx is pingora's.
//! Usage: pingora_floor --upstream HOST:PORT [--header NAME:VALUE]; prints `pingora-floor ready http=ADDR`.

use std::os::fd::IntoRawFd;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::Service as _;
use pingora::services::listening::Service;

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
        req: &mut pingora::http::RequestHeader,
        _ctx: &mut (),
    ) -> pingora::Result<()> {
        if let Some((name, value)) = &self.header {
            req.insert_header(name.clone(), value.as_str())?;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut upstream = None;
    let mut header = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upstream" => upstream = Some(v),
            "--header" => {
                let (n, v) = v.split_once(':').context("--header takes NAME:VALUE")?;
                header = Some((n.trim().to_owned(), v.trim().to_owned()));
            }
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
        let mut svc =
            Service::new("pingora-floor".to_owned(), pingora::proxy::http_proxy(&conf, Bare { upstream, header }));
        svc.add_tcp(&addr);
        println!("pingora-floor ready http={addr}");
        let (_tx, rx) = tokio::sync::watch::channel(false);
        svc.start_service(Some(fds), rx, 1).await;
        Ok(())
    })
}
