//! The runner core: one Docker host, its sandboxes, and the state it reports.
//!
//! Every operation on a sandbox holds that sandbox's operation lock and runs as its own task, so a caller that
//! gives up (a dropped future, a timed-out job) never leaves a create half done: it finishes or cleans up.
//! Docker's event stream drives unsolicited changes (a daemon that dies, an OOM kill, a container removed by hand);
//! each event makes the runner re-inspect the container, so replayed or reordered events are harmless.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerUpdateBody, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::ports;
use sandbar_proto::runner::{
    Capacity, CreateSandbox, Job, JobKind, JobOutcome, JobResult, ResizeSandbox, Resources, RunnerStatus, SandboxInfo,
    SandboxSpecLabel, SandboxState, StateChange, StopSandbox, UpdateSandboxNetwork, labels,
};
use sandbar_proto::toolbox::{ExecuteRequest, ExecuteResponse};
use tokio::sync::broadcast;

use crate::cgroup::{self, CgroupLimits};
use crate::config::{DAEMON_MOUNT_PATH, RunnerConfig, valid_name};
use crate::daemon::{DaemonClient, new_token};
use crate::error::{ImageError, SandboxError, StartupError, docker_status};
use crate::image::{self, ImageInfo};
use crate::network::{self, Firewall};

mod archive;
mod pool;

pub use archive::{ARCHIVE_LABEL, ARCHIVE_REPO, ArchiveManifest};

const GIB: i64 = 1 << 30;
const NANO: i64 = 1_000_000_000;
/// Environment the runner injects; a create may not set these itself.
const ENV_SANDBOX_ID: &str = "SANDBAR_SANDBOX_ID";
const ENV_TOKEN: &str = "SANDBAR_DAEMON_TOKEN";
const ENV_TOOLBOX_ADDR: &str = "SANDBAR_TOOLBOX_ADDR";
pub(crate) const RESERVED_ENV: [&str; 3] = [ENV_SANDBOX_ID, ENV_TOKEN, ENV_TOOLBOX_ADDR];

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

/// Facts about the Docker host, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub ncpu: u32,
    pub mem_total: u64,
    pub storage_driver: String,
    /// Whether `--storage-opt size=` caps a container's disk on this driver.
    pub disk_enforced: bool,
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
    /// Isolation and egress rules (crate::network).
    firewall: Firewall,
    /// Where archived sandboxes go; `None`: archiving is not configured.
    archive: Option<archive::ArchiveStore>,
}

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

/// Poison only means another thread panicked mid-update of plain data; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let storage_driver = info.driver.unwrap_or_default();
        let cgroup_version = match info.cgroup_version {
            Some(bollard::models::SystemInfoCgroupVersionEnum::_2) => 2,
            _ => 1,
        };
        let host = HostFacts {
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
            "connected to Docker");

        let daemon = DaemonClient::new().map_err(|e| StartupError::Http(e.to_string()))?;
        let firewall = Firewall::new(&config).await?;
        let archive = archive::ArchiveStore::from_config(&config).map_err(StartupError::Config)?;
        let (changes, _) = broadcast::channel(1024);
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
        });
        // Events from just before the rebuild on are replayed, so nothing between the two is missed; the
        // handlers re-inspect, so replays are harmless.
        let since = unix_now().saturating_sub(1);
        inner.rebuild().await?;
        let events = tokio::spawn(watch_events(Arc::downgrade(&inner), since));
        lock(&inner.tasks).push(events.abort_handle());
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

    /// The Docker client (tests and tools inspect containers through it).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
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
        let inner = self.inner.clone();
        run_detached(async move { inner.create(req).await }).await
    }

    pub async fn start(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let (inner, id) = (self.inner.clone(), id.to_owned());
        run_detached(async move { inner.start(&id).await }).await
    }

    pub async fn stop(&self, req: StopSandbox) -> Result<SandboxInfo, SandboxError> {
        let inner = self.inner.clone();
        run_detached(async move { inner.stop(req).await }).await
    }

    /// Removes the container and forgets the sandbox. Destroying an unknown sandbox is an error; destroying one
    /// whose container is already gone is not.
    pub async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let (inner, id) = (self.inner.clone(), id.to_owned());
        run_detached(async move { inner.destroy(&id).await }).await
    }

    pub async fn resize(&self, req: ResizeSandbox) -> Result<SandboxInfo, SandboxError> {
        let inner = self.inner.clone();
        run_detached(async move { inner.resize(req).await }).await
    }

    /// Changes a sandbox's network policy: at once while it runs, at its next start while stopped.
    pub async fn update_network(&self, req: UpdateSandboxNetwork) -> Result<SandboxInfo, SandboxError> {
        let inner = self.inner.clone();
        run_detached(async move { inner.update_network(req).await }).await
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
    /// resume). `daemon_addr` is recorded for `started`.
    pub(crate) fn report_state(
        &self,
        id: &str,
        state: SandboxState,
        daemon_addr: Option<String>,
        reason: Option<String>,
    ) -> Result<SandboxInfo, SandboxError> {
        let entry = self.inner.entry(id)?;
        if daemon_addr.is_some() {
            lock(&entry.info).daemon_addr = daemon_addr;
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

    /// Capacity and allocation, for heartbeats.
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
        }
    }

    /// Carries out one job from the control plane.
    pub async fn handle(&self, job: Job) -> JobResult {
        let result = match job.kind {
            JobKind::CreateSandbox(c) => self.create(c).await.map(Some),
            JobKind::StartSandbox { sandbox_id } => self.start(&sandbox_id).await.map(Some),
            JobKind::StopSandbox(s) => self.stop(s).await.map(Some),
            JobKind::DestroySandbox { sandbox_id } => self.destroy(&sandbox_id).await.map(|()| None),
            JobKind::ResizeSandbox(r) => self.resize(r).await.map(Some),
            JobKind::UpdateSandboxNetwork(n) => self.update_network(n).await.map(Some),
            JobKind::ArchiveSandbox { sandbox_id } => self.archive(&sandbox_id).await.map(Some),
            JobKind::RestoreSandbox(spec) => self.restore(spec).await.map(Some),
            JobKind::BuildSnapshot(b) => {
                return crate::build::job_result(job.id, crate::build::build_logged(self, &b).await);
            }
            JobKind::ForkSandbox(f) => self.fork(f).await.map(Some),
            JobKind::RemoveSnapshot(r) => self.remove_snapshot_image(r).await.map(|()| None),
            JobKind::PauseSandbox { sandbox_id } => self.pause(&sandbox_id).await.map(Some),
            JobKind::ResumeSandbox { sandbox_id } => self.resume(&sandbox_id).await.map(Some),
            // Its result carries the image as well: built in fork.rs.
            JobKind::SnapshotSandbox(s) => return self.snapshot_job(job.id, s).await,
        };
        let outcome = match result {
            Ok(sandbox) => JobOutcome::Succeeded { sandbox: sandbox.map(Box::new), snapshot: None },
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "job failed");
                JobOutcome::Failed { code: e.code(), message: e.to_string() }
            }
        };
        JobResult { job_id: job.id, outcome }
    }
}

/// Runs an operation as its own task so that dropping the caller's future cannot interrupt it half way.
async fn run_detached<T: Send + 'static>(
    fut: impl Future<Output = Result<T, SandboxError>> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::spawn(fut).await.map_err(|e| SandboxError::Internal(format!("operation task failed: {e}")))?
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
                info.daemon_addr = None;
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

    fn validate_resources(&self, r: &Resources) -> Result<(), SandboxError> {
        let bad = |m: String| Err(SandboxError::InvalidRequest(m));
        let host_gib = self.host.mem_total / (GIB as u64);
        if r.cpu == 0 || r.cpu > self.host.ncpu {
            return bad(format!("cpu must be 1..={} cores on this host, not {}", self.host.ncpu, r.cpu));
        }
        if r.memory == 0 || u64::from(r.memory) > host_gib {
            return bad(format!("memory must be 1..={host_gib} GiB on this host, not {}", r.memory));
        }
        if r.disk == 0 {
            return bad("disk must be at least 1 GiB".into());
        }
        Ok(())
    }

    fn validate_create(&self, req: &CreateSandbox) -> Result<(), SandboxError> {
        let bad = |m: String| Err(SandboxError::InvalidRequest(m));
        if !valid_name(&req.id) {
            return bad(format!("sandbox ID {:?} must be 1-64 of [A-Za-z0-9_.-]", req.id));
        }
        if req.organization_id.is_empty()
            || req.organization_id.len() > 128
            || req.organization_id.chars().any(char::is_control)
        {
            return bad("organization ID must be 1-128 printable characters".into());
        }
        if req.image.trim().is_empty() {
            return bad("image must not be empty".into());
        }
        if matches!(&req.entrypoint, Some(argv) if argv.is_empty()) {
            return bad("entrypoint, when given, must not be empty".into());
        }
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return bad(format!("invalid environment variable name {key:?}"));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return bad(format!("{key} is set by the runner"));
            }
        }
        if req.env.values().any(|v| v.contains('\0')) {
            return bad("environment values must not contain NUL".into());
        }
        self.validate_resources(&req.resources)
    }

    async fn create(self: &Arc<Self>, req: CreateSandbox) -> Result<SandboxInfo, SandboxError> {
        self.validate_create(&req)?;
        let token = new_token().map_err(SandboxError::Internal)?;
        let info = SandboxInfo {
            id: req.id.clone(),
            name: req.name.clone(),
            organization_id: req.organization_id.clone(),
            runner_id: self.config.runner_id.clone(),
            container_id: String::new(),
            image: req.image.clone(),
            state: SandboxState::Creating,
            error_reason: None,
            resources: req.resources,
            disk_enforced: self.host.disk_enforced,
            daemon_addr: None,
            daemon_token: token,
            user: req.user.clone(),
            env: req.env.clone(),
            labels: req.labels.clone(),
            auto: req.auto,
        };
        let entry = Entry::new(info, false);
        {
            let mut map = lock(&self.sandboxes);
            if map.contains_key(&req.id) {
                return Err(SandboxError::Conflict(format!("sandbox {} already exists", req.id)));
            }
            if let Some(name) = &req.name {
                let taken = map.values().any(|e| {
                    let i = lock(&e.info);
                    i.organization_id == req.organization_id && i.name.as_deref() == Some(name.as_str())
                });
                if taken {
                    return Err(SandboxError::Conflict(format!("a sandbox named {name:?} already exists")));
                }
            }
            if let Some(parent) = &req.linked_sandbox
                && (parent == &req.id || !map.contains_key(parent))
            {
                return Err(SandboxError::InvalidRequest(format!(
                    "linked sandbox {parent} is not another sandbox on this runner"
                )));
            }
            map.insert(req.id.clone(), entry.clone());
        }
        let _op = entry.op.lock().await;
        if let Err(e) = self.firewall.set_policy(&req.id, req.network.clone(), req.linked_sandbox.clone()).await {
            lock(&self.sandboxes).remove(&req.id);
            return Err(e.into());
        }
        if let Some(member) = self.take_pool_member(&req) {
            match self.claim(&entry, &req, member).await {
                Ok(()) => {
                    self.set_state(&entry, SandboxState::Started, None, None);
                    return Ok(lock(&entry.info).clone());
                }
                Err(e) => tracing::warn!(sandbox_id = %req.id, error = %e, "warm pool claim failed; creating cold"),
            }
        }
        match self.create_container(&entry, &req, false).await {
            Ok(()) => {
                self.set_state(&entry, SandboxState::Started, None, None);
                Ok(lock(&entry.info).clone())
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %req.id, error = %e, "create failed; removing what was made");
                self.remove_container_quietly(&container_name(&req.id)).await;
                self.firewall.detach_sandbox(&req.id).await;
                self.firewall.forget(&req.id).await;
                lock(&self.sandboxes).remove(&req.id);
                Err(e)
            }
        }
    }

    /// Creates and starts the container for `req` and waits for its daemon; fills in the entry's container ID,
    /// user and daemon address. The caller sets the state.
    async fn create_container(&self, entry: &Entry, req: &CreateSandbox, pool: bool) -> Result<(), SandboxError> {
        let image = image::inspect(&self.docker, &req.image)
            .await?
            .ok_or_else(|| SandboxError::ImageNotFound(req.image.clone()))?;
        let argv = req.entrypoint.clone().unwrap_or_else(|| strip_daemon(image.argv()));
        let mut entrypoint = vec![DAEMON_MOUNT_PATH.to_owned()];
        if !argv.is_empty() {
            entrypoint.push("--".into());
            entrypoint.extend(argv);
        }
        let token = lock(&entry.info).daemon_token.clone();
        let mut env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("{ENV_SANDBOX_ID}={}", req.id));
        env.push(format!("{ENV_TOKEN}={token}"));
        env.push(format!("{ENV_TOOLBOX_ADDR}=0.0.0.0:{}", ports::TOOLBOX));

        let spec = SandboxSpecLabel {
            labels: req.labels.clone(),
            disk: req.resources.disk,
            auto: req.auto,
            env_keys: req.env.keys().cloned().collect(),
            network: req.network.clone(),
            linked_sandbox: req.linked_sandbox.clone(),
        };
        let spec = serde_json::to_string(&spec).map_err(|e| SandboxError::Internal(e.to_string()))?;
        let mut container_labels: HashMap<String, String> =
            self.config.extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        container_labels.insert(labels::SANDBOX_ID.into(), req.id.clone());
        container_labels.insert(labels::ORG.into(), req.organization_id.clone());
        container_labels.insert(labels::RUNNER.into(), self.config.runner_id.clone());
        container_labels.insert(labels::SPEC.into(), spec);
        // Always set, even empty: a container inherits its image's labels, and a snapshot's image has ours.
        container_labels.insert(labels::NAME.into(), req.name.clone().unwrap_or_default());
        container_labels.insert(labels::POOL.into(), if pool { "1".into() } else { String::new() });

        let r = req.resources;
        let memory = i64::from(r.memory) * GIB;
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:{DAEMON_MOUNT_PATH}:ro", self.config.daemon_binary.display())]),
            nano_cpus: Some(i64::from(r.cpu) * NANO),
            memory: Some(memory),
            // No swap beyond the memory limit (ignored where the kernel has no swap accounting).
            memory_swap: Some(memory),
            pids_limit: self.config.pids_limit,
            network_mode: self.config.network.clone(),
            storage_opt: self.host.disk_enforced.then(|| HashMap::from([("size".to_owned(), format!("{}G", r.disk))])),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(req.image.clone()),
            entrypoint: Some(entrypoint),
            env: Some(env),
            labels: Some(container_labels),
            user: req.user.clone(),
            stop_timeout: i64::try_from(self.config.stop_timeout.as_secs()).ok(),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = container_name(&req.id);
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
            .await
            .map_err(|e| match docker_status(&e) {
                Some(409) => SandboxError::Conflict(format!("a container named {name} already exists")),
                Some(404) => SandboxError::ImageNotFound(req.image.clone()),
                _ => SandboxError::Docker(e),
            })?;
        lock(&entry.info).container_id = created.id.clone();

        let (addr, user) = self.start_and_wait(&req.id, &created.id).await?;
        {
            let mut info = lock(&entry.info);
            info.user = user;
            info.daemon_addr = Some(addr.to_string());
        }
        Ok(())
    }

    /// Starts the container and waits for its daemon. Returns the daemon address and the container's user.
    async fn start_and_wait(&self, id: &str, container: &str) -> Result<(SocketAddr, Option<String>), SandboxError> {
        self.docker.start_container(container, None).await?;
        let inspect = self.docker.inspect_container(container, None).await?;
        let ip = container_ip(&inspect).ok_or_else(|| SandboxError::DaemonNotReady {
            id: id.into(),
            reason: "the container has no IP address (network mode none?)".into(),
        })?;
        if has_ipv6(&inspect) {
            return Err(SandboxError::InvalidRequest(format!(
                "sandbox {id} got an IPv6 address; sandbar's network rules are IPv4 only: use a Docker network \
                 without IPv6"
            )));
        }
        // Before the daemon answers, so no request reaches a sandbox whose rules are not in place.
        self.firewall.attach(container, id, ip).await?;
        let addr = SocketAddr::new(ip, ports::TOOLBOX);
        self.wait_daemon(id, container, addr).await?;
        let user = inspect.config.and_then(|c| c.user).filter(|u| !u.is_empty());
        Ok((addr, user))
    }

    /// Polls `GET /version` until it answers; checks that the container is still running every 200 ms so a daemon
    /// that cannot start fails fast with its exit code and last log lines.
    async fn wait_daemon(&self, id: &str, container: &str, addr: SocketAddr) -> Result<(), SandboxError> {
        let started = Instant::now();
        let deadline = started + self.config.daemon_ready_timeout;
        let mut next_check = started + Duration::from_millis(200);
        loop {
            if self.daemon.version(addr, Duration::from_millis(500)).await.is_ok() {
                tracing::debug!(sandbox_id = %id, ms = started.elapsed().as_millis(), "daemon ready");
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_check {
                next_check = now + Duration::from_millis(200);
                let inspect = self.docker.inspect_container(container, None).await?;
                let state = inspect.state.unwrap_or_default();
                if state.running != Some(true) {
                    let logs = self.logs_tail(container, 20).await;
                    return Err(SandboxError::DaemonNotReady {
                        id: id.into(),
                        reason: format!(
                            "the container stopped ({}); last output:\n{logs}",
                            exit_reason(state.exit_code.unwrap_or(-1), state.oom_killed == Some(true))
                        ),
                    });
                }
            }
            if now >= deadline {
                return Err(SandboxError::DaemonNotReady {
                    id: id.into(),
                    reason: format!(
                        "no answer from GET /version at {addr} within {:?}",
                        self.config.daemon_ready_timeout
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> String {
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&lines.to_string()).build();
        let mut out = String::new();
        let mut stream = self.docker.logs(container, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    async fn remove_container_quietly(&self, container: &str) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(container, Some(opts)).await {
            Ok(()) => {}
            Err(e) if docker_status(&e) == Some(404) => {}
            Err(e) => tracing::warn!(container, error = %e, "cannot remove container"),
        }
        self.firewall.detach(container).await;
    }

    async fn start(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let (state, container) = {
            let i = lock(&entry.info);
            (i.state, i.container_id.clone())
        };
        match state {
            SandboxState::Started => return Ok(lock(&entry.info).clone()),
            SandboxState::Stopped | SandboxState::Error => {}
            state => return Err(SandboxError::InvalidState { id: id.into(), state, action: "start" }),
        }
        self.set_state(&entry, SandboxState::Starting, None, None);
        let started = match self.start_and_wait(id, &container).await {
            // A restarted daemon has forgotten the identity a claim gave it.
            Ok((addr, _)) if entry.is_claimed() => self.init_claimed(&entry, addr).await.map(|()| addr),
            Ok((addr, _)) => Ok(addr),
            Err(e) => Err(e),
        };
        match started {
            Ok(addr) => {
                lock(&entry.info).daemon_addr = Some(addr.to_string());
                self.set_state(&entry, SandboxState::Started, None, None);
                Ok(lock(&entry.info).clone())
            }
            Err(e) => {
                // Leave nothing running that the runner does not consider started.
                let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                let _ = self.docker.kill_container(&container, Some(kill)).await;
                self.firewall.detach(&container).await;
                self.set_state(&entry, SandboxState::Error, Some(e.to_string()), None);
                Err(e)
            }
        }
    }

    async fn stop(&self, req: StopSandbox) -> Result<SandboxInfo, SandboxError> {
        let id = req.sandbox_id.as_str();
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let (state, container) = {
            let i = lock(&entry.info);
            (i.state, i.container_id.clone())
        };
        match state {
            SandboxState::Stopped => return Ok(lock(&entry.info).clone()),
            SandboxState::Started | SandboxState::Error => {}
            // Frozen processes cannot run their SIGTERM handlers: thaw them, then stop as usual.
            SandboxState::Paused => crate::fork::unpause_quietly(&self.docker, &container).await,
            state => return Err(SandboxError::InvalidState { id: id.into(), state, action: "stop" }),
        }
        self.set_state(&entry, SandboxState::Stopping, None, None);
        let result = if req.force {
            self.kill_and_wait(&container).await
        } else {
            let deadline = req.timeout_secs.map_or(self.config.stop_timeout, |s| Duration::from_secs(s.into()));
            let t = i32::try_from(deadline.as_secs()).unwrap_or(i32::MAX);
            let opts = StopContainerOptionsBuilder::default().t(t).build();
            match self.docker.stop_container(&container, Some(opts)).await {
                Err(e) if docker_status(&e) == Some(304) => Ok(()),
                r => r,
            }
        };
        match result {
            Ok(()) => {
                // Its address is free for other containers now.
                self.firewall.detach(&container).await;
                self.set_state(&entry, SandboxState::Stopped, None, None);
                Ok(lock(&entry.info).clone())
            }
            Err(e) => {
                self.set_state(&entry, SandboxState::Error, Some(format!("stop failed: {e}")), None);
                Err(e.into())
            }
        }
    }

    async fn kill_and_wait(&self, container: &str) -> Result<(), bollard::errors::Error> {
        let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        match self.docker.kill_container(container, Some(kill)).await {
            // 409: not running.
            Err(e) if docker_status(&e) == Some(409) => return Ok(()),
            r => r?,
        }
        let wait = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut stream = self.docker.wait_container(container, Some(wait));
        match stream.next().await {
            // bollard reports a non-zero exit as an error; for a kill that is the expected outcome.
            None | Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) => return Err(e),
        }
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let entry = match self.entry(id) {
            Ok(entry) => entry,
            // Not here: an archived sandbox (no container) still has its archive to delete.
            Err(not_found) => return self.destroy_archived(id, not_found).await,
        };
        let _op = entry.op.lock().await;
        let (container, image) = {
            let i = lock(&entry.info);
            (i.container_id.clone(), i.image.clone())
        };
        self.set_state(&entry, SandboxState::Destroying, None, None);
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(&container, Some(opts)).await {
            Ok(()) => {}
            Err(e) if docker_status(&e) == Some(404) => {}
            Err(e) => {
                self.set_state(&entry, SandboxState::Error, Some(format!("destroy failed: {e}")), None);
                return Err(e.into());
            }
        }
        self.firewall.detach(&container).await;
        self.firewall.forget(id).await;
        lock(&self.sandboxes).remove(id);
        if entry.is_claimed() {
            self.save_claims()?;
        }
        self.forget_archive(id).await;
        // A fork's own image goes with it.
        crate::fork::release_fork_image(&self.docker, &image).await;
        self.set_state(&entry, SandboxState::Destroyed, None, None);
        Ok(())
    }

    async fn update_network(&self, req: UpdateSandboxNetwork) -> Result<SandboxInfo, SandboxError> {
        let entry = self.entry(&req.sandbox_id)?;
        let _op = entry.op.lock().await;
        self.firewall.update_policy(&req.sandbox_id, req.policy).await?;
        tracing::info!(sandbox_id = %req.sandbox_id, "network policy changed");
        Ok(lock(&entry.info).clone())
    }

    async fn resize(&self, req: ResizeSandbox) -> Result<SandboxInfo, SandboxError> {
        let id = req.sandbox_id.as_str();
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let (state, container, current) = {
            let i = lock(&entry.info);
            (i.state, i.container_id.clone(), i.resources)
        };
        if !matches!(state, SandboxState::Started | SandboxState::Stopped) {
            return Err(SandboxError::InvalidState { id: id.into(), state, action: "resize" });
        }
        let wanted = Resources {
            cpu: req.cpu.unwrap_or(current.cpu),
            memory: req.memory.unwrap_or(current.memory),
            disk: req.disk.unwrap_or(current.disk),
        };
        self.validate_resources(&wanted)?;
        if wanted.disk != current.disk {
            let why = if self.host.disk_enforced {
                "changing an enforced disk limit needs the container recreated, which this runner does not do yet"
                    .to_owned()
            } else {
                format!(
                    "disk limits are not enforced on storage driver {}, so there is none to resize",
                    self.host.storage_driver
                )
            };
            return Err(SandboxError::InvalidRequest(why));
        }
        if wanted == current {
            return Ok(lock(&entry.info).clone());
        }
        let memory = i64::from(wanted.memory) * GIB;
        let update = ContainerUpdateBody {
            nano_cpus: Some(i64::from(wanted.cpu) * NANO),
            memory: Some(memory),
            memory_swap: Some(memory),
            ..Default::default()
        };
        self.docker.update_container(&container, update).await?;
        lock(&entry.info).resources = wanted;
        Ok(lock(&entry.info).clone())
    }

    /// Rebuilds the sandbox table from the containers labelled with this runner's ID.
    async fn rebuild(self: &Arc<Self>) -> Result<(), StartupError> {
        let filters = HashMap::from([("label", vec![format!("{}={}", labels::RUNNER, self.config.runner_id)])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(opts)).await?;
        let mut claims = self.load_claims();
        let mut probes = Vec::new();
        let mut pool_candidates = Vec::new();
        for c in containers {
            let Some(cid) = c.id else { continue };
            let inspect = match self.docker.inspect_container(&cid, None).await {
                Ok(i) => i,
                Err(e) if docker_status(&e) == Some(404) => continue,
                Err(e) => return Err(e.into()),
            };
            let status = inspect.state.as_ref().and_then(|s| s.status);
            if status == Some(ContainerStateStatusEnum::CREATED) {
                // A create that was interrupted before its container started: nobody was told it exists.
                tracing::info!(container = %cid, "removing a container an interrupted create left behind");
                self.remove_container_quietly(&cid).await;
                continue;
            }
            let Some(mut info) = info_from_container(&inspect, &self.config.runner_id, self.host.disk_enforced) else {
                tracing::warn!(container = %cid, "container has our runner label but no usable sandbox labels; ignored");
                continue;
            };
            self.firewall.adopt_policy(&info.id, network_from_container(&inspect)).await;
            let pooled = inspect
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(labels::POOL))
                .is_some_and(|v| v == "1");
            let claimed = if pooled {
                match claims.remove(&cid) {
                    // Identity from the claim; what Docker knows better (state, address, live limits) from Docker.
                    Some(claim) => {
                        info = SandboxInfo {
                            container_id: info.container_id,
                            state: info.state,
                            error_reason: info.error_reason,
                            daemon_addr: info.daemon_addr,
                            daemon_token: info.daemon_token,
                            user: info.user,
                            image: info.image,
                            resources: Resources { disk: claim.resources.disk, ..info.resources },
                            runner_id: info.runner_id,
                            ..claim
                        };
                        true
                    }
                    None if info.state == SandboxState::Started => {
                        pool_candidates.push(info);
                        continue;
                    }
                    None => {
                        self.remove_container_quietly(&cid).await;
                        continue;
                    }
                }
            } else {
                false
            };
            let entry = Entry::new(info.clone(), claimed);
            lock(&self.sandboxes).insert(info.id.clone(), entry.clone());
            if info.state == SandboxState::Started {
                probes.push((entry, info));
            }
        }
        self.adopt_pool_members(pool_candidates).await;
        // Rules for every running container before anything else happens; stale chains go.
        let mut running: Vec<(String, String, IpAddr)> = {
            let entries: Vec<Arc<Entry>> = lock(&self.sandboxes).values().cloned().collect();
            entries
                .iter()
                .filter_map(|e| {
                    let i = lock(&e.info);
                    let ip = i.daemon_addr.as_deref()?.parse::<SocketAddr>().ok()?.ip();
                    Some((i.container_id.clone(), i.id.clone(), ip))
                })
                .collect()
        };
        running.extend(self.pool_addrs().into_iter().map(|(c, addr)| (c.clone(), format!("pool-{c}"), addr.ip())));
        let known = lock(&self.sandboxes).keys().cloned().collect();
        self.firewall.reset(running, &known).await?;
        // A running container whose daemon does not answer is not a working sandbox.
        let checks = probes.into_iter().map(|(entry, info)| {
            let inner = self.clone();
            async move {
                let addr = info.daemon_addr.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
                let ok = match addr {
                    Some(addr) => {
                        inner.daemon.version(addr, Duration::from_secs(2)).await.is_ok()
                            && (!entry.is_claimed() || inner.init_claimed(&entry, addr).await.is_ok())
                    }
                    None => false,
                };
                if !ok {
                    inner.set_state(
                        &entry,
                        SandboxState::Error,
                        Some("daemon not answering after runner restart".into()),
                        None,
                    );
                }
            }
        });
        futures_util::future::join_all(checks).await;
        tracing::info!(sandboxes = lock(&self.sandboxes).len(), "state rebuilt from Docker");
        Ok(())
    }

    /// Brings one sandbox's state in line with its container after a Docker event. Operations in progress own the
    /// state of their sandbox; this only corrects `started` sandboxes that died, `stopped`/`error` sandboxes that
    /// were started from outside, and containers removed from outside.
    async fn reconcile(self: &Arc<Self>, id: &str) {
        let Ok(entry) = self.entry(id) else { return };
        let (state, container) = {
            let i = lock(&entry.info);
            (i.state, i.container_id.clone())
        };
        if container.is_empty() {
            return;
        }
        let inspect = match self.docker.inspect_container(&container, None).await {
            Ok(i) => i,
            Err(e) if docker_status(&e) == Some(404) => {
                if matches!(state, SandboxState::Started | SandboxState::Stopped | SandboxState::Error) {
                    self.firewall.detach(&container).await;
                    self.firewall.forget(id).await;
                    lock(&self.sandboxes).remove(id);
                    if entry.is_claimed()
                        && let Err(e) = self.save_claims()
                    {
                        tracing::warn!(sandbox_id = %id, error = %e, "cannot save claims");
                    }
                    self.set_state(
                        &entry,
                        SandboxState::Destroyed,
                        Some("container removed outside the runner".into()),
                        None,
                    );
                }
                return;
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, error = %e, "cannot inspect container after an event");
                return;
            }
        };
        let s = inspect.state.clone().unwrap_or_default();
        let running = s.running == Some(true);
        if !running {
            let code = s.exit_code.unwrap_or(-1);
            let oom = s.oom_killed == Some(true);
            // Re-check under the lock: an operation may have begun while Docker was answering.
            let died = lock(&entry.info).state == SandboxState::Started;
            if died {
                self.firewall.detach(&container).await;
                let new = if oom || code != 0 { SandboxState::Error } else { SandboxState::Stopped };
                let reason = format!("sandbox daemon exited unexpectedly: {}", exit_reason(code, oom));
                self.set_state(&entry, new, Some(reason), Some((code, oom)));
            }
            return;
        }
        if state == SandboxState::Started
            && let Some(ip) = container_ip(&inspect)
        {
            // Restarted from outside faster than the events were handled: the address may have changed.
            let addr = SocketAddr::new(ip, ports::TOOLBOX).to_string();
            if lock(&entry.info).daemon_addr.as_deref() != Some(addr.as_str()) {
                match self.firewall.attach(&container, id, ip).await {
                    Ok(()) => lock(&entry.info).daemon_addr = Some(addr),
                    Err(e) => tracing::error!(sandbox_id = %id, error = %e, "cannot re-hook network rules"),
                }
            }
            return;
        }
        if matches!(state, SandboxState::Stopped | SandboxState::Error) {
            // Started from outside (`docker start`): adopt it once its daemon answers, unless an operation is busy.
            let Ok(_op) = entry.op.clone().try_lock_owned() else { return };
            if !matches!(lock(&entry.info).state, SandboxState::Stopped | SandboxState::Error) {
                return;
            }
            let Some(ip) = container_ip(&inspect) else { return };
            if let Err(e) = self.firewall.attach(&container, id, ip).await {
                tracing::error!(sandbox_id = %id, error = %e, "started outside the runner, but its network rules failed");
                return;
            }
            let addr = SocketAddr::new(ip, ports::TOOLBOX);
            let ready = self.wait_daemon(id, &container, addr).await.is_ok()
                && (!entry.is_claimed() || self.init_claimed(&entry, addr).await.is_ok());
            if ready {
                lock(&entry.info).daemon_addr = Some(addr.to_string());
                self.set_state(&entry, SandboxState::Started, Some("started outside the runner".into()), None);
            }
        }
    }
}

/// Follows Docker's container events for this runner's containers until the runner is dropped. On a broken
/// stream it reconnects from the last event's time and reconciles every sandbox, since events may have been lost.
async fn watch_events(weak: Weak<Inner>, mut since: i64) {
    let mut resync = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if resync {
            let ids: Vec<String> = lock(&inner.sandboxes).keys().cloned().collect();
            for id in ids {
                inner.reconcile(&id).await;
            }
        }
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![format!("{}={}", labels::RUNNER, inner.config.runner_id)]),
            ("event", ["die", "start", "destroy", "oom"].map(String::from).to_vec()),
        ]);
        let opts = EventsOptionsBuilder::default().since(&since.to_string()).filters(&filters).build();
        let mut stream = Box::pin(inner.docker.events(Some(opts)));
        drop(inner);
        while let Some(item) = stream.next().await {
            let ev = match item {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "Docker event stream failed; reconnecting");
                    break;
                }
            };
            if let Some(t) = ev.time {
                since = since.max(t);
            }
            let Some(inner) = weak.upgrade() else { return };
            let action = ev.action.clone().unwrap_or_default();
            let container = ev.actor.and_then(|a| a.id).unwrap_or_default();
            // Claimed pool containers carry the pool's labels, so find the sandbox by container ID.
            let Some(id) = inner.sandbox_of_container(&container) else {
                if inner.is_pool_member(&container) && action != "start" {
                    tokio::spawn(async move { inner.drop_pool_member(&container).await });
                }
                continue;
            };
            tracing::debug!(sandbox_id = %id, action = %action, "Docker event");
            if action == "oom" {
                tracing::warn!(sandbox_id = %id, "sandbox hit its memory limit (OOM kill)");
            }
            // Reconciling can wait for a daemon; do it beside the stream so other events are not held up.
            tokio::spawn(async move { inner.reconcile(&id).await });
        }
        resync = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) fn container_ip(inspect: &ContainerInspectResponse) -> Option<IpAddr> {
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<_> = networks.keys().collect();
    names.sort();
    names.into_iter().find_map(|n| networks.get(n)?.ip_address.as_deref().filter(|ip| !ip.is_empty())?.parse().ok())
}

/// Whether any of the container's networks gave it an IPv6 address, which the IPv4 rules would not cover.
fn has_ipv6(inspect: &ContainerInspectResponse) -> bool {
    let networks = inspect.network_settings.as_ref().and_then(|n| n.networks.as_ref());
    networks.is_some_and(|n| n.values().any(|e| e.global_ipv6_address.as_deref().is_some_and(|a| !a.is_empty())))
}

/// The network policy and link a container was created with (its spec label).
fn network_from_container(c: &ContainerInspectResponse) -> network::Stored {
    let spec = c
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(labels::SPEC))
        .and_then(|s| serde_json::from_str::<SandboxSpecLabel>(s).ok())
        .unwrap_or_default();
    network::Stored { policy: spec.network, linked_sandbox: spec.linked_sandbox }
}

/// How a container's main process ended, in words.
fn exit_reason(code: i64, oom: bool) -> String {
    if oom {
        return format!("killed for running out of memory (OOM), exit code {code}");
    }
    match code {
        0 => "exited with code 0".into(),
        129..=192 => {
            let sig = code - 128;
            let name = match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                6 => " (SIGABRT)",
                11 => " (SIGSEGV)",
                2 => " (SIGINT)",
                _ => "",
            };
            format!("killed by signal {sig}{name}, exit code {code}")
        }
        c => format!("exited with code {c}"),
    }
}

/// A sandbox as its container describes it (for a restarted runner).
fn info_from_container(c: &ContainerInspectResponse, runner_id: &str, disk_enforced: bool) -> Option<SandboxInfo> {
    let config = c.config.as_ref()?;
    let container_labels = config.labels.as_ref()?;
    let id = container_labels.get(labels::SANDBOX_ID)?.clone();
    let spec: SandboxSpecLabel = container_labels
        .get(labels::SPEC)
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| tracing::warn!(sandbox_id = %id, error = %e, "bad spec label")).ok()
        })
        .unwrap_or_default();
    let all_env: BTreeMap<&str, &str> = config.env.iter().flatten().filter_map(|kv| kv.split_once('=')).collect();
    let daemon_token = all_env.get(ENV_TOKEN)?.to_string();
    let env = spec.env_keys.iter().filter_map(|k| Some((k.clone(), all_env.get(k.as_str())?.to_string()))).collect();
    let hc = c.host_config.as_ref();
    let cpu = hc.and_then(|h| h.nano_cpus).map_or(0, |n| (n + NANO / 2) / NANO);
    let memory = hc.and_then(|h| h.memory).map_or(0, |m| (m + GIB / 2) / GIB);
    let s = c.state.clone().unwrap_or_default();
    let running = s.running == Some(true);
    let oom = s.oom_killed == Some(true);
    let code = s.exit_code.unwrap_or(0);
    let (state, error_reason) = match s.status {
        Some(ContainerStateStatusEnum::PAUSED) => (SandboxState::Paused, None),
        _ if running => (SandboxState::Started, None),
        // A restarted runner cannot tell a requested stop from a crash except by OOM: report the exit either way.
        _ if oom => (SandboxState::Error, Some(exit_reason(code, true))),
        _ if code != 0 => (SandboxState::Stopped, Some(exit_reason(code, false))),
        _ => (SandboxState::Stopped, None),
    };
    let daemon_addr =
        if running { container_ip(c).map(|ip| SocketAddr::new(ip, ports::TOOLBOX).to_string()) } else { None };
    Some(SandboxInfo {
        id,
        name: container_labels.get(labels::NAME).filter(|n| !n.is_empty()).cloned(),
        organization_id: container_labels.get(labels::ORG).cloned().unwrap_or_default(),
        runner_id: runner_id.to_owned(),
        container_id: c.id.clone().unwrap_or_default(),
        image: config.image.clone().unwrap_or_default(),
        state,
        error_reason,
        resources: Resources {
            cpu: u32::try_from(cpu).unwrap_or(0),
            memory: u32::try_from(memory).unwrap_or(0),
            disk: spec.disk,
        },
        disk_enforced,
        daemon_addr,
        daemon_token,
        user: config.user.clone().filter(|u| !u.is_empty()),
        env,
        labels: spec.labels,
        auto: spec.auto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, EndpointSettings, NetworkSettings};

    #[test]
    fn exit_reasons_name_signals_and_oom() {
        assert_eq!(exit_reason(137, false), "killed by signal 9 (SIGKILL), exit code 137");
        assert!(exit_reason(137, true).contains("OOM"));
        assert_eq!(exit_reason(3, false), "exited with code 3");
    }

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

    fn container(running: bool, exit: i64, oom: bool) -> ContainerInspectResponse {
        let spec = SandboxSpecLabel {
            labels: BTreeMap::from([("team".into(), "a".into())]),
            disk: 5,
            auto: Default::default(),
            env_keys: vec!["FOO".into()],
            network: Default::default(),
            linked_sandbox: None,
        };
        ContainerInspectResponse {
            id: Some("cid".into()),
            config: Some(ContainerConfig {
                image: Some("img:1".into()),
                user: Some("sandbar".into()),
                env: Some(vec![
                    "FOO=bar=baz".into(),
                    "PATH=/bin".into(),
                    format!("{ENV_TOKEN}=tok"),
                    format!("{ENV_SANDBOX_ID}=s1"),
                ]),
                labels: Some(HashMap::from([
                    (labels::SANDBOX_ID.into(), "s1".into()),
                    (labels::ORG.into(), "org".into()),
                    (labels::NAME.into(), "nice".into()),
                    (labels::SPEC.into(), serde_json::to_string(&spec).unwrap()),
                ])),
                ..Default::default()
            }),
            host_config: Some(HostConfig { nano_cpus: Some(2 * NANO), memory: Some(3 * GIB), ..Default::default() }),
            state: Some(ContainerState {
                running: Some(running),
                exit_code: Some(exit),
                oom_killed: Some(oom),
                status: Some(if running {
                    ContainerStateStatusEnum::RUNNING
                } else {
                    ContainerStateStatusEnum::EXITED
                }),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([(
                    "bridge".into(),
                    EndpointSettings { ip_address: Some("172.17.0.9".into()), ..Default::default() },
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rebuilds_info_from_a_container() {
        let info = info_from_container(&container(true, 0, false), "r1", false).unwrap();
        assert_eq!(info.id, "s1");
        assert_eq!(info.name.as_deref(), Some("nice"));
        assert_eq!(info.organization_id, "org");
        assert_eq!(info.daemon_token, "tok");
        assert_eq!(info.env, BTreeMap::from([("FOO".into(), "bar=baz".into())]));
        assert_eq!(info.resources, Resources { cpu: 2, memory: 3, disk: 5 });
        assert_eq!(info.state, SandboxState::Started);
        assert_eq!(info.daemon_addr.as_deref(), Some("172.17.0.9:2280"));
        assert_eq!(info.labels.get("team").map(String::as_str), Some("a"));

        let stopped = info_from_container(&container(false, 0, false), "r1", false).unwrap();
        assert_eq!((stopped.state, stopped.daemon_addr, stopped.error_reason), (SandboxState::Stopped, None, None));
        let oom = info_from_container(&container(false, 137, true), "r1", false).unwrap();
        assert_eq!(oom.state, SandboxState::Error);
    }

    #[test]
    fn a_container_without_a_token_is_not_a_sandbox() {
        let mut c = container(true, 0, false);
        if let Some(cfg) = c.config.as_mut() {
            cfg.env = Some(vec![]);
        }
        assert!(info_from_container(&c, "r1", false).is_none());
    }
}
