//! The web terminal server: token rule, the page and its assets, the terminal WebSocket (resize, input, UTF-8
//! safe text frames, exit), and that closing the socket ends the shell.
#![cfg(test)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sandbar_testkit::daemon::TestDaemon;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(d: &TestDaemon) -> Ws {
    let url = format!("ws://{}/ws", d.terminal.trim_start_matches("http://"));
    let mut req = url.into_client_request().unwrap();
    let auth = d.sign("GET", req.uri().path_and_query().unwrap().as_str());
    req.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Reads text frames until `needle` appears. Binary frames are a protocol error here.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => seen.push_str(&t),
            Ok(Some(Ok(Message::Binary(_)))) => panic!("terminal output must be text frames"),
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {needle:?}: {other:?}; seen: {seen:?}"),
        }
    }
    seen
}

fn shells_of(pid: u32) -> usize {
    let ps = std::process::Command::new("ps").args(["-eo", "ppid,args"]).output().unwrap();
    let me = pid.to_string();
    String::from_utf8_lossy(&ps.stdout).lines().filter(|l| l.split_whitespace().next() == Some(me.as_str())).count()
}

#[tokio::test]
async fn credential_rule_page_and_assets() {
    let d = TestDaemon::start();
    let anon = reqwest::Client::new();
    assert_eq!(anon.get(format!("{}/", d.terminal)).send().await.unwrap().status(), 401);
    // The token in the query string or in the old cookie opens nothing any more (it would put the token on the
    // wire and in the browser).
    for r in [
        anon.get(format!("{}/?token={}", d.terminal, d.token)),
        anon.get(format!("{}/", d.terminal)).header("cookie", format!("sandbar_token={}", d.token)),
        anon.get(format!("{}/", d.terminal)).header("x-sandbar-daemon-token", &d.token),
    ] {
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
    }
    let signed = d.sign("GET", "/");
    let r = anon.get(format!("{}/", d.terminal)).header("x-sandbar-daemon-auth", &signed).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("set-cookie").is_none(), "no credential is handed to the browser");
    let page = r.text().await.unwrap();
    assert!(page.contains("xterm.js") && page.contains("new Terminal"), "{page}");
    // The same credential again: refused.
    let r = anon.get(format!("{}/", d.terminal)).header("x-sandbar-daemon-auth", &signed).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Each asset with its own credential, as the proxy signs each request.
    for asset in ["/xterm.js", "/xterm.css", "/xterm-addon-fit.js"] {
        let r = d.client.get(format!("{}{asset}", d.terminal)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.bytes().await.unwrap().len() > 500, "{asset} is the real file");
    }
    let url = format!("ws://{}/ws", d.terminal.trim_start_matches("http://"));
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut().insert("x-sandbar-daemon-auth", d.sign("GET", "/ws").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

/// The terminal through the toolbox's port proxy (`/proxy/22222/...`, the path the edge proxy uses): the toolbox
/// checks the caller's credential and signs afresh for the terminal's own path.
#[tokio::test]
async fn the_terminal_through_the_port_proxy() {
    // The port proxy sends 22222 to 127.0.0.1:22222, so this daemon's terminal listens there (the only test that
    // binds it).
    let d2 = TestDaemon::start_with(&[("SANDBAR_TERMINAL_ADDR", "127.0.0.1:22222")], &[]);
    let r = d2.client.get(d2.url("/proxy/22222/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("new Terminal"));
    let url = d2.ws_url("/proxy/22222/ws");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-sandbar-daemon-auth", d2.sign("GET", "/proxy/22222/ws").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text("echo through-$((40+2))\n".into())).await.unwrap();
    read_until(&mut ws, "through-42").await;
}

#[tokio::test]
async fn resize_input_utf8_frames_and_exit() {
    let d = TestDaemon::start();
    let mut ws = open(&d).await;
    ws.send(Message::Text(r#"{"rows":30,"cols":100}"#.into())).await.unwrap();
    ws.send(Message::Text("stty size; echo $TERM\n".into())).await.unwrap();
    let out = read_until(&mut ws, "xterm-256color").await;
    assert!(out.contains("30 100"), "{out}");
    // Input that merely looks like JSON is still input.
    ws.send(Message::Text("echo '{\"rows\":1}' $((6*7))\n".into())).await.unwrap();
    read_until(&mut ws, "{\"rows\":1} 42").await;
    // Thousands of multi-byte characters arrive intact (tungstenite rejects a text frame that is not UTF-8).
    ws.send(Message::Text("for i in $(seq 1 3000); do printf '€𝄞é'; done; echo; echo END\n".into())).await.unwrap();
    let out = read_until(&mut ws, "\nEND").await;
    assert!(out.matches("€𝄞é").count() >= 3000, "{}", out.len());
    ws.send(Message::Text("exit 3\n".into())).await.unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1011);
    assert!(close.reason.contains("\"exitCode\":3"), "{}", close.reason);
}

#[tokio::test]
async fn bad_resize_closes_and_closing_the_socket_ends_the_shell() {
    let d = TestDaemon::start();
    let mut ws = open(&d).await;
    ws.send(Message::Text(r#"{"rows":0,"cols":0}"#.into())).await.unwrap();
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        if let Ok(Message::Close(f)) = m {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1008));

    let mut a = open(&d).await;
    let mut b = open(&d).await;
    a.send(Message::Text("echo a-$((1+1))\n".into())).await.unwrap();
    read_until(&mut a, "a-2").await;
    b.send(Message::Text("echo b-$((2+2))\n".into())).await.unwrap();
    read_until(&mut b, "b-4").await;
    // Each socket has its own shell; something that ignores SIGHUP in the shell's group goes too.
    a.send(Message::Text("trap '' HUP; sleep 300\n".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(shells_of(d.pid()) >= 2);
    drop(a);
    drop(b);
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = shells_of(d.pid());
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "shells left after their sockets closed");
}
