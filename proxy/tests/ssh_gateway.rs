//! The SSH gateway in-process on 127.0.0.1:0 in front of the real `sandbar-daemon` binary, with a resolver made
//! from a fixed map, driven by the real OpenSSH client: exec with exit status, a PTY, scp both ways, -L and -R
//! forwarding, and tokens that are refused with a message the client prints.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sandbar_proxy::ssh_gateway::{SshTarget, SshTargetResolver};
use sandbar_testkit::daemon::TestDaemon;
use sandbar_testkit::proxy::{SshGateway, daemon_host_key, free_port, greeter, output};

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

struct Setup {
    _daemon: TestDaemon,
    home: PathBuf,
    gateway: SshGateway,
    resolver: Arc<MapResolver>,
}

async fn setup() -> Setup {
    let daemon = TestDaemon::start_token(DAEMON_TOKEN);
    let target = SshTarget {
        sandbox_id: "sbx-gw".into(),
        daemon_addr: daemon.ssh.clone(),
        daemon_token: DAEMON_TOKEN.into(),
        daemon_host_key: Some(daemon_host_key(&daemon)),
    };
    let mut targets = HashMap::new();
    targets.insert(ACCESS_TOKEN.to_owned(), Ok(target));
    targets.insert(STOPPED_TOKEN.to_owned(), Err("sandbox sbx-stopped is stopped: start it first".to_owned()));
    let resolver = Arc::new(MapResolver { targets, activity: AtomicUsize::new(0) });
    let gateway = SshGateway::start(resolver.clone()).await;
    Setup { home: daemon.home.clone(), _daemon: daemon, gateway, resolver }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_pty_and_exit_status_through_the_gateway() {
    let s = setup().await;
    let out = output(s.gateway.ssh(ACCESS_TOKEN, &[], "echo hi; echo err >&2; exit 3")).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "err\n");

    // Environment requests and a signal-killed command cross the bridge too.
    let out =
        output(s.gateway.ssh(ACCESS_TOKEN, &["-o", "SetEnv=THROUGH=gateway"], "echo $THROUGH; kill -TERM $$")).await;
    assert_eq!(text(&out.stdout), "gateway\n");
    assert_eq!(out.status.code(), Some(255));

    // A shell on a PTY, typed into.
    let mut cmd = s.gateway.ssh(ACCESS_TOKEN, &["-tt"], "");
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
    let local = s.gateway.dir.path().join("up.bin");
    std::fs::write(&local, &data).unwrap();
    let scp = |from: String, to: String| {
        let mut c = Command::new("scp");
        c.args(s.gateway.opts()).args(["-P", &s.gateway.port, &from, &to]);
        c
    };
    let out = output(scp(local.display().to_string(), format!("{ACCESS_TOKEN}@127.0.0.1:up.bin"))).await;
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    assert!(std::fs::read(s.home.join("up.bin")).unwrap() == data);
    let back = s.gateway.dir.path().join("back.bin");
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
        .gateway
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
    let out = output(s.gateway.ssh(
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
    let out = output(s.gateway.ssh("not-a-token", &[], "echo should-not-run")).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(!text(&out.stdout).contains("should-not-run"));
    assert!(text(&out.stderr).contains("unknown or expired SSH access token"), "{}", text(&out.stderr));

    let out = output(s.gateway.ssh(STOPPED_TOKEN, &[], "echo should-not-run")).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("sbx-stopped is stopped"), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "refusals must not hang");
}
