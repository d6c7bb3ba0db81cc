//! cgroups: a sandbox's real limits read from inside it (cgroup v1 `cpu/cpu.cfs_quota_us`, `cpu/cpu.cfs_period_us`,
//! `memory/memory.limit_in_bytes` or v2 `cpu.max`, `memory.max`, whichever the container sees), and its usage read
//! from the host's cgroup tree (for metrics).

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

/// Memory and CPU time of one container from the host's cgroup tree; zero where the files are not found.
pub(crate) fn usage(root: &Path, container_id: &str) -> Usage {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    // cgroup v1, cgroupfs driver.
    if let Some(m) = read(root.join("memory/docker").join(container_id).join("memory.usage_in_bytes")) {
        let cpu = read(root.join("cpuacct/docker").join(container_id).join("cpuacct.usage"));
        return Usage {
            memory_bytes: m.trim().parse().unwrap_or(0),
            cpu_nanos: cpu.and_then(|c| c.trim().parse().ok()).unwrap_or(0),
        };
    }
    // cgroup v2: cgroupfs (`docker/<id>`) or systemd (`system.slice/docker-<id>.scope`) layout.
    for dir in [root.join("docker").join(container_id), root.join(format!("system.slice/docker-{container_id}.scope"))]
    {
        if let Some(m) = read(dir.join("memory.current")) {
            let cpu_usec = read(dir.join("cpu.stat")).and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok()))
            });
            return Usage {
                memory_bytes: m.trim().parse().unwrap_or(0),
                cpu_nanos: cpu_usec.unwrap_or(0).saturating_mul(1000),
            };
        }
    }
    Usage::default()
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
    }
}
