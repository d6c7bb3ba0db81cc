//! Per-sandbox usage for heartbeats: every started sandbox's cgroup figures ([`super::cgroup::sample`]), its cores
//! in use (the CPU time since the previous sample over the time between them) and the bytes its writable layer held
//! when the disk watchdog last measured it ([`super::disk`]). Sampling reads a few small files per sandbox on a
//! blocking thread; it never asks Docker.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use sandbar_proto::runner::{SandboxState, SandboxUsage};
use sandbar_support::sync::lock;

use super::{Runner, cgroup};
use crate::error::SandboxError;

/// Where the host's cgroup tree and procfs are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const PROC_ROOT: &str = "/proc";

/// What sampling remembers between heartbeats.
#[derive(Debug, Default)]
pub(super) struct UsageState {
    /// The previous CPU reading of each sandbox: when, of which container, how many nanoseconds.
    cpu: HashMap<String, (Instant, String, u64)>,
    /// Bytes in each sandbox's writable layer at the disk watchdog's last measure.
    pub(super) disk: HashMap<String, u64>,
}

/// Thousandths of a core used between two readings of a container's CPU time; `None` across a restart (the
/// counter starts again) or without time between them.
fn millicores(prev: Option<&(Instant, String, u64)>, container: &str, now: Instant, cpu_nanos: u64) -> Option<u64> {
    let (then, c, before) = prev?;
    let wall = now.checked_duration_since(*then)?.as_nanos();
    if c != container || wall == 0 || cpu_nanos < *before {
        return None;
    }
    u64::try_from(u128::from(cpu_nanos - before) * 1000 / wall).ok()
}

impl Runner {
    /// Samples every started sandbox now. A sandbox whose cgroup cannot be found (it is stopping) is left out.
    pub async fn sample_usage(&self) -> Result<Vec<SandboxUsage>, SandboxError> {
        let list = self.list();
        let known: HashSet<&str> = list.iter().map(|i| i.id.as_str()).collect();
        let started: Vec<(String, String)> = list
            .iter()
            .filter(|i| i.state == SandboxState::Started && !i.container_id.is_empty())
            .map(|i| (i.id.clone(), i.container_id.clone()))
            .collect();
        let read = started.clone();
        let samples = tokio::task::spawn_blocking(move || {
            read.into_iter()
                .map(|(_, c)| (Instant::now(), cgroup::sample(Path::new(CGROUP_ROOT), Path::new(PROC_ROOT), &c)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| SandboxError::Internal(format!("usage sampling task failed: {e}")))?;

        let mut state = lock(&self.inner.usage);
        let state = &mut *state;
        // Forget sandboxes that no longer run.
        state.cpu.retain(|id, _| started.iter().any(|(s, _)| s == id));
        state.disk.retain(|id, _| known.contains(id.as_str()));
        let mut out = Vec::with_capacity(started.len());
        for ((id, container), (at, sample)) in started.into_iter().zip(samples) {
            let Some(s) = sample else { continue };
            let cpu_millicores = millicores(state.cpu.get(&id), &container, at, s.cpu_nanos);
            out.push(SandboxUsage {
                cpu_nanos: s.cpu_nanos,
                cpu_millicores,
                memory_bytes: s.memory_bytes,
                memory_limit_bytes: s.memory_limit_bytes,
                memory_peak_bytes: s.memory_peak_bytes,
                oom_kills: s.oom_kills,
                pids: s.pids,
                net_rx_bytes: s.net_rx_bytes,
                net_tx_bytes: s.net_tx_bytes,
                disk_bytes: state.disk.get(&id).copied(),
                sandbox_id: id.clone(),
            });
            state.cpu.insert(id, (at, container, s.cpu_nanos));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cores_come_from_two_readings_of_one_container() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let prev = (t0, "c1".to_owned(), 1_000_000_000);
        assert_eq!(millicores(Some(&prev), "c1", t1, 4_000_000_000), Some(1500));
        assert_eq!(millicores(Some(&prev), "c1", t1, 1_000_000_000), Some(0));
        assert_eq!(millicores(None, "c1", t1, 4_000_000_000), None, "first reading");
        assert_eq!(millicores(Some(&prev), "c2", t1, 4_000_000_000), None, "another container");
        assert_eq!(millicores(Some(&prev), "c1", t1, 5), None, "the counter started again");
        assert_eq!(millicores(Some(&prev), "c1", t0, 4_000_000_000), None, "no time between");
    }
}
