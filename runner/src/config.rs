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
    /// The host address other hosts reach this runner's sandboxes at (`--advertise-addr`): each sandbox's daemon
    /// ports (toolbox, SSH) are published on it, on ports Docker picks, and those are the addresses reported to the
    /// API, so a proxy on another host reaches the daemon without a route to the bridge. Default: none, the
    /// bridge address is reported (the proxy must be on this host, or route to the bridge).
    pub advertise_addr: Option<std::net::Ipv4Addr>,
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
    /// the usual `AWS_*` environment, so any S3-compatible store works; timeouts and retries in the URL's options),
    /// `file:///path` or a plain path.
    /// Default: `<state_dir>/archives`; with neither, archive jobs fail with a clear reason.
    pub archive_store: Option<String>,
    /// Open files per process in a sandbox (`nofile`, soft and hard). Under user namespaces it cannot exceed the
    /// hard limit of dockerd itself (a create then fails with "error setting rlimit type 7"). Default: 16384.
    pub nofile_limit: u64,
    /// Docker's `json-file` log of each sandbox (its entrypoint's output) is capped at `log_max_files` files of
    /// `log_max_size` (Docker's size syntax: `10m`). Default: 3 files of 10m.
    pub log_max_size: String,
    pub log_max_files: u32,
    /// When sandboxes run with `no-new-privileges` (see [`NoNewPrivileges`]). Default: `auto`.
    pub no_new_privileges: NoNewPrivileges,
    /// Run sandboxes although Docker maps container root to host root (no `userns-remap`). Default: off, and the
    /// runner refuses to start on such a Docker.
    pub allow_host_root: bool,
    /// OCI runtimes a sandbox may ask for (`runtime` of a create); the first is used when it names none. Each must
    /// be registered with Docker (`runsc` for gVisor). Default: `runc`.
    pub runtimes: Vec<String>,
    /// How often the disk watchdog measures each started sandbox's writable layer and stops those over their disk
    /// quota; it runs only where the storage driver cannot enforce the quota itself. `None`: no watchdog.
    /// Default: 30 s.
    pub disk_watchdog_interval: Option<Duration>,
    /// A pull from a registry that sends nothing (no progress, no error) for this long is abandoned with a "stopped
    /// answering" error; a pull that keeps progressing has no deadline. Default: 60 s.
    pub pull_stall_timeout: Duration,
    /// The operator's internal registry for the images this runner makes (snapshots of sandboxes, Dockerfile
    /// builds): pushed there so any runner can pull them (see [`crate::host::registry`]). Default: none, the
    /// images stay on this runner and sandboxes of them are placed here.
    pub image_registry: Option<crate::host::registry::ImageRegistry>,
}

/// `no-new-privileges` keeps setuid binaries and file capabilities from raising a process's privileges. `sudo` is
/// such a binary, and agents must be able to become root in their own sandbox (the default image's user is
/// `sandbar` with passwordless sudo), so it cannot be on everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoNewPrivileges {
    /// On for sandboxes that run as root (they have nothing to gain from setuid), off for the others, so their
    /// user can still `sudo`.
    #[default]
    Auto,
    /// On for every sandbox: a non-root user can never become root (`sudo` fails).
    Always,
    /// Off for every sandbox.
    Never,
}

impl NoNewPrivileges {
    /// Whether a sandbox whose processes run as `user` (`None`: root) gets `no-new-privileges`.
    pub fn applies_to(self, user: Option<&str>) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => user.is_none_or(is_root_user),
        }
    }
}

/// Docker's `user` field (`name`, `uid`, `name:group`, `uid:gid`) names root.
fn is_root_user(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or(user);
    matches!(name, "" | "root" | "0")
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
            advertise_addr: None,
            iptables: None,
            deny_cidrs: Vec::new(),
            firewall_recheck: Duration::from_secs(5),
            archive_store: None,
            nofile_limit: 16384,
            log_max_size: "10m".into(),
            log_max_files: 3,
            no_new_privileges: NoNewPrivileges::Auto,
            allow_host_root: false,
            runtimes: vec!["runc".into()],
            disk_watchdog_interval: Some(Duration::from_secs(30)),
            pull_stall_timeout: Duration::from_secs(60),
            image_registry: None,
        }
    }

    /// The runtime of sandboxes that name none.
    pub fn default_runtime(&self) -> &str {
        self.runtimes.first().map_or("runc", String::as_str)
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
        // 0.0.0.0 would publish every daemon port on every address of the host, the LAN's included.
        if let Some(a) = self.advertise_addr
            && (a.is_unspecified() || a.is_broadcast() || a.is_multicast())
        {
            return Err(format!("advertise address {a} must be one unicast address of this host"));
        }
        if self.firewall_recheck.is_zero() {
            return Err("the firewall recheck interval must be positive".into());
        }
        if self.runtimes.is_empty() || !self.runtimes.iter().all(|r| valid_name(r)) {
            return Err(format!("runtimes must be 1 or more names of [A-Za-z0-9_.-], not {:?}", self.runtimes));
        }
        if self.nofile_limit < 64 {
            return Err(format!("nofile limit must be at least 64, not {}", self.nofile_limit));
        }
        let size_ok = self.log_max_size.strip_suffix(['k', 'm', 'g']).unwrap_or(&self.log_max_size);
        if size_ok.is_empty() || !size_ok.bytes().all(|b| b.is_ascii_digit()) || self.log_max_files == 0 {
            return Err(format!(
                "container logs: max size must look like 10m (digits, then k, m or g) and max files be at least 1, \
                 not {:?} and {}",
                self.log_max_size, self.log_max_files
            ));
        }
        if self.pull_stall_timeout.is_zero() {
            return Err("pull stall timeout must be positive".into());
        }
        if self.disk_watchdog_interval.is_some_and(|d| d.is_zero()) {
            return Err("disk watchdog interval must be positive".into());
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

    #[test]
    fn validates_hardening_options() {
        let mut c = RunnerConfig::new("/bin/true");
        assert_eq!(c.default_runtime(), "runc");
        c.runtimes = vec!["runsc".into(), "runc".into()];
        assert!(c.validate().is_ok());
        assert_eq!(c.default_runtime(), "runsc");
        c.runtimes = vec![];
        assert!(c.validate().is_err());
        c.runtimes = vec!["run c".into()];
        assert!(c.validate().is_err());
        c.runtimes = vec!["runc".into()];
        for (size, files, ok) in
            [("10m", 3, true), ("512k", 1, true), ("10", 1, true), ("m", 1, false), ("1t", 1, false), ("1m", 0, false)]
        {
            c.log_max_size = size.into();
            c.log_max_files = files;
            assert_eq!(c.validate().is_ok(), ok, "{size} {files}");
        }
    }

    #[test]
    fn no_new_privileges_auto_spares_non_root_users() {
        let auto = NoNewPrivileges::Auto;
        for root in [None, Some("root"), Some("0"), Some("0:0"), Some("root:wheel"), Some("")] {
            assert!(auto.applies_to(root), "{root:?}");
        }
        for user in [Some("sandbar"), Some("1000"), Some("1000:1000")] {
            assert!(!auto.applies_to(user), "{user:?}");
            assert!(NoNewPrivileges::Always.applies_to(user));
        }
        assert!(!NoNewPrivileges::Never.applies_to(None));
    }
}
