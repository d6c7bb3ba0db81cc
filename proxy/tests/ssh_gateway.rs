//! The SSH gateway in-process on 127.0.0.1:0 in front of the real `sandbar-daemon` binary, with a resolver made
//! from a fixed map, driven by the real OpenSSH client: exec with exit status, a PTY, scp both ways, -L and -R
//! forwarding, tokens that are refused with a message the client prints, and host key pinning (an impostor at the
//! daemon's address is refused, through a map resolver and through the real API).

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

/// A daemon with this test's token but a host key of its own, started with `env`: what a neighbour answering for the
/// sandbox's address would run to collect the password.
fn impostor(env: &[(&str, &str)]) -> TestDaemon {
    let mut env = env.to_vec();
    env.push(("SANDBAR_DAEMON_TOKEN", DAEMON_TOKEN));
    TestDaemon::start_with(&env, &[])
}

/// The gateway pins the daemon's host key: a server at the daemon's address showing another key (and which would
/// take the token as password) is refused with a message the client prints, before any password is sent; and a
/// target whose key is not known is not logged into at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_with_another_host_key_or_none_is_refused() {
    let real = TestDaemon::start_token(DAEMON_TOKEN);
    let fake = impostor(&[]);
    assert_ne!(daemon_host_key(&fake), daemon_host_key(&real));
    let target = |addr: &str, key: Option<String>| SshTarget {
        sandbox_id: "sbx-gw".into(),
        daemon_addr: addr.into(),
        daemon_token: DAEMON_TOKEN.into(),
        daemon_host_key: key,
    };
    let mut targets = HashMap::new();
    targets.insert("to-the-impostor".to_owned(), Ok(target(&fake.ssh, Some(daemon_host_key(&real)))));
    targets.insert("key-unknown".to_owned(), Ok(target(&real.ssh, None)));
    targets.insert(ACCESS_TOKEN.to_owned(), Ok(target(&real.ssh, Some(daemon_host_key(&real)))));
    let gateway = SshGateway::start(Arc::new(MapResolver { targets, activity: AtomicUsize::new(0) })).await;

    let out = output(gateway.ssh("to-the-impostor", &[], "touch $HOME/pwned; echo ran")).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(!text(&out.stdout).contains("ran"));
    assert!(text(&out.stderr).contains("host key other than the one its runner reported"), "{}", text(&out.stderr));
    assert!(!fake.home.join("pwned").exists());
    assert!(!fake.log().contains("ssh authentication"), "the impostor saw a login attempt:\n{}", fake.log());

    let out = output(gateway.ssh("key-unknown", &[], "echo ran")).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(!text(&out.stdout).contains("ran"));
    assert!(text(&out.stderr).contains("does not know the SSH host key"), "{}", text(&out.stderr));

    // The real daemon, with its own key: in.
    let out = output(gateway.ssh(ACCESS_TOKEN, &[], "echo real")).await;
    assert_eq!(text(&out.stdout), "real\n", "{}", text(&out.stderr));
}

/// The whole chain with the real API: the runner reports the daemon's host key with its create result, the API
/// stores it and returns it from `/internal/ssh/resolve`, the proxy's resolver hands it to the gateway, and OpenSSH
/// gets in through the gateway. Then the daemon is gone and an impostor answers at its address with the same
/// password but its own key: refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_key_the_runner_reported_is_pinned_end_to_end() {
    use sandbar_proto::runner::{JobOutcome, JobResult, SandboxState};
    use sandbar_testkit::api::{Harness, PROXY_TOKEN, databases, empty};

    // The API derives the SSH address from the daemon's (its IP, port 22220): give the daemon a loopback address of
    // its own so that port is free.
    let ip = format!("127.{}.{}.{}", 90 + std::process::id() % 100, (std::process::id() / 100) % 250, 1);
    let env = [("SANDBAR_TOOLBOX_ADDR", format!("{ip}:0")), ("SANDBAR_SSH_ADDR", format!("{ip}:22220"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon_env = env.clone();
    daemon_env.push(("SANDBAR_DAEMON_TOKEN", DAEMON_TOKEN));
    let daemon = TestDaemon::start_with(&daemon_env, &[]);

    let db = databases().await.remove(0);
    let (h, runner) = Harness::start_with_runner(&db, 8, 16, 100).await;
    let id = h.create(empty()).await["id"].as_str().unwrap().to_owned();
    let job = runner.poll(0).await.remove(0);
    let mut info = runner.info(&id, &h.org, SandboxState::Started);
    info.daemon_addr = Some(daemon.addr.clone());
    info.daemon_token = DAEMON_TOKEN.into();
    info.daemon_host_key = Some(daemon_host_key(&daemon));
    let outcome = JobOutcome::Succeeded { sandbox: Some(Box::new(info)), snapshot: None };
    assert!(runner.result(JobResult { job_id: job.id, outcome }).await.is_success());
    let (_, access) = h.call(reqwest::Method::POST, &format!("/sandbox/{id}/ssh-access"), None).await;
    let token = access["token"].as_str().unwrap().to_owned();

    let api = sandbar_proxy::control::api::ApiClient::new(&h.base, PROXY_TOKEN.into()).unwrap();
    let activity = Arc::new(sandbar_proxy::control::activity::Activity::default());
    let resolver = sandbar_proxy::ssh_gateway::resolver::ApiSshResolver::new(api, activity);
    let gateway = SshGateway::start(resolver).await;
    let out = output(gateway.ssh(&token, &[], "echo through-the-api-$((6*7))")).await;
    assert_eq!(text(&out.stdout), "through-the-api-42\n", "{}", text(&out.stderr));

    drop(daemon);
    let fake = impostor(&env);
    let out = output(gateway.ssh(&token, &[], "touch $HOME/pwned; echo ran")).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(!text(&out.stdout).contains("ran"));
    assert!(text(&out.stderr).contains("host key other than the one its runner reported"), "{}", text(&out.stderr));
    assert!(!fake.home.join("pwned").exists());
    h.stop().await;
}
