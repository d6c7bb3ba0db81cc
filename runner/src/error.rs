//! Error enums, one per kind of operation. Each doc comment is the message; `code()` is what the control plane
//! branches on (a job's failure carries it). The firewall's own `NetworkError` lives with the firewall.

use std::path::PathBuf;

use sandbar_proto::runner::{JobErrorCode, SandboxState};

/// Why a runner could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is invalid.
    #[error("invalid runner config: {0}")]
    Config(String),
    /// Docker is not reachable.
    #[error("cannot reach Docker: {0}")]
    Connect(#[source] bollard::errors::Error),
    /// Docker answered with an error while the runner read its state.
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// The daemon binary to mount is unusable.
    #[error("daemon binary {path}: {reason}")]
    DaemonBinary { path: PathBuf, reason: String },
    /// The HTTP client for daemons could not be built.
    #[error("HTTP client: {0}")]
    Http(String),
    /// Network rules cannot be enforced on this host (or the stored policies are unreadable).
    #[error("{0}")]
    Network(#[from] crate::firewall::NetworkError),
    /// Docker runs containers without user namespaces, so root in a sandbox would be root on the host.
    #[error(
        "Docker has no user namespaces: root in a sandbox would be root on this host. Enable them with \
         \"userns-remap\": \"default\" in /etc/docker/daemon.json and restart dockerd (scripts/setup does), or \
         pass --allow-host-root to run anyway"
    )]
    HostRoot,
    /// An allowed runtime is not registered with Docker.
    #[error(
        "runtime {name:?} is allowed (--runtimes) but not registered with Docker (registered: {registered}); add it \
         to \"runtimes\" in /etc/docker/daemon.json and send dockerd SIGHUP"
    )]
    Runtime { name: String, registered: String },
}

/// Why a sandbox operation failed. Nothing half-created is left behind when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request is invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The image is not on this host.
    #[error("image {0:?} is not on this host (build or import it first, or name it with its registry)")]
    ImageNotFound(String),
    /// No such sandbox on this runner.
    #[error("sandbox {0} not found on this runner")]
    NotFound(String),
    /// The ID or name is taken.
    #[error("{0}")]
    Conflict(String),
    /// The operation does not fit the sandbox's state.
    #[error("sandbox {id} is {state}: cannot {action}")]
    InvalidState { id: String, state: SandboxState, action: &'static str },
    /// The daemon did not come up.
    #[error("daemon of sandbox {id} not ready: {reason}")]
    DaemonNotReady { id: String, reason: String },
    /// A request to the sandbox's daemon failed.
    #[error("daemon of sandbox {id}: {reason}")]
    Daemon { id: String, reason: String },
    /// Docker refused or failed.
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// The archive store refused or failed, or holds no usable archive.
    #[error("archive store: {0}")]
    Archive(String),
    /// Pulling the image from its registry failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The operation's task died (a bug: it panicked or the runtime shut down).
    #[error("internal: {0}")]
    Internal(String),
}

impl SandboxError {
    pub fn code(&self) -> JobErrorCode {
        match self {
            Self::InvalidRequest(_) => JobErrorCode::InvalidRequest,
            Self::ImageNotFound(_) => JobErrorCode::ImageNotFound,
            Self::NotFound(_) => JobErrorCode::SandboxNotFound,
            Self::Conflict(_) => JobErrorCode::Conflict,
            Self::InvalidState { .. } => JobErrorCode::InvalidState,
            Self::DaemonNotReady { .. } => JobErrorCode::DaemonNotReady,
            Self::Daemon { .. } | Self::Internal(_) | Self::Archive(_) => JobErrorCode::Internal,
            Self::Docker(e) => docker_code(e),
            Self::Pull(e) => e.code(),
        }
    }
}

/// Why a pull from a registry failed. Messages say what to do; the registry's own words follow.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image {image:?} was not found in registry {registry}: {reason}")]
    NotFound { image: String, registry: String, reason: String },
    #[error(
        "registry {registry} refused to give {image:?} (missing or wrong credentials: register them with \
         POST /docker-registry): {reason}"
    )]
    Unauthorized { image: String, registry: String, reason: String },
    #[error("registry {registry} cannot be reached for {image:?}: {reason}")]
    Unreachable { image: String, registry: String, reason: String },
    #[error("pulling {image:?}: registry {registry} sent nothing for {secs} s and the pull was abandoned")]
    Stalled { image: String, registry: String, secs: u64 },
    #[error("pulling {image:?} from registry {registry} failed: {reason}")]
    Failed { image: String, registry: String, reason: String },
}

impl PullError {
    pub fn code(&self) -> JobErrorCode {
        match self {
            Self::NotFound { .. } => JobErrorCode::ImageNotFound,
            _ => JobErrorCode::PullFailed,
        }
    }
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The name is not a usable image reference.
    #[error("invalid snapshot name {0:?}: use lowercase [a-z0-9._-/] with an optional :tag")]
    InvalidName(String),
    /// The Dockerfile is unusable.
    #[error("invalid Dockerfile: {0}")]
    InvalidDockerfile(String),
    /// A `FROM` image is not on this host.
    #[error("base image {0:?} is not on this host (name it with its registry to pull it)")]
    BaseImageNotFound(String),
    /// The build ran and failed.
    #[error("build failed: {0}")]
    BuildFailed(String),
    /// No such snapshot.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// The snapshot is used by a container.
    #[error("snapshot {0:?} is in use by a sandbox")]
    InUse(String),
    /// The sandbox cannot be committed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Docker refused or failed.
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// Pulling an image the job names failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("internal: {0}")]
    Internal(String),
}

impl SnapshotError {
    /// The job error code of a failed build, snapshot or fork commit.
    pub fn code(&self) -> JobErrorCode {
        match self {
            Self::InvalidName(_) | Self::InvalidDockerfile(_) => JobErrorCode::InvalidRequest,
            Self::BaseImageNotFound(_) => JobErrorCode::ImageNotFound,
            Self::NotFound(_) => JobErrorCode::ImageNotFound,
            Self::InUse(_) => JobErrorCode::Conflict,
            Self::Sandbox(e) => e.code(),
            Self::Docker(e) => docker_code(e),
            Self::BuildFailed(_) => JobErrorCode::BuildFailed,
            Self::Pull(e) => e.code(),
            Self::Internal(_) => JobErrorCode::Internal,
        }
    }
}

/// Why an image could not be built or found.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not on this host and no build script is configured.
    #[error("image {0:?} is not on this host and no build script is configured")]
    NotFound(String),
    /// The build script could not run or failed.
    #[error("image build script {path} failed: {reason}")]
    Script { path: PathBuf, reason: String },
    /// Docker refused or failed.
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// The HTTP status of a Docker error response, if it is one.
pub(crate) fn docker_status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The job error code of a Docker error.
fn docker_code(e: &bollard::errors::Error) -> JobErrorCode {
    match docker_status(e) {
        Some(400) => JobErrorCode::InvalidRequest,
        Some(404) => JobErrorCode::SandboxNotFound,
        Some(409) => JobErrorCode::Conflict,
        _ => JobErrorCode::Docker,
    }
}
