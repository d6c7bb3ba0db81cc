//! The real `sandbar-daemon` binary on 127.0.0.1:0 with a temporary HOME, work dir and state dir: reads the ready
//! line for the bound addresses, and kills the daemon (printing its log if the test failed) when dropped. Also
//! [`SignedClient`], the HTTP client that signs every request it makes for a daemon, as the proxy does.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The token [`TestDaemon::start`] gives the daemon.
pub const TOKEN: &str = "test-token-0123456789";

/// Path of the daemon binary: `SANDBAR_DAEMON_BIN`, else `sandbar-daemon` in the target directory of the running
/// test (cargo builds a package's binaries before its integration tests; `scripts/test` builds them all).
pub fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBAR_DAEMON_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("sandbar-daemon");
    assert!(bin.exists(), "{} missing: run `cargo build -p sandbar-daemon` or set SANDBAR_DAEMON_BIN", bin.display());
    bin
}

pub struct TestDaemon {
    /// `http://` + [`Self::addr`].
    pub base: String,
    /// The toolbox's address (`127.0.0.1:PORT`).
    pub addr: String,
    /// Base URL of the web terminal server.
    pub terminal: String,
    /// Address of the SSH server (`127.0.0.1:PORT`).
    pub ssh: String,
    /// The daemon's state directory (the SSH host key lives there).
    pub state: PathBuf,
    pub token: String,
    pub home: PathBuf,
    pub work: PathBuf,
    /// A client that signs every request with the daemon token.
    pub client: SignedClient,
    child: Child,
    log: Arc<Mutex<String>>,
    _tmp: tempfile::TempDir,
}

/// The name of the header that carries the request credential.
pub const AUTH_HEADER: &str = "x-sandbar-daemon-auth";

/// A reqwest client that signs each request for a daemon with its token (`sandbar_support::daemon_auth`): the
/// credential covers the method and the path and query of the URL as reqwest sends it, so add query parameters to
/// the URL, not with `RequestBuilder::query` afterwards.
#[derive(Clone)]
pub struct SignedClient {
    http: reqwest::Client,
    token: String,
}

impl std::fmt::Debug for SignedClient {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedClient").finish_non_exhaustive()
    }
}

impl SignedClient {
    pub fn new(http: reqwest::Client, token: &str) -> Self {
        Self { http, token: token.to_owned() }
    }

    /// A request of `method` to `url`, signed now.
    pub fn request(&self, method: reqwest::Method, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        let url = reqwest::Url::parse(url.as_ref()).unwrap_or_else(|e| panic!("bad URL {:?}: {e}", url.as_ref()));
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let auth = sandbar_support::daemon_auth::sign(&self.token, method.as_str(), &path);
        self.http.request(method, url).header(AUTH_HEADER, auth)
    }

    pub fn get(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, url)
    }

    pub fn post(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, url)
    }

    pub fn put(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PUT, url)
    }

    pub fn patch(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PATCH, url)
    }

    pub fn delete(&self, url: impl AsRef<str>) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::DELETE, url)
    }
}

/// `s` percent-encoded for a query value (everything but ASCII letters, digits and `/-_.`).
pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl TestDaemon {
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// Starts the daemon with `token` instead of [`TOKEN`].
    pub fn start_token(token: &str) -> Self {
        Self::spawn(token, &[], &[])
    }

    /// Starts the daemon with extra environment variables and entrypoint argv.
    pub fn start_with(env: &[(&str, &str)], entrypoint: &[&str]) -> Self {
        Self::spawn(TOKEN, env, entrypoint)
    }

    fn spawn(token: &str, env: &[(&str, &str)], entrypoint: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (home, work, state) = (tmp.path().join("home"), tmp.path().join("work"), tmp.path().join("state"));
        for d in [&home, &work, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut child = Command::new(daemon_bin())
            .env("SANDBAR_DAEMON_TOKEN", token)
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
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sandbar-daemon");
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
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("sandbar-daemon ready ") {
                    let field =
                        |n: &str| rest.split_whitespace().find_map(|kv| kv.strip_prefix(n)).unwrap_or("").to_owned();
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
        let Ok((addr, terminal, ssh)) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("daemon did not print its ready line; log:\n{}", log.lock().unwrap());
        };
        let client = SignedClient::new(reqwest::Client::new(), token);
        TestDaemon {
            base: format!("http://{addr}"),
            addr,
            terminal: format!("http://{terminal}"),
            ssh,
            state,
            token: token.into(),
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
        format!("ws://{}{}", self.addr, path)
    }

    /// A credential (`x-sandbar-daemon-auth` value) for one request of `method` to `path_and_query`.
    pub fn sign(&self, method: &str, path_and_query: &str) -> String {
        sandbar_support::daemon_auth::sign(&self.token, method, path_and_query)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POST JSON, return (status, parsed body or Null).
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        Self::answer(self.client.post(self.url(path)).json(&body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        Self::answer(self.client.get(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        Self::answer(self.client.delete(self.url(path))).await
    }

    /// POST `body` as is, with `content_type`: for requests the JSON helpers cannot make (malformed bodies).
    pub async fn post_raw(&self, path: &str, content_type: &str, body: &'static str) -> reqwest::Response {
        self.client.post(self.url(path)).header("content-type", content_type).body(body).send().await.unwrap()
    }

    async fn answer(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let r = req.send().await.unwrap();
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

    /// Sends SIGTERM to the daemon (our own child, by its positive pid) and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        sigterm_and_wait(&mut self.child)
            .unwrap_or_else(|| panic!("daemon did not exit after SIGTERM; log:\n{}", self.log()))
    }
}

/// Sends SIGTERM to `child` (our own child, by its positive pid) and waits up to 10 s for its exit status.
pub(crate) fn sigterm_and_wait(child: &mut Child) -> Option<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..200 {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
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
