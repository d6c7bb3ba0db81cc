//! `sandbar runner ls|cordon|uncordon|drain [--move]` as an operator runs it, against an API stand-in on loopback
//! that answers like `/api/admin/runners` (the admin token opens it, anything else is a 403 with a message): the
//! admin token is taken from `SANDBAR_ADMIN_TOKEN`, else from `sandbar up`'s `secrets.env`, never the API key; the
//! paths and `?move=` are the API's; text and `-o json` output; a refusal exits 125 with the API's message. The
//! endpoints themselves are tested in api/tests/drain.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

const SANDBAR: &str = env!("CARGO_BIN_EXE_sandbar");
const ADMIN: &str = "the-admin-token";

/// A stand-in of the admin endpoints; records `METHOD PATH` of every request that carried the admin token.
fn stand_in() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
            let (mut length, mut auth) = (0usize, String::new());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    } else if k.eq_ignore_ascii_case("authorization") {
                        auth = v.trim().to_owned();
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = path.strip_prefix("/api").unwrap_or(&path).to_owned();
            let runner = |id: &str, schedule: &str, moving: bool| {
                json!({"id": id, "version": "1.0", "schedule": schedule, "moving": moving, "reachable": true,
                       "cpu": 4, "memory": 8, "disk": 50, "sandboxes": 2, "registeredAt": 1, "lastHeartbeat": 2})
            };
            let (status, value) = if auth != format!("Bearer {ADMIN}") {
                (403, json!({"message": "runner administration needs the operator's admin token"}))
            } else {
                log.lock().unwrap().push(format!("{method} {path}"));
                match (method.as_str(), path.as_str()) {
                    ("GET", "/admin/runners") => {
                        (200, json!([runner("r1", "active", false), runner("r2", "cordoned", false)]))
                    }
                    ("POST", "/admin/runners/r1/cordon") => (200, runner("r1", "cordoned", false)),
                    ("POST", "/admin/runners/r1/uncordon") => (200, runner("r1", "active", false)),
                    ("POST", "/admin/runners/r1/drain?move=true") => (200, runner("r1", "draining", true)),
                    ("POST", "/admin/runners/r1/drain?move=false") => (200, runner("r1", "draining", false)),
                    _ => (404, json!({"message": format!("runner in {path} is not registered")})),
                }
            };
            let text = value.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, seen)
}

/// Runs `sandbar` with the API at `url`, an API key that is not the admin token, `data_dir`, and `env`.
fn sandbar(url: &str, data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(SANDBAR);
    cmd.args(args)
        .env("DAYTONA_API_URL", url)
        .env("DAYTONA_API_KEY", "an-organization-key")
        .env("SANDBAR_DATA_DIR", data_dir)
        .env_remove("SANDBAR_ADMIN_TOKEN")
        .env_remove("SANDBAR_CA_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn runner_commands_use_the_admin_token_and_the_api_paths() {
    let (url, seen) = stand_in();
    let dir = tempfile::tempdir().unwrap();
    let with_token = [("SANDBAR_ADMIN_TOKEN", ADMIN)];

    let o = sandbar(&url, dir.path(), &["runner", "ls"], &with_token);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.lines().next().is_some_and(|l| l.starts_with("ID") && l.contains("SCHEDULE")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("r2") && l.contains("cordoned")), "{out}");

    let o = sandbar(&url, dir.path(), &["-o", "json", "runner", "ls"], &with_token);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v[0]["id"].as_str(), v[1]["schedule"].as_str()), (Some("r1"), Some("cordoned")), "{v}");

    let o = sandbar(&url, dir.path(), &["runner", "cordon", "r1"], &with_token);
    assert_eq!((o.status.code(), text(&o.stdout).trim()), (Some(0), "r1 cordoned"), "{}", text(&o.stderr));
    let o = sandbar(&url, dir.path(), &["-o", "json", "runner", "drain", "r1", "--move"], &with_token);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["schedule"].as_str(), v["moving"].as_bool()), (Some("draining"), Some(true)), "{v}");
    let o = sandbar(&url, dir.path(), &["runner", "drain", "r1"], &with_token);
    assert_eq!(text(&o.stdout).trim(), "r1 draining", "{}", text(&o.stderr));
    let o = sandbar(&url, dir.path(), &["runner", "uncordon", "r1"], &with_token);
    assert_eq!(text(&o.stdout).trim(), "r1 active", "{}", text(&o.stderr));

    // An unknown runner: the API's message, exit 125.
    let o = sandbar(&url, dir.path(), &["runner", "cordon", "nope"], &with_token);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("not registered"), "{}", text(&o.stderr));

    // `sandbar up`'s secrets.env, when the environment has no token.
    std::fs::write(dir.path().join("secrets.env"), format!("SANDBAR_PROXY_TOKEN=x\nSANDBAR_API_ADMIN_TOKEN={ADMIN}\n"))
        .unwrap();
    let o = sandbar(&url, dir.path(), &["runner", "cordon", "r1"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /admin/runners",
            "GET /admin/runners",
            "POST /admin/runners/r1/cordon",
            "POST /admin/runners/r1/drain?move=true",
            "POST /admin/runners/r1/drain?move=false",
            "POST /admin/runners/r1/uncordon",
            "POST /admin/runners/nope/cordon",
            "POST /admin/runners/r1/cordon",
        ]
    );
}

#[test]
fn without_the_admin_token_nothing_is_sent_or_the_api_refuses() {
    let (url, seen) = stand_in();
    let dir = tempfile::tempdir().unwrap();
    // No token anywhere: the CLI says where it looks, sends nothing (the API key is never used instead).
    let o = sandbar(&url, dir.path(), &["runner", "ls"], &[]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("SANDBAR_ADMIN_TOKEN"), "{}", text(&o.stderr));
    // A wrong token: the API's 403 and its message.
    let o = sandbar(&url, dir.path(), &["runner", "cordon", "r1"], &[("SANDBAR_ADMIN_TOKEN", "guess")]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("admin token") && text(&o.stderr).contains("403"), "{}", text(&o.stderr));
    assert!(seen.lock().unwrap().is_empty());
    // Bad usage: clap's exit 2.
    let o = sandbar(&url, dir.path(), &["runner", "drain"], &[]);
    assert_eq!(o.status.code(), Some(2));
}
