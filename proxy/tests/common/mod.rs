//! Test harness: the real `sandbar-daemon` binary on loopback, an API stand-in (axum) that follows
//! proto/src/api.rs exactly, and the proxy itself in-process on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod stack;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{ActivityReport, AuthorizeRequest, AuthorizeResponse, Route, RouteChanges};
use sandbar_proto::runner::SandboxState;

pub const PROXY_TOKEN: &str = "proxy-service-token";

/// Path of the daemon binary: `SANDBAR_DAEMON_BIN`, else beside this test's target directory.
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

pub struct Daemon {
    pub addr: String,
    pub terminal: String,
    pub token: String,
    pub work: PathBuf,
    child: Child,
    log: Arc<Mutex<String>>,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    pub fn start(token: &str) -> Self {
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sandbar-daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l2.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("sandbar-daemon ready ") {
                    let field =
                        |n: &str| rest.split_whitespace().find_map(|kv| kv.strip_prefix(n)).unwrap_or("").to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((field("toolbox="), field("terminal=")));
                    }
                }
            }
        });
        let (addr, terminal) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("daemon not ready; log:\n{}", log.lock().unwrap());
            }
        };
        Daemon { addr, terminal, token: token.into(), work, child, log, _tmp: tmp }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sandbar-daemon log ----\n{}", self.log.lock().unwrap());
        }
    }
}

/// What the API stand-in knows.
#[derive(Default)]
pub struct ApiState {
    pub routes: Mutex<HashMap<String, Route>>,
    /// api key -> organization
    pub keys: Mutex<HashMap<String, String>>,
    /// preview token -> sandbox id
    pub preview_tokens: Mutex<HashMap<String, String>>,
    /// (seq, sandbox id) of every change, in order.
    pub changes: Mutex<Vec<(i64, String)>>,
    pub changed: tokio::sync::Notify,
    pub activity: Mutex<Vec<Vec<String>>>,
    pub route_lookups: AtomicUsize,
    pub authorize_calls: AtomicUsize,
}

pub type Api = Arc<ApiState>;

impl ApiState {
    pub fn add_route(&self, route: Route) {
        self.routes.lock().unwrap().insert(route.sandbox_id.clone(), route);
    }

    /// Changes a route the way the real API does: new version, and a change the long-poll announces.
    pub fn update_route(&self, id: &str, f: impl FnOnce(&mut Route)) {
        {
            let mut routes = self.routes.lock().unwrap();
            let r = routes.get_mut(id).unwrap();
            f(r);
            r.version += 1;
        }
        let mut changes = self.changes.lock().unwrap();
        let seq = changes.last().map_or(0, |c| c.0) + 1;
        changes.push((seq, id.to_owned()));
        drop(changes);
        self.changed.notify_waiters();
    }
}

pub fn route(id: &str, org: &str, daemon: &Daemon) -> Route {
    Route {
        sandbox_id: id.into(),
        organization_id: org.into(),
        state: SandboxState::Started,
        daemon_addr: Some(daemon.addr.clone()),
        ssh_addr: None,
        sandbox_ip: Some("127.0.0.1".into()),
        daemon_token: daemon.token.clone(),
        public: false,
        auto_stop_interval: 15,
        wake_on_request: false,
        version: 1,
    }
}

fn service_ok(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {PROXY_TOKEN}"))
}

fn err(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({"statusCode": status.as_u16(), "message": msg}))).into_response()
}

async fn get_route(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    api.route_lookups.fetch_add(1, Ordering::SeqCst);
    // A little latency, as a real database lookup has, so bursts overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    match api.routes.lock().unwrap().get(&id) {
        Some(r) => Json(r.clone()).into_response(),
        None => err(StatusCode::NOT_FOUND, "unknown sandbox"),
    }
}

#[derive(serde::Deserialize)]
struct ChangesQuery {
    since: i64,
    wait: u64,
}

async fn changes(State(api): State<Api>, h: HeaderMap, Query(q): Query<ChangesQuery>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(30));
    loop {
        let notified = api.changed.notified();
        {
            let changes = api.changes.lock().unwrap();
            let seq = changes.last().map_or(0, |c| c.0);
            let ids: Vec<String> = changes.iter().filter(|c| c.0 > q.since).map(|c| c.1.clone()).collect();
            if !ids.is_empty() || tokio::time::Instant::now() >= deadline {
                return Json(RouteChanges { seq, sandbox_ids: ids }).into_response();
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn authorize(State(api): State<Api>, h: HeaderMap, Json(req): Json<AuthorizeRequest>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    api.authorize_calls.fetch_add(1, Ordering::SeqCst);
    let Some(route) = api.routes.lock().unwrap().get(&req.sandbox_id).cloned() else {
        return err(StatusCode::NOT_FOUND, "sandbox not found");
    };
    if let Some(key) = &req.api_key {
        return match api.keys.lock().unwrap().get(key) {
            None => err(StatusCode::UNAUTHORIZED, "unknown API key"),
            Some(org) if *org != route.organization_id => err(StatusCode::NOT_FOUND, "sandbox not found"),
            Some(org) => Json(AuthorizeResponse { organization_id: org.clone(), ttl_secs: 30 }).into_response(),
        };
    }
    if let Some(token) = &req.preview_token {
        return match api.preview_tokens.lock().unwrap().get(token) {
            Some(id) if *id == req.sandbox_id => {
                Json(AuthorizeResponse { organization_id: route.organization_id.clone(), ttl_secs: 30 }).into_response()
            }
            _ => err(StatusCode::UNAUTHORIZED, "invalid preview token"),
        };
    }
    err(StatusCode::UNAUTHORIZED, "no credential")
}

async fn activity(State(api): State<Api>, h: HeaderMap, Json(r): Json<ActivityReport>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    api.activity.lock().unwrap().push(r.sandbox_ids);
    StatusCode::NO_CONTENT.into_response()
}

/// Starts the API stand-in; returns its state and base URL (with `/api`).
pub async fn start_api() -> (Api, String) {
    let api: Api = Arc::new(ApiState::default());
    let app = axum::Router::new()
        .route("/api/internal/routes/changes", get(changes))
        .route("/api/internal/routes/{id}", get(get_route))
        .route("/api/internal/authorize", post(authorize))
        .route("/api/internal/activity", post(activity))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (api, format!("http://{addr}/api"))
}

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
    async fn hello(uri: axum::http::Uri, h: HeaderMap) -> String {
        let seen: Vec<&str> = ["x-sandbar-daemon-token", "x-daytona-preview-token", "authorization"]
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
    let app = axum::Router::new().route("/ws", get(ws)).fallback(get(hello));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}
