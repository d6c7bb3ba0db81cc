//! sandbar-runner: owns one Docker host through bollard. It turns the control plane's jobs
//! ([`sandbar_proto::runner::Job`]) into containers whose PID 1 is `sandbar-daemon`, bind-mounted read-only at
//! `/usr/local/bin/sandbar-daemon` with the image's own entrypoint as its child; injects each sandbox's ID and a
//! fresh daemon token; runs each container with least privilege (capabilities dropped, user namespaces required,
//! pids/nofile/log limits, gVisor where allowed: [`host::hardening`]); enforces CPU and memory as cgroup limits, and
//! disk where the storage driver can or else with a watchdog ([`host::disk`]); labels every
//! container so a restarted runner rebuilds its state from Docker; and follows Docker's event stream so a sandbox
//! that dies becomes `error` or `stopped` with the reason. It also builds the default sandbox image
//! (`scripts/build-sandbox-image`), snapshots (Dockerfile builds through the build API, commits of sandboxes), and
//! a warm pool of started sandboxes that a matching create claims through the daemon's `POST /init`.
//!
//! Layers, top down:
//! - transport: [`http`] (the runner's own small API: health, info, Prometheus metrics) and [`service`] (flags,
//!   and [`service::run`], which ties everything together; `main.rs` is a thin wrapper);
//! - domain: [`jobs`] (the one dispatch over the job kinds, one file per kind);
//! - adapters: [`host`] (every Docker call: [`Runner`], its sandbox table, events, containers, warm pool, images,
//!   archive and restore, forks and snapshots), [`firewall`] (iptables only: isolation and egress policies) and
//!   [`control`] (the control plane's client and the agent loop that works for it).

pub mod config;
pub mod control;
pub mod error;
pub mod firewall;
pub mod host;
pub mod http;
pub mod jobs;
pub mod service;
pub mod trace;

pub use config::{DAEMON_MOUNT_PATH, RunnerConfig, WarmPoolConfig};
pub use error::{ImageError, SandboxError, SnapshotError, StartupError};
pub use host::archive::{ARCHIVE_LABEL, ARCHIVE_REPO, ArchiveKind, ArchiveManifest};
pub use host::cgroup::CgroupLimits;
pub use host::image::ImageInfo;
pub use host::{HostFacts, Runner};
