//! The disk watchdog. Where the storage driver cannot cap a container's disk (fuse-overlayfs, and overlay2 without
//! xfs project quotas: `HostFacts::disk_enforced` is false), one sandbox could fill the host's disk and stop every
//! other sandbox's writes. So every `disk_watchdog_interval` the runner measures each started sandbox's writable
//! layer (Docker's `SizeRw`, an inspect with `size`) and force-stops a sandbox whose layer is over its disk quota
//! (`resources.disk` GiB). The stop is reported like any other (`stopped`), with the reason in the state change and
//! the log. A sandbox started again while still over its quota is stopped again at the next measure; its user can
//! start it, delete files within the interval, or the organization can archive or delete it. Each measure is kept
//! for the sandbox's usage in heartbeats (`super::usage`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptionsBuilder;
use sandbar_proto::runner::{SandboxState, StopSandbox};
use sandbar_support::sync::lock;

use super::{GIB, Inner, run_detached};

/// Measures every `every` until the runner is dropped.
pub(super) async fn watch(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.check_disks().await;
    }
}

impl Inner {
    /// One round: measures every started sandbox and stops those over their quota.
    async fn check_disks(self: &Arc<Self>) {
        let started: Vec<(String, String, u32)> = {
            let entries: Vec<_> = lock(&self.sandboxes).values().cloned().collect();
            entries
                .iter()
                .map(|e| lock(&e.info))
                .filter(|i| i.state == SandboxState::Started && !i.container_id.is_empty())
                .map(|i| (i.id.clone(), i.container_id.clone(), i.resources.disk))
                .collect()
        };
        for (id, container, disk) in started {
            let opts = InspectContainerOptionsBuilder::default().size(true).build();
            let used = match self.docker.inspect_container(&container, Some(opts)).await {
                Ok(inspect) => inspect.size_rw.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                Err(e) => {
                    tracing::debug!(sandbox_id = %id, error = %e, "disk watchdog cannot measure the sandbox");
                    continue;
                }
            };
            lock(&self.usage).disk.insert(id.clone(), used);
            let quota = u64::from(disk) * GIB as u64;
            if used <= quota {
                continue;
            }
            let reason = format!("disk quota exceeded: {} MiB written, the sandbox's disk is {disk} GiB", used >> 20);
            tracing::warn!(sandbox_id = %id, used, quota, "stopping a sandbox over its disk quota");
            let req = StopSandbox { sandbox_id: id.clone(), force: true, timeout_secs: None };
            let this = self.clone();
            // Its own task like every operation: it holds the sandbox's operation lock to the end.
            let stopped = run_detached("disk watchdog stop", async move { this.stop_because(req, Some(reason)).await });
            if let Err(e) = stopped.await {
                tracing::warn!(sandbox_id = %id, error = %e, "disk watchdog cannot stop the sandbox");
            }
        }
    }
}
