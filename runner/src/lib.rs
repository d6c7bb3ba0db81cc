//! sandbar-runner: owns one Docker host through bollard. It turns the control plane's jobs
//! ([`sandbar_proto::runner::Job`]) into containers whose PID 1 is `sandbar-daemon`, bind-mounted read-only at
//! `/usr/local/bin/sandbar-daemon` with the image's own entrypoint as its child; injects each sandbox's ID and a
//! fresh daemon token; enforces CPU and memory as cgroup limits (disk where the storage driver can); labels every
//! container so a restarted runner rebuilds its state from Docker; and follows Docker's event stream so a sandbox
//! that dies becomes `error` or `stopped` with the reason. It also builds the default sandbox image
//! (`scripts/build-sandbox-image`), snapshots (Dockerfile builds through the build API, commits of sandboxes), and
//! a warm pool of started sandboxes that a matching create claims through the daemon's `POST /init`.
//!
//! It works for the control plane through [`agent`] (heartbeats, job long-polls, results, state pushes) and serves
//! its own small HTTP API ([`http`]: health, info, Prometheus metrics). [`service::run`] ties them together.
//!
//! Forks ([`fork`]) commit a sandbox's filesystem and create a new sandbox from it; memory is not copied.
//!
//! Not built yet (see the runner issue): archive/restore, network isolation and egress rules.

pub mod agent;
pub mod cgroup;
pub mod config;
mod daemon;
pub mod error;
pub mod fork;
pub mod http;
pub mod image;
mod runner;
pub mod service;
pub mod snapshot;

pub use cgroup::CgroupLimits;
pub use config::{DAEMON_MOUNT_PATH, RunnerConfig, WarmPoolConfig};
pub use error::{ImageError, SandboxError, StartupError};
pub use image::ImageInfo;
pub use runner::{HostFacts, Runner};
pub use snapshot::SnapshotError;
