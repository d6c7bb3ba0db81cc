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
//! [`network`] keeps sandboxes apart and applies their egress policies (iptables chains hooked from `DOCKER-USER`).
//! Archive and restore move a stopped sandbox's filesystem to an object store (a local directory, or S3 through
//! `object_store`) and back ([`Runner::archive`], [`Runner::restore`]).
//! Forks ([`fork`]) commit a sandbox's filesystem and create a new sandbox from it; memory is not copied.

pub mod agent;
pub mod build;
pub mod cgroup;
pub mod config;
mod daemon;
pub mod error;
pub mod fork;
pub mod http;
pub mod image;
pub mod network;
mod runner;
pub mod service;
pub mod snapshot;

pub use cgroup::CgroupLimits;
pub use config::{DAEMON_MOUNT_PATH, RunnerConfig, WarmPoolConfig};
pub use error::{ImageError, SandboxError, StartupError};
pub use image::ImageInfo;
pub use runner::{ARCHIVE_LABEL, ARCHIVE_REPO, ArchiveManifest, HostFacts, Runner};
pub use snapshot::SnapshotError;
