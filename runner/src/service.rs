//! The runner as a service: its options, and [`run`], which connects to Docker, serves the runner's HTTP API, and
//! works for the control plane until shut down. `sandbar-runner` is a thin `main` around it (`sandbar up` starts
//! that binary as one of its children).
//!
//! The options follow the model every service shares (`sandbar_support::config`): defaults < a TOML file
//! (`--config`, `SANDBAR_RUNNER_CONFIG` or `SANDBAR_CONFIG`; e.g. `/etc/sandbar/runner.toml`, keys as the field
//! names below, durations as `"30s"`) < `SANDBAR_*` environment (every option has a variable) < flags.
//! `sandbar-runner --print-config` prints the result with the token and the archive store's secrets masked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sandbar_proto::runner::Resources;
use sandbar_support::config::{duration, secs_or_duration};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::NoNewPrivileges;
use crate::control::{self, ControlPlane};
use crate::host::registry::ImageRegistry;
use crate::{Runner, RunnerConfig, WarmPoolConfig};

/// Options of a runner process.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerOptions {
    /// This runner's id (written on its containers; a runner only touches its own).
    #[arg(long, env = "SANDBAR_RUNNER_ID", default_value = "local")]
    pub runner_id: String,
    /// The control plane's base URL, with its `/api` prefix.
    #[arg(long, env = "SANDBAR_API_URL", default_value = "http://127.0.0.1:3000/api")]
    pub api_url: String,
    /// Service token presented to the API and required by the runner's own HTTP API.
    #[arg(long, env = "SANDBAR_RUNNER_TOKEN", hide_env_values = true, default_value = "")]
    pub runner_token: String,
    /// The static `sandbar-daemon` to mount into every sandbox (required).
    #[arg(long, env = "SANDBAR_STATIC_DAEMON")]
    pub daemon_binary: Option<PathBuf>,
    /// Address of the runner's HTTP API (`/healthz` and `/readyz` for anyone; health, info, metrics with the runner
    /// token); port 0 picks a free one.
    #[arg(long = "runner-listen", env = "SANDBAR_RUNNER_ADDR", default_value = "127.0.0.1:3003")]
    pub listen: SocketAddr,
    /// Image of sandboxes created without one.
    #[arg(long, env = "SANDBAR_DEFAULT_IMAGE", default_value = "sandbar-sandbox:default")]
    pub default_image: String,
    /// Script that builds the default image when it is missing.
    #[arg(long, env = "SANDBAR_IMAGE_SCRIPT")]
    pub image_script: Option<PathBuf>,
    /// Started sandboxes of the default image and size kept ready (0 = no warm pool).
    #[arg(long, env = "SANDBAR_WARM_POOL", default_value_t = 0)]
    pub warm_pool: usize,
    /// How long the runner waits, after SIGTERM, for jobs in flight to finish and report (a bare number is
    /// seconds); a job still running then (a long build) is left to the API, which hands it out again when the
    /// runner is back. Default 10 s.
    #[arg(long, env = "SANDBAR_RUNNER_SHUTDOWN_GRACE", default_value = "10s", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Where the runner keeps warm-pool claims.
    #[arg(long = "runner-state-dir", env = "SANDBAR_RUNNER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where archived sandboxes go: `s3://bucket/prefix` (with the usual AWS_* environment; AWS_ENDPOINT for an
    /// S3-compatible store; `?timeout=60s&max_retries=10&...` sets the timeouts and retries, see the runner's
    /// `host::archive::store`), `file:///path` or a path. Default: `<runner-state-dir>/archives`.
    #[arg(long, env = "SANDBAR_ARCHIVE_STORE")]
    pub archive_store: Option<String>,
    /// Disk the runner advertises for placement, GiB.
    #[arg(long, env = "SANDBAR_DISK_CAPACITY", default_value_t = 100)]
    pub disk_capacity: u32,
    /// Docker network of the sandboxes (default: Docker's default bridge).
    #[arg(long, env = "SANDBAR_DOCKER_NETWORK")]
    pub network: Option<String>,
    /// Extra `key=value` label on every container this runner makes (tests mark theirs); repeatable, or
    /// comma-separated in the environment.
    #[arg(long = "container-label", env = "SANDBAR_CONTAINER_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub container_labels: Vec<String>,
    /// Isolate sandboxes from each other and enforce their egress policies with iptables (`false`: no rules,
    /// and creates asking for a policy or a link fail).
    #[arg(long, env = "SANDBAR_NETWORK_RULES", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_rules: bool,
    /// The host address a proxy on another host reaches this runner's sandboxes at: their daemon ports are
    /// published on it (ports chosen by Docker) and reported to the API instead of their bridge addresses (which
    /// only this host reaches). Unset: bridge addresses, the single-host path.
    #[arg(long, env = "SANDBAR_ADVERTISE_ADDR")]
    pub advertise_addr: Option<std::net::Ipv4Addr>,
    /// The iptables binary (default: whichever of iptables, iptables-nft, iptables-legacy holds DOCKER-USER).
    #[arg(long, env = "SANDBAR_IPTABLES")]
    pub iptables: Option<String>,
    /// An IPv4 range no sandbox may reach whatever its policy (the LAN, other private networks); repeatable, or
    /// comma-separated in the environment. 169.254.0.0/16, 127.0.0.0/8 and the host's own addresses are always
    /// denied.
    #[arg(long = "deny-cidr", env = "SANDBAR_DENY_CIDRS", value_delimiter = ',')]
    pub deny_cidrs: Vec<String>,
    /// Time between checks that the network rules are still in the kernel (rewritten when not); a bare number is
    /// seconds. Default 5 s.
    #[arg(long, alias = "firewall-recheck-secs", env = "SANDBAR_FIREWALL_RECHECK_SECS", default_value = "5s",
          value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub firewall_recheck: Duration,
    /// Open files per process in a sandbox (soft and hard `nofile` limit).
    #[arg(long, env = "SANDBAR_NOFILE_LIMIT", default_value_t = 16384)]
    pub nofile_limit: u64,
    /// Cap of each sandbox's Docker log (its entrypoint's output): size of one file (`10m`; k, m or g) ...
    #[arg(long, env = "SANDBAR_CONTAINER_LOG_MAX_SIZE", default_value = "10m")]
    pub container_log_max_size: String,
    /// ... and how many files are kept.
    #[arg(long, env = "SANDBAR_CONTAINER_LOG_MAX_FILES", default_value_t = 3)]
    pub container_log_max_files: u32,
    /// `no-new-privileges` for sandboxes: `auto` sets it where the sandbox runs as root (nothing to gain from
    /// setuid) and leaves it off for other users so they can `sudo`; `always` also for them (no sudo); `never`.
    #[arg(long, env = "SANDBAR_NO_NEW_PRIVILEGES", value_enum, default_value_t = NoNewPrivileges::Auto)]
    pub no_new_privileges: NoNewPrivileges,
    /// Run sandboxes even though Docker has no user namespaces (`userns-remap`), so that root in a sandbox is root
    /// on the host. Without this flag the runner refuses to start on such a Docker.
    #[arg(long, env = "SANDBAR_ALLOW_HOST_ROOT")]
    pub allow_host_root: bool,
    /// OCI runtimes sandboxes may ask for (comma-separated, each registered with Docker, e.g. `runc,runsc` for
    /// gVisor); the first is the default.
    #[arg(long, env = "SANDBAR_RUNTIMES", value_delimiter = ',', default_value = "runc")]
    pub runtimes: Vec<String>,
    /// Time between two measures of each sandbox's disk use, where the storage driver cannot cap it; a sandbox
    /// over its disk quota is stopped. 0: no watchdog. A bare number is seconds. Default 30 s.
    #[arg(long, alias = "disk-watchdog-secs", env = "SANDBAR_DISK_WATCHDOG_SECS", default_value = "30s",
          value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub disk_watchdog: Duration,
    /// How long a registry pull may go without any progress before it is abandoned (a registry that stopped
    /// answering); a pull that progresses has no deadline. A bare number is seconds. Default 60 s.
    #[arg(long, alias = "pull-stall-secs", env = "SANDBAR_PULL_STALL_SECS", default_value = "60s",
          value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub pull_stall: Duration,
    /// OTLP/HTTP collector for traces (`http://host:port`; `POST {endpoint}/v1/traces`, `sandbar_support::otlp`):
    /// the runner's job and Docker spans, and the spans it collects from the daemons it starts. Unset: none.
    #[arg(long, env = "SANDBAR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The internal registry the images this runner makes (snapshots, Dockerfile builds) are pushed to, so that
    /// sandboxes of them may be placed on any runner: `host[:port][/prefix]`, with `http://` when the runner's own
    /// calls to it (deletes) are plain HTTP (Docker's pushes and pulls follow its `insecure-registries`). Give
    /// every runner the same one. Unset: images stay on the runner that made them.
    #[arg(long, env = "SANDBAR_IMAGE_REGISTRY")]
    pub image_registry: Option<String>,
    /// User name for the internal registry (with the password; none: anonymous).
    #[arg(long, env = "SANDBAR_IMAGE_REGISTRY_USERNAME")]
    pub image_registry_username: Option<String>,
    /// Password for the internal registry.
    #[arg(long, env = "SANDBAR_IMAGE_REGISTRY_PASSWORD", hide_env_values = true)]
    pub image_registry_password: Option<String>,
}

fn parse_label(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

impl RunnerOptions {
    /// Checks what the types cannot, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.runner_token.is_empty() {
            return Err("the runner needs a service token (runner_token, --runner-token, SANDBAR_RUNNER_TOKEN)".into());
        }
        if self.daemon_binary.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
            return Err(
                "the runner needs the static daemon (daemon_binary, --daemon-binary, SANDBAR_STATIC_DAEMON)".into()
            );
        }
        if let Some(e) = &self.otlp_endpoint {
            sandbar_support::otlp::Endpoint::parse(e).map_err(|e| format!("otlp_endpoint (--otlp-endpoint): {e}"))?;
        }
        if let Some(bad) = self.container_labels.iter().find(|l| parse_label(l).is_err()) {
            return Err(format!("container_labels: {bad:?} is not key=value"));
        }
        self.registry().map_err(|e| format!("image_registry: {e}"))?;
        self.config().validate()
    }

    /// The internal registry setting, parsed (`None` when unset).
    fn registry(&self) -> Result<Option<ImageRegistry>, String> {
        let Some(value) = self.image_registry.as_deref().filter(|v| !v.trim().is_empty()) else { return Ok(None) };
        let user = self.image_registry_username.clone().filter(|u| !u.is_empty());
        let password = self.image_registry_password.clone().filter(|p| !p.is_empty());
        ImageRegistry::parse(value, user, password).map(Some)
    }

    pub fn config(&self) -> RunnerConfig {
        let mut c = RunnerConfig::new(self.daemon_binary.clone().unwrap_or_default());
        c.runner_id = self.runner_id.clone();
        c.default_image = self.default_image.clone();
        c.image_script = self.image_script.clone();
        c.disk_capacity_gib = self.disk_capacity;
        c.network = self.network.clone();
        c.state_dir = self.state_dir.clone();
        c.archive_store = self.archive_store.clone();
        c.extra_labels = self
            .container_labels
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        c.network_rules = self.network_rules;
        c.advertise_addr = self.advertise_addr;
        c.iptables = self.iptables.clone();
        c.deny_cidrs = self.deny_cidrs.clone();
        c.firewall_recheck = self.firewall_recheck;
        c.nofile_limit = self.nofile_limit;
        c.log_max_size = self.container_log_max_size.clone();
        c.log_max_files = self.container_log_max_files;
        c.no_new_privileges = self.no_new_privileges;
        c.allow_host_root = self.allow_host_root;
        c.runtimes = self.runtimes.clone();
        c.pull_stall_timeout = self.pull_stall;
        // `validate` refused a bad value before anything starts.
        c.image_registry = self.registry().unwrap_or_default();
        c.disk_watchdog_interval = (!self.disk_watchdog.is_zero()).then_some(self.disk_watchdog);
        if self.warm_pool > 0 {
            c.warm_pool = Some(WarmPoolConfig {
                size: self.warm_pool,
                image: self.default_image.clone(),
                resources: Resources::default(),
            });
        }
        c
    }
}

/// Runs the runner until `shutdown`; `ready` gets the bound address of its HTTP API once it serves.
pub async fn run(
    opts: RunnerOptions,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr) + Send,
) -> anyhow::Result<()> {
    if opts.runner_token.is_empty() {
        anyhow::bail!("the runner needs a service token (SANDBAR_RUNNER_TOKEN)");
    }
    let runner = Runner::new(opts.config()).await.context("starting the runner")?;
    let networks = runner.daemon_networks().await.context("reading the sandboxes' network")?;
    let cp = ControlPlane::new(&opts.api_url, opts.runner_token.clone())
        .context("control plane client")?
        .with_daemon_networks(networks);
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let app = crate::http::router(runner.clone(), &opts.runner_token, cp.contact());
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { http_shutdown.cancelled().await }).await
    });
    ready(addr);
    control::run(runner, cp, shutdown.clone(), opts.shutdown_grace).await;
    match tokio::time::timeout(Duration::from_secs(5), http).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(e).context("runner HTTP API"),
        Ok(Err(e)) => Err(e).context("runner HTTP API task"),
    }
}
