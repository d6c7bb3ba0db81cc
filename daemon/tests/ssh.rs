//! The SSH server against the real OpenSSH client (`ssh`, `scp`, `sftp`, `ssh-agent`, `tmux` for a real terminal):
//! exec with exit status, PTY shells and resizes, scp and sftp transfers, -L/-R forwarding, agent forwarding,
//! authentication failures, and a host key that survives a restart.
#![cfg(test)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sandbar_testkit::daemon::{TOKEN, TestDaemon};

/// An OpenSSH client set up for one daemon: a known_hosts file holding the daemon's host key (read from its
/// state directory), so host key checking stays strict.
struct Client {
    port: String,
    known_hosts: PathBuf,
    dir: tempfile::TempDir,
}

impl Client {
    fn new(d: &TestDaemon) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = d.ssh.rsplit(':').next().unwrap().to_owned();
        let public = std::fs::read_to_string(d.state.join("ssh_host_ed25519_key.pub")).unwrap();
        let mut parts = public.split_whitespace();
        let (alg, key) = (parts.next().unwrap(), parts.next().unwrap());
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {alg} {key}\n")).unwrap();
        Self { port, known_hosts, dir }
    }

    fn common_opts(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `ssh` authenticating with the daemon token as password (through sshpass).
    fn ssh(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sshpass");
        c.env("SSHPASS", TOKEN).arg("-e").arg("ssh").args(self.common_opts());
        c.args(["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password", "-p", &self.port]);
        c.args(args).arg("sandbar@127.0.0.1");
        c
    }

    fn ssh_run(&self, args: &[&str], command: &str) -> Output {
        let mut c = self.ssh(args);
        c.arg(command).stdin(Stdio::null());
        c.output().unwrap()
    }

    /// `ssh` with a key file and no password.
    fn ssh_key(&self, key: &Path, command: &str) -> Output {
        Command::new("ssh")
            .args(self.common_opts())
            .args(["-o", "BatchMode=yes", "-o", "PasswordAuthentication=no", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(key)
            .args(["-p", &self.port, "sandbar@127.0.0.1", command])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn scp(&self, from: &str, to: &str) -> Output {
        Command::new("sshpass")
            .env("SSHPASS", TOKEN)
            .args(["-e", "scp"])
            .args(self.common_opts())
            .args(["-o", "PubkeyAuthentication=no", "-P", &self.port, from, to])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
    key
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a child (an `ssh -L` or a background `ssh`) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn exec_prints_and_returns_the_exit_status() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let out = c.ssh_run(&[], "echo hi; echo oops >&2; exit 3");
    assert_eq!(out.status.code(), Some(3), "stderr: {}\nlog: {}", text(&out.stderr), d.log());
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "oops\n");

    // Commands run in the user's home; stdin reaches them and EOF ends it.
    let mut child = c.ssh(&[]).arg("pwd; cat | wc -c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&[b'x'; 100_000]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(d.home.to_str().unwrap()));
    assert_eq!(lines.next().map(str::trim), Some("100000"));
}

#[test]
fn environment_requests_and_no_token_leak() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let out = c.ssh_run(
        &["-o", "SetEnv=GREETING=hello-from-client SANDBAR_DAEMON_TOKEN=stolen"],
        "echo $GREETING; echo ${SANDBAR_DAEMON_TOKEN:-none}; echo $SSH_CONNECTION; env",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("hello-from-client"));
    assert_eq!(lines.next(), Some("none"), "a client must not set the daemon's private variables");
    assert!(lines.next().unwrap().starts_with("127.0.0.1 "));
    assert!(!stdout.contains(TOKEN), "the daemon token leaked into the session's environment");
}

#[test]
fn a_command_killed_by_a_signal_is_not_reported_as_success() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    // OpenSSH exits with 255 when the server reports exit-signal instead of an exit status.
    let out = c.ssh_run(&[], "echo before; kill -TERM $$; echo after");
    assert_eq!(text(&out.stdout), "before\n");
    assert_eq!(out.status.code(), Some(255), "stderr: {}", text(&out.stderr));
}

#[test]
fn interactive_shell_on_a_pty() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let mut child =
        c.ssh(&["-tt"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo $((6*7))-answer; tty; stty size; echo $TERM\n").unwrap();
    stdin.write_all(b"exit 5\n").unwrap();
    stdin.flush().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5), "output: {out}\nlog: {}", d.log());
    assert!(out.contains("42-answer"), "{out}");
    assert!(out.contains("/dev/pts/"), "not a terminal: {out}");
    drop(stdin);
}

/// A real terminal (tmux) running ssh: input typed, output read from the screen, and a resize reaching the PTY.
#[test]
fn tmux_terminal_resizes_reach_the_pty() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let socket = c.dir.path().join("tmux.sock");
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux").arg("-S").arg(&socket).args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let ssh_line = {
        let cmd = c.ssh(&["-tt"]);
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    tmux(&["new-session", "-d", "-x", "100", "-y", "30", "-s", "t", &format!("SSHPASS={TOKEN} {ssh_line}")]);
    let screen_has = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = tmux(&["capture-pane", "-p", "-t", "t"]);
            if screen.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "{needle:?} never showed; screen:\n{screen}\nlog:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    tmux(&["send-keys", "-t", "t", "echo size-$(stty size | tr ' ' x)", "Enter"]);
    screen_has("size-30x100");
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", "t", "clear; echo size-$(stty size | tr ' ' x)", "Enter"]);
    screen_has("size-40x120");
    let _ = Command::new("tmux").arg("-S").arg(&socket).args(["kill-server"]).output();
}

#[test]
fn scp_50_mb_in_and_out() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let local = c.dir.path().join("big.bin");
    let mut data = vec![0u8; 50 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&local, &data).unwrap();
    let out = c.scp(local.to_str().unwrap(), "sandbar@127.0.0.1:big-in.bin");
    assert!(out.status.success(), "scp in: {}\nlog: {}", text(&out.stderr), d.log());
    assert!(std::fs::read(d.home.join("big-in.bin")).unwrap() == data, "uploaded file differs");

    let back = c.dir.path().join("back.bin");
    let out = c.scp("sandbar@127.0.0.1:big-in.bin", back.to_str().unwrap());
    assert!(out.status.success(), "scp out: {}", text(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == data, "downloaded file differs");

    // A missing file is an error, not an empty file.
    let out = c.scp("sandbar@127.0.0.1:no-such-file", c.dir.path().join("x").to_str().unwrap());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("No such file"), "{}", text(&out.stderr));
}

/// `sftp -b` never asks for a password: the client key goes into ~/.ssh/authorized_keys of the sandbox user.
fn sftp_batch_command(c: &Client, d: &TestDaemon, batch: &Path) -> Command {
    let key = c.dir.path().join("sftp_key");
    if !key.exists() {
        keygen(c.dir.path(), "sftp_key");
        std::fs::create_dir_all(d.home.join(".ssh")).unwrap();
        std::fs::copy(key.with_extension("pub"), d.home.join(".ssh/authorized_keys")).unwrap();
    }
    let mut cmd = Command::new("sftp");
    cmd.args(c.common_opts()).args(["-o", "IdentitiesOnly=yes", "-i"]).arg(&key);
    cmd.args(["-P", &c.port, "-b"]).arg(batch).arg("sandbar@127.0.0.1").stdin(Stdio::null());
    cmd
}

#[test]
fn sftp_batch() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    std::fs::write(d.home.join("existing.txt"), "already here\n").unwrap();
    let local = c.dir.path().join("up.txt");
    std::fs::write(&local, "uploaded by sftp\n").unwrap();
    let got = c.dir.path().join("down.txt");
    let batch = c.dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "ls -l\nmkdir dir\nput {} dir/one.txt\nget dir/one.txt {}\nrename dir/one.txt dir/two.txt\nls dir\n\
             rm existing.txt\nls\n",
            local.display(),
            got.display()
        ),
    )
    .unwrap();
    let out = sftp_batch_command(&c, &d, &batch).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "sftp: {}\n{stdout}\nlog: {}", text(&out.stderr), d.log());
    assert!(stdout.contains("existing.txt"), "{stdout}");
    assert!(stdout.contains("dir/two.txt"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "uploaded by sftp\n");
    assert_eq!(std::fs::read_to_string(d.home.join("dir/two.txt")).unwrap(), "uploaded by sftp\n");
    assert!(!d.home.join("dir/one.txt").exists());
    assert!(!d.home.join("existing.txt").exists());

    // A failing command stops a batch with an error.
    std::fs::write(&batch, "get no-such-file\n").unwrap();
    let out = sftp_batch_command(&c, &d, &batch).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn local_forwarding_reaches_a_server_in_the_sandbox() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    std::fs::write(d.home.join("page.txt"), "served from the sandbox\n").unwrap();
    // A web server started inside the sandbox through ssh exec.
    let inner = free_port();
    let _server = Guard(
        c.ssh(&[])
            .arg(format!("exec python3 -m http.server {inner} --bind 127.0.0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(inner);
    let outer = free_port();
    let _tunnel = Guard(
        c.ssh(&["-N", "-o", "ExitOnForwardFailure=yes", "-L", &format!("127.0.0.1:{outer}:127.0.0.1:{inner}")])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(outer);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", outer)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /page.txt HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(resp.ends_with("served from the sandbox\n"), "{resp}");

    // Nothing listens there: the client is told the connection failed, the tunnel stays up.
    let dead = free_port();
    let out = c.ssh_run(&["-o", "ExitOnForwardFailure=yes", "-W", &format!("127.0.0.1:{dead}")], "");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("open failed") || stderr.contains("forwarding failed"), "{stderr}");
}

#[test]
fn remote_forwarding_reaches_a_server_of_the_test() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(b"pong from the test\n");
        }
    });
    let remote = free_port();
    let out = c.ssh_run(
        &["-o", "ExitOnForwardFailure=yes", "-R", &format!("127.0.0.1:{remote}:127.0.0.1:{target}")],
        &format!(
            "python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', {remote})); \
             print(s.makefile().readline().strip())\""
        ),
    );
    assert!(out.status.success(), "{}\nlog: {}", text(&out.stderr), d.log());
    assert_eq!(text(&out.stdout), "pong from the test\n");
}

#[test]
fn agent_forwarding_exports_a_socket() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let key = keygen(c.dir.path(), "agent_key");
    let sock = c.dir.path().join("agent.sock");
    let mut agent =
        Guard(Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock).stdout(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("ssh-add").arg(&key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(out.status.success(), "ssh-add: {}", text(&out.stderr));
    let fingerprint = text(&Command::new("ssh-keygen").arg("-lf").arg(&key).output().unwrap().stdout);
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_owned();
    let out = c.ssh(&["-A"]).env("SSH_AUTH_SOCK", &sock).arg("ssh-add -l").stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}\n{}\nlog: {}", text(&out.stdout), text(&out.stderr), d.log());
    assert!(text(&out.stdout).contains(&fingerprint), "{}", text(&out.stdout));
    // Without -A there is no agent.
    let out = c.ssh_run(&[], "echo ${SSH_AUTH_SOCK:-no-agent}");
    assert_eq!(text(&out.stdout), "no-agent\n");
    let _ = agent.0.kill();
}

#[test]
fn wrong_password_and_unknown_key_are_refused() {
    let d = TestDaemon::start();
    let c = Client::new(&d);
    let out = Command::new("sshpass")
        .env("SSHPASS", "not-the-token")
        .args(["-e", "ssh"])
        .args(c.common_opts())
        .args(["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1", "-p", &c.port])
        .args(["sandbar@127.0.0.1", "echo should-not-run"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("should-not-run"));

    let key = keygen(c.dir.path(), "unknown");
    let out = c.ssh_key(&key, "echo should-not-run");
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("should-not-run"));

    // The same key works once it is in ~/.ssh/authorized_keys of the sandbox user (read at each attempt).
    std::fs::create_dir_all(d.home.join(".ssh")).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    std::fs::write(d.home.join(".ssh/authorized_keys"), format!("# a comment\n{public}")).unwrap();
    let out = c.ssh_key(&key, "echo key-works");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "key-works\n");
}

#[test]
fn keys_passed_at_creation_are_accepted_and_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "creation");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let d = TestDaemon::start_with(&[("SANDBAR_SSH_AUTHORIZED_KEYS", &format!("\n{}\n", public.trim()))], &[]);
    let c = Client::new(&d);
    let out = c.ssh_key(&key, "echo creation-key-works; echo ${SANDBAR_SSH_AUTHORIZED_KEYS:-hidden}");
    assert!(out.status.success(), "{}\nlog: {}", text(&out.stderr), d.log());
    assert_eq!(text(&out.stdout), "creation-key-works\nhidden\n");
}

#[test]
fn host_key_is_kept_across_restarts() {
    let state = tempfile::tempdir().unwrap();
    let state_env = state.path().to_str().unwrap().to_owned();
    let scan = |d: &TestDaemon| {
        let port = d.ssh.rsplit(':').next().unwrap().to_owned();
        let out = Command::new("ssh-keyscan").args(["-t", "ed25519", "-p", &port, "127.0.0.1"]).output().unwrap();
        text(&out.stdout).split_whitespace().nth(2).unwrap_or_default().to_owned()
    };
    let first = {
        let d = TestDaemon::start_with(&[("SANDBAR_STATE_DIR", &state_env)], &[]);
        scan(&d)
    };
    assert!(!first.is_empty());
    let file = std::fs::read_to_string(state.path().join("ssh_host_ed25519_key.pub")).unwrap();
    assert!(file.contains(&first));
    let d = TestDaemon::start_with(&[("SANDBAR_STATE_DIR", &state_env)], &[]);
    assert_eq!(scan(&d), first, "the host key changed across a restart");
}

/// The runner hands each daemon a host key of its own in `SANDBAR_SSH_HOST_KEY` (and reports the public half for
/// the gateway to pin): the daemon serves that key, writes none of its own, and keeps the private key out of its
/// own environ and every child's.
#[tokio::test]
async fn a_host_key_handed_over_is_served_and_hidden() {
    let key = sandbar_support::ssh::HostKeyText::generate().unwrap();
    let d = TestDaemon::start_with(&[("SANDBAR_SSH_HOST_KEY", &key.private)], &[]);
    let port = d.ssh.rsplit(':').next().unwrap().to_owned();
    let out = Command::new("ssh-keyscan").args(["-t", "ed25519", "-p", &port, "127.0.0.1"]).output().unwrap();
    let served = text(&out.stdout).split_whitespace().nth(2).unwrap_or_default().to_owned();
    assert_eq!(Some(served.as_str()), key.public.split_whitespace().nth(1), "the daemon serves the key handed over");
    assert!(!d.state.join("ssh_host_ed25519_key").exists(), "no key of its own is made");
    let secret = key.private.lines().nth(1).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", d.pid())).unwrap();
    assert!(!text(&environ).contains(secret), "host key visible in the daemon's environ");
    assert!(!text(&environ).contains("SANDBAR_SSH_HOST_KEY="), "{}", text(&environ));
    let (_, env) = d.exec("env; cat /proc/$$/environ | tr '\\0' '\\n'").await;
    assert!(!env.contains("SANDBAR_SSH_HOST_KEY") && !env.contains(secret), "{env}");
    // A key that is not one stops the daemon with a clear error rather than making another.
    let bad = std::process::Command::new(sandbar_testkit::daemon::daemon_bin())
        .env("SANDBAR_DAEMON_TOKEN", TOKEN)
        .env("SANDBAR_SSH_HOST_KEY", "not a key")
        .env("SANDBAR_TOOLBOX_ADDR", "127.0.0.1:0")
        .env("SANDBAR_TERMINAL_ADDR", "127.0.0.1:0")
        .env("SANDBAR_SSH_ADDR", "127.0.0.1:0")
        .env("SANDBAR_STATE_DIR", d.state.join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("SANDBAR_SSH_HOST_KEY"), "{}", text(&bad.stderr));
}

#[test]
fn shutdown_disconnects_sessions() {
    let mut d = TestDaemon::start();
    let c = Client::new(&d);
    let mut child = c.ssh(&[]).arg("sleep 60").stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let st = d.terminate();
    assert!(st.success());
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
}
