//! The database going away (issue 22): SQLite held locked by another process, PostgreSQL unreachable for a while.
//! Requests get a 503 that says why, promptly (never a hang); nothing half-written is left; everything resumes
//! when the database is back, with no restart of the API.

// Test helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use sandbar_testkit::api::{FakeRunner, Harness, TestDb, databases, empty, started_sandbox};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Longest a request may take while the database is away: the busy timeout or the pool's acquire timeout, plus
/// slack for a loaded machine. A liveness bound (an answer instead of a hang), not a benchmark.
const ANSWER_WITHIN: Duration = Duration::from_secs(40);

/// Asserts `call` answers 503 with the database named in the message, within [`ANSWER_WITHIN`].
async fn refused_503(what: &str, call: impl std::future::Future<Output = (StatusCode, Value)>) {
    let t = Instant::now();
    let (status, v) = tokio::time::timeout(ANSWER_WITHIN, call).await.unwrap_or_else(|_| panic!("{what} hangs"));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("database is unavailable"), "{what}: {v}");
    eprintln!("{what}: 503 after {:?}: {msg}", t.elapsed());
}

async fn count(h: &Harness) -> usize {
    let (s, v) = h.call(Method::GET, "/sandbox", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().map_or(0, Vec::len)
}

/// The runner's heartbeat: status and body.
async fn heartbeat(r: &FakeRunner) -> (StatusCode, Value) {
    let body = json!({"runnerId": "r1", "version": "test", "capacity": {"cpu": 64, "memory": 64, "disk": 1000},
        "allocated": {"cpu": 0, "memory": 0, "disk": 0}, "sandboxes": 0, "started": 0,
        "storageDriver": "overlay2", "diskEnforced": false, "cgroupVersion": 2});
    let credential = r.credential.lock().unwrap().clone().expect("registered");
    let resp = r
        .http
        .post(format!("{}/runners/{}/heartbeat", r.base, r.id))
        .bearer_auth(credential)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// After the outage: reads, writes and the runner's calls work again on the same API, and the rows are as they were.
async fn resumes(h: &Harness, r: &FakeRunner, kept: &str, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, _) = h.call(Method::GET, &format!("/sandbox/{kept}"), None).await;
        if s == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not come back: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(heartbeat(r).await.0, StatusCode::OK);
    assert_eq!(count(h).await, before, "a create refused during the outage left no row");
    assert_eq!(h.state(kept).await, "started");
    started_sandbox(h, r, empty()).await;
    assert_eq!(count(h).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_locked_by_another_process_answers_503_then_resumes() {
    let db = databases().await.into_iter().find(|d| d.label == "sqlite").expect("sqlite");
    let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
    let kept = started_sandbox(&h, &r, empty()).await;
    let before = count(&h).await;
    let path = db.url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();

    // Another process takes the write lock and holds it for 15 s (as a backup tool or a stray `sqlite3` would).
    let script = "import sqlite3, sys, time\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                  c.execute('BEGIN EXCLUSIVE')\n\
                  print('locked', flush=True)\n\
                  time.sleep(15)\n\
                  c.execute('ROLLBACK')\n";
    let mut holder = tokio::process::Command::new("python3")
        .args(["-c", script, &path])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = tokio::io::BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("locked"));

    refused_503("a create", h.call(Method::POST, "/sandbox", Some(empty()))).await;
    refused_503("a runner's heartbeat", heartbeat(&r)).await;
    // Reads go on in WAL mode, or are refused the same way: never a hang.
    let (s, v) = tokio::time::timeout(ANSWER_WITHIN, h.call(Method::GET, &format!("/sandbox/{kept}"), None))
        .await
        .expect("a read hangs");
    assert!(s == StatusCode::OK || s == StatusCode::SERVICE_UNAVAILABLE, "{s}: {v}");

    assert!(holder.wait().await.expect("wait").success());
    resumes(&h, &r, &kept, before).await;
    h.stop().await;
}

/// A TCP forwarder to the database that can be cut (every open connection dropped, new ones refused) and restored.
struct Cuttable {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let (down, conns) = (down.clone(), conns.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees its connection closed at once
                    }
                    conns.lock().unwrap().spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Self { addr, down, conns, accept }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.conns.lock().unwrap().abort_all();
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.accept.abort();
        self.conns.lock().unwrap().abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_for_30s_answers_503_then_resumes() {
    let Some(pg) = databases().await.into_iter().find(|d| d.label == "postgres") else {
        eprintln!("no PostgreSQL here: skipped (CI always has one)");
        return;
    };
    let url = reqwest::Url::parse(&pg.url).expect("url");
    let upstream: SocketAddr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432)).parse().unwrap();
    let gate = Cuttable::to(upstream).await;
    let mut through = url.clone();
    through.set_port(Some(gate.addr.port())).unwrap();
    let db: TestDb = pg.via(through.to_string());
    let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
    let kept = started_sandbox(&h, &r, empty()).await;
    let before = count(&h).await;

    let cut_at = Instant::now();
    gate.cut();
    refused_503("a read", h.call(Method::GET, &format!("/sandbox/{kept}"), None)).await;
    refused_503("a create", h.call(Method::POST, "/sandbox", Some(empty()))).await;
    refused_503("a runner's heartbeat", heartbeat(&r)).await;
    let rest = Duration::from_secs(30).saturating_sub(cut_at.elapsed());
    tokio::time::sleep(rest).await;
    refused_503("a read at the end", h.call(Method::GET, &format!("/sandbox/{kept}"), None)).await;

    gate.restore();
    let back = Instant::now();
    resumes(&h, &r, &kept, before).await;
    eprintln!("resumed {:?} after PostgreSQL came back", back.elapsed());
    h.stop().await;
}
