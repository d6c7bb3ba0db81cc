//! LSP against the real binary: Daytona's HTTP endpoints and the IDE WebSocket with Debian's real pylsp, and the
//! failure modes (missing program, crash, silence, bad frames) with a scripted stand-in server.
#![cfg(test)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sandbar_testkit::daemon::{TestDaemon, percent};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SOURCE: &str = "import os\nos.pa\n\n\ndef greet(name):\n    return \"hi \" + name\n\n\nclass Greeter:\n    def hello(self):\n        return greet(\"x\")\n";

/// A language server stand-in for failure modes: answers `initialize`, then on `textDocument/completion` does
/// what its first argument says (`hang`: never answers; `crash`: exits 3).
const FAKE_SERVER: &str = r#"#!/usr/bin/env python3
import json, os, sys
mode = sys.argv[1] if len(sys.argv) > 1 else "hang"
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(msg):
    body = json.dumps(msg).encode()
    out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    out.flush()
while True:
    length = None
    while True:
        line = inp.readline()
        if not line:
            sys.exit(0)
        if line in (b"\r\n", b"\n"):
            break
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
    msg = json.loads(inp.read(length))
    m = msg.get("method")
    if m == "initialize":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"capabilities": {"completionProvider": {}}, "serverInfo": {"name": "fake"}}})
    elif m == "textDocument/completion":
        if mode == "crash":
            os._exit(3)
    elif m == "shutdown":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
    elif m == "exit":
        sys.exit(0)
"#;

fn project(d: &TestDaemon) -> PathBuf {
    let p = d.work.join("proj");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("main.py"), SOURCE).unwrap();
    p
}

fn fake_server(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("fake-lsp");
    std::fs::write(&p, FAKE_SERVER).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Pids of the daemon's children whose command line contains `needle`.
fn children(daemon_pid: u32, needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") || fields.get(1).and_then(|p| p.parse::<u32>().ok()) != Some(daemon_pid) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

async fn wait_no_children(daemon_pid: u32, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children(daemon_pid, needle).is_empty() {
        assert!(Instant::now() < deadline, "{needle} still running: {:?}", children(daemon_pid, needle));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until exactly `n` servers run under the daemon: a WebSocket's server is started once the upgrade is done,
/// so it may not exist yet when the client has its 101.
async fn wait_children(daemon_pid: u32, needle: &str, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = children(daemon_pid, needle);
        if found.len() == n {
            return found;
        }
        assert!(Instant::now() < deadline, "expected {n} {needle}, found {found:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn body(root: &Path) -> Value {
    json!({"languageId": "python", "pathToProject": root})
}

fn doc(root: &Path, uri: &str) -> Value {
    json!({"languageId": "python", "pathToProject": root, "uri": uri})
}

fn labels(v: &Value) -> Vec<String> {
    v["items"].as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn completions_and_symbols_from_a_real_pylsp() {
    let d = TestDaemon::start();
    let root = project(&d);
    let file = root.join("main.py");
    let uri = format!("file://{}", file.display());

    // Nothing works before start, with the code the SDK maps to DaytonaLspServerNotInitializedError.
    let mut req = doc(&root, &uri);
    req["position"] = json!({"line": 1, "character": 5});
    let (s, b) = d.post("/lsp/completions", req.clone()).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("LSP_SERVER_NOT_INITIALIZED")), "{b}");

    let (s, b) = d.post("/lsp/start", body(&root)).await;
    assert_eq!(s, 200, "{b}");
    let pids = children(d.pid(), "pylsp");
    assert_eq!(pids.len(), 1, "one pylsp: {pids:?}");
    // A second start reuses it.
    let (s, _) = d.post("/lsp/start", body(&root)).await;
    assert_eq!(s, 200);
    assert_eq!(children(d.pid(), "pylsp"), pids);

    let (s, b) = d.post("/lsp/did-open", doc(&root, &uri)).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = d.post("/lsp/completions", req.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert!(labels(&b).contains(&"path".to_owned()), "{b}");
    assert!(b["isIncomplete"].is_boolean());
    for item in b["items"].as_array().unwrap() {
        assert!(item["documentation"].is_null() || item["documentation"].is_object(), "{item}");
    }

    // The file changes on disk: the next request sees the new content without another did-open.
    std::fs::write(&file, SOURCE.replace("os.pa\n", "os.ge\n")).unwrap();
    let (s, b) = d.post("/lsp/completions", req.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert!(labels(&b).iter().any(|l| l.starts_with("getenv")), "{b}");
    std::fs::write(&file, SOURCE).unwrap();

    let q = format!("/lsp/document-symbols?languageId=python&pathToProject={}&uri={}", root.display(), percent(&uri));
    let (s, b) = d.get(&q).await;
    assert_eq!(s, 200, "{b}");
    let names: Vec<&str> = b.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    for n in ["greet", "Greeter", "hello"] {
        assert!(names.contains(&n), "{n} missing from {b}");
    }
    let greet = b.as_array().unwrap().iter().find(|s| s["name"] == "greet").unwrap();
    assert_eq!(greet["kind"], 12, "function: {greet}");
    assert!(greet["location"]["uri"].as_str().unwrap().ends_with("/proj/main.py"));
    assert_eq!(greet["location"]["range"]["start"]["line"], 4);

    // A relative path (the SDK sends "file://" + path as given) is taken from the project.
    let (s, b) = d.post("/lsp/did-open", doc(&root, "file://main.py")).await;
    assert_eq!(s, 200, "{b}");

    let q = format!("/lsp/workspacesymbols?query=gree&languageId=python&pathToProject={}", root.display());
    let (s, b) = d.get(&q).await;
    assert_eq!(s, 200, "{b}");
    let names: Vec<&str> = b.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"greet") && names.contains(&"Greeter") && !names.contains(&"hello"), "{b}");

    let (s, _) = d.post("/lsp/did-close", doc(&root, &uri)).await;
    assert_eq!(s, 200);
    // Missing file, bad uri.
    let (s, b) = d.post("/lsp/did-open", doc(&root, &format!("file://{}/nope.py", root.display()))).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("FILE_NOT_FOUND")), "{b}");
    let (s, _) = d.post("/lsp/did-open", doc(&root, "http://x/y.py")).await;
    assert_eq!(s, 400);

    // Two starts, two stops: the server lives until the last user leaves.
    let (s, _) = d.post("/lsp/stop", body(&root)).await;
    assert_eq!(s, 200);
    assert_eq!(children(d.pid(), "pylsp"), pids);
    let (s, _) = d.post("/lsp/stop", body(&root)).await;
    assert_eq!(s, 200);
    wait_no_children(d.pid(), "pylsp").await;
    let (s, b) = d.post("/lsp/completions", req).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("LSP_SERVER_NOT_INITIALIZED")), "{b}");
}

#[tokio::test]
async fn a_killed_server_gives_an_error_or_a_restart_not_a_hang() {
    let d = TestDaemon::start();
    let root = project(&d);
    let uri = format!("file://{}", root.join("main.py").display());
    let mut req = doc(&root, &uri);
    req["position"] = json!({"line": 1, "character": 5});
    assert_eq!(d.post("/lsp/start", body(&root)).await.0, 200);
    assert_eq!(d.post("/lsp/did-open", doc(&root, &uri)).await.0, 200);
    assert_eq!(d.post("/lsp/completions", req.clone()).await.0, 200);
    let old = children(d.pid(), "pylsp");
    assert_eq!(old.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old[0] as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The next request restarts the server (documents re-opened from disk) and answers.
    let started = Instant::now();
    let (s, b) = tokio::time::timeout(Duration::from_secs(30), d.post("/lsp/completions", req.clone())).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(labels(&b).contains(&"path".to_owned()), "{b}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let new = children(d.pid(), "pylsp");
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
}

#[tokio::test]
async fn a_server_that_crashes_or_never_answers_gets_an_error_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_server(tmp.path());
    let servers = format!("python={} crash;go={} hang", fake.display(), fake.display());
    let d = TestDaemon::start_with(&[("SANDBAR_LSP_SERVERS", &servers), ("SANDBAR_LSP_TIMEOUT", "2")], &[]);
    let root = project(&d);
    let uri = format!("file://{}", root.join("main.py").display());

    // Crash mid-request: an error naming the server and its exit, then a restart on the next request.
    assert_eq!(d.post("/lsp/start", body(&root)).await.0, 200);
    let mut req = doc(&root, &uri);
    req["position"] = json!({"line": 1, "character": 5});
    let (s, b) = d.post("/lsp/completions", req.clone()).await;
    assert_eq!(s, 502, "{b}");
    let msg = b["message"].as_str().unwrap();
    assert!(msg.contains("exited") && msg.contains("exit code 3"), "{msg}");
    let (s, _) = d.post("/lsp/completions", req.clone()).await;
    assert_eq!(s, 502, "restarted, crashed again");

    // Silence: 504 after the configured 2 s, and the daemon stays healthy.
    let go = json!({"languageId": "go", "pathToProject": root});
    assert_eq!(d.post("/lsp/start", go.clone()).await.0, 200);
    let mut req = go.clone();
    req["uri"] = json!(uri);
    req["position"] = json!({"line": 0, "character": 0});
    let started = Instant::now();
    let (s, b) = d.post("/lsp/completions", req).await;
    assert_eq!(s, 504, "{b}");
    assert!(b["message"].as_str().unwrap().contains("did not answer textDocument/completion"), "{b}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(d.exec("echo ok").await, (0, "ok\n".into()));

    // The daemon's shutdown takes its language servers with it.
    let pid = d.pid();
    assert!(!children(pid, "fake-lsp").is_empty());
    let mut d = d;
    assert!(d.terminate().success());
    let left: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default())
                .contains(&fake.display().to_string())
        })
        .collect();
    assert!(left.is_empty(), "language servers outlived the daemon: {left:?}");
}

#[tokio::test]
async fn a_missing_server_or_language_is_a_clear_error() {
    let d = TestDaemon::start_with(&[("SANDBAR_LSP_SERVERS", "python=sandbar-no-such-lsp --stdio")], &[]);
    let root = project(&d);
    let (s, b) = d.post("/lsp/start", body(&root)).await;
    assert_eq!(s, 400, "{b}");
    let msg = b["message"].as_str().unwrap();
    assert!(msg.contains("`sandbar-no-such-lsp`") && msg.contains("not installed"), "{msg}");

    let (s, b) = d.post("/lsp/start", json!({"languageId": "cobol", "pathToProject": root})).await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("cobol"), "{b}");
    let (s, b) = d.post("/lsp/start", json!({"languageId": "python", "pathToProject": "/nonexistent/dir"})).await;
    assert_eq!(s, 404, "{b}");
    let (s, _) = d.post("/lsp/start", json!({"languageId": "python"})).await;
    assert_eq!(s, 400);

    // The WebSocket answers the same error before upgrading.
    let mut r =
        d.ws_url(&format!("/lsp/ws?languageId=python&pathToProject={}", root.display())).into_client_request().unwrap();
    let auth = d.sign("GET", r.uri().path_and_query().unwrap().as_str());
    r.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
    match tokio_tungstenite::connect_async(r).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("sandbar-no-such-lsp"), "{body}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(d: &TestDaemon, root: &Path) -> Ws {
    let mut r =
        d.ws_url(&format!("/lsp/ws?languageId=python&pathToProject={}", root.display())).into_client_request().unwrap();
    let auth = d.sign("GET", r.uri().path_and_query().unwrap().as_str());
    r.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
    tokio_tungstenite::connect_async(r).await.unwrap().0
}

/// The next message answering `id`, skipping notifications and server requests; fails on close or after 20 s.
async fn answer(ws: &mut Ws, id: Value) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no answer in time")
            .expect("socket ended")
            .unwrap();
        let Message::Text(t) = m else { panic!("unexpected frame {m:?}") };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v.get("method").is_none() && v["id"] == id {
            return v;
        }
    }
}

async fn close_of(ws: &mut Ws) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("no close in time") {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn websocket_bridges_an_ide_to_pylsp_and_refuses_bad_input() {
    let d = TestDaemon::start();
    let root = project(&d);
    let mut ws = ws_connect(&d, &root).await;

    // Garbage, a batch, a request before initialize: JSON-RPC errors, the connection stays.
    ws.send(Message::text("{not json")).await.unwrap();
    let v = answer(&mut ws, Value::Null).await;
    assert_eq!(v["error"]["code"], -32700, "{v}");
    ws.send(Message::text("[]")).await.unwrap();
    let v = answer(&mut ws, Value::Null).await;
    assert_eq!(v["error"]["code"], -32600, "{v}");
    ws.send(Message::text(
        json!({"jsonrpc": "2.0", "id": 1, "method": "textDocument/hover", "params": {}}).to_string(),
    ))
    .await
    .unwrap();
    let v = answer(&mut ws, json!(1)).await;
    assert_eq!(v["error"]["code"], -32002, "{v}");
    ws.send(Message::text(
        json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"capabilities": 5}}).to_string(),
    ))
    .await
    .unwrap();
    let v = answer(&mut ws, json!(2)).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");

    // The real initialize, answered by pylsp itself; then a hover on `greet`.
    let init =
        json!({"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {"processId": null, "capabilities": {}}});
    ws.send(Message::text(init.to_string())).await.unwrap();
    let v = answer(&mut ws, json!(3)).await;
    assert_eq!(v["result"]["serverInfo"]["name"], "pylsp", "{v}");
    assert!(v["result"]["capabilities"]["hoverProvider"].as_bool().unwrap(), "{v}");
    ws.send(Message::text(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}).to_string())).await.unwrap();
    let uri = format!("file://{}", root.join("main.py").display());
    let open = json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": SOURCE}}});
    ws.send(Message::binary(open.to_string().into_bytes())).await.unwrap();
    let hover = json!({"jsonrpc": "2.0", "id": "h", "method": "textDocument/hover", "params": {"textDocument": {"uri": uri}, "position": {"line": 10, "character": 16}}});
    ws.send(Message::text(hover.to_string())).await.unwrap();
    let v = answer(&mut ws, json!("h")).await;
    assert!(v["result"]["contents"].to_string().contains("greet"), "{v}");
    assert_eq!(children(d.pid(), "pylsp").len(), 1);

    // shutdown + exit: the server ends and the socket closes normally.
    ws.send(Message::text(json!({"jsonrpc": "2.0", "id": "s", "method": "shutdown"}).to_string())).await.unwrap();
    answer(&mut ws, json!("s")).await;
    ws.send(Message::text(json!({"jsonrpc": "2.0", "method": "exit"}).to_string())).await.unwrap();
    assert_eq!(close_of(&mut ws).await.0, 1000);
    wait_no_children(d.pid(), "pylsp").await;

    // An oversized message closes with 1009; the server goes with the connection.
    let mut ws = ws_connect(&d, &root).await;
    wait_children(d.pid(), "pylsp", 1).await;
    ws.send(Message::text("x".repeat(17 << 20))).await.unwrap();
    assert_eq!(close_of(&mut ws).await.0, 1009);
    wait_no_children(d.pid(), "pylsp").await;

    // Each connection has its own server; killing it closes the socket with 1011 and a reason.
    let mut a = ws_connect(&d, &root).await;
    let mut b = ws_connect(&d, &root).await;
    let pids = wait_children(d.pid(), "pylsp", 2).await;
    a.send(Message::text(init.to_string())).await.unwrap();
    answer(&mut a, json!(3)).await;
    for p in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), nix::sys::signal::Signal::SIGKILL);
    }
    let (code, reason) = close_of(&mut a).await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("pylsp") && reason.contains("exited"), "{reason}");
    assert_eq!(close_of(&mut b).await.0, 1011);
    // The daemon is fine.
    assert_eq!(d.exec("echo ok").await, (0, "ok\n".into()));
}
