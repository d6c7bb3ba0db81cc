//! sandbar-proxy: the pingora edge. Terminates TLS with rustls (HTTP/1.1 and HTTP/2 to clients), routes
//! `/toolbox/{sandboxId}/...` and `{port}-{sandboxId}.{domain}` to the right daemon with the per-sandbox daemon
//! token added, authenticates callers through the API (cached), passes WebSockets and streams through, pools
//! upstream connections, reports activity, and serves Prometheus metrics on an admin listener.
//!
//! [`run`] takes listeners the caller bound (so port 0 works and the real addresses are known before serving) and
//! a shutdown watch; it runs pingora's services on the caller's tokio runtime, so the proxy can live in the
//! `sandbar-proxy` binary or in-process (the tests). The `sandbar-proxy` binary runs the SSH gateway
//! ([`ssh_gateway`]) beside it, feeding the same activity reporter ([`run_with_activity`]).
//!
//! Layers: [`edge`] is the transport (pingora's phases); [`control`] the adapter to the API, which decides every
//! question of access; [`ssh_gateway`] the SSH transport. [`tls`], [`metrics`] and [`head_deadline`] serve the
//! listeners.

pub mod config;
pub mod control;
pub mod edge;
pub mod head_deadline;
pub mod metrics;
pub mod ssh_gateway;
pub mod tls;

/// The Host/path parser, where the fuzz crate (`proxy/fuzz`) finds it.
pub use edge::target;

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{TlsAccept, TlsAcceptCallbacks};
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds, ShutdownWatch};
use pingora::services::Service as _;
use pingora::services::listening::Service;
use thiserror::Error;

pub use config::Config;

use crate::control::activity::Activity;
use crate::control::api::{ApiCallError, ApiClient};
use crate::control::cache::{AuthCache, RouteCache, Waker};
use crate::edge::{EdgeProxy, Shared};
use crate::head_deadline::HeadDeadline;
use crate::metrics::Metrics;

/// The line prefix printed once every listener is bound.
pub const READY_PREFIX: &str = "sandbar-proxy ready";

#[derive(Debug, Error)]
pub enum ProxyError {
    /// a listener could not be bound or handed to pingora
    #[error("binding {what}: {source}")]
    Bind { what: &'static str, source: std::io::Error },
    /// the TLS certificate could not be loaded or generated
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// the API client could not be built
    #[error(transparent)]
    Api(#[from] ApiCallError),
    /// the configuration is not usable
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The three sockets the proxy serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    pub http: std::net::TcpListener,
    pub https: std::net::TcpListener,
    pub metrics: std::net::TcpListener,
}

impl Listeners {
    /// Binds the configured addresses (port 0 picks a free port).
    pub fn bind(config: &Config) -> Result<Self, ProxyError> {
        let bind = |addr: SocketAddr, what: &'static str| {
            std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind { what, source })
        };
        Ok(Self {
            http: bind(config.http_addr(), "the HTTP listener")?,
            https: bind(config.https_addr(), "the HTTPS listener")?,
            metrics: bind(config.metrics_addr, "the metrics listener")?,
        })
    }

    /// `(http, https, metrics)` bound addresses.
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr, SocketAddr)> {
        Ok((self.http.local_addr()?, self.https.local_addr()?, self.metrics.local_addr()?))
    }

    /// The ready line: `sandbar-proxy ready http=ADDR https=ADDR metrics=ADDR`.
    pub fn ready_line(&self) -> std::io::Result<String> {
        let (h, s, m) = self.addrs()?;
        Ok(format!("{READY_PREFIX} http={h} https={s} metrics={m}"))
    }
}

/// Hands a bound socket to pingora: it looks up listening sockets by address string in the `Fds` table before
/// binding one itself (the mechanism of its zero-downtime upgrades), so the address we register is the real one.
fn hand_over(fds: &mut Fds, listener: std::net::TcpListener, what: &'static str) -> Result<String, ProxyError> {
    listener.set_nonblocking(true).map_err(|source| ProxyError::Bind { what, source })?;
    let addr = listener.local_addr().map_err(|source| ProxyError::Bind { what, source })?.to_string();
    fds.add(addr.clone(), listener.into_raw_fd());
    Ok(addr)
}

struct NoCallbacks;

#[async_trait]
impl TlsAccept for NoCallbacks {}

/// Serves until `shutdown` turns true, then stops accepting, lets in-flight requests and open WebSockets finish
/// for up to `config.shutdown_grace`, and returns.
pub async fn run(config: Config, listeners: Listeners, shutdown: ShutdownWatch) -> Result<(), ProxyError> {
    run_with_activity(config, listeners, Arc::default(), shutdown).await
}

/// [`run`], reporting `activity` (which others, such as the SSH gateway, may mark too) every
/// `config.activity_interval` and once more after draining.
pub async fn run_with_activity(
    config: Config,
    listeners: Listeners,
    activity: Arc<Activity>,
    shutdown: ShutdownWatch,
) -> Result<(), ProxyError> {
    config.validate().map_err(ProxyError::Config)?;
    let metrics = Arc::new(Metrics::default());
    let api = ApiClient::new(&config.api_url, config.token.clone())?;
    let routes = Arc::new(RouteCache::new(api.clone(), config.route_ttl, metrics.clone()));
    let shared = Arc::new(Shared {
        domain: config.domain.to_ascii_lowercase(),
        routes: routes.clone(),
        auth: AuthCache::new(api.clone(), metrics.clone()),
        waker: Waker::new(api.clone(), routes.clone(), config.wake_timeout, metrics.clone()),
        wake_timeout: config.wake_timeout,
        metrics: metrics.clone(),
        activity: activity.clone(),
        request_ids: Default::default(),
        signers: Default::default(),
        api: edge::api_route::Upstream::from_url(&config.api_url).map_err(ProxyError::Config)?,
    });

    // Certificates: configured pairs first (chosen by SNI), the generated one as the fallback; all reloaded when
    // their files change (`tls`).
    let mut files = config.tls.clone();
    files.push(tls::ensure_self_signed(&config.data_dir, &shared.domain)?);
    let resolver = Arc::new(tls::SniResolver::load(&files)?);
    let cert_watch = tokio::spawn(tls::watch(resolver.clone(), config.tls_reload_interval, metrics.clone()));

    let mut fds = Fds::new();
    let http_addr = hand_over(&mut fds, listeners.http, "the HTTP listener")?;
    let https_addr = hand_over(&mut fds, listeners.https, "the HTTPS listener")?;
    let metrics_addr = hand_over(&mut fds, listeners.metrics, "the metrics listener")?;
    // `ListenFds` is `Arc<parking_lot::Mutex<Fds>>`; its `From` builds the mutex without a parking_lot dependency.
    let fds: ListenFds = Arc::new(fds.into());

    let conf = Arc::new(ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(config.shutdown_grace.as_secs()),
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    });

    // Each listener's proxy, behind the request-head deadline (slowloris).
    let edge = |https: bool| {
        let proxy = pingora::proxy::http_proxy(&conf, EdgeProxy { shared: shared.clone(), https });
        HeadDeadline::new(proxy, config.header_timeout, metrics.clone())
    };
    let mut http_svc = Service::new("sandbar-proxy http".to_owned(), edge(false));
    http_svc.add_tcp(&http_addr);
    let mut https_svc = Service::new("sandbar-proxy https".to_owned(), edge(true));
    let callbacks: TlsAcceptCallbacks = Box::new(NoCallbacks);
    let mut tls_settings = TlsSettings::with_callbacks(callbacks).map_err(|e| ProxyError::Config(e.to_string()))?;
    tls_settings.set_cert_resolver(resolver);
    tls_settings.enable_h2();
    https_svc.add_tls_with_settings(&https_addr, None, tls_settings);
    let mut metrics_svc =
        Service::new("sandbar-proxy metrics".to_owned(), metrics::MetricsApp { metrics: metrics.clone() });
    metrics_svc.add_tcp(&metrics_addr);

    let poller = tokio::spawn(routes.clone().follow_changes(config.changes_wait.as_secs()));
    let reporter = tokio::spawn(activity.clone().report(api.clone(), config.activity_interval));

    let tasks = [
        tokio::spawn({
            let (fds, sd) = (fds.clone(), shutdown.clone());
            async move { http_svc.start_service(Some(fds), sd, 1).await }
        }),
        tokio::spawn({
            let (fds, sd) = (fds.clone(), shutdown.clone());
            async move { https_svc.start_service(Some(fds), sd, 1).await }
        }),
        tokio::spawn({
            let (fds, sd) = (fds.clone(), shutdown.clone());
            async move { metrics_svc.start_service(Some(fds), sd, 1).await }
        }),
    ];
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "a listener task failed");
        }
    }

    // The listeners are closed; connections finish on their own (pingora ends keep-alive on shutdown).
    let deadline = Instant::now() + config.shutdown_grace;
    while metrics.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = metrics.in_flight.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(left, "shutdown grace over with requests still open");
    }
    poller.abort();
    reporter.abort();
    cert_watch.abort();
    // One last report so the API sees the final activity.
    activity.flush(&api).await;
    Ok(())
}
