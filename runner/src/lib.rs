//! sandbar-runner: owns one Docker host through bollard. It turns the control plane's jobs
//! ([`sandbar_proto::runner::Job`]) into containers whose PID 1 is `sandbar-daemon`, bind-mounted read-only at
//! `/usr/local/bin/sandbar-daemon` with the image's own entrypoint as its child; injects each sandbox's ID and a
//! fresh daemon token; enforces CPU and memory as cgroup limits (disk where the storage driver can); labels every
//! container so a restarted runner rebuilds its state from Docker; and follows Docker's event stream so a sandbox
//! that dies becomes `error` or `stopped` with the reason. It also builds the default sandbox image
//! (`scripts/build-sandbox-image`), snapshots (Dockerfile builds through the build API, commits of sandboxes), and
//! a warm pool of started sandboxes that a matching create claims through the daemon's `POST /init`.
//!
//! Not built yet (see the runner issue): the control-plane client (registration, heartbeats, job polling), the
//! runner's own HTTP API and Prometheus metrics, archive/restore, fork, network isolation and egress rules.

pub mod cgroup;
pub mod config;
mod daemon;
pub mod error;
pub mod image;
mod runner;
pub mod snapshot;

pub use cgroup::CgroupLimits;
pub use config::{DAEMON_MOUNT_PATH, RunnerConfig, WarmPoolConfig};
pub use error::{ImageError, SandboxError, StartupError};
pub use image::ImageInfo;
pub use runner::{HostFacts, Runner};
pub use snapshot::SnapshotError;
