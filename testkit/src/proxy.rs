//! The proxy under test: in-process on 127.0.0.1:0 ([`Proxy`]), as the `sandbar-proxy` process
//! ([`ProxyProcess`]), and its SSH gateway in-process ([`SshGateway`], driven by the OpenSSH client). Also what the
//! tests reach through it: apps "inside the sandbox" ([`start_app`], [`serve`], [`greeter`]), and small client
//! helpers ([`json_of`], [`raw`], [`output`]).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::get;
use sandbar_proxy::ssh_gateway::{self, SshGatewayConfig, SshTargetResolver};
use serde_json::Value;

use crate::api_standin::PROXY_TOKEN;
use crate::daemon::{TestDaemon, sigterm_and_wait};

pub struct Proxy {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: tempfile::TempDir,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), sandbar_proxy::ProxyError>>,
}

impl Proxy {
    pub async fn start(api_url: &str) -> Self {
        Self::start_with(api_url, |_| {}).await
    }

    pub async fn start_with(api_url: &str, tweak: impl FnOnce(&mut sandbar_proxy::Config)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = sandbar_proxy::Config::local(api_url, PROXY_TOKEN, data_dir.path().to_owned());
        tweak(&mut config);
        let listeners = sandbar_proxy::Listeners::bind(&config).unwrap();
        Self::start_bound(config, listeners, data_dir).await
    }

    /// Starts the proxy on listeners bound beforehand (`config.data_dir` is `data_dir`).
    pub async fn start_bound(
        config: sandbar_proxy::Config,
        listeners: sandbar_proxy::Listeners,
        data_dir: tempfile::TempDir,
    ) -> Self {
        let (http, https, metrics) = listeners.addrs().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(sandbar_proxy::run(config, listeners, rx));
        // Ready when the certificate exists and the HTTP port answers.
        for _ in 0..200 {
            if data_dir.path().join("tls/localhost.crt").exists() && tokio::net::TcpStream::connect(http).await.is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Proxy { http, https, metrics, data_dir, shutdown: tx, task }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.data_dir.path().join("tls/localhost.crt")
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// The Prometheus text of the admin listener.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics)).await.unwrap().text().await.unwrap()
    }

    /// One counter or gauge of the metrics text.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    }

    /// A reqwest client that trusts the generated certificate and resolves `localhost` names to the proxy.
    pub fn https_client(&self, hosts: &[&str]) -> reqwest::Client {
        let pem = std::fs::read(self.cert_path()).unwrap();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        for h in hosts {
            b = b.resolve(h, self.https);
        }
        b.build().unwrap()
    }
}

/// Hello/echo server "inside the sandbox" on 127.0.0.1: `GET /hello` and a WebSocket echo at `/ws`.
pub async fn start_app() -> u16 {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::response::Response;
    async fn hello(uri: axum::http::Uri, h: HeaderMap) -> String {
        let seen: Vec<&str> =
            ["x-sandbar-daemon-auth", "x-sandbar-daemon-token", "x-daytona-preview-token", "authorization"]
                .into_iter()
                .filter(|n| h.contains_key(*n))
                .collect();
        let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
        format!("hello from the sandbox {uri} leaked={seen:?} cookie={cookie}")
    }
    async fn ws(up: WebSocketUpgrade) -> Response {
        up.on_upgrade(|mut s| async move {
            while let Some(Ok(m)) = s.recv().await {
                let reply = match m {
                    Message::Text(t) => Message::Text(format!("echo:{}", t.as_str()).into()),
                    Message::Binary(b) => Message::Binary(b),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if s.send(reply).await.is_err() {
                    break;
                }
            }
        })
    }
    serve(axum::Router::new().route("/ws", get(ws)).fallback(get(hello))).await
}

/// Serves `app` on 127.0.0.1:0 in the background; returns the port.
pub async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A loopback TCP server that greets every connection with `greeting`; returns its port.
pub fn greeter(greeting: &'static str) -> u16 {
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

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `(status, body as JSON or as a string, headers)`.
pub async fn json_of(r: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers)
}

/// Sends raw bytes, returns whatever comes back until close (or 5 s).
pub async fn raw(addr: SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `cmd` (stdin closed) off the async runtime and collects its output.
pub async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output().unwrap()).await.unwrap()
}

/// The `sandbar-proxy` binary as a child process with every listener on 127.0.0.1:0, killed on drop.
pub struct ProxyProcess {
    child: Child,
    /// The ready line it printed.
    pub ready: String,
}

impl ProxyProcess {
    /// Starts `bin` (the test's `env!("CARGO_BIN_EXE_sandbar-proxy")`) against the API at `api_url` with its data
    /// in `data_dir` and the extra `args`, and waits for its ready line.
    pub fn start(bin: &str, api_url: &str, data_dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .env("SANDBAR_PROXY_TOKEN", PROXY_TOKEN)
            .env("SANDBAR_API_URL", api_url)
            .args(["--bind", "127.0.0.1", "--http-port", "0", "--https-port", "0", "--ssh-port", "0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        Self { child, ready }
    }

    /// The address the ready line gives for `name` (`http`, `https`, `metrics`, `ssh`).
    pub fn addr(&self, name: &str) -> SocketAddr {
        let prefix = format!("{name}=");
        let value = self.ready.split_whitespace().find_map(|kv| kv.strip_prefix(prefix.as_str()));
        value.unwrap_or_else(|| panic!("no {name}= in the ready line {:?}", self.ready)).parse().unwrap()
    }

    /// `(VmRSS, VmHWM)` in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends SIGTERM (to our own child, by its positive pid) and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        sigterm_and_wait(&mut self.child).unwrap_or_else(|| panic!("sandbar-proxy did not exit after SIGTERM"))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's SSH host key (OpenSSH public key line), to pin in an `SshTarget`.
pub fn daemon_host_key(daemon: &TestDaemon) -> String {
    std::fs::read_to_string(daemon.state.join("ssh_host_ed25519_key.pub")).unwrap().trim().to_owned()
}

/// The SSH gateway in-process on 127.0.0.1:0 with `resolver`, a host key of its own and a `known_hosts` that
/// trusts it; stopped on drop.
pub struct SshGateway {
    pub port: String,
    pub known_hosts: PathBuf,
    /// A scratch directory of the test (the gateway's key and `known_hosts` live there).
    pub dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SshGateway {
    pub async fn start(resolver: Arc<dyn SshTargetResolver>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = ssh_gateway::load_or_create_host_key(&dir.path().join("gateway_host_key")).unwrap();
        let public = key.public_key().to_openssh().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {public}\n")).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ssh_gateway::run(listener, key, SshGatewayConfig::default(), resolver, async move {
            let _ = stopped.await;
        }));
        Self { port, known_hosts, dir, _stop: stop }
    }

    /// OpenSSH client options: no config file, this gateway's key only, no prompts, no identity.
    pub fn opts(&self) -> Vec<String> {
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

    /// `ssh` to the gateway as `token`, with extra `args`, running `command` (none: a shell).
    pub fn ssh(&self, token: &str, args: &[&str], command: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts()).args(["-p", &self.port]).args(args).arg(format!("{token}@127.0.0.1"));
        if !command.is_empty() {
            c.arg(command);
        }
        c
    }
}
