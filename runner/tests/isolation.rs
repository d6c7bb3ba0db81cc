//! Least privilege on real Docker, attacked from inside real sandboxes: the `docker inspect` audit of a sandbox's
//! HostConfig; raw sockets refused even to root; `sudo`, `apt-get` and `pip install` still working on the default
//! image; the daemon's memory, environment and maps unreadable by the sandbox user and by root, and its token in
//! no file or process a sandbox can read; container root an unprivileged host uid (user namespaces); the container
//! log capped; the disk watchdog stopping the sandbox over its quota and only that one; gVisor as a runtime the
//! operator allows.
//!
//! The default-image test needs the Debian mirror (like `scripts/build-sandbox-image`): it installs python3-pip
//! with `sudo apt-get`, as an agent would.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::*;
use sandbar_proto::runner::{CreateSandbox, Resources, SandboxState};
use sandbar_proto::toolbox::ExecuteRequest;
use sandbar_runner::host::hardening::SANDBOX_CAPS;
use sandbar_runner::{Runner, SandboxError, StartupError};

fn long_req(cmd: &str, secs: u64) -> ExecuteRequest {
    ExecuteRequest { command: cmd.into(), timeout: Some(secs), ..Default::default() }
}

async fn sh(runner: &Runner, id: &str, cmd: &str) -> (i32, String) {
    let out = runner.exec(id, &long_req(cmd, 300)).await.unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (out.exit_code, out.result)
}

async fn sh_ok(runner: &Runner, id: &str, cmd: &str) -> String {
    let (code, out) = sh(runner, id, cmd).await;
    assert_eq!(code, 0, "{cmd}:\n{out}");
    out
}

/// Bits of the capabilities a sandbox keeps, as /proc/PID/status prints them.
fn caps_mask() -> u64 {
    let bit = |name: &str| match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "FOWNER" => 3,
        "FSETID" => 4,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        other => panic!("no bit for {other}"),
    };
    SANDBOX_CAPS.iter().map(|c| 1u64 << bit(c)).fold(0, |a, b| a | b)
}

fn status_hex(status: &str, key: &str) -> u64 {
    let v = status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}

/// The HostConfig every sandbox gets, as `docker inspect` shows it.
fn audit_host_config(container: &str, nnp: bool) {
    let inspect = |f: &str| docker_inspect(container, f).unwrap();
    assert_eq!(inspect("{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    let added: Vec<String> = serde_json::from_str(&inspect("{{json .HostConfig.CapAdd}}")).unwrap();
    let mut added: Vec<&str> = added.iter().map(|c| c.trim_start_matches("CAP_")).collect();
    added.sort();
    let mut want = SANDBOX_CAPS.to_vec();
    want.sort();
    assert_eq!(added, want, "capabilities added back");
    assert!(!added.contains(&"NET_RAW") && !added.contains(&"MKNOD"));
    assert_eq!(inspect("{{.HostConfig.PidsLimit}}"), "4096");
    assert_eq!(inspect("{{json .HostConfig.Ulimits}}"), r#"[{"Name":"nofile","Hard":16384,"Soft":16384}]"#);
    assert_eq!(
        inspect("{{json .HostConfig.LogConfig}}"),
        r#"{"Type":"json-file","Config":{"max-file":"3","max-size":"10m"}}"#
    );
    let secopt = inspect("{{json .HostConfig.SecurityOpt}}");
    assert_eq!(secopt.contains("no-new-privileges"), nnp, "{secopt}");
    assert!(!secopt.contains("unconfined"), "{secopt}");
    assert_eq!(inspect("{{.HostConfig.Privileged}}"), "false");
    assert_eq!(inspect("{{.HostConfig.Runtime}}"), "runc");
}

/// Writes a script into the sandbox (as its user) for the user and root to run.
async fn put_script(runner: &Runner, id: &str, path: &str, body: &str) {
    sh_ok(runner, id, &format!("cat > {path} <<'SANDBAR_EOF'\n{body}\nSANDBAR_EOF\nchmod 0755 {path}")).await;
}

/// Reads PID 1's private files; one line per file: `name ok` or `name <error>`.
const READ_PID1: &str = r#"err=/tmp/pid1.$(id -u).err
for f in environ maps mem syscall auxv; do
  if head -c 1 /proc/1/$f >/dev/null 2>$err; then echo "$f ok"; else echo "$f $(cat $err)"; fi
done
for l in fd/0 cwd exe; do
  if readlink /proc/1/$l >/dev/null 2>$err; then echo "$l ok"; else echo "$l denied"; fi
done"#;

/// Every read of PID 1's private files failed; `/proc/1/mem` was not even opened (an open that succeeds reads
/// offset 0 and gets EIO: only a refused open means its memory is closed).
fn assert_pid1_unreadable(who: &str, out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{who}:\n{out}");
    for line in lines {
        assert!(!line.ends_with(" ok"), "{who} reads the daemon's {line}\n{out}");
    }
    assert!(out.lines().any(|l| l.starts_with("mem ") && l.contains("Permission denied")), "{who}:\n{out}");
}

/// Looks for the daemon token in every process's environment and command line and in the usual writable places,
/// then counts it in the environment of the searching process and of a child (`cat`, whose environment has a PATH). The script holds the token in two halves, so that
/// neither the script nor any command line carries it whole.
fn find_token(token: &str) -> String {
    let (a, b) = token.split_at(token.len() / 2);
    format!(
        "A={a}; B={b}; p=/dev/shm/pattern.$(id -u); printf %s \"$A$B\" > $p
grep -rlsF -f $p /proc/[0-9]*/environ /proc/[0-9]*/cmdline /tmp /var/tmp /run /home /root /etc /usr/local
env | grep -c SANDBAR_DAEMON_TOKEN; cat /proc/self/environ | tr '\\0' '\\n' > $p.env
grep -c '^PATH=' $p.env; grep -c SANDBAR_DAEMON_TOKEN $p.env; rm -f $p.env
rm -f $p; true"
    )
}

/// Raw and packet sockets; prints one line per socket kind.
const RAW_SOCKETS: &str = r#"import socket
for name, args in [("raw_icmp", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                   ("raw_tcp", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),
                   ("packet", (socket.AF_PACKET, socket.SOCK_RAW, 0))]:
    try:
        socket.socket(*args).close()
        print(name, "opened")
    except PermissionError:
        print(name, "PermissionError")"#;

const REFUSED: &str = "raw_icmp PermissionError\nraw_tcp PermissionError\npacket PermissionError";

/// The default image: its user keeps sudo, apt-get and pip; neither it nor root reaches raw sockets or the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_image_keeps_sudo_apt_and_pip_but_not_raw_sockets_or_the_daemon() {
    let (_t, runner) = TestRunner::start("iso-default").await;
    let image = runner.ensure_default_image().await.expect("default image builds or is cached");
    let id = format!("iso-deb-{}", unique());
    let mut req = create_req(&id, &image.reference);
    req.resources = Resources { cpu: 1, memory: 2, disk: 10 };
    let info = runner.create(req).await.unwrap();
    // Its user is `sandbar`, who needs setuid sudo: no no-new-privileges (config `auto`).
    audit_host_config(&info.container_id, false);

    // Capabilities: root via sudo has exactly the sandbox's set, in every set.
    let status = sh_ok(&runner, &id, "sudo -n cat /proc/self/status").await;
    assert_eq!(status_hex(&status, "CapBnd:"), caps_mask(), "{status}");
    assert_eq!(status_hex(&status, "CapEff:"), caps_mask(), "{status}");
    assert_eq!(status_hex(&status, "CapBnd:") & (1 << 13), 0, "NET_RAW in the bounding set");
    assert_eq!(sh_ok(&runner, &id, "ulimit -n; ulimit -Hn").await.trim(), "16384\n16384");

    // Raw sockets: refused to the user and to root.
    put_script(&runner, &id, "/tmp/raw.py", RAW_SOCKETS).await;
    assert_eq!(sh_ok(&runner, &id, "python3 /tmp/raw.py").await.trim(), REFUSED);
    assert_eq!(sh_ok(&runner, &id, "sudo -n python3 /tmp/raw.py").await.trim(), REFUSED, "as root");
    let (code, out) = sh(&runner, &id, "sudo -n mknod /tmp/null2 c 1 3").await;
    assert_ne!(code, 0, "mknod as root: {out}");

    // Root work an agent does: apt-get (dpkg, apt's _apt user), useradd, chown, pip install of a local package.
    let apt = "sudo -n apt-get update -q >/tmp/apt.log 2>&1 && \
               sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip \
               >>/tmp/apt.log 2>&1 && python3 -m pip --version || { tail -20 /tmp/apt.log; exit 1; }";
    assert!(sh_ok(&runner, &id, apt).await.contains("pip "));
    let pkg = "mkdir -p ~/hello && cd ~/hello && \
               printf 'from setuptools import setup\\nsetup(name=\"sandbar-hello\", version=\"1.0\", py_modules=[\"sandbar_hello\"])\\n' > setup.py && \
               echo 'X = 42' > sandbar_hello.py && \
               pip install -q --user --break-system-packages . && cd / && python3 -c 'import sandbar_hello; print(sandbar_hello.X)' && \
               sudo -n pip install -q --root-user-action=ignore --break-system-packages ~/hello && sudo -n python3 -c 'import sandbar_hello' && \
               sudo -n useradd -m agent2 && sudo -n -u agent2 id -un && sudo -n chown agent2 ~/hello/setup.py && \
               stat -c %U ~/hello/setup.py";
    assert_eq!(sh_ok(&runner, &id, pkg).await.trim(), "42\nagent2\nagent2");

    // The daemon (uid 1000 like the user): its private /proc files are closed to the user and to root.
    put_script(&runner, &id, "/tmp/pid1.sh", READ_PID1).await;
    assert_pid1_unreadable("the user", &sh(&runner, &id, "sh /tmp/pid1.sh").await.1);
    assert_pid1_unreadable("root", &sh(&runner, &id, "sudo -n sh /tmp/pid1.sh").await.1);
    let (_, cmdline) = sh(&runner, &id, "tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(cmdline.starts_with("/usr/local/bin/sandbar-daemon"), "{cmdline}");

    // The token is nowhere a sandbox can read, for the user or for root.
    put_script(&runner, &id, "/tmp/find-token.sh", &find_token(&info.daemon_token)).await;
    assert_eq!(sh(&runner, &id, "sh /tmp/find-token.sh").await.1.trim(), "0\n1\n0", "token found by the user");
    assert_eq!(sh(&runner, &id, "sudo -n sh /tmp/find-token.sh").await.1.trim(), "0\n1\n0", "token found by root");
}

/// A sandbox whose user is root (the busybox image): no-new-privileges on, root is host uid 100000+, and the
/// daemon (root too, the same uid) is still unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_in_a_sandbox_is_an_unprivileged_host_user() {
    let (_t, runner) = TestRunner::start("iso-root").await;
    assert!(runner.host().userns, "scripts/setup enables userns-remap; the runner refuses to start without it");
    let id = format!("iso-root-{}", unique());
    let mut req = create_req(&id, &busybox_image());
    req.entrypoint = Some(marker_entrypoint());
    let info = runner.create(req).await.unwrap();
    audit_host_config(&info.container_id, true);

    let status = sh_ok(&runner, &id, "id -u; cat /proc/self/status").await;
    assert!(status.starts_with("0\n"), "{status}");
    assert_eq!(status_hex(&status, "CapBnd:"), caps_mask(), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // The daemon and the entrypoint run as root inside, as an unprivileged uid on the host.
    let pid = docker_inspect(&info.container_id, "{{.State.Pid}}").unwrap();
    assert!(pid.parse::<u32>().unwrap() > 1, "{pid}");
    let host_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids: Vec<u32> = host_status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids.len(), 4);
    assert!(uids.iter().all(|&u| u >= 100_000), "container root is host uid {uids:?}");
    let uid_map = sh_ok(&runner, &id, "cat /proc/self/uid_map").await;
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(fields[0], "0", "{uid_map}");
    assert!(fields[1].parse::<u32>().unwrap() >= 100_000, "{uid_map}");

    put_script(&runner, &id, "/tmp/pid1.sh", READ_PID1).await;
    assert_pid1_unreadable("root (the daemon's own uid)", &sh(&runner, &id, "sh /tmp/pid1.sh").await.1);
    put_script(&runner, &id, "/tmp/find-token.sh", &find_token(&info.daemon_token)).await;
    assert_eq!(sh(&runner, &id, "sh /tmp/find-token.sh").await.1.trim(), "0\n1\n0", "token found");
    let (code, out) = sh(&runner, &id, "mknod /tmp/null2 c 1 3").await;
    assert_ne!(code, 0, "mknod: {out}");
}

/// An entrypoint printing 40 MB: Docker keeps at most the configured files of the configured size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_are_capped() {
    let t = TestRunner::new("iso-logs");
    let mut config = t.config();
    config.log_max_size = "1m".into();
    config.log_max_files = 2;
    let runner = Runner::new(config).await.unwrap();
    let id = format!("iso-log-{}", unique());
    let mut req = create_req(&id, &busybox_image());
    req.entrypoint = Some(
        [
            "sh",
            "-c",
            "yes 0123456789012345678901234567890123456789 | head -c 40000000; touch /tmp/done; exec sleep 1000000",
        ]
        .map(String::from)
        .to_vec(),
    );
    let info = runner.create(req).await.unwrap();
    assert_eq!(
        docker_inspect(&info.container_id, "{{json .HostConfig.LogConfig}}").unwrap(),
        r#"{"Type":"json-file","Config":{"max-file":"2","max-size":"1m"}}"#
    );
    let mut done = false;
    for _ in 0..240 {
        if runner.exec(&id, &exec_req("test -f /tmp/done")).await.unwrap().exit_code == 0 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(done, "the entrypoint did not finish printing");
    let log_path = docker_inspect(&info.container_id, "{{.LogPath}}").unwrap();
    let dir = std::path::Path::new(&log_path).parent().unwrap();
    let name = std::path::Path::new(&log_path).file_name().unwrap().to_string_lossy().into_owned();
    let total: u64 = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total > 0 && total < 3 << 20, "40 MB printed, {total} bytes of log kept");
}

/// Two sandboxes with 1 GiB disks on a driver that cannot cap them: the one writing past its quota is stopped
/// (reported with the reason), the other keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_watchdog_stops_only_the_sandbox_over_its_quota() {
    let t = TestRunner::new("iso-disk");
    let mut config = t.config();
    config.disk_watchdog_interval = Some(Duration::from_secs(1));
    let runner = Runner::new(config).await.unwrap();
    assert!(!runner.host().disk_enforced, "this test is for drivers without disk quotas (fuse-overlayfs here)");
    let mut changes = runner.subscribe();
    let make = |name: &str| {
        let mut req = create_req(&format!("iso-{name}-{}", unique()), &busybox_image());
        req.resources = Resources { cpu: 1, memory: 1, disk: 1 };
        req.entrypoint = Some(marker_entrypoint());
        req
    };
    let (hog, calm) = (make("hog"), make("calm"));
    let hog_info = runner.create(hog.clone()).await.unwrap();
    runner.create(calm.clone()).await.unwrap();
    sh_ok(&runner, &calm.id, "dd if=/dev/zero of=/root/a bs=1M count=100 2>&1").await;

    let writer = {
        let (runner, id) = (runner.clone(), hog.id.clone());
        tokio::spawn(
            async move { runner.exec(&id, &long_req("dd if=/dev/zero of=/root/big bs=1M count=1600", 300)).await },
        )
    };
    let stopped = wait_for_state(&mut changes, &hog.id, SandboxState::Stopped, Duration::from_secs(240)).await;
    let reason = stopped.reason.unwrap_or_default();
    assert!(reason.contains("disk quota exceeded") && reason.contains("1 GiB"), "{reason}");
    let _ = writer.await;
    assert_eq!(docker_inspect(&hog_info.container_id, "{{.State.Running}}").unwrap(), "false");

    // The other sandbox was never touched and still writes.
    sh_ok(&runner, &calm.id, "dd if=/dev/zero of=/root/b bs=1M count=100 2>&1 && sync").await;
    assert_eq!(sh_ok(&runner, &calm.id, "cat /root/a /root/b | wc -c").await.trim(), "209715200");
    assert_eq!(runner.get(&calm.id).unwrap().state, SandboxState::Started);
}

/// gVisor: a sandbox on `runsc` when the runner allows it; its static daemon runs in gVisor's kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_runtime_when_allowed_and_refused_otherwise() {
    let t = TestRunner::new("iso-gvisor");
    let mut config = t.config();
    config.runtimes = vec!["runc".into(), "runsc".into()];
    let runner = Runner::new(config).await.unwrap();
    let on = |rt: &str| CreateSandbox {
        runtime: Some(rt.into()),
        entrypoint: Some(marker_entrypoint()),
        ..create_req(&format!("iso-rt-{}", unique()), &busybox_image())
    };
    let req = on("runsc");
    let info = runner.create(req.clone()).await.unwrap();
    assert_eq!(docker_inspect(&info.container_id, "{{.HostConfig.Runtime}}").unwrap(), "runsc");
    // runsc cannot start in Docker's remapped user namespace: gVisor is the boundary of these containers.
    assert_eq!(docker_inspect(&info.container_id, "{{.HostConfig.UsernsMode}}").unwrap(), "host");
    let kernel = sh_ok(&runner, &req.id, "dmesg | head -n 3; cat /tmp/marker").await;
    assert!(kernel.contains("gVisor") && kernel.contains("from-entrypoint"), "{kernel}");
    // gVisor's own /proc closes the daemon's memory to root in the sandbox but, unlike Linux, not its environ and
    // maps: the token is not in that environment (the daemon re-executes itself without it).
    put_script(&runner, &req.id, "/tmp/pid1.sh", READ_PID1).await;
    let pid1 = sh(&runner, &req.id, "sh /tmp/pid1.sh").await.1;
    assert!(pid1.lines().any(|l| l.starts_with("mem ") && l.contains("Permission denied")), "{pid1}");
    put_script(&runner, &req.id, "/tmp/find-token.sh", &find_token(&info.daemon_token)).await;
    assert_eq!(sh(&runner, &req.id, "sh /tmp/find-token.sh").await.1.trim(), "0\n1\n0", "token found in gVisor");
    runner.destroy(&req.id).await.unwrap();

    // runc by default, and a runtime the runner does not allow is refused with its name.
    let plain = runner.create(CreateSandbox { runtime: None, ..on("runc") }).await.unwrap();
    assert_eq!(docker_inspect(&plain.container_id, "{{.HostConfig.Runtime}}").unwrap(), "runc");
    let err = runner.create(on("kata")).await.unwrap_err();
    assert!(matches!(&err, SandboxError::InvalidRequest(m) if m.contains("\"kata\" is not allowed")), "{err}");

    // The default runner allows runc only.
    let t2 = TestRunner::new("iso-gvisor-off");
    let runc_only = t2.runner().await;
    let err = runc_only.create(on("runsc")).await.unwrap_err();
    assert!(err.to_string().contains("allowed: runc"), "{err}");
    assert!(t2.containers().is_empty());

    // An allowed runtime Docker does not know stops the runner at start.
    let mut bad = t2.config();
    bad.runtimes = vec!["runc".into(), "no-such-runtime".into()];
    let err = Runner::new(bad).await.unwrap_err();
    assert!(matches!(&err, StartupError::Runtime { name, .. } if name == "no-such-runtime"), "{err}");
}
