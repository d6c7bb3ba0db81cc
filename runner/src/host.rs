//! The host layer: everything that talks to Docker (bollard) lives under here, and nothing outside it does.
//!
//! [`Runner`] owns one Docker engine (API version negotiated) and the table of its sandboxes. A sandbox is a
//! container labelled `sandbar.sandbox.id`, `sandbar.org`, `sandbar.runner`, ... whose entrypoint is the static
//! daemon bind-mounted read-only at [`DAEMON_MOUNT_PATH`], with the image's own entrypoint and cmd after `--`, and
//! `SANDBAR_SANDBOX_ID`, a random 256-bit `SANDBAR_DAEMON_TOKEN` and an SSH host key of its own
//! (`SANDBAR_SSH_HOST_KEY`, whose public half the runner reports for the gateway to pin) in its environment. Limits
//! are NanoCpus and memory (checked from inside through the daemon, [`cgroup`]); disk by the storage driver where
//! it can, else by a watchdog that stops a sandbox over its quota ([`disk`]).
//!
//! Every operation on a sandbox holds that sandbox's operation lock and runs as its own task, so a caller that
//! gives up (a dropped future, a timed-out job) never leaves a create half done: it finishes or cleans up.
//! Docker's event stream drives unsolicited changes (a daemon that dies, an OOM kill, a container removed by hand);
//! each event makes the runner re-inspect the container, so replayed or reordered events are harmless.
//!
//! Here: the sandbox table and state changes (this file), containers (`containers`: create, start, stop, destroy,
//! resize), least privilege for each container ([`hardening`]: capabilities, user namespaces, no-new-privileges, nofile
//! and log limits, runtimes), the disk watchdog ([`disk`]), Docker events and the rebuild after a restart (`events`),
//! the warm pool (`pool`), archive and restore ([`archive`]), forks, pause and resume ([`fork`]), snapshots and builds
//! ([`snapshot`]), images ([`image`]), cgroup limits and usage ([`cgroup`]), each sandbox's usage for heartbeats
//! (`usage`) and the sandboxes' daemons (`daemon`). Not here: which job runs what (`crate::jobs`), iptables
//! (`crate::firewall`, which the host calls when a container gets or loses its address), the control plane
//! (`crate::control`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::{
    Capacity, CreateSandbox, ResizeSandbox, RunnerStatus, SandboxInfo, SandboxState, StateChange, StopSandbox,
    UpdateSandboxNetwork,
};
use sandbar_proto::toolbox::{ExecuteRequest, ExecuteResponse};
use sandbar_support::sync::lock;
use tokio::sync::broadcast;

use crate::config::{DAEMON_MOUNT_PATH, RunnerConfig};
use crate::error::{ImageError, SandboxError, StartupError};
use crate::firewall::Firewall;

pub mod archive;
pub mod build_net;
pub mod cgroup;
mod containers;
mod daemon;
pub mod disk;
mod events;
pub mod fork;
pub mod hardening;
pub mod image;
mod pool;
pub mod pull;
pub mod registry;
pub mod snapshot;
mod usage;
pub mod volumes;

use cgroup::CgroupLimits;
use daemon::DaemonClient;
use image::ImageInfo;

const GIB: i64 = 1 << 30;
const NANO: i64 = 1_000_000_000;
/// Environment the runner injects; a create may not set these itself.
const ENV_SANDBOX_ID: &str = "SANDBAR_SANDBOX_ID";
const ENV_TOKEN: &str = "SANDBAR_DAEMON_TOKEN";
/// The daemon's SSH host key (OpenSSH private key), made per container; its public half is reported as
/// `SandboxInfo::daemon_host_key` for the SSH gateway to pin.
const ENV_SSH_HOST_KEY: &str = "SANDBAR_SSH_HOST_KEY";
const ENV_TOOLBOX_ADDR: &str = "SANDBAR_TOOLBOX_ADDR";
/// `1`: the daemon holds the entrypoint until SIGUSR2 (sent once the sandbox's network rules are in place).
const ENV_ENTRYPOINT_GATE: &str = "SANDBAR_ENTRYPOINT_GATE";
/// `1`: the daemon keeps its spans for the runner to collect (`crate::trace`); set when the runner exports spans.
const ENV_TRACE_SPANS: &str = "SANDBAR_TRACE_SPANS";
/// The trace context the daemon's start belongs to (the create job's span).
const ENV_TRACEPARENT: &str = "SANDBAR_TRACEPARENT";
pub(crate) const RESERVED_ENV: [&str; 7] = [
    ENV_SANDBOX_ID,
    ENV_TOKEN,
    ENV_SSH_HOST_KEY,
    ENV_TOOLBOX_ADDR,
    ENV_ENTRYPOINT_GATE,
    ENV_TRACE_SPANS,
    ENV_TRACEPARENT,
];

/// An image made from a sandbox (a snapshot) may carry `[daemon, --, argv...]` as its entrypoint: what the daemon
/// should run is `argv`.
pub(crate) fn strip_daemon(argv: Vec<String>) -> Vec<String> {
    match argv.first() {
        Some(first) if first == DAEMON_MOUNT_PATH => {
            let mut rest = argv.into_iter().skip(1).peekable();
            rest.next_if(|a| a == "--");
            rest.collect()
        }
        _ => argv,
    }
}

/// Every few seconds, has the firewall check its rules are still in the kernel and rewrite them if not, until the
/// runner is dropped.
async fn recheck_firewall(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(every) = weak.upgrade().map(|i| i.firewall.recheck_interval()) else { return };
        tokio::time::sleep(every).await;
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = inner.firewall.reconcile().await {
            tracing::error!(error = %e, "cannot check or repair the network rules; trying again");
        }
    }
}

/// Facts about the Docker host, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub ncpu: u32,
    pub mem_total: u64,
    pub storage_driver: String,
    /// Whether `--storage-opt size=` caps a container's disk on this driver (else the disk watchdog stops
    /// sandboxes over their quota, [`disk`]).
    pub disk_enforced: bool,
    /// Whether Docker remaps container root to an unprivileged host user (`userns-remap`).
    pub userns: bool,
    /// The allowed runtimes that are gVisor (`runsc`).
    pub gvisor_runtimes: Vec<String>,
    /// 1 or 2.
    pub cgroup_version: u8,
    /// The negotiated API version.
    pub api_version: String,
    pub server_version: String,
}

/// Storage drivers on which Docker enforces `size`. overlay2 can too, but only on xfs mounted with `pquota`, which
/// Docker does not report; it is treated as not enforced rather than failing every create on other hosts.
fn driver_enforces_disk(driver: &str) -> bool {
    matches!(driver, "btrfs" | "zfs" | "devicemapper")
}

struct Entry {
    /// Held for the whole of an operation (create, start, stop, destroy, resize).
    op: Arc<tokio::sync::Mutex<()>>,
    info: Mutex<SandboxInfo>,
    /// The container came from the warm pool: its labels name the pool, the claim lives in `claims.json`, and its
    /// daemon needs `POST /init` again whenever it restarts.
    claimed: AtomicBool,
}

impl Entry {
    fn new(info: SandboxInfo, claimed: bool) -> Arc<Self> {
        Arc::new(Self {
            op: Arc::new(tokio::sync::Mutex::new(())),
            info: Mutex::new(info),
            claimed: AtomicBool::new(claimed),
        })
    }

    fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// The sandbox's state and container, read together.
    fn state_and_container(&self) -> (SandboxState, String) {
        let i = lock(&self.info);
        (i.state, i.container_id.clone())
    }
}

struct Inner {
    docker: Docker,
    config: RunnerConfig,
    host: HostFacts,
    daemon: DaemonClient,
    sandboxes: Mutex<HashMap<String, Arc<Entry>>>,
    changes: broadcast::Sender<StateChange>,
    /// Background tasks (event watcher, pool refill), stopped with the runner.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    pool: Mutex<pool::PoolState>,
    refill: Arc<tokio::sync::Notify>,
    /// Isolation and egress rules (crate::firewall).
    firewall: Firewall,
    /// Where archived sandboxes go; `None`: archiving is not configured.
    archive: Option<archive::ArchiveStore>,
    /// How container ids map to host ids in upper dirs (`userns-remap`; identity without it).
    ids: archive::IdMap,
    /// Where volumes live; `None` without a state dir (creates that mount one fail with the reason).
    volumes: Option<Arc<dyn volumes::VolumeDriver>>,
    /// What the volumes held when last measured (every [`VOLUME_MEASURE_EVERY`]), for heartbeats.
    volume_usage: Arc<Mutex<Vec<sandbar_proto::runner::VolumeUsage>>>,
    /// Per-sandbox usage between heartbeats: the previous CPU readings and the disk watchdog's measures.
    usage: Mutex<usage::UsageState>,
}

/// How often the volumes are measured for the organizations' byte quotas.
const VOLUME_MEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// A runner: owns the sandboxes of one Docker host. Cheap to clone; the event watcher stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("runner_id", &self.inner.config.runner_id).finish_non_exhaustive()
    }
}

impl Runner {
    /// Connects to Docker (negotiating the API version), reads the host, rebuilds the sandboxes this runner owns
    /// from their container labels, removes containers an interrupted create left behind, and starts following
    /// Docker's events.
    pub async fn new(config: RunnerConfig) -> Result<Self, StartupError> {
        config.validate().map_err(StartupError::Config)?;
        let mut config = config;
        config.daemon_binary = check_daemon_binary(&config.daemon_binary)?;

        let docker = match &config.docker_host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(StartupError::Connect)?
        .with_timeout(config.docker_timeout);
        let docker = docker.negotiate_version().await.map_err(StartupError::Connect)?;
        let version = docker.version().await?;
        let info = docker.info().await?;
        let storage_driver = info.driver.clone().unwrap_or_default();
        let cgroup_version = match info.cgroup_version {
            Some(bollard::models::SystemInfoCgroupVersionEnum::_2) => 2,
            _ => 1,
        };
        let userns = hardening::has_userns(&info);
        let ids = if userns {
            archive::IdMap::from_docker_root(info.docker_root_dir.as_deref().unwrap_or_default())
        } else {
            archive::IdMap::default()
        };
        hardening::check_userns(userns, config.allow_host_root)?;
        let gvisor_runtimes = hardening::check_runtimes(&info, &config.runtimes)?;
        let host = HostFacts {
            userns,
            gvisor_runtimes,
            ncpu: info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
            mem_total: info.mem_total.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            disk_enforced: driver_enforces_disk(&storage_driver),
            storage_driver,
            cgroup_version,
            api_version: docker.client_version().to_string(),
            server_version: version.version.unwrap_or_default(),
        };
        tracing::info!(runner_id = %config.runner_id, docker = %host.server_version, api = %host.api_version,
            driver = %host.storage_driver, cgroup = host.cgroup_version, disk_enforced = host.disk_enforced,
            userns = host.userns, runtimes = ?config.runtimes, "connected to Docker");

        let daemon = DaemonClient::new().map_err(|e| StartupError::Http(e.to_string()))?;
        let firewall = Firewall::new(&config).await?;
        let archive = archive::ArchiveStore::from_config(&config).map_err(StartupError::Config)?;
        let (changes, _) = broadcast::channel(1024);
        let volume_driver = config.state_dir.as_ref().map(|d| {
            Arc::new(volumes::LocalVolumes::new(d.join("volumes"), host.userns)) as Arc<dyn volumes::VolumeDriver>
        });
        let inner = Arc::new(Inner {
            docker,
            config,
            host,
            daemon,
            sandboxes: Mutex::new(HashMap::new()),
            changes,
            tasks: Mutex::new(Vec::new()),
            pool: Mutex::new(pool::PoolState::default()),
            refill: Arc::new(tokio::sync::Notify::new()),
            firewall,
            archive,
            ids,
            volumes: volume_driver,
            volume_usage: Arc::new(Mutex::new(Vec::new())),
            usage: Mutex::new(usage::UsageState::default()),
        });
        // Events from just before the rebuild on are replayed, so nothing between the two is missed; the
        // handlers re-inspect, so replays are harmless.
        let since = unix_now().saturating_sub(1);
        inner.rebuild().await?;
        let events = tokio::spawn(events::watch_events(Arc::downgrade(&inner), since));
        lock(&inner.tasks).push(events.abort_handle());
        if inner.firewall.enabled() {
            let recheck = tokio::spawn(recheck_firewall(Arc::downgrade(&inner)));
            lock(&inner.tasks).push(recheck.abort_handle());
        }
        if let Some(every) = inner.config.disk_watchdog_interval.filter(|_| !inner.host.disk_enforced) {
            let watchdog = tokio::spawn(disk::watch(Arc::downgrade(&inner), every));
            lock(&inner.tasks).push(watchdog.abort_handle());
        }
        if let Some(driver) = inner.volumes.clone() {
            let cache = Arc::downgrade(&inner.volume_usage);
            let measure = tokio::spawn(volumes::measure(driver, cache, VOLUME_MEASURE_EVERY));
            lock(&inner.tasks).push(measure.abort_handle());
        }
        if inner.config.warm_pool.is_some() {
            let refill = tokio::spawn(pool::refill_loop(Arc::downgrade(&inner), inner.refill.clone()));
            lock(&inner.tasks).push(refill.abort_handle());
        }
        Ok(Self { inner })
    }

    pub fn runner_id(&self) -> &str {
        &self.inner.config.runner_id
    }

    pub fn host(&self) -> &HostFacts {
        &self.inner.host
    }

    /// The Docker client, for the rest of the host layer.
    pub(crate) fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// The IPv4 networks this runner's daemon addresses lie in, which it declares when it registers (the API
    /// refuses others): its advertise address, else the subnets of the sandboxes' Docker network.
    pub async fn daemon_networks(&self) -> Result<Vec<String>, StartupError> {
        if let Some(adv) = self.inner.config.advertise_addr {
            return Ok(vec![format!("{adv}/32")]);
        }
        let name = self.inner.config.network.as_deref().unwrap_or("bridge");
        let net = self.inner.docker.inspect_network(name, None).await?;
        let subnets: Vec<String> = net
            .ipam
            .and_then(|i| i.config)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.subnet)
            .filter(|s| s.parse::<sandbar_proto::network::Ipv4Cidr>().is_ok())
            .collect();
        if subnets.is_empty() {
            return Err(StartupError::Config(format!("Docker network {name:?} has no IPv4 subnet")));
        }
        Ok(subnets)
    }

    /// Whether Docker answers (the runner's health).
    pub async fn ping(&self) -> Result<(), bollard::errors::Error> {
        self.inner.docker.ping().await.map(drop)
    }

    /// State changes from now on: every transition of a sandbox this runner knows, whether an operation or Docker
    /// caused it. A slow receiver that lags loses the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.inner.changes.subscribe()
    }

    pub fn list(&self) -> Vec<SandboxInfo> {
        let entries: Vec<_> = lock(&self.inner.sandboxes).values().cloned().collect();
        let mut list: Vec<_> = entries.iter().map(|e| lock(&e.info).clone()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    pub fn get(&self, id: &str) -> Option<SandboxInfo> {
        let entry = lock(&self.inner.sandboxes).get(id).cloned();
        entry.map(|e| lock(&e.info).clone())
    }

    /// Makes sure the default image exists, building it with the configured script if needed (seconds when cached).
    pub async fn ensure_default_image(&self) -> Result<ImageInfo, ImageError> {
        let c = &self.inner.config;
        image::ensure_default(&self.inner.docker, &c.default_image, c.image_script.as_deref()).await
    }

    /// Creates and starts a sandbox; returns once its daemon answers `GET /version`.
    pub async fn create(&self, req: CreateSandbox) -> Result<SandboxInfo, SandboxError> {
        self.detached(|inner| async move { inner.create(req, None).await }).await
    }

    pub async fn start(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let id = id.to_owned();
        self.detached(|inner| async move { inner.start(&id).await }).await
    }

    pub async fn stop(&self, req: StopSandbox) -> Result<SandboxInfo, SandboxError> {
        self.detached(|inner| async move { inner.stop(req).await }).await
    }

    /// Removes the container and forgets the sandbox. Destroying an unknown sandbox is an error; destroying one
    /// whose container is already gone is not.
    pub async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let id = id.to_owned();
        self.detached(|inner| async move { inner.destroy(&id).await }).await
    }

    pub async fn resize(&self, req: ResizeSandbox) -> Result<SandboxInfo, SandboxError> {
        self.detached(|inner| async move { inner.resize(req).await }).await
    }

    /// Changes a sandbox's network policy: at once while it runs, at its next start while stopped.
    pub async fn update_network(&self, req: UpdateSandboxNetwork) -> Result<SandboxInfo, SandboxError> {
        self.detached(|inner| async move { inner.update_network(req).await }).await
    }

    /// The network policy the runner holds for a sandbox, and the sandbox it is linked to.
    pub async fn network_policy(&self, id: &str) -> Result<(NetworkPolicy, Option<String>), SandboxError> {
        self.inner.entry(id)?;
        Ok(self.inner.firewall.policy(id).await)
    }

    /// The lock every operation on sandbox `id` holds (fork and snapshot commits hold it too).
    pub(crate) fn op_lock(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<()>>, SandboxError> {
        Ok(self.inner.entry(id)?.op.clone())
    }

    /// Moves sandbox `id` to `state` and tells subscribers, like the runner's own operations do (fork.rs: pause and
    /// resume). `addrs` (the daemon's toolbox and SSH addresses, [`host::events::daemon_addrs`]) are recorded for
    /// `started`.
    pub(crate) fn report_state(
        &self,
        id: &str,
        state: SandboxState,
        addrs: Option<(String, Option<String>)>,
        reason: Option<String>,
    ) -> Result<SandboxInfo, SandboxError> {
        let entry = self.inner.entry(id)?;
        if let Some((addr, ssh)) = addrs {
            let mut info = lock(&entry.info);
            (info.daemon_addr, info.ssh_addr) = (Some(addr), ssh);
        }
        self.inner.set_state(&entry, state, reason, None);
        Ok(lock(&entry.info).clone())
    }

    /// Runs a command through the sandbox's daemon (`POST /process/execute`).
    pub async fn exec(&self, id: &str, req: &ExecuteRequest) -> Result<ExecuteResponse, SandboxError> {
        let (addr, token) = self.inner.daemon_of(id)?;
        self.inner
            .daemon
            .execute(addr, &token, req)
            .await
            .map_err(|reason| SandboxError::Daemon { id: id.into(), reason })
    }

    /// The CPU and memory limits the kernel applies, read from the cgroup files inside the sandbox.
    pub async fn cgroup_limits(&self, id: &str) -> Result<CgroupLimits, SandboxError> {
        let req = ExecuteRequest { command: cgroup::READ_LIMITS.to_owned(), timeout: Some(10), ..Default::default() };
        let out = self.exec(id, &req).await?;
        if out.exit_code != 0 {
            return Err(SandboxError::Daemon {
                id: id.into(),
                reason: format!("reading cgroup limits exited {}: {}", out.exit_code, out.result.trim()),
            });
        }
        cgroup::parse(&out.result).map_err(|reason| SandboxError::Daemon { id: id.into(), reason })
    }

    /// Runs `op` on the runner's state as its own task, so that dropping the caller's future cannot interrupt it
    /// half way.
    async fn detached<T, F>(&self, op: impl FnOnce(Arc<Inner>) -> F) -> Result<T, SandboxError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, SandboxError>> + Send + 'static,
    {
        run_detached("operation", op(self.inner.clone())).await
    }

    /// Capacity and allocation (for heartbeats, with [`Runner::sample_usage`]).
    pub fn status(&self) -> RunnerStatus {
        let list = self.list();
        let mut allocated = Capacity::default();
        for s in list.iter().filter(|s| s.state != SandboxState::Destroyed) {
            allocated.cpu += s.resources.cpu;
            allocated.memory += s.resources.memory;
            allocated.disk += s.resources.disk;
        }
        let h = &self.inner.host;
        RunnerStatus {
            runner_id: self.inner.config.runner_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            capacity: Capacity {
                cpu: h.ncpu,
                memory: u32::try_from(h.mem_total / (GIB as u64)).unwrap_or(u32::MAX),
                disk: self.inner.config.disk_capacity_gib,
            },
            allocated,
            sandboxes: u32::try_from(list.len()).unwrap_or(u32::MAX),
            started: u32::try_from(list.iter().filter(|s| s.state == SandboxState::Started).count())
                .unwrap_or(u32::MAX),
            storage_driver: h.storage_driver.clone(),
            disk_enforced: h.disk_enforced,
            cgroup_version: h.cgroup_version,
            volumes: lock(&self.inner.volume_usage).clone(),
            usage: Vec::new(),
        }
    }

    /// Deletes a volume's data (gone already is success).
    pub async fn remove_volume(&self, req: sandbar_proto::runner::RemoveVolume) -> Result<(), SandboxError> {
        let driver = self.inner.volumes.clone().ok_or(volumes::VolumeError::NoStore)?;
        run_detached("volume removal", async move {
            tokio::task::spawn_blocking(move || driver.remove(&req.organization_id, &req.volume_id))
                .await
                .map_err(|e| SandboxError::Internal(format!("volume removal task failed: {e}")))?
                .map_err(SandboxError::from)
        })
        .await
    }

    /// Measures the volumes now (the heartbeat reports the last periodic measure).
    pub async fn volume_usage(&self) -> Result<Vec<sandbar_proto::runner::VolumeUsage>, SandboxError> {
        let driver = self.inner.volumes.clone().ok_or(volumes::VolumeError::NoStore)?;
        tokio::task::spawn_blocking(move || driver.usage())
            .await
            .map_err(|e| SandboxError::Internal(format!("volume measuring task failed: {e}")))?
            .map_err(SandboxError::from)
    }
}

/// Runs `fut` as its own task (see [`Runner::detached`]); `what` names it if the task dies.
async fn run_detached<T: Send + 'static, E: From<SandboxError> + Send + 'static>(
    what: &str,
    fut: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E> {
    // The caller's trace goes with the work into its task.
    let fut = crate::trace::scope(crate::trace::current(), fut);
    tokio::spawn(fut).await.map_err(|e| SandboxError::Internal(format!("{what} task failed: {e}")))?
}

fn check_daemon_binary(path: &Path) -> Result<std::path::PathBuf, StartupError> {
    let err = |reason: String| StartupError::DaemonBinary { path: path.to_owned(), reason };
    let abs = std::fs::canonicalize(path).map_err(|e| err(e.to_string()))?;
    let meta = std::fs::metadata(&abs).map_err(|e| err(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(err("not an executable file".into()));
    }
    Ok(abs)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn container_name(id: &str) -> String {
    format!("sandbar-{id}")
}

impl Inner {
    fn entry(&self, id: &str) -> Result<Arc<Entry>, SandboxError> {
        lock(&self.sandboxes).get(id).cloned().ok_or_else(|| SandboxError::NotFound(id.to_owned()))
    }

    fn sandbox_of_container(&self, container: &str) -> Option<String> {
        if container.is_empty() {
            return None;
        }
        let entries: Vec<_> = lock(&self.sandboxes).values().cloned().collect();
        entries.iter().map(|e| lock(&e.info)).find(|i| i.container_id == container).map(|i| i.id.clone())
    }

    fn daemon_of(&self, id: &str) -> Result<(SocketAddr, String), SandboxError> {
        let entry = self.entry(id)?;
        let info = lock(&entry.info);
        let addr = match (info.state, info.daemon_addr.as_deref().and_then(|a| a.parse().ok())) {
            (SandboxState::Started, Some(addr)) => addr,
            (state, _) => return Err(SandboxError::InvalidState { id: id.into(), state, action: "reach its daemon" }),
        };
        Ok((addr, info.daemon_token.clone()))
    }

    /// Sets the state (and, for a running sandbox, the daemon address) and tells subscribers.
    fn set_state(&self, entry: &Entry, state: SandboxState, reason: Option<String>, exit: Option<(i64, bool)>) {
        let change = {
            let mut info = lock(&entry.info);
            info.state = state;
            info.error_reason = reason.clone();
            if state != SandboxState::Started {
                (info.daemon_addr, info.ssh_addr) = (None, None);
            }
            StateChange {
                sandbox_id: info.id.clone(),
                state,
                reason,
                exit_code: exit.map(|(c, _)| c),
                oom_killed: exit.is_some_and(|(_, oom)| oom),
            }
        };
        tracing::info!(sandbox_id = %change.sandbox_id, state = %state, reason = ?change.reason, "sandbox state");
        // No receivers is fine: nobody is listening yet.
        let _ = self.changes.send(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_daemon_from_snapshot_entrypoints() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(strip_daemon(v(&[DAEMON_MOUNT_PATH, "--", "sh", "--", "x"])), v(&["sh", "--", "x"]));
        assert_eq!(strip_daemon(v(&[DAEMON_MOUNT_PATH])), v(&[]));
        assert_eq!(strip_daemon(v(&["sleep", "1"])), v(&["sleep", "1"]));
    }

    #[test]
    fn only_cow_drivers_with_quotas_enforce_disk() {
        assert!(!driver_enforces_disk("fuse-overlayfs"));
        assert!(!driver_enforces_disk("overlay2"));
        assert!(driver_enforces_disk("btrfs"));
    }
}
