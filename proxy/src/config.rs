//! Configuration, in the model every service shares (`sandbar_support::config`): defaults < a TOML file
//! (`--config`, `SANDBAR_PROXY_CONFIG` or `SANDBAR_CONFIG`; e.g. `/etc/sandbar/proxy.toml`, keys as the field names
//! below, durations as `"30s"`) < `SANDBAR_*` environment < flags, then [`Config::finish`]. `sandbar-proxy
//! --print-config` prints the result with the token masked. The flags that took milliseconds or seconds before
//! (`--route-ttl-ms`, `--header-timeout-ms`, ...) still do, and a duration too.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sandbar_support::config::{duration, millis_or_duration, secs_or_duration};
use serde::{Deserialize, Serialize};

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".local/share/sandbar")
}

#[derive(Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the API (with or without the `/api` prefix).
    #[arg(long, env = "SANDBAR_API_URL", default_value = "http://127.0.0.1:3000")]
    pub api_url: String,
    /// Service token presented to the API's internal endpoints (required).
    #[arg(
        long = "proxy-token",
        env = "SANDBAR_PROXY_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub token: String,
    /// Domain of preview hosts: `{port}-{sandboxId}.{domain}`.
    #[arg(long, env = "SANDBAR_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// Data directory: the generated certificate lives in `<data-dir>/tls/`.
    #[arg(long, env = "SANDBAR_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Address the HTTP and HTTPS listeners bind to.
    #[arg(long, env = "SANDBAR_PROXY_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// HTTP port (0 = pick a free one).
    #[arg(long, env = "SANDBAR_PROXY_HTTP_PORT", default_value_t = sandbar_proto::ports::PROXY_HTTP)]
    pub http_port: u16,
    /// HTTPS port (0 = pick a free one).
    #[arg(long, env = "SANDBAR_PROXY_HTTPS_PORT", default_value_t = sandbar_proto::ports::PROXY_HTTPS)]
    pub https_port: u16,
    /// SSH gateway port (0 = pick a free one): `ssh -p PORT <ssh-access-token>@host`.
    #[arg(long, env = "SANDBAR_PROXY_SSH_PORT", default_value_t = sandbar_proto::ports::SSH_GATEWAY)]
    pub ssh_port: u16,
    /// Admin listener for Prometheus `GET /metrics` and `GET /healthz`.
    #[arg(long, env = "SANDBAR_PROXY_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// PEM certificate chain (repeatable, paired in order with --tls-key); chosen by SNI, wildcards work.
    #[arg(long = "tls-cert", env = "SANDBAR_PROXY_TLS_CERT")]
    pub tls_certs: Vec<PathBuf>,
    /// PEM private key of the --tls-cert at the same position.
    #[arg(long = "tls-key", env = "SANDBAR_PROXY_TLS_KEY")]
    pub tls_keys: Vec<PathBuf>,
    /// How often the certificate and key files are checked for a new pair (0 = only on SIGHUP); a bare number is
    /// seconds.
    #[arg(long, env = "SANDBAR_PROXY_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub tls_reload_interval: Duration,
    /// How long a route is cached (changes announced by the API drop it earlier); a bare number is milliseconds.
    #[arg(long, alias = "route-ttl-ms", env = "SANDBAR_PROXY_ROUTE_TTL_MS", default_value = "5s",
          value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub route_ttl: Duration,
    /// How long requests and WebSockets may finish after SIGTERM; a bare number is seconds.
    #[arg(long, env = "SANDBAR_PROXY_SHUTDOWN_GRACE", default_value = "10s", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// How often activity is reported to the API; a bare number is milliseconds.
    #[arg(long, alias = "activity-interval-ms", env = "SANDBAR_PROXY_ACTIVITY_MS", default_value = "1s",
          value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub activity_interval: Duration,
    /// `wait` of the route-changes long-poll (whole seconds; a bare number is seconds).
    #[arg(long, env = "SANDBAR_PROXY_CHANGES_WAIT", default_value = "25s", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub changes_wait: Duration,
    /// How long an HTTP/1 request head may take to arrive: a client that sends it slower (slowloris) is
    /// disconnected. On a kept-alive connection the idle wait before the next request (60 s at most) comes on top.
    /// A bare number is milliseconds.
    #[arg(long, alias = "header-timeout-ms", env = "SANDBAR_PROXY_HEADER_TIMEOUT_MS", default_value = "15s",
          value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// How long a request for an auto-stopped sandbox waits for it to start (0 = never start one: answer 409 at
    /// once). A bare number is milliseconds.
    #[arg(long, alias = "wake-timeout-ms", env = "SANDBAR_PROXY_WAKE_TIMEOUT_MS", default_value = "60s",
          value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub wake_timeout: Duration,
    /// Runtime worker threads: 1 is a single-threaded runtime (no cross-thread wake-ups), more a work-stealing
    /// one; 0 picks half the cores, at least one (the proxy shares its host with the sandboxes it serves).
    #[arg(long, env = "SANDBAR_PROXY_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Log as JSON lines.
    #[arg(long, env = "SANDBAR_LOG_JSON")]
    pub log_json: bool,
    /// OTLP/HTTP collector for traces (`http://host:port`; `POST {endpoint}/v1/traces`, `sandbar_support::otlp`):
    /// a server span per request. Unset: none (`traceparent` is still continued and sent on).
    #[arg(long, env = "SANDBAR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Certificate/key pairs, filled from `tls_certs`/`tls_keys` by `validate`.
    #[arg(skip)]
    #[serde(skip)]
    pub tls: Vec<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url)
            .field("token", &"<redacted>")
            .field("domain", &self.domain)
            .field("data_dir", &self.data_dir)
            .field("http", &self.http_addr())
            .field("https", &self.https_addr())
            .field("metrics", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.http_port)
    }

    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.https_port)
    }

    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.ssh_port)
    }

    /// A configuration for tests and embedding: everything on loopback port 0.
    pub fn local(api_url: impl Into<String>, token: impl Into<String>, data_dir: PathBuf) -> Self {
        Self {
            api_url: api_url.into(),
            token: token.into(),
            domain: "localhost".into(),
            data_dir,
            bind: IpAddr::from([127, 0, 0, 1]),
            http_port: 0,
            https_port: 0,
            ssh_port: 0,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_certs: Vec::new(),
            tls_keys: Vec::new(),
            tls_reload_interval: Duration::from_secs(5),
            route_ttl: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            activity_interval: Duration::from_secs(1),
            changes_wait: Duration::from_secs(25),
            header_timeout: Duration::from_secs(15),
            wake_timeout: Duration::from_secs(60),
            threads: 0,
            log_json: false,
            otlp_endpoint: None,
            tls: Vec::new(),
        }
    }

    /// The runtime's worker threads, with 0 resolved (see `threads`).
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1),
            n => n,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.token.trim().is_empty() {
            return Err("the proxy needs its service token (token, --proxy-token, SANDBAR_PROXY_TOKEN)".into());
        }
        if !self.api_url.starts_with("http://") && !self.api_url.starts_with("https://") {
            return Err(format!("--api-url {:?} must be an http:// or https:// URL", self.api_url));
        }
        let domain = self.domain.trim_end_matches('.');
        if domain.is_empty() || crate::target::host_name(domain).is_err() {
            return Err(format!("--domain {:?} is not a host name", self.domain));
        }
        if self.tls_certs.len() != self.tls_keys.len() && self.tls.is_empty() {
            return Err("every --tls-cert needs a --tls-key (same order)".into());
        }
        let changes_wait = self.changes_wait.as_secs();
        if changes_wait == 0 || changes_wait > sandbar_proto::api::MAX_POLL_WAIT_SECS {
            return Err(format!(
                "changes_wait (--changes-wait) must be 1s..={}s",
                sandbar_proto::api::MAX_POLL_WAIT_SECS
            ));
        }
        if self.header_timeout < Duration::from_millis(100) {
            return Err("header_timeout (--header-timeout) must be at least 100ms".into());
        }
        if self.activity_interval.is_zero() {
            return Err("activity_interval (--activity-interval) must be positive".into());
        }
        if let Some(e) = &self.otlp_endpoint {
            sandbar_support::otlp::Endpoint::parse(e).map_err(|e| format!("otlp_endpoint (--otlp-endpoint): {e}"))?;
        }
        Ok(())
    }

    /// Pairs `--tls-cert` with `--tls-key` and validates.
    pub fn finish(mut self) -> Result<Self, String> {
        self.validate()?;
        if self.tls.is_empty() {
            self.tls = self.tls_certs.iter().cloned().zip(self.tls_keys.iter().cloned()).collect();
        }
        Ok(self)
    }
}
