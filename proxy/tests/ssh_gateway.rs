//! The SSH gateway in-process on 127.0.0.1:0 in front of the real `sandbar-daemon` binary, with a resolver made
//! from a fixed map, driven by the real OpenSSH client: exec with exit status, a PTY, scp both ways, -L and -R
//! forwarding, and tokens that are refused with a message the client prints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sandbar_proxy::ssh_gateway::{self, SshGatewayConfig, SshTarget, SshTargetResolver};

const DAEMON_TOKEN: &str = "gateway-test-daemon-token";
const ACCESS_TOKEN: &str = "sshtok0123456789abcdef";
const STOPPED_TOKEN: &str = "sshtokstopped";

struct MapResolver {
    targets: HashMap<String, Result<SshTarget, String>>,
    activity: AtomicUsize,
}

#[async_trait::async_trait]
impl SshTargetResolver for MapResolver {
    async fn resolve(&self, token: &str) -> Result<SshTarget, String> {
        self.targets.get(token).cloned().unwrap_or_else(|| Err("unknown or expired SSH access token".into()))
    }

    fn activity(&self, sandbox_id: &str) {
        assert_eq!(sandbox_id, "sbx-gw");
        self.activity.fetch_add(1, Ordering::SeqCst);
    }
}

/// The daemon binary: SANDBAR_DAEMON_BIN, else the one beside this test's target directory (built if missing).
fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBAR_DAEMON_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("sandbar-daemon");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo).args(["build", "-p", "sandbar-daemon"]).status().unwrap();
        assert!(st.success(), "building sandbar-daemon failed");
    }
    bin
}

struct Daemon {
    child: Child,
    ssh: String,
    state: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &Path) -> Daemon {
    let (home, state) = (dir.join("home"), dir.join("state"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let mut child = Command::new(daemon_bin())
        .env("SANDBAR_DAEMON_TOKEN", DAEMON_TOKEN)
        .env("SANDBAR_SANDBOX_ID", "sbx-gw")
        .env("SANDBAR_TOOLBOX_ADDR", "127.0.0.1:0")
        .env("SANDBAR_TERMINAL_ADDR", "127.0.0.1:0")
        .env("SANDBAR_SSH_ADDR", "127.0.0.1:0")
        .env("SANDBAR_STATE_DIR", &state)
        .env("SANDBAR_WORK_DIR", &home)
        .env("HOME", &home)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    let ssh = line.split_whitespace().find_map(|kv| kv.strip_prefix("ssh=")).unwrap().to_owned();
    Daemon { child, ssh, state }
}

struct Setup {
    _daemon: Daemon,
    home: PathBuf,
    port: String,
    known_hosts: PathBuf,
    resolver: Arc<MapResolver>,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path());
    let daemon_key = std::fs::read_to_string(daemon.state.join("ssh_host_ed25519_key.pub")).unwrap();
    let target = SshTarget {
        sandbox_id: "sbx-gw".into(),
        daemon_addr: daemon.ssh.clone(),
        daemon_token: DAEMON_TOKEN.into(),
        daemon_host_key: Some(daemon_key.trim().to_owned()),
    };
    let mut targets = HashMap::new();
    targets.insert(ACCESS_TOKEN.to_owned(), Ok(target));
    targets.insert(STOPPED_TOKEN.to_owned(), Err("sandbox sbx-stopped is stopped: start it first".to_owned()));
    let resolver = Arc::new(MapResolver { targets, activity: AtomicUsize::new(0) });

    let key = ssh_gateway::load_or_create_host_key(&dir.path().join("gateway_host_key")).unwrap();
    let public = key.public_key().to_openssh().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {public}\n")).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let r: Arc<dyn SshTargetResolver> = resolver.clone();
    tokio::spawn(ssh_gateway::run(listener, key, SshGatewayConfig::default(), r, async move {
        let _ = stopped.await;
    }));
    Setup { _daemon: daemon, home: dir.path().join("home"), port, known_hosts, resolver, dir, _stop: stop }
}

impl Setup {
    fn opts(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentityFile=/dev/null",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn ssh(&self, token: &str, args: &[&str], command: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts()).args(["-p", &self.port]).args(args).arg(format!("{token}@127.0.0.1"));
        if !command.is_empty() {
            c.arg(command);
        }
        c
    }
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output().unwrap()).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback server of the test that greets every connection.
fn greeter(greeting: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(greeting.as_bytes());
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_pty_and_exit_status_through_the_gateway() {
    let s = setup().await;
    let out = output(s.ssh(ACCESS_TOKEN, &[], "echo hi; echo err >&2; exit 3")).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "err\n");

    // Environment requests and a signal-killed command cross the bridge too.
    let out = output(s.ssh(ACCESS_TOKEN, &["-o", "SetEnv=THROUGH=gateway"], "echo $THROUGH; kill -TERM $$")).await;
    assert_eq!(text(&out.stdout), "gateway\n");
    assert_eq!(out.status.code(), Some(255));

    // A shell on a PTY, typed into.
    let mut cmd = s.ssh(ACCESS_TOKEN, &["-tt"], "");
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo $((6*7))-via-gw; tty; exit 4\n").unwrap();
    let (status, out) = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        (child.wait().unwrap(), out)
    })
    .await
    .unwrap();
    drop(stdin);
    assert_eq!(status.code(), Some(4), "{out}");
    assert!(out.contains("42-via-gw") && out.contains("/dev/pts/"), "{out}");
    assert!(s.resolver.activity.load(Ordering::SeqCst) > 0, "no activity was reported");
}

#[tokio::test(flavor = "multi_thread")]
async fn scp_round_trip_through_the_gateway() {
    let s = setup().await;
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let local = s.dir.path().join("up.bin");
    std::fs::write(&local, &data).unwrap();
    let scp = |from: String, to: String| {
        let mut c = Command::new("scp");
        c.args(s.opts()).args(["-P", &s.port, &from, &to]);
        c
    };
    let out = output(scp(local.display().to_string(), format!("{ACCESS_TOKEN}@127.0.0.1:up.bin"))).await;
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    assert!(std::fs::read(s.home.join("up.bin")).unwrap() == data);
    let back = s.dir.path().join("back.bin");
    let out = output(scp(format!("{ACCESS_TOKEN}@127.0.0.1:up.bin"), back.display().to_string())).await;
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forwarding_through_the_gateway() {
    let s = setup().await;
    // -L: a server of the test, reached from the client through gateway and daemon.
    let target = greeter("hello through -L\n");
    let local = free_port();
    let mut tunnel = s
        .ssh(
            ACCESS_TOKEN,
            &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &format!("127.0.0.1:{local}:127.0.0.1:{target}")],
            "",
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", local)) {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut line = String::new();
                let _ = BufReader::new(c).read_line(&mut line);
                if !line.is_empty() {
                    return line;
                }
            }
            assert!(Instant::now() < deadline, "the -L tunnel never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert_eq!(got, "hello through -L\n");

    // -R: the sandbox connects back to a server of the test.
    let target = greeter("hello through -R\n");
    let remote = free_port();
    let out = output(s.ssh(
        ACCESS_TOKEN,
        &["-o", "ExitOnForwardFailure=yes", "-R", &format!("127.0.0.1:{remote}:127.0.0.1:{target}")],
        &format!(
            "python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', {remote})); \
             print(s.makefile().readline().strip())\""
        ),
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello through -R\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_stopped_tokens_are_refused_with_a_message() {
    let s = setup().await;
    let started = Instant::now();
    let out = output(s.ssh("not-a-token", &[], "echo should-not-run")).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(!text(&out.stdout).contains("should-not-run"));
    assert!(text(&out.stderr).contains("unknown or expired SSH access token"), "{}", text(&out.stderr));

    let out = output(s.ssh(STOPPED_TOKEN, &[], "echo should-not-run")).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("sbx-stopped is stopped"), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "refusals must not hang");
}
