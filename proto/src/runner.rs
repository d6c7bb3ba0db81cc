//! Messages between the control plane and a runner: the jobs the API hands out, what the runner answers, the
//! sandbox states it reports, and the capacity it advertises. Both sides build against these types, so either can
//! be built and tested first. JSON field names are camelCase like the rest of the Daytona-shaped wire.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::network::{NetworkPolicy, UpdateSandboxNetwork};

/// Container label keys every runner-managed container carries. A restarted runner rebuilds its state from them.
pub mod labels {
    /// The sandbox ID (also the container name suffix).
    pub const SANDBOX_ID: &str = "sandbar.sandbox.id";
    /// The owning organization.
    pub const ORG: &str = "sandbar.org";
    /// The runner that owns the container; a runner only ever touches its own.
    pub const RUNNER: &str = "sandbar.runner";
    /// The sandbox's user-facing name.
    pub const NAME: &str = "sandbar.name";
    /// JSON of [`super::SandboxSpecLabel`]: what the runner must remember that Docker does not.
    pub const SPEC: &str = "sandbar.spec";
    /// Marks a warm-pool container that no sandbox has claimed yet.
    pub const POOL: &str = "sandbar.pool";
}

/// Sandbox states, spelled as Daytona spells them (the SDK waits on these strings). A runner reports a subset
/// (`creating`, `starting`, `started`, `stopping`, `stopped`, `destroying`, `destroyed`, `resizing`, `error`,
/// `archiving`, `archived`, `restoring`); the others belong to the control plane's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Restoring,
    Destroyed,
    Destroying,
    Started,
    Stopped,
    Starting,
    Stopping,
    Error,
    BuildFailed,
    PendingBuild,
    BuildingSnapshot,
    Unknown,
    PullingSnapshot,
    Archived,
    Archiving,
    Resizing,
    Snapshotting,
    Forking,
    Pausing,
    Paused,
    Resuming,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Restoring => "restoring",
            Self::Destroyed => "destroyed",
            Self::Destroying => "destroying",
            Self::Started => "started",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Stopping => "stopping",
            Self::Error => "error",
            Self::BuildFailed => "build_failed",
            Self::PendingBuild => "pending_build",
            Self::BuildingSnapshot => "building_snapshot",
            Self::Unknown => "unknown",
            Self::PullingSnapshot => "pulling_snapshot",
            Self::Archived => "archived",
            Self::Archiving => "archiving",
            Self::Resizing => "resizing",
            Self::Snapshotting => "snapshotting",
            Self::Forking => "forking",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resources of one sandbox, in Daytona's units: whole cores and GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpu: u32,
    /// GiB.
    pub memory: u32,
    /// GiB.
    pub disk: u32,
}

impl Default for Resources {
    /// Daytona's default sandbox size: 1 core, 1 GiB memory, 3 GiB disk.
    fn default() -> Self {
        Self { cpu: 1, memory: 1, disk: 3 }
    }
}

/// Lifecycle timers, in minutes. The runner carries them as data (on the container and in [`SandboxInfo`]); the
/// control plane acts on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoIntervals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_stop_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_archive_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_delete_interval: Option<u32>,
}

/// Job: create (and start) a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandbox {
    /// Chosen by the control plane; names the container `sandbar-{id}`. On the wire `sandboxId` like every other
    /// job kind: a [`Job`] flattens its kind next to its own `id`.
    #[serde(rename = "sandboxId")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub organization_id: String,
    /// The image reference: a local one, or one the runner pulls first when [`pull`](Self::pull) is set.
    pub image: String,
    /// Pull `image` from its registry before creating (with the organization's credentials for that registry,
    /// asked for at the time: see `GET /runners/{id}/jobs/{jobId}/registry-auth`). Every create from a registry
    /// image pulls, even when the image is on the host already: the registry, not the runner's cache, decides
    /// whether this organization may have it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    /// A copy of `image` (one of sandbar's own: a snapshot's or a build's) in the operator's internal registry,
    /// where the runner that made it pushed it: a runner without `image` pulls this with its own registry
    /// credentials and tags it `image` first, so a sandbox of a pushed image may be placed on any runner. `None`:
    /// `image` is local to the runner the control plane chose (or a registry image, see [`pull`](Self::pull)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_from: Option<String>,
    /// User the daemon (and so every process it starts) runs as; default: the image's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    /// Replaces the image's entrypoint + cmd as the daemon's child; `None` keeps the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, flatten)]
    pub auto: AutoIntervals,
    /// Egress policy (`networkBlockAll`, `networkAllowList`).
    #[serde(default, flatten)]
    pub network: NetworkPolicy,
    /// The sandbox (on the same runner) this one is linked to: the two may connect to each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_sandbox: Option<String>,
    /// OCI runtime (`runc`, `runsc` for gVisor); must be one the runner allows. `None`: the runner's default. The
    /// control plane takes it from the sandbox's [`RUNTIME_LABEL`] label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Volumes of the sandbox's organization to bind-mount (the control plane checked ownership, paths and quotas;
    /// the runner checks the paths again). Absent in jobs from before volumes existed: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

/// One volume mounted into a sandbox: Daytona's `SandboxVolume` (`volumeId` resolved to the volume's ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub volume_id: String,
    /// Absolute path inside the sandbox.
    pub mount_path: String,
    /// A directory inside the volume (relative, no `..`) mounted instead of the whole volume; made if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

/// Job: delete a volume's data on the runner that holds it (gone already is success).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveVolume {
    pub volume_id: String,
    pub organization_id: String,
}

/// Bytes a volume holds on a runner, as its heartbeat reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeUsage {
    pub volume_id: String,
    pub bytes: u64,
}

/// The sandbox label (Daytona's `labels` of a create) that picks a sandbox's OCI runtime, e.g. `runsc` for gVisor.
pub const RUNTIME_LABEL: &str = "sandbar.runtime";

/// Job: stop a sandbox. Graceful sends SIGTERM to the daemon (which drains and stops its children) and kills
/// after `timeoutSecs`; `force` kills at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopSandbox {
    pub sandbox_id: String,
    #[serde(default)]
    pub force: bool,
    /// Deadline of a graceful stop; the runner's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

/// Job: change a sandbox's resources. CPU and memory apply live; disk only where the storage driver enforces it,
/// only while stopped and only upwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResizeSandbox {
    pub sandbox_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u32>,
}

/// Job: build the image `image` from a Dockerfile through Docker's build API. Images in [`pull`](Self::pull) are
/// pulled from their registries first (progress in the build log); every other `FROM` image must be on the
/// runner. The runner streams the build output to `POST /runners/{id}/jobs/{jobId}/log`
/// ([`crate::api::BuildLog`]) while it runs, then reports the result (`BUILD_FAILED` with Docker's reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildSnapshot {
    /// The control plane's build id: what the job acts on (in place of a sandbox id).
    pub build_id: String,
    /// The local image reference to tag the result with.
    pub image: String,
    pub dockerfile: String,
    /// Registry images the Dockerfile names (`FROM`, `COPY --from`), pulled before the build with the
    /// organization's credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull: Vec<String>,
    /// The egress policy of the build's `RUN` steps, the organization's build network; `None` (the default): no
    /// network at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
}

/// Job: pull a registry image for a snapshot (`POST /snapshots` with an `imageName` from a registry). The snapshot
/// is `pulling` meanwhile; the result carries the image's id and size ([`SnapshotImage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullImage {
    pub snapshot_id: String,
    pub organization_id: String,
    pub image: String,
}

/// Credentials for one registry (Daytona's docker-registry entries), as a runner gets them for a job's pull.
/// Debug redacts the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryAuth {
    /// The registry's host (and port): what the image reference starts with (`docker.io` for Docker Hub).
    pub server: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The registry host of an image reference as Docker reads it: the first path component when it has a `.` or a
/// `:` or is `localhost`, else Docker Hub (`docker.io`).
pub fn registry_host(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Repository of the images a fork is made from; the tag is the fork's sandbox ID (see [`fork_image`]).
pub const FORK_IMAGE_REPO: &str = "sandbar-fork";

/// Environment names a create may not set: the daemon's own configuration (`SANDBAR_*`, any case) and what the Rust
/// runtime of the daemon (PID 1 of every sandbox) reads (`RUST_LOG`, `RUST_BACKTRACE`, `RUST_LIB_BACKTRACE`).
/// The API refuses them with a 400 and the runner again.
pub fn reserved_env(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    upper.starts_with("SANDBAR_") || matches!(upper.as_str(), "RUST_LOG" | "RUST_BACKTRACE" | "RUST_LIB_BACKTRACE")
}

/// The image a fork of sandbox `fork_id` runs: the source's filesystem committed by the runner. Both sides compute
/// it, so the API can record it before the runner has made it, and the runner removes it when the fork is
/// destroyed.
pub fn fork_image(fork_id: &str) -> String {
    format!("{FORK_IMAGE_REPO}:{fork_id}")
}

/// Job: fork a sandbox. The runner commits the source's filesystem (started or stopped; memory and running
/// processes are not copied) to [`fork_image`] of the new sandbox, then creates and starts `fork` from it, with a new
/// ID, name and daemon token. The two diverge from then on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkSandbox {
    pub source_sandbox_id: String,
    /// The new sandbox; its `image` must be [`fork_image`] of its ID.
    pub fork: CreateSandbox,
}

/// Job: commit a sandbox's filesystem (not its memory) as the local image `image`, for a snapshot. The sandbox
/// keeps its state; it is frozen (docker pause) while the commit runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSandbox {
    pub sandbox_id: String,
    /// The image reference to create (lowercase, `repo[:tag]`); an existing image of that name is a conflict.
    pub image: String,
}

/// Job: remove the image of a snapshot taken from a sandbox (its snapshot was deleted). An image that is gone
/// already is success; one a container still uses fails with `CONFLICT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveSnapshot {
    pub snapshot_id: String,
    pub image: String,
    /// The image's copy in the internal registry ([`SnapshotImage::pushed`]), deleted there too (by digest; a
    /// registry that refuses deletes keeps it, which the runner logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<String>,
}

/// The image a [`SnapshotSandbox`], [`BuildSnapshot`] or [`ForkSandbox`] job made: what the control plane counts
/// against the organization's image-bytes quota.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotImage {
    pub image: String,
    /// `sha256:...`.
    pub image_id: String,
    /// Bytes, as Docker reports the image's size (its base layers included).
    pub size: u64,
    /// Where the runner pushed the image in the operator's internal registry (`host[:port]/prefix/repo:tag`),
    /// so that other runners can pull it; `None` when no registry is configured or the push failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<String>,
    /// Why the push failed (the image stays on its runner only, as without a registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_error: Option<String>,
}

/// What a runner is asked to do.
// Jobs are few and short-lived: a boxed create would only complicate every constructor and match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobKind {
    CreateSandbox(CreateSandbox),
    #[serde(rename_all = "camelCase")]
    StartSandbox {
        sandbox_id: String,
    },
    StopSandbox(StopSandbox),
    #[serde(rename_all = "camelCase")]
    DestroySandbox {
        sandbox_id: String,
    },
    ResizeSandbox(ResizeSandbox),
    UpdateSandboxNetwork(UpdateSandboxNetwork),
    /// Export a stopped sandbox's filesystem to the runner's archive store, then remove its container. The
    /// sandbox is `archiving`, then `archived`; it holds no container (and no CPU or memory) until restored.
    #[serde(rename_all = "camelCase")]
    ArchiveSandbox {
        sandbox_id: String,
    },
    /// Bring an archived sandbox back and start it: the archive becomes an image, and the container is created
    /// from it with this spec exactly as a create would (the control plane is the spec's source of truth; the
    /// archive itself keeps only what the image gave the container: entrypoint, environment, work dir, user).
    RestoreSandbox(CreateSandbox),
    BuildSnapshot(BuildSnapshot),
    ForkSandbox(ForkSandbox),
    SnapshotSandbox(SnapshotSandbox),
    RemoveSnapshot(RemoveSnapshot),
    /// Freeze every process of a started sandbox (docker pause); memory stays allocated.
    #[serde(rename_all = "camelCase")]
    PauseSandbox {
        sandbox_id: String,
    },
    /// Thaw a paused sandbox (docker unpause); it goes on where it was.
    #[serde(rename_all = "camelCase")]
    ResumeSandbox {
        sandbox_id: String,
    },
    /// Check that a started sandbox's daemon answers an authenticated call (it runs `true` through
    /// `POST /process/execute`). Changes nothing: the result says whether the daemon answered.
    #[serde(rename_all = "camelCase")]
    PingSandbox {
        sandbox_id: String,
    },
    /// Delete a volume's directory (no sandbox mounts it any more; the control plane checked).
    RemoveVolume(RemoveVolume),
    PullImage(PullImage),
}

impl JobKind {
    /// The kind's name on the wire (the `type` field) and in the API's `jobs.kind` column: the one mapping from
    /// kind to name. Exhaustive on purpose: a new variant does not compile until it is named here.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::CreateSandbox(_) => "CREATE_SANDBOX",
            Self::StartSandbox { .. } => "START_SANDBOX",
            Self::StopSandbox(_) => "STOP_SANDBOX",
            Self::DestroySandbox { .. } => "DESTROY_SANDBOX",
            Self::ResizeSandbox(_) => "RESIZE_SANDBOX",
            Self::UpdateSandboxNetwork(_) => "UPDATE_SANDBOX_NETWORK",
            Self::ArchiveSandbox { .. } => "ARCHIVE_SANDBOX",
            Self::RestoreSandbox(_) => "RESTORE_SANDBOX",
            Self::BuildSnapshot(_) => "BUILD_SNAPSHOT",
            Self::ForkSandbox(_) => "FORK_SANDBOX",
            Self::SnapshotSandbox(_) => "SNAPSHOT_SANDBOX",
            Self::RemoveSnapshot(_) => "REMOVE_SNAPSHOT",
            Self::PauseSandbox { .. } => "PAUSE_SANDBOX",
            Self::ResumeSandbox { .. } => "RESUME_SANDBOX",
            Self::PingSandbox { .. } => "PING_SANDBOX",
            Self::RemoveVolume(_) => "REMOVE_VOLUME",
            Self::PullImage(_) => "PULL_IMAGE",
        }
    }

    /// The sandbox the job acts on (for a build, the build id): the API hands out at most one unfinished job per
    /// id, in order.
    pub fn sandbox_id(&self) -> &str {
        match self {
            Self::CreateSandbox(c) => &c.id,
            Self::StartSandbox { sandbox_id }
            | Self::DestroySandbox { sandbox_id }
            | Self::ArchiveSandbox { sandbox_id }
            | Self::PauseSandbox { sandbox_id }
            | Self::ResumeSandbox { sandbox_id }
            | Self::PingSandbox { sandbox_id } => sandbox_id,
            Self::RestoreSandbox(c) => &c.id,
            Self::StopSandbox(s) => &s.sandbox_id,
            Self::ResizeSandbox(r) => &r.sandbox_id,
            Self::UpdateSandboxNetwork(n) => &n.sandbox_id,
            Self::BuildSnapshot(b) => &b.build_id,
            // A fork's job belongs to the new sandbox: its result moves the fork from `creating` to `started`.
            Self::ForkSandbox(f) => &f.fork.id,
            Self::SnapshotSandbox(s) => &s.sandbox_id,
            // Not a sandbox: the snapshot's ID keys the job's ordering like a sandbox's.
            Self::RemoveSnapshot(r) => &r.snapshot_id,
            // Likewise the volume's ID.
            Self::RemoveVolume(v) => &v.volume_id,
            // And the snapshot's.
            Self::PullImage(p) => &p.snapshot_id,
        }
    }
}

/// A job as the API hands it to a runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    #[serde(flatten)]
    pub kind: JobKind,
    /// The W3C `traceparent` of the request that queued the job (the API's span), which the runner's job span
    /// continues; absent for jobs no request queued and from an API without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Why a job failed, as a stable code the API can branch on; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobErrorCode {
    /// Bad input: an impossible resource request, an empty ID, a disk shrink.
    InvalidRequest,
    /// The image is not on this host, or its registry does not have it.
    ImageNotFound,
    /// A registry refused or failed a pull: wrong or missing credentials, unreachable, timed out.
    PullFailed,
    /// The sandbox is not on this runner.
    SandboxNotFound,
    /// A sandbox with that ID already exists.
    Conflict,
    /// The operation does not fit the sandbox's state (resize disk while started...).
    InvalidState,
    /// More than the host has left.
    InsufficientCapacity,
    /// The daemon did not answer in time, or the container died while starting.
    DaemonNotReady,
    /// Docker refused or failed.
    Docker,
    /// A Dockerfile build ran and failed (a step exited non-zero, a COPY source is missing...).
    BuildFailed,
    /// No result came by the job's deadline (the API ends it so: a runner that died or hangs).
    Timeout,
    Internal,
}

/// Outcome of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobOutcome {
    /// `sandbox` is the sandbox after the job (absent for destroy).
    #[serde(rename_all = "camelCase")]
    Succeeded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<Box<SandboxInfo>>,
        /// The image a `SNAPSHOT_SANDBOX`, `BUILD_SNAPSHOT` or `FORK_SANDBOX` job made. Optional: results of runners
        /// from before builds and forks reported it still parse (the control plane then counts nothing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<SnapshotImage>,
    },
    Failed {
        code: JobErrorCode,
        message: String,
    },
}

/// The runner's answer to a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub job_id: String,
    #[serde(flatten)]
    pub outcome: JobOutcome,
}

/// A sandbox as a runner knows it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub organization_id: String,
    pub runner_id: String,
    pub container_id: String,
    pub image: String,
    pub state: SandboxState,
    /// Why the sandbox is in `error` (or stopped on its own): exit code, signal, OOM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    pub resources: Resources,
    /// False where the storage driver cannot cap a container's disk (overlay on anything but xfs with pquota,
    /// fuse-overlayfs): `resources.disk` is then recorded, not enforced.
    pub disk_enforced: bool,
    /// `ip:port` of the daemon's toolbox API while the sandbox runs: its bridge address, or with the runner's
    /// `--advertise-addr` the port Docker published for it on that address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_addr: Option<String>,
    /// `ip:port` of the daemon's SSH server when it is not `daemon_addr`'s IP on the SSH port (a published port);
    /// absent, the API derives it from `daemon_addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_addr: Option<String>,
    /// The per-sandbox secret: the key of the daemon's request credential (`X-Sandbar-Daemon-Auth`) and its SSH
    /// password. Never logged (Debug redacts it).
    pub daemon_token: String,
    /// The daemon's SSH host key (an OpenSSH public key line), which the runner made for the container: the SSH
    /// gateway refuses a daemon that shows another. Absent for a sandbox with no container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_host_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, flatten)]
    pub auto: AutoIntervals,
}

impl fmt::Debug for SandboxInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("organization_id", &self.organization_id)
            .field("runner_id", &self.runner_id)
            .field("container_id", &self.container_id)
            .field("image", &self.image)
            .field("state", &self.state)
            .field("error_reason", &self.error_reason)
            .field("resources", &self.resources)
            .field("disk_enforced", &self.disk_enforced)
            .field("daemon_addr", &self.daemon_addr)
            .field("ssh_addr", &self.ssh_addr)
            .field("daemon_token", &"<redacted>")
            .field("daemon_host_key", &self.daemon_host_key)
            .field("user", &self.user)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .field("auto", &self.auto)
            .finish()
    }
}

/// What the runner stores in the [`labels::SPEC`] label: the parts of a [`CreateSandbox`] that Docker's own
/// container config does not keep. Env, user and resources are read back from the container itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpecLabel {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// GiB, as requested (enforced or not).
    pub disk: u32,
    #[serde(default, flatten)]
    pub auto: AutoIntervals,
    /// Names of the env variables the caller set (the container's env also holds the image's and ours).
    #[serde(default)]
    pub env_keys: Vec<String>,
    /// The network policy at creation (later changes live in the runner's state dir).
    #[serde(default, flatten)]
    pub network: NetworkPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_sandbox: Option<String>,
}

/// A state change the runner reports without being asked: a container that died, was OOM-killed, or came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    pub sandbox_id: String,
    pub state: SandboxState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
}

/// What a runner offers and what it has handed out, for placement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    pub cpu: u32,
    /// GiB.
    pub memory: u32,
    /// GiB.
    pub disk: u32,
}

/// A runner's heartbeat: who it is, what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerStatus {
    pub runner_id: String,
    pub version: String,
    /// The host's CPUs and memory; disk is what the runner is configured to hand out.
    pub capacity: Capacity,
    /// Sum of the resources of sandboxes that are not destroyed.
    pub allocated: Capacity,
    pub sandboxes: u32,
    pub started: u32,
    pub storage_driver: String,
    pub disk_enforced: bool,
    /// `1` or `2`.
    pub cgroup_version: u8,
    /// Bytes held by each volume on this runner (measured every few heartbeats); absent from older runners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeUsage>,
    /// What each started sandbox uses, sampled for this heartbeat; absent from older runners (and when no sandbox
    /// runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<SandboxUsage>,
}

/// What one started sandbox uses, as its runner read it from the host's cgroup tree (and the container's network
/// namespace) for a heartbeat. Counters are cumulative since the container last started. A figure the host does
/// not give (an older kernel, another cgroup layout) is absent rather than zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxUsage {
    pub sandbox_id: String,
    /// CPU time used, in nanoseconds (cgroup v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`).
    pub cpu_nanos: u64,
    /// Cores in use since the runner's previous sample, in thousandths (1500: one and a half cores); absent on a
    /// container's first sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
    /// Memory in use without the reclaimable file cache (what `docker stats` shows): the cgroup's usage minus
    /// its inactive file pages.
    pub memory_bytes: u64,
    /// The cgroup's memory limit; absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// The most memory the cgroup was charged at once, file cache included (v1 `memory.max_usage_in_bytes`, v2
    /// `memory.peak`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in the sandbox (the `oom_kill` counter of v1
    /// `memory.oom_control`, kernel 4.13 and later, or of v2 `memory.events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// Processes (tasks) in the sandbox (`pids.current`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Bytes received and sent on the sandbox's interfaces but loopback (`/proc/<pid>/net/dev` of one of its
    /// processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    /// Bytes written to the sandbox's writable layer, as the disk watchdog last measured them; absent where the
    /// watchdog does not run (a storage driver that caps disk itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_the_wire_type() {
        let id = || "s1".to_owned();
        let kinds = [
            JobKind::StartSandbox { sandbox_id: id() },
            JobKind::StopSandbox(StopSandbox { sandbox_id: id(), force: false, timeout_secs: None }),
            JobKind::DestroySandbox { sandbox_id: id() },
            JobKind::ArchiveSandbox { sandbox_id: id() },
            JobKind::PauseSandbox { sandbox_id: id() },
            JobKind::ResumeSandbox { sandbox_id: id() },
            JobKind::PingSandbox { sandbox_id: id() },
        ];
        for kind in kinds {
            assert_eq!(serde_json::to_value(&kind).unwrap()["type"], kind.tag());
        }
    }

    #[test]
    fn job_wire_format() {
        let job = Job {
            id: "j1".into(),
            kind: JobKind::StopSandbox(StopSandbox { sandbox_id: "s1".into(), force: true, timeout_secs: None }),
            traceparent: None,
        };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v, serde_json::json!({"id": "j1", "type": "STOP_SANDBOX", "sandboxId": "s1", "force": true}));
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), job);

        let start: Job = serde_json::from_str(r#"{"id":"j2","type":"START_SANDBOX","sandboxId":"s2"}"#).unwrap();
        assert_eq!(start.kind.sandbox_id(), "s2");

        let net: Job = serde_json::from_str(
            r#"{"id":"j3","type":"UPDATE_SANDBOX_NETWORK","sandboxId":"s3","networkBlockAll":true}"#,
        )
        .unwrap();
        assert!(matches!(&net.kind, JobKind::UpdateSandboxNetwork(n) if n.policy.network_block_all));
        assert_eq!(net.kind.sandbox_id(), "s3");
    }

    #[test]
    fn archive_and_restore_wire_format() {
        let archive: Job = serde_json::from_str(r#"{"id":"j3","type":"ARCHIVE_SANDBOX","sandboxId":"s3"}"#).unwrap();
        assert_eq!(archive.kind, JobKind::ArchiveSandbox { sandbox_id: "s3".into() });
        assert_eq!(archive.kind.sandbox_id(), "s3");
        assert_eq!(
            serde_json::to_value(&archive).unwrap(),
            serde_json::json!({"id": "j3", "type": "ARCHIVE_SANDBOX", "sandboxId": "s3"})
        );

        let restore: Job = serde_json::from_str(
            r#"{"id":"j4","type":"RESTORE_SANDBOX","sandboxId":"s4","organizationId":"o","image":"img",
                "env":{"K":"v"},"autoArchiveInterval":60}"#,
        )
        .unwrap();
        let JobKind::RestoreSandbox(spec) = &restore.kind else { panic!("not a restore: {restore:?}") };
        assert_eq!((spec.id.as_str(), spec.image.as_str()), ("s4", "img"));
        assert_eq!(spec.env.get("K").map(String::as_str), Some("v"));
        assert_eq!(spec.auto.auto_archive_interval, Some(60));
        assert_eq!(restore.kind.sandbox_id(), "s4");
        let v = serde_json::to_value(&restore).unwrap();
        assert_eq!((v["type"].as_str(), v["sandboxId"].as_str()), (Some("RESTORE_SANDBOX"), Some("s4")));
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), restore);
    }

    #[test]
    fn create_job_round_trips() {
        let c: CreateSandbox = serde_json::from_str(r#"{"sandboxId":"s","organizationId":"o","image":"i"}"#).unwrap();
        let job = Job { id: "j".into(), kind: JobKind::CreateSandbox(c), traceparent: None };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!((v["id"].as_str(), v["sandboxId"].as_str()), (Some("j"), Some("s")));
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), job);
    }

    #[test]
    fn create_defaults_and_flattened_intervals() {
        let c: CreateSandbox =
            serde_json::from_str(r#"{"sandboxId":"s","organizationId":"o","image":"img","autoStopInterval":15}"#)
                .unwrap();
        assert_eq!(c.resources, Resources { cpu: 1, memory: 1, disk: 3 });
        assert_eq!(c.auto.auto_stop_interval, Some(15));
        assert!(c.env.is_empty() && c.entrypoint.is_none());
        assert!(c.network.is_unrestricted() && c.linked_sandbox.is_none());
        let c: CreateSandbox = serde_json::from_str(
            r#"{"sandboxId":"s","organizationId":"o","image":"i","networkAllowList":["10.0.0.0/8"],"linkedSandbox":"p"}"#,
        )
        .unwrap();
        assert_eq!(c.network.network_allow_list.as_deref(), Some(&["10.0.0.0/8".to_owned()][..]));
        assert_eq!(c.linked_sandbox.as_deref(), Some("p"));
        assert!(c.volumes.is_empty(), "jobs from before volumes parse with none");
        let c: CreateSandbox = serde_json::from_str(
            r#"{"sandboxId":"s","organizationId":"o","image":"i","volumes":[{"volumeId":"v","mountPath":"/data"}]}"#,
        )
        .unwrap();
        assert_eq!(c.volumes, vec![VolumeMount { volume_id: "v".into(), mount_path: "/data".into(), subpath: None }]);
        let rm: Job =
            serde_json::from_str(r#"{"id":"j","type":"REMOVE_VOLUME","volumeId":"v","organizationId":"o"}"#).unwrap();
        assert_eq!(rm.kind.sandbox_id(), "v");
        assert_eq!(rm.kind.tag(), "REMOVE_VOLUME");
    }

    #[test]
    fn outcome_tags() {
        let r = JobResult {
            job_id: "j".into(),
            outcome: JobOutcome::Failed { code: JobErrorCode::ImageNotFound, message: "no image x".into() },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "FAILED");
        assert_eq!(v["code"], "IMAGE_NOT_FOUND");
        assert_eq!(serde_json::from_value::<JobResult>(v).unwrap(), r);
    }

    #[test]
    fn registry_hosts_as_docker_reads_them() {
        assert_eq!(registry_host("127.0.0.1:5000/team/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/app"), "localhost");
        assert_eq!(registry_host("ghcr.io/o/app"), "ghcr.io");
        assert_eq!(registry_host("team/app:1"), "docker.io");
        assert_eq!(registry_host("python:3.12"), "docker.io");
        let auth = RegistryAuth { server: "r".into(), username: "u".into(), password: "pw".into() };
        assert!(!format!("{auth:?}").contains("pw"));
    }

    #[test]
    fn build_job_wire_format() {
        let job = Job {
            id: "j".into(),
            kind: JobKind::BuildSnapshot(BuildSnapshot {
                build_id: "b1".into(),
                image: "sandbar-build:abc".into(),
                dockerfile: "FROM x\nRUN y\n".into(),
                pull: vec!["127.0.0.1:5000/x:1".into()],
                network: None,
            }),
            traceparent: None,
        };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!((v["type"].as_str(), v["buildId"].as_str()), (Some("BUILD_SNAPSHOT"), Some("b1")));
        assert_eq!(job.kind.sandbox_id(), "b1");
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), job);
        assert_eq!(serde_json::to_value(JobErrorCode::BuildFailed).unwrap(), "BUILD_FAILED");
    }

    #[test]
    fn fork_and_snapshot_wire_format() {
        let fork: CreateSandbox =
            serde_json::from_str(r#"{"sandboxId":"f1","organizationId":"o","image":"sandbar-fork:f1"}"#).unwrap();
        let job = Job {
            id: "j".into(),
            kind: JobKind::ForkSandbox(ForkSandbox { source_sandbox_id: "s1".into(), fork: fork.clone() }),
            traceparent: None,
        };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["type"], "FORK_SANDBOX");
        assert_eq!(v["sourceSandboxId"], "s1");
        assert_eq!(v["fork"]["sandboxId"], "f1");
        assert_eq!(v["fork"]["image"], fork_image("f1"));
        assert_eq!(job.kind.sandbox_id(), "f1", "a fork job belongs to the new sandbox");
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), job);

        let snap: Job = serde_json::from_str(
            r#"{"id":"j2","type":"SNAPSHOT_SANDBOX","sandboxId":"s1","image":"sandbar-snapshot:x"}"#,
        )
        .unwrap();
        assert_eq!(
            snap.kind,
            JobKind::SnapshotSandbox(SnapshotSandbox { sandbox_id: "s1".into(), image: "sandbar-snapshot:x".into() })
        );
        assert_eq!(snap.kind.sandbox_id(), "s1");

        let rm: Job = serde_json::from_str(
            r#"{"id":"j3","type":"REMOVE_SNAPSHOT","snapshotId":"n1","image":"sandbar-snapshot:n1"}"#,
        )
        .unwrap();
        assert_eq!(rm.kind.sandbox_id(), "n1");
        assert!(matches!(rm.kind, JobKind::RemoveSnapshot(ref r) if r.image == "sandbar-snapshot:n1"));
    }

    #[test]
    fn pause_and_resume_wire_format() {
        let job = Job { id: "j".into(), kind: JobKind::PauseSandbox { sandbox_id: "s".into() }, traceparent: None };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v, serde_json::json!({"id": "j", "type": "PAUSE_SANDBOX", "sandboxId": "s"}));
        let resume: Job = serde_json::from_str(r#"{"id":"k","type":"RESUME_SANDBOX","sandboxId":"t"}"#).unwrap();
        assert_eq!(resume.kind, JobKind::ResumeSandbox { sandbox_id: "t".into() });
        assert_eq!(resume.kind.sandbox_id(), "t");
    }

    #[test]
    fn succeeded_carries_an_optional_snapshot() {
        // Results from before the field existed still parse, and a result without one does not mention it.
        let old: JobResult = serde_json::from_str(r#"{"jobId":"j","status":"SUCCEEDED"}"#).unwrap();
        assert_eq!(old.outcome, JobOutcome::Succeeded { sandbox: None, snapshot: None });
        assert_eq!(serde_json::to_value(&old).unwrap(), serde_json::json!({"jobId": "j", "status": "SUCCEEDED"}));
        let img = SnapshotImage {
            image: "sandbar-snapshot:x".into(),
            image_id: "sha256:ab".into(),
            size: 42,
            ..Default::default()
        };
        let r = JobResult { job_id: "j".into(), outcome: JobOutcome::Succeeded { sandbox: None, snapshot: Some(img) } };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["snapshot"],
            serde_json::json!({"image": "sandbar-snapshot:x", "imageId": "sha256:ab", "size": 42})
        );
        assert_eq!(serde_json::from_value::<JobResult>(v).unwrap(), r);
    }

    #[test]
    fn states_use_daytona_names() {
        assert_eq!(serde_json::to_string(&SandboxState::BuildFailed).unwrap(), "\"build_failed\"");
        assert_eq!(SandboxState::Started.to_string(), "started");
        let s: SandboxState = serde_json::from_str("\"pending_build\"").unwrap();
        assert_eq!(s, SandboxState::PendingBuild);
    }

    #[test]
    fn debug_redacts_the_daemon_token() {
        let info = SandboxInfo {
            id: "s".into(),
            name: None,
            organization_id: "o".into(),
            runner_id: "r".into(),
            container_id: "c".into(),
            image: "i".into(),
            state: SandboxState::Started,
            error_reason: None,
            resources: Resources::default(),
            disk_enforced: false,
            daemon_addr: None,
            ssh_addr: None,
            daemon_token: "supersecret".into(),
            daemon_host_key: None,
            user: None,
            env: BTreeMap::from([("K".into(), "hidden-value".into())]),
            labels: BTreeMap::new(),
            auto: AutoIntervals::default(),
        };
        let d = format!("{info:?}");
        assert!(!d.contains("supersecret") && !d.contains("hidden-value"), "{d}");
        assert!(serde_json::to_string(&info).unwrap().contains("supersecret"));
    }

    #[test]
    fn heartbeat_usage_is_optional_and_camel_case() {
        let old = r#"{"runnerId":"r","version":"1","capacity":{"cpu":1,"memory":1,"disk":1},
            "allocated":{"cpu":0,"memory":0,"disk":0},"sandboxes":0,"started":0,"storageDriver":"overlay2",
            "diskEnforced":false,"cgroupVersion":1}"#;
        let status: RunnerStatus = serde_json::from_str(old).unwrap();
        assert!(status.usage.is_empty(), "a heartbeat from before usage parses with none");
        let u = SandboxUsage {
            sandbox_id: "s".into(),
            cpu_nanos: 5,
            cpu_millicores: Some(1500),
            memory_bytes: 7,
            oom_kills: Some(1),
            net_tx_bytes: Some(9),
            ..Default::default()
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sandboxId": "s", "cpuNanos": 5, "cpuMillicores": 1500, "memoryBytes": 7,
                "oomKills": 1, "netTxBytes": 9})
        );
        assert_eq!(serde_json::from_value::<SandboxUsage>(v).unwrap(), u);
    }
}
