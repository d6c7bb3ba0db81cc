//! Configuration, in the model every service shares (`sandbar_support::config`): defaults < a TOML file
//! (`--config`, `SANDBAR_API_CONFIG` or `SANDBAR_CONFIG`; e.g. `/etc/sandbar/api.toml`) < `SANDBAR_*` environment <
//! flags, then [`Config::validate`] once at start. The file's keys are the field names below (`[job_deadlines]` and
//! `[limits]` are tables), as `sandbar-api --print-config` prints them with the tokens and the database password
//! masked; durations are written `"30s"`, `"10m"`. The flags that took seconds or milliseconds before
//! (`--create-wait-ms`, `--job-deadline-secs`, ...) still take them, and a duration too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sandbar_support::config::{duration, millis_or_duration, secs_or_duration};
use serde::{Deserialize, Serialize};

use sandbar_proto::api::{HEARTBEAT_INTERVAL_SECS, PROXY_TOKEN_ENV, RUNNER_TOKEN_ENV, RUNNER_UNREACHABLE_AFTER_SECS};

/// Everything `sandbar-api` needs (`sandbar up` passes it as flags to the `sandbar-api` child it starts). Every
/// field documents its default.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long = "listen", env = "SANDBAR_API_ADDR", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Directory for the embedded SQLite database (`<data-dir>/sandbar.db`).
    #[arg(long, env = "SANDBAR_DATA_DIR", default_value = ".")]
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: the SQLite file in the data directory. A managed PostgreSQL
    /// speaks TLS (rustls): `?sslmode=require`, or `?sslmode=verify-full&sslrootcert=/path/ca.pem` to check the
    /// server's certificate against its CA (the system's roots without `sslrootcert`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Public base URL of the proxy: toolboxProxyUrl = this + `/toolbox`; preview URLs use its scheme and host.
    #[arg(long, env = "SANDBAR_PROXY_URL", default_value = "http://localhost:4000")]
    pub proxy_url: String,
    /// `host:port` of the SSH gateway shown in sshCommand; default: the proxy's host and port 2222.
    #[arg(long, env = "SANDBAR_SSH_GATEWAY")]
    pub ssh_gateway: Option<String>,
    /// Service token runners present.
    #[arg(long, env = RUNNER_TOKEN_ENV, hide_env_values = true)]
    pub runner_token: Option<String>,
    /// Service token the proxy (and its SSH gateway) presents.
    #[arg(long, env = PROXY_TOKEN_ENV, hide_env_values = true)]
    pub proxy_token: Option<String>,
    /// Bearer token the operator's Prometheus presents to read `GET /metrics`; without one, metrics are off.
    #[arg(long, env = "SANDBAR_API_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Bearer token of the operator's runner administration (`/api/admin/runners`: list, cordon, uncordon, drain;
    /// the `sandbar runner` commands); without one, those endpoints are off. An organization's API key never opens
    /// them.
    #[arg(long, env = "SANDBAR_API_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// OTLP/HTTP collector for traces (`http://host:port`; spans go to `POST {endpoint}/v1/traces`,
    /// `sandbar_support::otlp`). Unset: no spans are exported.
    #[arg(long, env = "SANDBAR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Image used when a create names neither a snapshot nor an image.
    #[arg(long, env = "SANDBAR_DEFAULT_SNAPSHOT", default_value = "sandbar-sandbox:default")]
    pub default_snapshot: String,
    /// Images (besides the default snapshot) an organization may name in a create, a snapshot or a Dockerfile's
    /// `FROM`/`COPY --from`: exact names, or prefixes ending in `*`. Anything else must be an image the
    /// organization owns (see `crate::domain::images`). Default: the default image's repository and the test image.
    #[arg(long = "allowed-image", env = "SANDBAR_ALLOWED_IMAGES", value_delimiter = ',',
          default_values_t = default_allowed_images())]
    pub allowed_images: Vec<String>,
    /// Registries an image may be pulled from (any image that is neither allowed above nor the organization's own
    /// is pulled from the registry its name starts with, Docker Hub when none): hosts (`host:port`), prefixes
    /// ending in `*`, or `*` for every registry except those on the local network (loopback, private and
    /// link-local addresses, `localhost`, `.internal`), which need their own entry. Empty: nothing is pulled.
    /// Default: `*`.
    #[arg(long = "allowed-registry", env = "SANDBAR_ALLOWED_REGISTRIES", value_delimiter = ',', default_value = "*")]
    pub allowed_registries: Vec<String>,
    /// `target` reported on every sandbox when the caller names none.
    #[arg(long, env = "SANDBAR_TARGET", default_value = "local")]
    pub target: String,
    /// How long `POST /sandbox` may wait for the runner to finish the create before answering `creating` (a bare
    /// number is milliseconds, as `--create-wait-ms` took). A create that completes in time (a warm-pool claim, a
    /// quick cold start) answers `started`, and the SDK skips its polling, which steps at 1 s. 0 answers at once.
    #[arg(long, alias = "create-wait-ms", env = "SANDBAR_CREATE_WAIT_MS", default_value = "0s",
          value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub create_wait: Duration,
    /// Time without a heartbeat after which a runner is unreachable: its sandboxes read `unknown` and placement
    /// passes it over. More than the runners' heartbeat interval (5 s); default 20 s.
    #[arg(long, alias = "runner-unreachable-secs", env = "SANDBAR_RUNNER_UNREACHABLE_SECS",
          default_value = "20s", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub runner_unreachable: Duration,
    /// How long a runner job may go without a result before it fails with `TIMEOUT` (`crate::jobs::deadline_ms`).
    #[command(flatten)]
    pub job_deadlines: JobDeadlines,
    /// How long a Dockerfile build's image stays on its runner once no snapshot and no sandbox uses it; then the
    /// runner removes it and the next identical Dockerfile builds again. Default 1 h.
    #[arg(long, alias = "build-gc-grace-secs", env = "SANDBAR_BUILD_GC_GRACE_SECS", default_value = "1h",
          value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub build_gc_grace: Duration,
    /// How long `serve` waits, after SIGTERM, for requests in flight (long-polls, log follows) before it closes them
    /// and returns (a bare number is seconds). Default 10 s.
    #[arg(long, env = "SANDBAR_API_SHUTDOWN_GRACE", default_value = "10s", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// How often a wait (a runner's job long-poll, the proxy's route-change long-poll, a create held by
    /// `create_wait`, a dashboard feed, a build log follow) rereads the database when nothing woke it and no change
    /// feed is connected: on PostgreSQL while the feed is down (another instance's changes show this late), always
    /// on SQLite (at least 1 s there: one process owns the file, and its writes wake its waiters at once). Default
    /// 200 ms.
    #[arg(long, env = "SANDBAR_API_POLL_INTERVAL", default_value = "200ms", value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// The same while the change feed (PostgreSQL `LISTEN`, see `crate::feed`) is connected. Every change is
    /// notified then, so this is only a safety net. Default 30 s.
    #[arg(long, env = "SANDBAR_API_FEED_POLL_INTERVAL", default_value = "30s", value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub feed_poll_interval: Duration,
    /// How long the change feed waits before its first reconnect after losing its connection; later attempts
    /// double it (with jitter) up to 30 s or this, whichever is more. Waits poll every `poll_interval` meanwhile.
    /// Default 250 ms.
    #[arg(long, env = "SANDBAR_API_FEED_RECONNECT", default_value = "250ms", value_parser = millis_or_duration)]
    #[serde(with = "duration")]
    pub feed_reconnect: Duration,
    /// Whether `serve` runs the lifecycle timers every second. Always on in the binary; tests that move a hand
    /// clock turn it off and call `lifecycle::tick` themselves, so a tick never lands between their steps.
    #[arg(skip = true)]
    #[serde(skip, default = "always")]
    pub run_timers: bool,
    #[command(flatten)]
    pub limits: Limits,
}

fn always() -> bool {
    true
}

/// The default `--allowed-image` list: the default image's repository (every recipe of it) and the busybox test
/// image `scripts/build-test-image` makes.
pub fn default_allowed_images() -> Vec<String> {
    vec!["sandbar-sandbox:*".to_owned(), "sandbar-test-busybox:*".to_owned()]
}

/// How long from when a job is queued until the API fails it for want of a result (`crate::jobs::expire`), by
/// class of job (a bare number is seconds, as the `-secs` flags took). Generous by default: a deadline cuts off real
/// work, which is worse than waiting. Tests of long faults scale them down so that a fault outlasts them without
/// waiting an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDeadlines {
    /// Start, stop, destroy, resize, pause, resume, ping, network and removal jobs. Default 10 min.
    #[arg(long = "job-deadline", alias = "job-deadline-secs", env = "SANDBAR_JOB_DEADLINE_SECS",
          default_value = "10m", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub short: Duration,
    /// Creates (a create may pull its image). Default 30 min.
    #[arg(long = "create-job-deadline", alias = "create-job-deadline-secs", env = "SANDBAR_CREATE_JOB_DEADLINE_SECS",
          default_value = "30m", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub create: Duration,
    /// Archive, restore, fork, snapshot and image pulls. Default 60 min.
    #[arg(long = "long-job-deadline", alias = "long-job-deadline-secs", env = "SANDBAR_LONG_JOB_DEADLINE_SECS",
          default_value = "1h", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub long: Duration,
    /// Dockerfile builds. Default 120 min.
    #[arg(long = "build-job-deadline", alias = "build-job-deadline-secs", env = "SANDBAR_BUILD_JOB_DEADLINE_SECS",
          default_value = "2h", value_parser = secs_or_duration)]
    #[serde(with = "duration")]
    pub build: Duration,
}

impl Default for JobDeadlines {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(m * 60);
        Self { short: min(10), create: min(30), long: min(60), build: min(120) }
    }
}

impl JobDeadlines {
    /// Every deadline, for validation and for the shortest.
    pub fn all(&self) -> [Duration; 4] {
        [self.short, self.create, self.long, self.build]
    }
}

/// The shortest job deadline accepted: a job is handed out again after `crate::jobs::REDELIVER_AFTER_SECS` (10 s),
/// so a deadline must leave room for a second delivery.
pub const MIN_JOB_DEADLINE: Duration = Duration::from_secs(15);

/// Per-sandbox defaults and maxima (Daytona's: 1 vCPU, 1 GiB, 3 GiB; at most 4, 8, 10), the quotas a new
/// organization gets, and how far placement may overcommit a runner.
#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[arg(long, env = "SANDBAR_DEFAULT_CPU", default_value_t = 1)]
    pub default_cpu: i64,
    #[arg(long, env = "SANDBAR_DEFAULT_MEMORY", default_value_t = 1)]
    pub default_memory: i64,
    #[arg(long, env = "SANDBAR_DEFAULT_DISK", default_value_t = 3)]
    pub default_disk: i64,
    #[arg(long, env = "SANDBAR_MAX_CPU", default_value_t = 4)]
    pub max_cpu: i64,
    #[arg(long, env = "SANDBAR_MAX_MEMORY", default_value_t = 8)]
    pub max_memory: i64,
    #[arg(long, env = "SANDBAR_MAX_DISK", default_value_t = 10)]
    pub max_disk: i64,
    /// Total vCPUs of an organization's running sandboxes.
    #[arg(long, env = "SANDBAR_QUOTA_CPU", default_value_t = 64)]
    pub quota_cpu: i64,
    /// Total GiB of memory of an organization's running sandboxes.
    #[arg(long, env = "SANDBAR_QUOTA_MEMORY", default_value_t = 128)]
    pub quota_memory: i64,
    /// Total GiB of disk of an organization's sandboxes (stopped ones included).
    #[arg(long, env = "SANDBAR_QUOTA_DISK", default_value_t = 1024)]
    pub quota_disk: i64,
    /// Sandboxes an organization may hold (not destroyed).
    #[arg(long, env = "SANDBAR_QUOTA_SANDBOXES", default_value_t = 200)]
    pub quota_sandboxes: i64,
    /// GiB of images an organization's snapshots taken from sandboxes, Dockerfile builds and forks may hold on the
    /// runners (see `crate::domain::image_quota`). An organization's own `quota_image_bytes` replaces it; 0 (here
    /// or there) is no limit.
    #[arg(long, env = "SANDBAR_QUOTA_IMAGE_GIB", default_value_t = 100)]
    pub quota_image_gib: i64,
    /// Placement hands out this many vCPUs per runner core.
    #[arg(long, env = "SANDBAR_CPU_OVERCOMMIT", default_value_t = 8)]
    pub cpu_overcommit: i64,
    /// Placement hands out this many GiB per GiB of runner memory.
    #[arg(long, env = "SANDBAR_MEMORY_OVERCOMMIT", default_value_t = 2)]
    pub memory_overcommit: i64,
    /// Volumes an organization may hold.
    #[arg(long, env = "SANDBAR_QUOTA_VOLUMES", default_value_t = 100)]
    pub quota_volumes: i64,
    /// GiB all of an organization's volumes may hold (as their runners measure them).
    #[arg(long, env = "SANDBAR_QUOTA_VOLUME_GIB", default_value_t = 100)]
    pub quota_volume_gib: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_cpu: 1,
            default_memory: 1,
            default_disk: 3,
            max_cpu: 4,
            max_memory: 8,
            max_disk: 10,
            quota_cpu: 64,
            quota_memory: 128,
            quota_disk: 1024,
            quota_sandboxes: 200,
            quota_image_gib: 100,
            cpu_overcommit: 8,
            memory_overcommit: 2,
            quota_volumes: 100,
            quota_volume_gib: 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--proxy-url must be an http:// or https:// URL with a host, got {0:?}")]
    ProxyUrl(String),
    #[error("--ssh-gateway must be host:port, got {0:?}")]
    SshGateway(String),
    #[error("runner_unreachable (--runner-unreachable) must be more than the runners' heartbeat interval ({interval} s) and at most a day, got {0:?}", interval = HEARTBEAT_INTERVAL_SECS)]
    RunnerUnreachable(Duration),
    #[error(
        "job deadlines ([job_deadlines], --job-deadline and its siblings) must be between 15 s and 7 days, got {0:?}"
    )]
    JobDeadline(Duration),
    #[error("{0} must be between 10 ms and a day, got {1:?}")]
    Interval(&'static str, Duration),
    #[error("limits: {0}")]
    Limits(String),
    #[error("otlp_endpoint (--otlp-endpoint): {0}")]
    OtlpEndpoint(String),
    #[error("DATABASE_URL must start with sqlite: or postgres://, got a URL with scheme {0:?}")]
    DatabaseUrl(String),
}

impl Config {
    /// A configuration with every default, for tests and embedders.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir: data_dir.into(),
            database_url: None,
            proxy_url: "http://localhost:4000".into(),
            ssh_gateway: None,
            runner_token: None,
            proxy_token: None,
            metrics_token: None,
            admin_token: None,
            otlp_endpoint: None,
            default_snapshot: "sandbar-sandbox:default".into(),
            allowed_images: default_allowed_images(),
            allowed_registries: vec!["*".into()],
            target: "local".into(),
            create_wait: Duration::ZERO,
            runner_unreachable: Duration::from_secs(RUNNER_UNREACHABLE_AFTER_SECS),
            job_deadlines: JobDeadlines::default(),
            build_gc_grace: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
            feed_poll_interval: Duration::from_secs(30),
            feed_reconnect: Duration::from_millis(250),
            run_timers: true,
            limits: Limits::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.proxy_parts()?;
        self.ssh_gateway_parts()?;
        if let Some(e) = &self.otlp_endpoint {
            sandbar_support::otlp::Endpoint::parse(e).map_err(ConfigError::OtlpEndpoint)?;
        }
        if self.runner_unreachable <= Duration::from_secs(HEARTBEAT_INTERVAL_SECS)
            || self.runner_unreachable > Duration::from_secs(86_400)
        {
            return Err(ConfigError::RunnerUnreachable(self.runner_unreachable));
        }
        let deadlines = MIN_JOB_DEADLINE..=Duration::from_secs(7 * 86_400);
        if let Some(d) = self.job_deadlines.all().into_iter().find(|d| !deadlines.contains(d)) {
            return Err(ConfigError::JobDeadline(d));
        }
        let intervals = Duration::from_millis(10)..=Duration::from_secs(86_400);
        for (name, value) in [
            ("poll_interval (--poll-interval)", self.poll_interval),
            ("feed_poll_interval (--feed-poll-interval)", self.feed_poll_interval),
            ("feed_reconnect (--feed-reconnect)", self.feed_reconnect),
        ] {
            if !intervals.contains(&value) {
                return Err(ConfigError::Interval(name, value));
            }
        }
        let l = &self.limits;
        let positive = [
            l.default_cpu,
            l.default_memory,
            l.default_disk,
            l.max_cpu,
            l.max_memory,
            l.max_disk,
            l.cpu_overcommit,
            l.memory_overcommit,
        ];
        if positive.iter().any(|v| *v < 1) {
            return Err(ConfigError::Limits("defaults, maxima and overcommit factors must be at least 1".into()));
        }
        if !(0..=1 << 33).contains(&l.quota_image_gib) {
            return Err(ConfigError::Limits("--quota-image-gib must be between 0 (no limit) and 2^33".into()));
        }
        if l.default_cpu > l.max_cpu || l.default_memory > l.max_memory || l.default_disk > l.max_disk {
            return Err(ConfigError::Limits("a default exceeds its maximum".into()));
        }
        let url = self.database_url();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::DatabaseUrl(url.split(':').next().unwrap_or_default().to_owned()));
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) if !u.is_empty() => u.clone(),
            _ => format!("sqlite://{}?mode=rwc", self.data_dir.join("sandbar.db").display()),
        }
    }

    /// `(scheme, host[:port])` of the proxy URL.
    pub fn proxy_parts(&self) -> Result<(&str, &str), ConfigError> {
        let url = self.proxy_url.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").ok_or_else(|| ConfigError::ProxyUrl(self.proxy_url.clone()))?;
        if !(scheme == "http" || scheme == "https") || rest.is_empty() || rest.contains('/') {
            return Err(ConfigError::ProxyUrl(self.proxy_url.clone()));
        }
        Ok((scheme, rest))
    }

    /// `(host, port)` for sshCommand.
    pub fn ssh_gateway_parts(&self) -> Result<(String, u16), ConfigError> {
        match &self.ssh_gateway {
            Some(gw) => {
                let (host, port) = gw.rsplit_once(':').ok_or_else(|| ConfigError::SshGateway(gw.clone()))?;
                let port = port.parse().map_err(|_| ConfigError::SshGateway(gw.clone()))?;
                if host.is_empty() {
                    return Err(ConfigError::SshGateway(gw.clone()));
                }
                Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
            }
            None => {
                let (_, hostport) = self.proxy_parts()?;
                let host = match hostport.rsplit_once(':') {
                    Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                    _ => hostport,
                };
                Ok((host.to_owned(), 2222))
            }
        }
    }

    pub fn toolbox_proxy_url(&self) -> String {
        format!("{}/toolbox", self.proxy_url.trim_end_matches('/'))
    }

    /// `http(s)://{port}-{sandboxId}.{proxy host}`.
    pub fn preview_url(&self, sandbox_id: &str, port: u16) -> String {
        let (scheme, host) = self.proxy_parts().unwrap_or(("http", "localhost"));
        format!("{scheme}://{port}-{sandbox_id}.{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_from_the_proxy_base() {
        let mut c = Config::new("/tmp");
        c.proxy_url = "https://sb.example.com:4443/".into();
        assert_eq!(c.toolbox_proxy_url(), "https://sb.example.com:4443/toolbox");
        assert_eq!(c.preview_url("abc", 3000), "https://3000-abc.sb.example.com:4443");
        assert_eq!(c.ssh_gateway_parts().unwrap(), ("sb.example.com".into(), 2222));
        c.ssh_gateway = Some("gw.local:2200".into());
        assert_eq!(c.ssh_gateway_parts().unwrap(), ("gw.local".into(), 2200));
        c.proxy_url = "ftp://x".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn runner_deadline_must_outlast_a_heartbeat() {
        let mut c = Config::new("/tmp");
        c.runner_unreachable = Duration::from_secs(5);
        assert!(matches!(c.validate(), Err(ConfigError::RunnerUnreachable(_))));
        c.runner_unreachable = Duration::from_secs(8);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn job_deadlines_leave_room_for_a_redelivery() {
        let mut c = Config::new("/tmp");
        c.job_deadlines.short = Duration::from_secs(5);
        assert!(matches!(c.validate(), Err(ConfigError::JobDeadline(_))));
        c.job_deadlines.short = Duration::from_secs(20);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn default_database_is_sqlite_in_the_data_dir() {
        let c = Config::new("/var/lib/sb");
        assert_eq!(c.database_url(), "sqlite:///var/lib/sb/sandbar.db?mode=rwc");
        assert!(c.validate().is_ok());
    }
}
