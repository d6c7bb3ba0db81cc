//! The static daemon as PID 1 in a real container built locally (busybox-static; no registry): reached from the
//! host, it runs commands, moves files, runs the image entrypoint in its session, reaps zombies, and ends
//! cleanly with exit code 0 on `docker stop`.

use std::time::Duration;

use sandbar_tests::{DaemonContainer, docker, json, static_daemon};
use serde_json::json;

const TOKEN: &str = "container-test-token-42";
const SANDBOX_ID: &str = "sbx-container-test";
/// The image command the daemon runs as the entrypoint session.
const ENTRY: [&str; 3] = ["sh", "-c", "echo entry-started; exec sleep 1000"];

#[test]
fn the_static_daemon_is_static() {
    let bin = static_daemon().unwrap();
    let out = std::process::Command::new("ldd").arg(&bin).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("not a dynamic executable") || text.contains("statically linked"), "{text}");
}

#[tokio::test]
async fn pid1_in_a_container_serves_reaps_and_stops_cleanly() {
    let d = DaemonContainer::start(TOKEN, SANDBOX_ID, &ENTRY).await.unwrap();
    let (c, base, client) = (&d.container, &d.base, &d.client);

    // The token rule holds inside the container too.
    let r = reqwest::Client::new()
        .post(format!("{base}/process/execute"))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    assert_eq!(d.exec("echo hi").await.unwrap(), (0, "hi\n".into()));
    let (_, pid1) = d.exec("cat /proc/1/cmdline | tr '\\0' ' '").await.unwrap();
    assert!(pid1.starts_with("/usr/local/bin/sandbar-daemon"), "{pid1}");
    assert!(!pid1.contains(TOKEN), "the token must not be in PID 1's command line");
    // PID 1 is not dumpable: its environment, memory and maps are closed even to root in the container (the same
    // uid as the daemon here), which has no CAP_SYS_PTRACE.
    for file in ["environ", "mem", "maps"] {
        let (code, out) = d.exec(&format!("head -c 1 /proc/1/{file}")).await.unwrap();
        assert!(code != 0 && out.contains("Permission denied"), "/proc/1/{file} is readable: {out}");
    }
    // A child's environment has the sandbox ID but not the token.
    let (_, environ) = d.exec("cat /proc/self/environ | tr '\\0' '\\n'").await.unwrap();
    assert!(environ.contains("SANDBAR_SANDBOX_ID=sbx-container-test"), "{environ}");
    assert!(!environ.contains(TOKEN), "the token must not be in a child's environment");
    // Nor is it in any environment or command line in the container: the pattern goes through a file, so that no
    // command line of the search carries it whole.
    let (a, b) = TOKEN.split_at(TOKEN.len() / 2);
    let search = format!(
        "A='{a}'; B='{b}'; printf %s \"$A$B\" > /dev/shm/p; \
         grep -lsF -f /dev/shm/p /proc/[0-9]*/environ /proc/[0-9]*/cmdline; echo searched"
    );
    assert_eq!(d.exec(&search).await.unwrap().1, "searched\n", "the token is readable in the container");

    // File round trip through the SDK's bulk endpoints.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let form = reqwest::multipart::Form::new()
        .text("files[0].path", "/tmp/round/trip.bin")
        .part("files[0].file", reqwest::multipart::Part::bytes(data.clone()).file_name("trip.bin"));
    let r = client.post(format!("{base}/files/bulk-upload")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(d.exec("wc -c < /tmp/round/trip.bin").await.unwrap().1.trim(), "3000000");
    let r = client.get(format!("{base}/files/download?path=/tmp/round/trip.bin")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    // The entrypoint runs in its session and its output is readable.
    let logs = json(client.get(format!("{base}/process/session/entrypoint/logs")).header("accept", "application/json"))
        .await
        .unwrap();
    assert_eq!(logs["stdout"], "entry-started\n");
    assert!(c.logs().contains("entry-started"), "entrypoint output reaches docker logs");

    // Orphans re-parented to PID 1 are reaped: no zombie stays.
    for _ in 0..5 {
        assert_eq!(d.exec("(sleep 0.2 &); exit 5").await.unwrap().0, 5);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, states) = d.exec("cat /proc/[0-9]*/stat | awk '{print $3}' | sort | uniq -c").await.unwrap();
    assert!(!states.contains(" Z"), "zombies in the container:\n{states}");

    // docker stop: SIGTERM to PID 1, which drains and exits 0 within its grace period; had docker needed to
    // SIGKILL it after its 10 s, the exit code would be 137.
    docker(&["stop", "-t", "10", &c.id]).unwrap();
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &c.id]).unwrap();
    assert_eq!(code, "0", "exit code of PID 1; logs:\n{}", c.logs());
    assert!(c.logs().contains("stopped"), "the daemon logged its drain");
}

/// OpenSSH's client against the SSH server of the daemon as PID 1 in the container (port 22220), with the host
/// key the daemon made in the container pinned in a known_hosts file.
#[tokio::test]
async fn ssh_into_the_container() {
    let d = DaemonContainer::start(TOKEN, SANDBOX_ID, &ENTRY).await.unwrap();
    let c = &d.container;
    let ip = c.ip().unwrap();
    let (code, public) = d.exec("cat /tmp/sandbar-daemon/ssh_host_ed25519_key.pub").await.unwrap();
    assert_eq!(code, 0, "no host key in the container: {public}");
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let mut parts = public.split_whitespace();
    let (alg, key) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(&known_hosts, format!("[{ip}]:22220 {alg} {key}\n")).unwrap();
    let ssh = |extra: &[&str], command: &str| {
        std::process::Command::new("sshpass")
            .env("SSHPASS", TOKEN)
            .args(["-e", "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "PubkeyAuthentication=no", "-o", "ConnectTimeout=10", "-p", "22220"])
            .args(extra)
            .arg(format!("root@{ip}"))
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = ssh(&[], "echo hi; exit 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "ssh into the container: {stderr}\nlogs:\n{}", c.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // A terminal's shell (spawned by the PTY library, not through `Command`) is behind the daemon for the OOM
    // killer too.
    let out = ssh(&["-tt"], "cat /proc/self/oom_score_adj");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "500", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Memory filled by processes each smaller than the daemon: the sandbox's OOM killer takes them, never PID 1,
/// which outranks every one of them only by `oom_score_adj` (`daemon/src/engine/procs.rs`). Without that, the
/// daemon (the largest process by its resident binary) is the first one killed and the container ends with it.
#[tokio::test]
async fn small_processes_filling_memory_are_killed_before_the_daemon() {
    let limit = ["--memory", "96m", "--memory-swap", "96m"];
    let d = DaemonContainer::start_with(&limit, TOKEN, SANDBOX_ID, &ENTRY).await.unwrap();
    assert_eq!(d.exec("cat /proc/1/oom_score_adj /proc/self/oom_score_adj").await.unwrap(), (0, "0\n500\n".into()));
    // 50 processes of 3 MiB each (a `dd` holding its block while the pipe to a sleeper is full): 150 MiB in 96.
    let fill = "for i in $(seq 50); do setsid sh -c 'dd if=/dev/zero bs=3M count=1 | sleep 600' >/dev/null 2>&1 & \
                done; echo started";
    assert_eq!(d.exec(fill).await.unwrap(), (0, "started\n".into()));
    // The kernel has killed some of them by the time the cgroup's count shows it; the daemon answers throughout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let kills = loop {
        let (_, out) =
            d.exec("cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events").await.unwrap();
        let kills = out.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok());
        if kills.is_some_and(|k| k > 0) {
            break kills;
        }
        assert!(tokio::time::Instant::now() < deadline, "no OOM kill in the container: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (code, comm) = d.exec("cat /proc/1/comm").await.unwrap();
    assert_eq!((code, comm.trim()), (0, "sandbar-daemon"), "after {kills:?} OOM kills; logs:\n{}", d.container.logs());
    let state = docker(&["inspect", "-f", "{{.State.Running}} {{.State.OOMKilled}}", &d.container.id]).unwrap();
    assert_eq!(state, "true false", "the container's PID 1 was OOM-killed");
}
