//! The `sandbar-proxy` binary: flags and environment, the ready line with real addresses for port 0, the
//! certificate generated once and reused, and a clean exit on SIGTERM.

use std::process::Command;

use sandbar_testkit::proxy::ProxyProcess;

fn start(data_dir: &std::path::Path) -> ProxyProcess {
    ProxyProcess::start(env!("CARGO_BIN_EXE_sandbar-proxy"), "http://127.0.0.1:9", data_dir, &[])
}

#[test]
fn ready_line_certificate_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = start(dir.path());
    let line = proxy.ready.clone();
    assert!(line.starts_with("sandbar-proxy ready http="), "{line}");
    let (http, https) = (proxy.addr("http"), proxy.addr("https"));
    assert_ne!(http.port(), 0);
    assert_ne!(https.port(), 0);
    std::net::TcpStream::connect(http).unwrap();
    std::net::TcpStream::connect(https).unwrap();
    let cert = std::fs::read(dir.path().join("tls/localhost.crt")).unwrap();
    assert!(proxy.terminate().success(), "exits after SIGTERM");
    // Second start: same certificate.
    let _proxy = start(dir.path());
    assert_eq!(std::fs::read(dir.path().join("tls/localhost.crt")).unwrap(), cert);
}

#[test]
fn missing_token_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandbar-proxy")).env_remove("SANDBAR_PROXY_TOKEN").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxy-token"), "{}", String::from_utf8_lossy(&out.stderr));
}
