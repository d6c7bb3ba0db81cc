//! Figures for the runner issue, not pass/fail checks: run with
//! `cargo test -p sandbar-runner --test measure -- --ignored --nocapture`.
//! - cold create-to-daemon-ready (median, p95) on the busybox and the default image;
//! - idle memory per sandbox: the container's cgroup (rss, cache), the daemon's RSS, the per-container
//!   containerd-shim and fuse-overlayfs processes, and the whole host's `MemAvailable` drop per sandbox.
#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use sandbar_proto::toolbox::ExecuteRequest;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// (MemAvailable, Slab) in KiB, each the median of five samples 200 ms apart (other work on the host moves them).
async fn host_mem_kib() -> (u64, u64) {
    let (mut avail, mut slab) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let m = std::fs::read_to_string("/proc/meminfo").unwrap();
        avail.push(kib_field(&m, "MemAvailable:"));
        slab.push(kib_field(&m, "Slab:"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    avail.sort();
    slab.sort();
    (avail[2], slab[2])
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map(|s| kib_field(&s, "VmRSS:")).unwrap_or(0)
}

/// Proportional set size: shared pages (the daemon binary, the shim's Go text) divided among their users.
fn pss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).map(|s| kib_field(&s, "Pss:")).unwrap_or(0)
}

fn ppid(pid: &str) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(1).unwrap().to_owned()
}

/// RSS of fuse-overlayfs processes whose command line mentions this container's layer directory.
fn fuse_rss_kib(layer_dir: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("fuse-overlayfs") && cmd.contains(layer_dir) {
            total += pss_kib(&pid);
        }
    }
    total
}

async fn create_to_ready(image: &str, label: &str, n: usize) {
    let t = TestRunner::new(&format!("m{label}"));
    let runner = t.runner().await;
    // One warm-up so the image's layers are in the page cache like on a busy host.
    let warm = format!("warm-{}", unique());
    runner.create(create_req(&warm, image)).await.unwrap();
    runner.destroy(&warm).await.unwrap();
    let mut ready = Vec::new();
    let mut first_exec = Vec::new();
    for _ in 0..n {
        let id = format!("m-{}", unique());
        let t0 = Instant::now();
        runner.create(create_req(&id, image)).await.unwrap();
        ready.push(t0.elapsed().as_secs_f64() * 1000.0);
        let req = ExecuteRequest { command: "echo hi".into(), ..Default::default() };
        runner.exec(&id, &req).await.unwrap();
        first_exec.push(t0.elapsed().as_secs_f64() * 1000.0);
        runner.destroy(&id).await.unwrap();
    }
    ready.sort_by(f64::total_cmp);
    first_exec.sort_by(f64::total_cmp);
    println!(
        "{label}: create-to-daemon-ready over {n}: median {:.0} ms, p95 {:.0} ms, min {:.0}, max {:.0}; \
         to first exec answered: median {:.0} ms, p95 {:.0} ms",
        percentile(&ready, 0.5),
        percentile(&ready, 0.95),
        ready[0],
        ready[n - 1],
        percentile(&first_exec, 0.5),
        percentile(&first_exec, 0.95)
    );
}

#[tokio::test]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn measure_create_to_ready() {
    create_to_ready(&busybox_image(), "busybox", 10).await;
    let t = TestRunner::new("mimg");
    t.runner().await.ensure_default_image().await.unwrap();
    create_to_ready("sandbar-sandbox:default", "default", 10).await;
}

#[tokio::test]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn measure_idle_memory() {
    let n = 40;
    let (_t, runner) = TestRunner::start("mmem").await;
    let image = runner.ensure_default_image().await.unwrap().reference;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = host_mem_kib().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = format!("mem-{}", unique());
        ids.push(runner.create(create_req(&id, &image)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = host_mem_kib().await;

    let (mut cg_rss, mut cg_cache, mut daemon, mut daemon_pss, mut shim, mut fuse) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for info in &ids {
        let cid = &info.container_id;
        let stat = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/docker/{cid}/memory.stat")).unwrap();
        let field = |k: &str| {
            stat.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        cg_rss += field("total_rss ") / 1024;
        cg_cache += field("total_cache ") / 1024;
        let pid = docker_inspect(cid, "{{.State.Pid}}").unwrap();
        daemon += rss_kib(&pid);
        daemon_pss += pss_kib(&pid);
        shim += pss_kib(&ppid(&pid));
        let upper = docker_inspect(cid, "{{.GraphDriver.Data.UpperDir}}").unwrap();
        let layer = upper.trim_end_matches("/diff").rsplit('/').next().unwrap().to_owned();
        fuse += fuse_rss_kib(&layer);
    }
    let n64 = n as u64;
    let host_delta = before.0.saturating_sub(after.0) / n64;
    let slab_delta = after.1.saturating_sub(before.1) / n64;
    println!(
        "idle default-image sandboxes (n={n}), per sandbox: cgroup rss {} KiB, cgroup page cache {} KiB, \
         daemon RSS {} KiB (PSS {} KiB), containerd-shim PSS {} KiB, fuse-overlayfs PSS {} KiB; \
         host MemAvailable drop {} KiB (of which kernel slab {} KiB)",
        cg_rss / n64,
        cg_cache / n64,
        daemon / n64,
        daemon_pss / n64,
        shim / n64,
        fuse / n64,
        host_delta,
        slab_delta
    );
    let per = host_delta.max(1) as f64 / 1024.0 / 1024.0;
    println!("=> 24 GiB (less 2 GiB for the host) holds about {:.0} idle sandboxes", 22.0 / per);
    for info in ids {
        runner.destroy(&info.id).await.unwrap();
    }
}

#[tokio::test]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn measure_warm_pool_claim() {
    use sandbar_proto::runner::Resources;
    use sandbar_runner::config::WarmPoolConfig;
    let t = TestRunner::new("mpool");
    let image = t.runner().await.ensure_default_image().await.unwrap().reference;
    let state = tempfile::tempdir().unwrap();
    let mut config = t.config();
    config.state_dir = Some(state.path().to_owned());
    let res = Resources { cpu: 1, memory: 1, disk: 3 };
    config.warm_pool = Some(WarmPoolConfig { size: 2, image: image.clone(), resources: res });
    let runner = sandbar_runner::Runner::new(config).await.unwrap();
    let n = 10;
    let (mut ready, mut first_exec) = (Vec::new(), Vec::new());
    for _ in 0..n {
        while runner.pool_ready() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = format!("wp-{}", unique());
        let mut req = create_req(&id, &image);
        req.resources = res;
        let t0 = Instant::now();
        runner.create(req).await.unwrap();
        ready.push(t0.elapsed().as_secs_f64() * 1000.0);
        let out = runner.exec(&id, &ExecuteRequest { command: "echo hi".into(), ..Default::default() }).await.unwrap();
        assert_eq!(out.result.trim(), "hi");
        first_exec.push(t0.elapsed().as_secs_f64() * 1000.0);
        runner.destroy(&id).await.unwrap();
    }
    ready.sort_by(f64::total_cmp);
    first_exec.sort_by(f64::total_cmp);
    println!(
        "warm pool (default image): claim-to-ready median {:.1} ms, p95 {:.1} ms; claim to first exec answered: \
         median {:.1} ms, p95 {:.1} ms",
        percentile(&ready, 0.5),
        percentile(&ready, 0.95),
        percentile(&first_exec, 0.5),
        percentile(&first_exec, 0.95)
    );
}

/// Cold create-to-ready and exec (`echo hi` through the daemon) on runc and on gVisor's runsc, busybox image.
#[tokio::test]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn measure_runtimes() {
    let t = TestRunner::new("mrt");
    let mut config = t.config();
    config.runtimes = vec!["runc".into(), "runsc".into()];
    let runner = sandbar_runner::Runner::new(config).await.unwrap();
    let image = busybox_image();
    let (n, execs) = (6, 50);
    for runtime in ["runc", "runsc"] {
        let (mut create, mut exec) = (Vec::new(), Vec::new());
        for i in 0..=n {
            let id = format!("mrt-{}", unique());
            let mut req = create_req(&id, &image);
            req.runtime = Some(runtime.into());
            let t0 = Instant::now();
            runner.create(req).await.unwrap();
            // The first create of each runtime warms the page cache and is not counted.
            if i > 0 {
                create.push(t0.elapsed().as_secs_f64() * 1000.0);
                for _ in 0..execs / n {
                    let t1 = Instant::now();
                    let req = ExecuteRequest { command: "echo hi".into(), ..Default::default() };
                    assert_eq!(runner.exec(&id, &req).await.unwrap().result.trim(), "hi");
                    exec.push(t1.elapsed().as_secs_f64() * 1000.0);
                }
            }
            runner.destroy(&id).await.unwrap();
        }
        create.sort_by(f64::total_cmp);
        exec.sort_by(f64::total_cmp);
        println!(
            "{runtime}: cold create-to-ready over {n}: median {:.0} ms (min {:.0}, max {:.0}); exec `echo hi` over {}: \
             p50 {:.2} ms, p95 {:.2} ms",
            percentile(&create, 0.5),
            create[0],
            create[create.len() - 1],
            exec.len(),
            percentile(&exec, 0.5),
            percentile(&exec, 0.95)
        );
    }
}
