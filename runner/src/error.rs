//! Error enums, one per kind of operation. Each doc comment is the message; `code()` is what the control plane
//! branches on.

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
    Network(#[from] crate::network::NetworkError),
}

/// Why a sandbox operation failed. Nothing half-created is left behind when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request is invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The image is not on this host.
    #[error("image {0:?} is not on this host (there is no registry: build or import it first)")]
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
            Self::Docker(e) => match docker_status(e) {
                Some(400) => JobErrorCode::InvalidRequest,
                Some(404) => JobErrorCode::SandboxNotFound,
                Some(409) => JobErrorCode::Conflict,
                _ => JobErrorCode::Docker,
            },
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
