//! PTY sessions over Daytona's WebSocket protocol: size and resize, input and output, several clients, replay
//! on reattach, exit codes, envs through the subprotocol, recordings, slow clients and bad input.
#![cfg(test)]

use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use sandbar_testkit::daemon::TestDaemon;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const EXIT_CONTROL: &str = "X-Daytona-Pty-Exit-Control";

async fn open(d: &TestDaemon, path: &str, protocols: &[&str]) -> Ws {
    let mut req = d.ws_url(path).into_client_request().unwrap();
    let auth = d.sign("GET", req.uri().path_and_query().unwrap().as_str());
    req.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
    if !protocols.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", protocols.join(", ").parse().unwrap());
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    if protocols.contains(&EXIT_CONTROL) {
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), EXIT_CONTROL);
    }
    match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v, json!({"type": "control", "status": "connected"}));
        }
        other => panic!("expected the connected control message, got {other:?}"),
    }
    ws
}

async fn send(ws: &mut Ws, s: &str) {
    ws.send(Message::Binary(Bytes::from(s.to_owned()))).await.unwrap();
}

/// Reads output until `needle` appears; returns everything read.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(t)))) => seen.push_str(&t),
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {needle:?}: {other:?}; seen so far: {seen:?}"),
        }
    }
    seen
}

/// Reads to the end: returns (text control messages, close code, close reason).
async fn read_to_close(ws: &mut Ws) -> (Vec<serde_json::Value>, u16, String) {
    let mut controls = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("close timed out") {
            Some(Ok(Message::Text(t))) => controls.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => return (controls, u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (controls, 1005, String::new()),
            Some(Ok(_)) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    }
}

fn children_of(pid: u32) -> Vec<String> {
    let ps = std::process::Command::new("ps").args(["-eo", "ppid,pid,args"]).output().unwrap();
    let me = pid.to_string();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(me.as_str()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn resize_input_output_replay_and_exit_code() {
    let d = TestDaemon::start();
    let (s, b) = d.post("/process/pty", json!({"id": "t1", "cols": 80, "rows": 24})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["sessionId"], "t1");
    let mut ws = open(&d, "/process/pty/t1/connect", &[EXIT_CONTROL]).await;
    send(&mut ws, "stty size\n").await;
    read_until(&mut ws, "24 80").await;
    let (s, info) = d.post("/process/pty/t1/resize", json!({"cols": 100, "rows": 30})).await;
    assert_eq!(s, 200);
    assert_eq!(
        (info["cols"].as_u64(), info["rows"].as_u64(), info["active"].as_bool()),
        (Some(100), Some(30), Some(true))
    );
    for key in ["id", "cwd", "envs", "createdAt", "lazyStart"] {
        assert!(info.get(key).is_some(), "PtySessionInfo needs {key}: {info}");
    }
    send(&mut ws, "stty size; echo $TERM\n").await;
    read_until(&mut ws, "30 100").await;
    send(&mut ws, "echo $((6*7))\n").await;
    read_until(&mut ws, "42").await;

    // A second client sees the same output, and the replay of what came before.
    let mut ws2 = open(&d, "/process/pty/t1/connect", &[]).await;
    let replay = read_until(&mut ws2, "42").await;
    assert!(replay.contains("xterm-256color"), "{replay}");
    send(&mut ws, "echo both-$((1+1))\n").await;
    read_until(&mut ws, "both-2").await;
    read_until(&mut ws2, "both-2").await;

    // Drop the first client: the shell survives; reattach and the scrollback comes back.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, info) = d.get("/process/pty/t1").await;
    assert_eq!(info["active"], true);
    let mut ws3 = open(&d, "/process/pty/t1/connect", &[EXIT_CONTROL]).await;
    read_until(&mut ws3, "both-2").await;

    send(&mut ws3, "exit 5\n").await;
    let (controls, code, reason) = read_to_close(&mut ws3).await;
    let exited = controls.iter().find(|c| c["status"] == "exited").expect("exited control message");
    assert_eq!(exited["exitCode"], 5);
    assert_eq!(exited["exitReason"], "non-zero exit");
    assert_eq!(code, 1011);
    let reason: serde_json::Value = serde_json::from_str(&reason).unwrap();
    assert_eq!(reason["exitCode"], 5);
    // The client without exit control still gets the close with the code.
    let (controls, code, _) = read_to_close(&mut ws2).await;
    assert!(controls.iter().all(|c| c["status"] != "exited"));
    assert_eq!(code, 1011);
    let (_, info) = d.get("/process/pty/t1").await;
    assert_eq!(info["active"], false);
}

#[tokio::test]
async fn create_connect_with_envs_subprotocol_and_clean_exit() {
    let d = TestDaemon::start();
    let envs = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"SANDBAR_PTY_VAR":"from-envs"}"#);
    let envs_proto = format!("X-Daytona-Pty-Envs~{envs}");
    let mut ws = open(&d, "/process/pty/create-connect?id=cc&cols=90&rows=20", &[EXIT_CONTROL, &envs_proto]).await;
    send(&mut ws, "stty size; echo v=$SANDBAR_PTY_VAR\n").await;
    let out = read_until(&mut ws, "v=from-envs").await;
    assert!(out.contains("20 90"), "{out}");
    let (s, b) = d.get("/process/pty").await;
    assert_eq!(s, 200);
    assert_eq!(b["sessions"][0]["id"], "cc");
    send(&mut ws, "exit\n").await;
    let (controls, code, reason) = read_to_close(&mut ws).await;
    assert_eq!(controls.last().unwrap()["exitCode"], 0);
    assert_eq!(code, 1000);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&reason).unwrap()["exitCode"], 0);
}

#[tokio::test]
async fn bad_input_and_no_leaked_shells() {
    let d = TestDaemon::start();
    assert_eq!(d.post("/process/pty", json!({"id": "b", "cols": 0, "rows": 24})).await.0, 400);
    assert_eq!(d.post("/process/pty", json!({"id": "b", "cols": 80, "rows": 60000})).await.0, 400);
    assert_eq!(d.post("/process/pty", json!({"id": "../x"})).await.0, 400);
    assert_eq!(d.post("/process/pty", json!({"id": "b", "cwd": "/nonexistent"})).await.0, 400);
    assert_eq!(d.post("/process/pty", json!({"id": "b"})).await.0, 201);
    assert_eq!(d.post("/process/pty", json!({"id": "b"})).await.0, 409);
    assert_eq!(d.post("/process/pty/b/resize", json!({"cols": 0, "rows": 0})).await.0, 400);
    assert_eq!(d.post("/process/pty/b/resize", json!({"cols": 5000, "rows": 10})).await.0, 400);
    assert_eq!(d.get("/process/pty/nope").await.0, 404);
    assert_eq!(d.post("/process/pty/nope/resize", json!({"cols": 10, "rows": 10})).await.0, 404);
    // Connect to an unknown session: a clear HTTP error, no upgrade.
    let mut req = d.ws_url("/process/pty/nope/connect").into_client_request().unwrap();
    let auth = d.sign("GET", req.uri().path_and_query().unwrap().as_str());
    req.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    // A frame over the limit closes the socket with 1009 (or, when the daemon closes while the client is still
    // writing, the client sees the connection reset first); the session and the daemon stay healthy.
    let mut ws = open(&d, "/process/pty/b/connect", &[]).await;
    let sent = ws.send(Message::Binary(Bytes::from(vec![b'a'; 2 << 20]))).await;
    let mut closed = None;
    if sent.is_ok() {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            match m {
                Ok(Message::Close(f)) => {
                    closed = f.map(|f| f.code);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert!(closed.is_none() || closed == Some(CloseCode::Size), "{closed:?}");
    }
    let mut ws = open(&d, "/process/pty/b/connect", &[]).await;
    send(&mut ws, "echo alive-$((2+2))\n").await;
    read_until(&mut ws, "alive-4").await;

    let (s, b) = d.delete("/process/pty/b").await;
    assert_eq!(s, 200);
    assert!(b.is_object());
    let (_, code, _) = read_to_close(&mut ws).await;
    assert_eq!(code, 1011, "killed shell");
    assert_eq!(d.delete("/process/pty/b").await.0, 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(children_of(d.pid()).is_empty(), "leaked: {:?}", children_of(d.pid()));
}

#[tokio::test]
async fn lazy_start_and_recording_replays_with_asciinema() {
    let d = TestDaemon::start();
    assert_eq!(d.post("/process/pty", json!({"id": "rec", "lazyStart": true, "record": true})).await.0, 201);
    let (_, info) = d.get("/process/pty/rec").await;
    assert_eq!((info["active"].as_bool(), info["lazyStart"].as_bool()), (Some(false), Some(true)));
    assert!(children_of(d.pid()).is_empty(), "lazy session starts on connect");
    let mut ws = open(&d, "/process/pty/rec/connect", &[EXIT_CONTROL]).await;
    send(&mut ws, "echo recorded-$((40+2)) é€\n").await;
    read_until(&mut ws, "recorded-42").await;
    d.post("/process/pty/rec/resize", json!({"cols": 120, "rows": 40})).await;
    send(&mut ws, "exit\n").await;
    read_to_close(&mut ws).await;

    let (s, b) = d.get("/process/pty/recordings").await;
    assert_eq!(s, 200);
    let name = b["recordings"][0]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("rec-") && name.ends_with(".cast"), "{name}");
    let cast = d.client.get(d.url(&format!("/process/pty/recordings/{name}"))).send().await.unwrap();
    assert_eq!(cast.status(), 200);
    let cast = cast.text().await.unwrap();
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!((header["version"].as_u64(), header["width"].as_u64()), (Some(2), Some(80)));
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e[1] == "r" && e[2] == "120x40"));
    let text: String = events.iter().filter(|e| e[1] == "o").map(|e| e[2].as_str().unwrap()).collect();
    assert!(text.contains("recorded-42 é€"), "{text}");
    assert_eq!(d.get("/process/pty/recordings/..%2Fsecret.cast").await.0, 400);
    assert_eq!(d.get("/process/pty/recordings/none.cast").await.0, 404);

    // The real asciinema player accepts the file.
    let path = d.work.join("session.cast");
    std::fs::write(&path, &cast).unwrap();
    // asciinema wants a terminal even to cat: `script` gives it one.
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("asciinema cat {}", path.display()), "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("asciinema (Debian package asciinema) must be installed: scripts/test installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("recorded-42"));
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_without_slowing_the_others() {
    let d = TestDaemon::start();
    assert_eq!(d.post("/process/pty", json!({"id": "flood"})).await.0, 201);
    let mut stalled = open(&d, "/process/pty/flood/connect", &[]).await;
    let mut reader = open(&d, "/process/pty/flood/connect", &[]).await;
    send(&mut reader, "stty -echo; head -c 20000000 /dev/zero | base64 -w 1000; echo END-$((3*3))\n").await;
    let mut total = 0usize;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !seen.contains("END-9") {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                total += b.len();
                seen = String::from_utf8_lossy(&b[b.len().saturating_sub(64)..]).into_owned();
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("reader ended after {total} bytes: {other:?}"),
        }
    }
    assert!(total > 20_000_000, "the reading client got everything ({total} bytes)");
    // The stalled client was cut off: once it reads, it finds a 1008 close (or a dropped connection).
    let mut code = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stalled.next()).await.expect("stalled client not cut off") {
            Some(Ok(Message::Close(f))) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(code.is_none() || code == Some(1008), "close code {code:?}");
}
