//! Runner configuration. Every field documents its default; `validate()` checks what types cannot.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sandbar_proto::runner::Resources;

/// Where the daemon binary is mounted inside every sandbox.
pub const DAEMON_MOUNT_PATH: &str = "/usr/local/bin/sandbar-daemon";

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This runner's ID, written on every container it makes (`sandbar.runner`); a runner only touches its own.
    /// Default: `local`.
    pub runner_id: String,
    /// Docker endpoint (`unix:///var/run/docker.sock`, `tcp://...`). Default: `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// The static `sandbar-daemon` on this host, bind-mounted read-only into each container. No default.
    pub daemon_binary: PathBuf,
    /// Image used when a create names none. Default: `sandbar-sandbox:default`.
    pub default_image: String,
    /// Script that builds the default image (`scripts/build-sandbox-image`); `None`: never build, only check.
    pub image_script: Option<PathBuf>,
    /// How long a create or start waits for the daemon's `GET /version`. Default: 30 s.
    pub daemon_ready_timeout: Duration,
    /// Deadline of a graceful stop when the job names none. Default: 10 s.
    pub stop_timeout: Duration,
    /// Docker network for sandboxes. Default: `None`, Docker's default bridge.
    pub network: Option<String>,
    /// Process limit per sandbox (fork bombs). Default: 4096.
    pub pids_limit: Option<i64>,
    /// Disk the runner advertises for placement, GiB. Default: 100.
    pub disk_capacity_gib: u32,
    /// Labels added to every container besides the runner's own (tests mark theirs here). Default: none.
    pub extra_labels: BTreeMap<String, String>,
    /// Timeout of one Docker API request (a graceful stop lasts up to its deadline plus this). Default: 120 s.
    pub docker_timeout: Duration,
    /// Started sandboxes kept ready for creates that match. Default: none.
    pub warm_pool: Option<WarmPoolConfig>,
    /// Where the runner keeps what Docker cannot: which pool container was claimed by which sandbox
    /// (`claims.json`, mode 0600: it holds daemon tokens) and network policies changed after creation
    /// (`network.json`). Required with a warm pool and for network policy changes. Default: none.
    pub state_dir: Option<PathBuf>,
    /// Isolate sandboxes from each other and enforce their egress policies with iptables rules (see
    /// [`crate::firewall`]). Off: no rules, and creates that ask for a policy or a link fail. Default: on.
    pub network_rules: bool,
    /// The iptables binary (`iptables-nft`, `iptables-legacy`, ...). Default: whichever of `iptables`,
    /// `iptables-nft`, `iptables-legacy` holds Docker's `DOCKER-USER` chain.
    pub iptables: Option<String>,
    /// IPv4 ranges no sandbox may reach whatever its policy (the LAN, other private networks), on top of the floor
    /// every sandbox has (169.254.0.0/16, 127.0.0.0/8, the host's own addresses; see [`crate::firewall`]).
    /// Default: none.
    pub deny_cidrs: Vec<String>,
    /// How often the firewall checks that its rules are still in the kernel, and rewrites them when not.
    /// Default: 5 s.
    pub firewall_recheck: Duration,
    /// Where archived sandboxes go (see [`crate::host::archive`]): `s3://bucket/prefix` (credentials, region and endpoint from
    /// the usual `AWS_*` environment, so any S3-compatible store works), `file:///path` or a plain path.
    /// Default: `<state_dir>/archives`; with neither, archive jobs fail with a clear reason.
    pub archive_store: Option<String>,
}

/// A warm pool: `size` started sandboxes of `image` and `resources`. A create with the same image and resources, no
/// user and no entrypoint of its own claims one; the pool refills in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPoolConfig {
    pub size: usize,
    pub image: String,
    pub resources: Resources,
}

impl RunnerConfig {
    pub fn new(daemon_binary: impl Into<PathBuf>) -> Self {
        Self {
            runner_id: "local".into(),
            docker_host: None,
            daemon_binary: daemon_binary.into(),
            default_image: "sandbar-sandbox:default".into(),
            image_script: None,
            daemon_ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            network: None,
            pids_limit: Some(4096),
            disk_capacity_gib: 100,
            extra_labels: BTreeMap::new(),
            docker_timeout: Duration::from_secs(120),
            warm_pool: None,
            state_dir: None,
            network_rules: true,
            iptables: None,
            deny_cidrs: Vec::new(),
            firewall_recheck: Duration::from_secs(5),
            archive_store: None,
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.runner_id) {
            return Err(format!("runner ID {:?} must be 1-64 of [A-Za-z0-9_.-]", self.runner_id));
        }
        if self.default_image.trim().is_empty() {
            return Err("default image must not be empty".into());
        }
        if self.daemon_ready_timeout.is_zero() {
            return Err("daemon ready timeout must be positive".into());
        }
        if self.extra_labels.keys().any(|k| k.starts_with("sandbar.")) {
            return Err("extra labels must not use the sandbar. prefix (reserved for the runner)".into());
        }
        if self.archive_store.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err("archive store, when given, must not be empty".into());
        }
        for c in &self.deny_cidrs {
            c.parse::<sandbar_proto::network::Ipv4Cidr>().map_err(|e| format!("--deny-cidr: {e}"))?;
        }
        if self.firewall_recheck.is_zero() {
            return Err("the firewall recheck interval must be positive".into());
        }
        if let Some(pool) = &self.warm_pool {
            if self.state_dir.is_none() {
                return Err("a warm pool needs a state dir (claims must survive a runner restart)".into());
            }
            if pool.image.trim().is_empty() || pool.size > 1000 {
                return Err("warm pool: image must be set and size at most 1000".into());
            }
        }
        Ok(())
    }
}

/// IDs that become part of container names and label values: short, no separators Docker would reject.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !s.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ids_and_labels() {
        let mut c = RunnerConfig::new("/bin/true");
        assert!(c.validate().is_ok());
        c.runner_id = "bad id".into();
        assert!(c.validate().is_err());
        c.runner_id = "r-1".into();
        c.extra_labels.insert("sandbar.runner".into(), "x".into());
        assert!(c.validate().is_err());
        assert!(!valid_name("-x") && !valid_name("") && valid_name("a.b_c-1"));
    }
}
