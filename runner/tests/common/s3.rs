//! S3 on loopback for the archive tests: `moto_server` ([`Moto`]) and, in front of it, a relay that injects the
//! faults of a misbehaving store ([`FaultRelay`]): 500s (to a seeded fraction of requests or to the next few) and
//! stalls (the request is read and never answered), switchable while a test runs, with counts of what it did.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::workspace_root;

/// `moto_server` (S3-compatible, from PyPI's moto) on a free loopback port, killed on drop.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
}

impl Moto {
    /// `SANDBAR_MOTO_SERVER`, else the repository's `.venv/bin/moto_server` (scripts/setup installs it).
    pub fn start() -> Option<Self> {
        let bin = std::env::var_os("SANDBAR_MOTO_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".venv/bin/moto_server"));
        if !bin.exists() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let moto = Self { child, port };
        // Ready when it answers HTTP, not when something accepts a connection: a port picked by binding it and
        // letting it go can be another process's for a moment, and moto's server may still be starting behind a
        // listening socket.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers_http(port) {
            assert!(Instant::now() < deadline, "moto_server did not answer HTTP on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Starts moto, or says why the test does not run (a failure under CI, which must have it).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        let moto = Self::start();
        if moto.is_none() {
            assert!(std::env::var_os("CI").is_none(), "no moto_server: run scripts/setup");
            eprintln!("\n!!!!! SKIPPING {test}: no .venv/bin/moto_server (run scripts/setup)\n");
        }
        moto
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

/// Whether an HTTP server answers `GET /` on `port` of loopback (any status).
fn answers_http(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    if c.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 8];
    c.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/")
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `s3://` URL of `bucket/prefix` behind `port` (moto or a relay), with moto's test credentials and `extra`
/// options (`&key=value...`).
pub fn s3_url(port: u16, bucket_prefix: &str, extra: &str) -> String {
    format!(
        "s3://{bucket_prefix}?endpoint=http://127.0.0.1:{port}&allow_http=true&region=us-east-1\
         &access_key_id=testing&secret_access_key=testing{extra}"
    )
}

/// What the relay does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards it to moto and its answer back.
    Pass,
    /// Answers 500 with S3's `InternalError` body.
    Fail,
    /// Reads it and never answers (until the relay is dropped).
    Stall,
}

/// The relay's behaviour, set with [`FaultRelay::set`].
#[derive(Debug, Clone)]
pub struct Faults {
    /// The next requests, in their order of arrival, get these.
    pub next: Vec<Mode>,
    /// After `next`, when `then` is `Pass`: each attempt of a request fails with a 500 when a hash of (`seed`, the
    /// request, the attempt's number) falls under this fraction, until the request has had `max_faults` faults.
    /// A request is its method, object name, part number and range start (not the sandbox or the upload's ID),
    /// so the same seed fails the same attempts whatever the order the requests come in: the test cannot flake.
    pub fail_fraction: f64,
    pub max_faults: u32,
    pub seed: u64,
    /// What every request gets once `next` is used up.
    pub then: Mode,
}

impl Faults {
    pub fn pass() -> Self {
        Self { next: Vec::new(), fail_fraction: 0.0, max_faults: 0, seed: 0, then: Mode::Pass }
    }

    /// 500 to every request: the store is down.
    pub fn down() -> Self {
        Self { then: Mode::Fail, ..Self::pass() }
    }

    /// `fraction` of the attempts fail, at most `max_faults` per request.
    pub fn flaky(fraction: f64, max_faults: u32, seed: u64) -> Self {
        Self { fail_fraction: fraction, max_faults, seed, ..Self::pass() }
    }

    pub fn first(mut self, modes: &[Mode]) -> Self {
        self.next = modes.to_vec();
        self
    }
}

/// What the relay did since it started or since [`FaultRelay::take_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub stalled: u64,
    /// Requests that repeat one the relay saw before (the client's retries).
    pub repeats: u64,
}

impl Counts {
    pub fn requests(&self) -> u64 {
        self.passed + self.failed + self.stalled
    }
}

struct Plan {
    faults: Faults,
    counts: Counts,
    /// Attempts and faults so far of each request.
    attempts: HashMap<String, (u32, u32)>,
    /// Every request seen, in order (`key -> mode`), for failure messages.
    log: Vec<String>,
}

struct Shared {
    plan: Mutex<Plan>,
    upstream: u16,
    client: reqwest::Client,
    closed: watch::Receiver<bool>,
}

/// A fault-injecting HTTP relay on loopback in front of moto. Stopped on drop (stalled requests end then).
pub struct FaultRelay {
    pub port: u16,
    shared: Arc<Shared>,
    close: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    pub async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (close, closed) = watch::channel(false);
        let shared = Arc::new(Shared {
            plan: Mutex::new(Plan {
                faults: Faults::pass(),
                counts: Counts::default(),
                attempts: HashMap::new(),
                log: Vec::new(),
            }),
            upstream,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            closed,
        });
        let app = axum::Router::new().fallback(relay).with_state(shared.clone());
        let mut stop = close.subscribe();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|c| *c).await;
                })
                .await;
        });
        Self { port, shared, close, task }
    }

    /// From the next request on, behaves as `faults` says.
    pub fn set(&self, faults: Faults) {
        self.shared.plan.lock().unwrap().faults = faults;
    }

    pub fn counts(&self) -> Counts {
        self.shared.plan.lock().unwrap().counts
    }

    /// The counts so far, starting new ones (and forgetting which requests were seen).
    pub fn take_counts(&self) -> Counts {
        let mut plan = self.shared.plan.lock().unwrap();
        plan.attempts.clear();
        plan.log.clear();
        std::mem::take(&mut plan.counts)
    }

    /// The requests since the last [`Self::take_counts`], one line each.
    pub fn log(&self) -> String {
        self.shared.plan.lock().unwrap().log.join("\n")
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        let _ = self.close.send(true);
        self.task.abort();
    }
}

/// A request, as far as faults go: the same one when a client retries it.
pub fn request_key(method: &Method, uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    let object = uri.path().rsplit('/').next().unwrap_or_default();
    let query = uri.query().unwrap_or_default();
    let mut parts: Vec<&str> = query
        .split('&')
        .filter_map(|pair| match pair {
            p if p.starts_with("partNumber=") || p.starts_with("uploads") => Some(p),
            p if p.starts_with("uploadId=") => Some("upload"),
            _ => None,
        })
        .collect();
    parts.sort_unstable();
    if let Some(range) = headers.get("range").and_then(|r| r.to_str().ok()) {
        // The start only: the end of the last range is the archive's size, which changes from run to run.
        parts.push(range.split('-').next().unwrap_or(range));
    }
    let mut key = format!("{method} {object}");
    for p in parts {
        key.push(' ');
        key.push_str(p);
    }
    key
}

/// A number in [0, 1) from `seed`, `key` and `attempt` (FNV-1a, then splitmix64).
pub fn unit(seed: u64, key: &str, attempt: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Plan {
    fn decide(&mut self, key: &str) -> Mode {
        let (attempts, faults) = self.attempts.entry(key.to_owned()).or_default();
        let attempt = *attempts;
        *attempts += 1;
        let f = &mut self.faults;
        let mode = if !f.next.is_empty() {
            f.next.remove(0)
        } else if f.then != Mode::Pass {
            f.then
        } else if *faults < f.max_faults && unit(f.seed, key, attempt) < f.fail_fraction {
            Mode::Fail
        } else {
            Mode::Pass
        };
        if mode != Mode::Pass {
            *faults += 1;
        }
        if attempt > 0 {
            self.counts.repeats += 1;
        }
        match mode {
            Mode::Pass => self.counts.passed += 1,
            Mode::Fail => self.counts.failed += 1,
            Mode::Stall => self.counts.stalled += 1,
        }
        self.log.push(format!("{key} #{attempt}: {mode:?}"));
        mode
    }
}

const HOP_BY_HOP: [&str; 4] = ["connection", "transfer-encoding", "keep-alive", "host"];

async fn relay(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let key = request_key(&parts.method, &parts.uri, &parts.headers);
    let mode = shared.plan.lock().unwrap().decide(&key);
    match mode {
        Mode::Fail => {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
                       <Message>injected by the test's fault relay</Message></Error>";
            (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "application/xml")], xml).into_response()
        }
        Mode::Stall => {
            // Bounded so that nothing here can outlive a test by much, whatever the client does.
            let mut closed = shared.closed.clone();
            let _ = tokio::time::timeout(Duration::from_secs(600), closed.wait_for(|c| *c)).await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Mode::Pass => {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut upstream =
                shared.client.request(parts.method.clone(), format!("http://127.0.0.1:{}{path}", shared.upstream));
            for (name, value) in &parts.headers {
                if !HOP_BY_HOP.contains(&name.as_str()) && name != "content-length" {
                    upstream = upstream.header(name, value);
                }
            }
            let answer = match upstream.body(body).send().await {
                Ok(a) => a,
                Err(e) => return (StatusCode::BAD_GATEWAY, format!("relay: moto: {e}")).into_response(),
            };
            let mut out = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                // A HEAD's length is the object's; any other body's is the relayed one's.
                let length = name == "content-length";
                if !HOP_BY_HOP.contains(&name.as_str()) && (!length || parts.method == Method::HEAD) {
                    out = out.header(name, value);
                }
            }
            match answer.bytes().await {
                Ok(bytes) => out.body(Body::from(bytes)).unwrap(),
                Err(e) => (StatusCode::BAD_GATEWAY, format!("relay: moto's body: {e}")).into_response(),
            }
        }
    }
}
