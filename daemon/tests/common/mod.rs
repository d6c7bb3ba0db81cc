//! Test harness: starts the real `sandbar-daemon` binary on 127.0.0.1:0 with a temporary HOME, work dir and state
//! dir, reads the ready line for the bound address, and kills the daemon (printing its log) when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TOKEN: &str = "test-token-0123456789";

pub struct TestDaemon {
    pub base: String,
    /// Base URL of the web terminal server.
    pub terminal: String,
    /// Address of the SSH server (`127.0.0.1:PORT`).
    pub ssh: String,
    /// The daemon's state directory (the SSH host key lives there).
    pub state: PathBuf,
    pub token: String,
    pub home: PathBuf,
    pub work: PathBuf,
    pub client: reqwest::Client,
    child: Child,
    log: Arc<Mutex<String>>,
    _tmp: tempfile::TempDir,
}

impl TestDaemon {
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// Starts the daemon with extra environment variables and entrypoint argv.
    pub fn start_with(env: &[(&str, &str)], entrypoint: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let work = tmp.path().join("work");
        let state = tmp.path().join("state");
        for d in [&home, &work, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbar-daemon"));
        cmd.env("SANDBAR_DAEMON_TOKEN", TOKEN)
            .env("SANDBAR_SANDBOX_ID", "sbx-test")
            .env("SANDBAR_TOOLBOX_ADDR", "127.0.0.1:0")
            .env("SANDBAR_TERMINAL_ADDR", "127.0.0.1:0")
            .env("SANDBAR_SSH_ADDR", "127.0.0.1:0")
            .env("SANDBAR_WORK_DIR", &work)
            .env("SANDBAR_STATE_DIR", &state)
            .env("HOME", &home)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .args(entrypoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start sandbar-daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log2.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log3 = log.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(tx);
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.strip_prefix("sandbar-daemon ready ") {
                    let field = |name: &str| {
                        rest.split_whitespace()
                            .find_map(|kv| kv.strip_prefix(name).map(str::to_owned))
                            .unwrap_or_default()
                    };
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((field("toolbox="), field("terminal="), field("ssh=")));
                    }
                } else {
                    let mut l = log3.lock().unwrap();
                    l.push_str("[stdout] ");
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let (addr, terminal, ssh) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not print its ready line; log:\n{}", log.lock().unwrap());
            }
        };
        let client = reqwest::Client::builder()
            .default_headers({
                let mut h = reqwest::header::HeaderMap::new();
                h.insert("x-sandbar-daemon-token", TOKEN.parse().unwrap());
                h
            })
            .build()
            .unwrap();
        TestDaemon {
            base: format!("http://{addr}"),
            terminal: format!("http://{terminal}"),
            ssh,
            state,
            token: TOKEN.into(),
            home,
            work,
            client,
            child,
            log,
            _tmp: tmp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.base.trim_start_matches("http://"), path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POST JSON, return (status, parsed body or Null).
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.delete(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// `POST /process/execute` and return (exitCode, result); panics on a non-200.
    pub async fn exec(&self, command: &str) -> (i64, String) {
        let (s, b) = self.post("/process/execute", serde_json::json!({ "command": command })).await;
        assert_eq!(s, 200, "exec {command:?}: {b}");
        (b["exitCode"].as_i64().unwrap(), b["result"].as_str().unwrap().to_owned())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..200 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not exit after SIGTERM; log:\n{}", self.log());
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sandbar-daemon log ----\n{}", self.log());
        }
    }
}
