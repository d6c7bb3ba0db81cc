//! Reading a sandbox's real limits from inside it: cgroup v1 (`cpu/cpu.cfs_quota_us`, `cpu/cpu.cfs_period_us`,
//! `memory/memory.limit_in_bytes`) or v2 (`cpu.max`, `memory.max`), whichever the container sees.

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
}
