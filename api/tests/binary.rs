//! The `sandbar-api` binary: `bootstrap` prints a key once, `serve` on port 0 prints its ready line, answers with
//! that key, and exits 0 on SIGTERM; bad configuration exits non-zero with a message.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_sandbar-api");

#[tokio::test]
async fn bootstrap_then_serve_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = tokio::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["bootstrap", "--org", "acme"])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().find_map(|l| l.strip_prefix("api_key=")).expect("api_key line").to_owned();
    assert!(key.starts_with("sbk_"));
    assert!(data.join("sandbar.db").exists());

    let mut child = tokio::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--proxy-url", "https://sb.example:4443", "--data-dir"])
        .arg(&data)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr = ready.strip_prefix("sandbar-api ready addr=").expect("ready line").to_owned();
    assert!(!addr.ends_with(":0"), "{ready}");

    let http = reqwest::Client::new();
    let resp = http.get(format!("http://{addr}/api/sandbox")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"items": [], "nextCursor": null}));
    let resp = http.get(format!("http://{addr}/api/sandbox")).bearer_auth("sbk_wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let pid = child.id().unwrap();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn bad_configuration_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--proxy-url", "ftp://nope", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proxy-url"), "{}", String::from_utf8_lossy(&out.stderr));
}
