//! Per-sandbox usage as the heartbeat samples it, on a real container: CPU time and cores, memory and its peak,
//! processes, network bytes and the disk watchdog's measure all move when the sandbox does work.
// Under `cfg(test)` so clippy's `allow-*-in-tests` covers the helper too (see common/mod.rs).
#![cfg(test)]

mod common;

use std::time::Duration;

use common::*;
use sandbar_runner::Runner;

async fn sh(runner: &Runner, id: &str, cmd: &str) -> String {
    let out = runner.exec(id, &exec_req(cmd)).await.unwrap();
    assert_eq!(out.exit_code, 0, "{cmd}: {}", out.result);
    out.result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_usage_moves_when_the_sandbox_works() {
    let t = TestRunner::new("usage");
    let mut config = t.config();
    config.disk_watchdog_interval = Some(Duration::from_secs(1));
    let runner = Runner::new(config).await.unwrap();
    let mut req = create_req(&format!("usage-{}", unique()), &busybox_image());
    req.entrypoint = Some(marker_entrypoint());
    let id = req.id.clone();
    runner.create(req).await.unwrap();

    let sample = |r: &Runner| {
        let r = r.clone();
        let id = id.clone();
        async move {
            let all = r.sample_usage().await.unwrap();
            all.into_iter().find(|u| u.sandbox_id == id).expect("the started sandbox is sampled")
        }
    };
    let before = sample(&runner).await;
    assert_eq!(before.cpu_millicores, None, "no cores on a container's first sample");
    assert_eq!(before.memory_limit_bytes, Some(1 << 30), "the sandbox's 1 GiB");
    assert!(before.pids.is_some_and(|p| p >= 2), "the daemon and the entrypoint: {:?}", before.pids);
    if runner.host().cgroup_version == 1 {
        assert_eq!(before.oom_kills, Some(0), "memory.oom_control has oom_kill on this kernel");
    }

    // Two seconds of a busy loop, 40 MB held in /dev/shm (charged to the sandbox, not reclaimable), 20 MB written
    // to its writable layer, and 2 MB of output that travels back over its network.
    sh(&runner, &id, "timeout 2 sh -c 'while :; do :; done'; true").await;
    let cores = sample(&runner).await;
    sh(&runner, &id, "head -c 40000000 /dev/zero > /dev/shm/hold && dd if=/dev/zero of=/root/blob bs=1M count=20 2>&1")
        .await;
    let out = sh(&runner, &id, "head -c 2000000 /dev/zero | tr '\\0' a").await;
    assert_eq!(out.trim().len(), 2_000_000);
    tokio::time::sleep(Duration::from_secs(3)).await; // the disk watchdog measures every second

    let after = sample(&runner).await;
    eprintln!("before {before:?}\nafter the busy loop {cores:?}\nat the end {after:?}");
    assert!(after.cpu_nanos >= before.cpu_nanos + 1_000_000_000, "{} -> {} ns", before.cpu_nanos, after.cpu_nanos);
    let mc = cores.cpu_millicores.expect("cores on the second sample");
    assert!(mc > 250, "a busy loop for most of the interval used {mc} millicores");
    assert!(
        after.memory_bytes >= before.memory_bytes + 35_000_000,
        "{} -> {}",
        before.memory_bytes,
        after.memory_bytes
    );
    assert!(after.memory_peak_bytes.unwrap() >= after.memory_bytes);
    let (rx0, tx0) = (before.net_rx_bytes.unwrap(), before.net_tx_bytes.unwrap());
    let (rx1, tx1) = (after.net_rx_bytes.unwrap(), after.net_tx_bytes.unwrap());
    assert!(tx1 >= tx0 + 2_000_000, "the output went out: tx {tx0} -> {tx1}");
    assert!(rx1 > rx0, "the requests came in: rx {rx0} -> {rx1}");
    if runner.host().disk_enforced {
        assert_eq!(after.disk_bytes, None, "no watchdog where the driver caps disk");
    } else {
        let disk = after.disk_bytes.expect("the watchdog measured the writable layer");
        assert!(disk >= 20 << 20, "20 MiB written, {disk} bytes measured");
    }

    // A stopped sandbox is not sampled.
    runner
        .stop(sandbar_proto::runner::StopSandbox { sandbox_id: id.clone(), force: true, timeout_secs: None })
        .await
        .unwrap();
    assert!(runner.sample_usage().await.unwrap().iter().all(|u| u.sandbox_id != id));
    runner.destroy(&id).await.unwrap();
}
