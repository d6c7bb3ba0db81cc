//! cgroups: a sandbox's real limits read from inside it (cgroup v1 `cpu/cpu.cfs_quota_us`, `cpu/cpu.cfs_period_us`,
//! `memory/memory.limit_in_bytes` or v2 `cpu.max`, `memory.max`, whichever the container sees), and its usage read
//! from the host's cgroup tree: totals for metrics ([`usage`]), and each sandbox's figures for heartbeats
//! ([`sample`]: CPU, memory with its limit and peak, OOM kills, processes, and network bytes from the container's
//! network namespace). Reading a few small files per sandbox keeps a heartbeat cheap: no `docker stats`.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The shell command the daemon runs to print the limits; parsed by [`parse`].
pub(crate) const READ_LIMITS: &str = "if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo v2; \
cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max; else echo v1; \
cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us \
/sys/fs/cgroup/memory/memory.limit_in_bytes; fi";

/// Limits as the kernel applies them to the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CgroupLimits {
    /// 1 or 2.
    pub version: u8,
    /// CFS quota per period in µs; `None` = unlimited.
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    /// `None` = unlimited.
    pub memory_bytes: Option<u64>,
}

impl CgroupLimits {
    /// The CPU limit in cores (quota / period).
    pub fn cpus(&self) -> Option<f64> {
        self.cpu_quota_us.map(|q| q as f64 / self.cpu_period_us.max(1) as f64)
    }
}

/// v1 reports "no memory limit" as a huge number (PAGE_COUNTER_MAX pages, rounded to the page size).
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

pub(crate) fn parse(output: &str) -> Result<CgroupLimits, String> {
    let mut lines = output.lines().map(str::trim).filter(|l| !l.is_empty());
    let bad = || format!("unexpected cgroup output: {output:?}");
    let num = |s: &str| s.parse::<u64>().map_err(|_| format!("unexpected cgroup value {s:?} in {output:?}"));
    match lines.next() {
        Some("v1") => {
            let quota = lines.next().ok_or_else(bad)?;
            let period = num(lines.next().ok_or_else(bad)?)?;
            let mem = num(lines.next().ok_or_else(bad)?)?;
            let cpu_quota_us = if quota == "-1" { None } else { Some(num(quota)?) };
            let memory_bytes = (mem < V1_UNLIMITED_FLOOR).then_some(mem);
            Ok(CgroupLimits { version: 1, cpu_quota_us, cpu_period_us: period, memory_bytes })
        }
        Some("v2") => {
            let cpu = lines.next().ok_or_else(bad)?;
            let mut parts = cpu.split_whitespace();
            let quota = parts.next().ok_or_else(bad)?;
            let period = num(parts.next().ok_or_else(bad)?)?;
            let mem = lines.next().ok_or_else(bad)?;
            let cpu_quota_us = if quota == "max" { None } else { Some(num(quota)?) };
            let memory_bytes = if mem == "max" { None } else { Some(num(mem)?) };
            Ok(CgroupLimits { version: 2, cpu_quota_us, cpu_period_us: period, memory_bytes })
        }
        _ => Err(bad()),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub memory_bytes: u64,
    pub cpu_nanos: u64,
}

/// Where one container's cgroup files are on the host.
#[derive(Debug, PartialEq, Eq)]
enum Dirs {
    /// v1: one directory per controller.
    V1 {
        memory: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
    },
    V2(PathBuf),
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_u64(p: &Path) -> Option<u64> {
    read(p).and_then(|s| s.trim().parse().ok())
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `memory.events`, `memory.oom_control`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Finds the container's cgroup: v1 or v2, Docker's cgroupfs (`docker/<id>`) or systemd
/// (`system.slice/docker-<id>.scope`) layout, or an engine started with its own `--cgroup-parent` (`<parent>/<id>`,
/// one level down: found by looking through the first level of the tree, only when the usual places miss).
fn dirs(root: &Path, container_id: &str) -> Option<Dirs> {
    if container_id.is_empty() || container_id.contains('/') || container_id.contains("..") {
        return None;
    }
    let mut layouts = vec![format!("docker/{container_id}"), format!("system.slice/docker-{container_id}.scope")];
    if let Some(found) = dirs_in(root, &layouts) {
        return Some(found);
    }
    // Another parent: the v1 memory hierarchy (or the v2 root) names them.
    let top = if root.join("memory").is_dir() { root.join("memory") } else { root.to_path_buf() };
    let parents = std::fs::read_dir(top).into_iter().flatten().flatten().filter(|e| e.path().is_dir());
    layouts = parents
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .flat_map(|p| [format!("{p}/{container_id}"), format!("{p}/docker-{container_id}.scope")])
        .collect();
    dirs_in(root, &layouts)
}

/// The first of `layouts` (paths relative to a hierarchy) where the container's cgroup files are.
fn dirs_in(root: &Path, layouts: &[String]) -> Option<Dirs> {
    for rel in layouts {
        let memory = root.join("memory").join(rel);
        if memory.join("memory.usage_in_bytes").exists() {
            return Some(Dirs::V1 {
                memory,
                cpuacct: root.join("cpuacct").join(rel),
                pids: root.join("pids").join(rel),
            });
        }
    }
    layouts.iter().map(|rel| root.join(rel)).find(|d| d.join("memory.current").exists()).map(Dirs::V2)
}

/// Memory and CPU time of one container from the host's cgroup tree; zero where the files are not found.
pub(crate) fn usage(root: &Path, container_id: &str) -> Usage {
    match dirs(root, container_id) {
        Some(Dirs::V1 { memory, cpuacct, .. }) => Usage {
            memory_bytes: read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0),
            cpu_nanos: read_u64(&cpuacct.join("cpuacct.usage")).unwrap_or(0),
        },
        Some(Dirs::V2(dir)) => Usage {
            memory_bytes: read_u64(&dir.join("memory.current")).unwrap_or(0),
            cpu_nanos: v2_cpu_nanos(&dir).unwrap_or(0),
        },
        None => Usage::default(),
    }
}

fn v2_cpu_nanos(dir: &Path) -> Option<u64> {
    read(&dir.join("cpu.stat")).and_then(|s| keyed(&s, "usage_usec")).map(|us| us.saturating_mul(1000))
}

/// One container's figures, read from its cgroup files and its network namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    pub cpu_nanos: u64,
    /// Usage minus inactive file pages (`docker stats`' figure).
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

/// Samples one container: `root` is the cgroup mount (`/sys/fs/cgroup`), `proc` the host's procfs (`/proc`).
/// `None` when its cgroup is not found (not running, or a layout this does not know).
pub(crate) fn sample(root: &Path, proc: &Path, container_id: &str) -> Option<Sample> {
    let dirs = dirs(root, container_id)?;
    let (mut s, procs) = match dirs {
        Dirs::V1 { memory, cpuacct, pids } => {
            let usage = read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0);
            let inactive = read(&memory.join("memory.stat")).and_then(|t| keyed(&t, "total_inactive_file"));
            let s = Sample {
                cpu_nanos: read_u64(&cpuacct.join("cpuacct.usage")).unwrap_or(0),
                memory_bytes: usage.saturating_sub(inactive.unwrap_or(0)),
                memory_limit_bytes: read_u64(&memory.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED_FLOOR),
                memory_peak_bytes: read_u64(&memory.join("memory.max_usage_in_bytes")),
                // `oom_kill` is in `memory.oom_control` since Linux 4.13; `memory.failcnt` counts hits of the limit
                // (most reclaimed without a kill), so it is no stand-in.
                oom_kills: read(&memory.join("memory.oom_control")).and_then(|t| keyed(&t, "oom_kill")),
                pids: read_u64(&pids.join("pids.current")),
                ..Sample::default()
            };
            (s, memory.join("cgroup.procs"))
        }
        Dirs::V2(dir) => {
            let usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
            let inactive = read(&dir.join("memory.stat")).and_then(|t| keyed(&t, "inactive_file"));
            let limit = read(&dir.join("memory.max")).and_then(|t| t.trim().parse().ok());
            let s = Sample {
                cpu_nanos: v2_cpu_nanos(&dir).unwrap_or(0),
                memory_bytes: usage.saturating_sub(inactive.unwrap_or(0)),
                memory_limit_bytes: limit,
                memory_peak_bytes: read_u64(&dir.join("memory.peak")),
                oom_kills: read(&dir.join("memory.events")).and_then(|t| keyed(&t, "oom_kill")),
                pids: read_u64(&dir.join("pids.current")),
                ..Sample::default()
            };
            (s, dir.join("cgroup.procs"))
        }
    };
    // Every process of the container shares its network namespace (none may make its own: no CAP_SYS_ADMIN, and
    // Docker's seccomp profile refuses new user namespaces). The lowest PID is usually its daemon.
    let pid =
        read(&procs).and_then(|t| t.lines().filter_map(|l| l.trim().parse::<u32>().ok()).filter(|p| *p > 0).min());
    if let Some((rx, tx)) = pid.and_then(|p| read(&proc.join(p.to_string()).join("net/dev"))).and_then(|t| net_dev(&t))
    {
        (s.net_rx_bytes, s.net_tx_bytes) = (Some(rx), Some(tx));
    }
    Some(s)
}

/// Received and sent bytes over every interface but loopback, from a `/proc/<pid>/net/dev` table.
fn net_dev(text: &str) -> Option<(u64, u64)> {
    if !text.starts_with("Inter-|") {
        return None;
    }
    let mut total = (0u64, 0u64);
    // Two header lines, then `  name: rx_bytes rx_packets ... (8 receive columns) tx_bytes ...`.
    for line in text.lines().skip(2) {
        let Some((name, cols)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let cols: Vec<u64> = cols.split_whitespace().filter_map(|c| c.parse().ok()).collect();
        if let (Some(rx), Some(tx)) = (cols.first(), cols.get(8)) {
            total = (total.0.saturating_add(*rx), total.1.saturating_add(*tx));
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1() {
        let l = parse("v1\n150000\n100000\n1073741824\n").unwrap();
        assert_eq!(
            l,
            CgroupLimits { version: 1, cpu_quota_us: Some(150000), cpu_period_us: 100000, memory_bytes: Some(1 << 30) }
        );
        assert_eq!(l.cpus(), Some(1.5));
        let u = parse("v1\n-1\n100000\n9223372036854771712\n").unwrap();
        assert_eq!((u.cpu_quota_us, u.memory_bytes), (None, None));
    }

    #[test]
    fn parses_v2() {
        let l = parse("v2\n200000 100000\n2147483648\n").unwrap();
        assert_eq!(
            l,
            CgroupLimits { version: 2, cpu_quota_us: Some(200000), cpu_period_us: 100000, memory_bytes: Some(2 << 30) }
        );
        let u = parse("v2\nmax 100000\nmax\n").unwrap();
        assert_eq!((u.cpu_quota_us, u.memory_bytes), (None, None));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("").is_err());
        assert!(parse("v1\nabc\n100000\n1\n").is_err());
        assert!(parse("v2\n100000\n").is_err());
        assert!(parse("cat: no such file").is_err());
    }

    #[test]
    fn reads_v1_and_v2_usage() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("memory/docker/abc")).unwrap();
        std::fs::create_dir_all(root.join("cpuacct/docker/abc")).unwrap();
        std::fs::write(root.join("memory/docker/abc/memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(root.join("cpuacct/docker/abc/cpuacct.usage"), "5000\n").unwrap();
        assert_eq!(usage(root, "abc"), Usage { memory_bytes: 4096, cpu_nanos: 5000 });

        std::fs::create_dir_all(root.join("system.slice/docker-def.scope")).unwrap();
        std::fs::write(root.join("system.slice/docker-def.scope/memory.current"), "10\n").unwrap();
        std::fs::write(root.join("system.slice/docker-def.scope/cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        assert_eq!(usage(root, "def"), Usage { memory_bytes: 10, cpu_nanos: 7000 });
        assert_eq!(usage(root, "none"), Usage::default());
        assert_eq!(usage(root, "../abc"), Usage::default(), "an id is never a path");
    }

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    1000      10    0    0    0     0          0         0      300       3    0    0    0     0       0          0
  eth1:      20       1    0    0    0     0          0         0        4       1    0    0    0     0       0          0
";

    #[test]
    fn finds_a_container_under_another_cgroup_parent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("memory/sbr-1/abc")).unwrap();
        std::fs::create_dir_all(root.join("cpuacct/sbr-1/abc")).unwrap();
        std::fs::write(root.join("memory/sbr-1/abc/memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(root.join("cpuacct/sbr-1/abc/cpuacct.usage"), "5000\n").unwrap();
        assert_eq!(usage(root, "abc"), Usage { memory_bytes: 4096, cpu_nanos: 5000 });
        assert_eq!(usage(root, "other"), Usage::default());

        let v2 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(v2.path().join("engines.slice/docker-def.scope")).unwrap();
        std::fs::write(v2.path().join("engines.slice/docker-def.scope/memory.current"), "10\n").unwrap();
        assert_eq!(usage(v2.path(), "def").memory_bytes, 10);
    }

    #[test]
    fn sums_every_interface_but_loopback() {
        assert_eq!(net_dev(NET_DEV), Some((1020, 304)));
        let lo_only: String = NET_DEV.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(net_dev(&lo_only), Some((0, 0)));
        assert_eq!(net_dev("garbage"), None);
    }

    #[test]
    fn samples_v1_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        let (root, proc) = (dir.path().join("cg"), dir.path().join("proc"));
        let put = |p: &str, text: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("cg/memory/docker/abc/memory.usage_in_bytes", "10000\n");
        put("cg/memory/docker/abc/memory.stat", "cache 5000\ntotal_inactive_file 3000\n");
        put("cg/memory/docker/abc/memory.limit_in_bytes", "1073741824\n");
        put("cg/memory/docker/abc/memory.max_usage_in_bytes", "20000\n");
        put("cg/memory/docker/abc/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        put("cg/memory/docker/abc/cgroup.procs", "77\n42\n");
        put("cg/cpuacct/docker/abc/cpuacct.usage", "123456\n");
        put("cg/pids/docker/abc/pids.current", "3\n");
        put("proc/42/net/dev", NET_DEV);
        let s = sample(&root, &proc, "abc").unwrap();
        assert_eq!(
            s,
            Sample {
                cpu_nanos: 123456,
                memory_bytes: 7000,
                memory_limit_bytes: Some(1 << 30),
                memory_peak_bytes: Some(20000),
                oom_kills: Some(2),
                pids: Some(3),
                net_rx_bytes: Some(1020),
                net_tx_bytes: Some(304),
            }
        );
        // No limit, an old kernel without `oom_kill`, a container whose processes are gone.
        put("cg/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
        put("cg/memory/docker/abc/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n");
        put("cg/memory/docker/abc/cgroup.procs", "");
        let s = sample(&root, &proc, "abc").unwrap();
        assert_eq!((s.memory_limit_bytes, s.oom_kills, s.net_rx_bytes), (None, None, None));

        put("cg/system.slice/docker-def.scope/memory.current", "9000\n");
        put("cg/system.slice/docker-def.scope/memory.stat", "anon 1\ninactive_file 1000\n");
        put("cg/system.slice/docker-def.scope/memory.max", "max\n");
        put("cg/system.slice/docker-def.scope/memory.peak", "15000\n");
        put("cg/system.slice/docker-def.scope/memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n");
        put("cg/system.slice/docker-def.scope/cpu.stat", "usage_usec 7\n");
        put("cg/system.slice/docker-def.scope/pids.current", "5\n");
        put("cg/system.slice/docker-def.scope/cgroup.procs", "42\n");
        let s = sample(&root, &proc, "def").unwrap();
        assert_eq!(
            s,
            Sample {
                cpu_nanos: 7000,
                memory_bytes: 8000,
                memory_limit_bytes: None,
                memory_peak_bytes: Some(15000),
                oom_kills: Some(1),
                pids: Some(5),
                net_rx_bytes: Some(1020),
                net_tx_bytes: Some(304),
            }
        );
        assert_eq!(sample(&root, &proc, "gone"), None);
    }
}
