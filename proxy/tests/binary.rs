//! The `sandbar-proxy` binary: flags and environment, the ready line with real addresses for port 0, the
//! certificate generated once and reused, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn start(data_dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbar-proxy"))
        .env("SANDBAR_PROXY_TOKEN", "t")
        .env("SANDBAR_API_URL", "http://127.0.0.1:9")
        .args(["--bind", "127.0.0.1", "--http-port", "0", "--https-port", "0", "--metrics-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

fn field(line: &str, name: &str) -> std::net::SocketAddr {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(name)).unwrap().parse().unwrap()
}

#[test]
fn ready_line_certificate_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, line) = start(dir.path());
    assert!(line.starts_with("sandbar-proxy ready http="), "{line}");
    let (http, https) = (field(&line, "http="), field(&line, "https="));
    assert_ne!(http.port(), 0);
    assert_ne!(https.port(), 0);
    std::net::TcpStream::connect(http).unwrap();
    std::net::TcpStream::connect(https).unwrap();
    let cert = std::fs::read(dir.path().join("tls/localhost.crt")).unwrap();
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(status.expect("exits after SIGTERM").success());
    // Second start: same certificate.
    let (mut child, _) = start(dir.path());
    assert_eq!(std::fs::read(dir.path().join("tls/localhost.crt")).unwrap(), cert);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn missing_token_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbar-proxy")).env_remove("SANDBAR_PROXY_TOKEN").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxy-token"), "{}", String::from_utf8_lossy(&out.stderr));
}
