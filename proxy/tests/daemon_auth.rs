//! The proxy's credential towards a daemon, attacked from the sandbox network: a sniffer between the proxy and a
//! real daemon (what a neighbour answering ARP for the sandbox's address sees) records what the proxy sends, then
//! replays it, bends it to another path, and tries the token header of old. The token never crosses the wire, and
//! nothing recorded opens the daemon again.
#![cfg(test)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sandbar_testkit::api_standin::start_with_sandbox;
use sandbar_testkit::proxy::{Proxy, json_of, raw};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "key-of-org-a";

/// A TCP relay to `target` that records every byte clients send through it (a passive sniffer in the path).
async fn sniffer(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(target).await else { return };
                let (mut down_r, mut down_w) = down.split();
                let (mut up_r, mut up_w) = tokio::io::split(up);
                let to_daemon = async {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = down_r.read(&mut buf).await {
                        if n == 0 || up_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = up_w.shutdown().await;
                };
                let to_proxy = async {
                    let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
                    let _ = down_w.shutdown().await;
                };
                tokio::join!(to_daemon, to_proxy);
            });
        }
    });
    (addr, seen)
}

/// The first request in `bytes`: its head (without the blank line) and its body (by `content-length`).
fn first_request(bytes: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(bytes);
    let end = text.find("\r\n\r\n").expect("a whole request head was recorded");
    let head = text[..end].to_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .map_or(0, |(_, v)| v.trim().parse().unwrap());
    (head, bytes[end + 4..end + 4 + len].to_vec())
}

/// `head` with `connection: close` (so the answer ends) and `body`, as one request.
fn request(head: &str, body: &[u8]) -> String {
    let lines: Vec<&str> = head.lines().filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    format!("{}\r\nconnection: close\r\n\r\n{}", lines.join("\r\n"), String::from_utf8_lossy(body))
}

fn status_of(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sniffed_request_opens_nothing_again() {
    let (api, api_url, daemon) = start_with_sandbox(KEY).await;
    let daemon_addr: SocketAddr = daemon.addr.parse().unwrap();
    let (relay, seen) = sniffer(daemon_addr).await;
    api.update_route("sbx1", |r| r.daemon_addr = Some(relay.to_string()));
    let proxy = Proxy::start(&api_url).await;
    let http = reqwest::Client::new();

    // A toolbox call through the proxy, past the sniffer: it works (a valid credential gets 200).
    let url = proxy.http_url("/toolbox/sbx1/process/execute");
    let r = http
        .post(&url)
        .bearer_auth(KEY)
        .header("x-sandbar-daemon-auth", "v1.forged-by-the-client")
        .json(&json!({"command": "echo first"}))
        .send()
        .await
        .unwrap();
    let (s, b, _) = json_of(r).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "first\n");

    let captured = seen.lock().unwrap().clone();
    let (head, body) = first_request(&captured);
    assert!(head.starts_with("POST /process/execute HTTP/1.1"), "{head}");
    // The token itself never crossed the wire, under any header.
    assert!(!String::from_utf8_lossy(&captured).contains(&daemon.token), "the daemon token is on the wire:\n{head}");
    let auth = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-sandbar-daemon-auth")))
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("no credential in\n{head}"));
    assert!(auth.starts_with("v1.") && auth != "v1.forged-by-the-client", "the proxy set its own: {auth}");

    // Replayed as recorded: refused.
    let answer = raw(daemon_addr, &request(&head, &body)).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(answer.contains("replayed daemon credential"), "{answer}");

    // The recorded credential bent to another path (or method, with any body): refused.
    let bent = head.replacen("POST /process/execute", "POST /process/session", 1);
    let answer = raw(daemon_addr, &request(&bent, br#"{"sessionId":"pwned"}"#)).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(answer.contains("invalid daemon credential"), "{answer}");
    let bent = head.replacen("POST /process/execute", "GET /files/download?path=/etc/passwd", 1);
    assert_eq!(status_of(&raw(daemon_addr, &request(&bent, b"")).await), 401);

    // A credential signed (with the right token) two minutes ago: refused as expired, even never used.
    let ts = sandbar_support::daemon_auth::now_ms() - 120_000;
    let old = sandbar_support::daemon_auth::sign_at(
        &daemon.token,
        "POST",
        "/process/execute",
        ts,
        "00000000000000000000000000000001",
    );
    let stale = request(
        &format!(
            "POST /process/execute HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-sandbar-daemon-auth: {old}",
            body.len()
        ),
        &body,
    );
    let answer = raw(daemon_addr, &stale).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(answer.contains("expired"), "{answer}");

    // The static header of old, even with the real token: refused.
    let static_token = request(
        &format!(
            "POST /process/execute HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-sandbar-daemon-token: {}",
            body.len(),
            daemon.token
        ),
        &body,
    );
    let answer = raw(daemon_addr, &static_token).await;
    assert_eq!(status_of(&answer), 401, "{answer}");

    // And the proxy keeps working: each request carries a fresh credential.
    for i in 0..3 {
        let r = http.post(&url).bearer_auth(KEY).json(&json!({"command": format!("echo {i}")})).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A WebSocket upgrade is signed like any request, and its recorded upgrade request cannot open a second socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sniffed_websocket_upgrade_cannot_be_replayed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (api, api_url, daemon) = start_with_sandbox(KEY).await;
    let daemon_addr: SocketAddr = daemon.addr.parse().unwrap();
    let (relay, seen) = sniffer(daemon_addr).await;
    api.update_route("sbx1", |r| r.daemon_addr = Some(relay.to_string()));
    let proxy = Proxy::start(&api_url).await;
    let (s, b) = {
        let r = reqwest::Client::new()
            .post(proxy.http_url("/toolbox/sbx1/process/pty"))
            .bearer_auth(KEY)
            .json(&json!({"id": "sniffed"}))
            .send()
            .await
            .unwrap();
        let (s, b, _) = json_of(r).await;
        (s, b)
    };
    assert_eq!(s, 201, "{b}");
    seen.lock().unwrap().clear();
    let mut req =
        format!("ws://{}/toolbox/sbx1/process/pty/sniffed/connect", proxy.http).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let captured = seen.lock().unwrap().clone();
    let (head, _) = first_request(&captured);
    assert!(head.starts_with("GET /process/pty/sniffed/connect HTTP/1.1"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    let answer = raw(daemon_addr, &request(&head, b"")).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(answer.contains("replayed"), "{answer}");
    drop(ws);
}

/// What else reaches the daemon: the request id as `X-Request-Id`, and `X-Forwarded-*` only on a request the
/// daemon passes on to an app (`/proxy/{port}/...`, where a preview host goes), set by the proxy; whatever of these
/// the client sent never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_headers_go_to_apps_only_and_are_the_proxys() {
    let (api, api_url, daemon) = start_with_sandbox(KEY).await;
    let daemon_addr: SocketAddr = daemon.addr.parse().unwrap();
    let (relay, seen) = sniffer(daemon_addr).await;
    api.update_route("sbx1", |r| r.daemon_addr = Some(relay.to_string()));
    let proxy = Proxy::start(&api_url).await;
    let spoofed = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: gopher\r\n\
                   X-Sandbar-Request-Id: spoofed-id\r\nForwarded: for=6.6.6.6";
    let sent = |host: &str, path: &str| {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n{spoofed}\r\nConnection: close\r\n\r\n"
        );
        let (proxy, seen) = (proxy.http, seen.clone());
        async move {
            seen.lock().unwrap().clear();
            let answer = raw(proxy, &req).await;
            let (head, _) = first_request(&seen.lock().unwrap());
            (answer, head.to_ascii_lowercase())
        }
    };
    let header =
        |head: &str, name: &str| head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned));
    for head in [sent("localhost", "/toolbox/sbx1/version").await.1, sent("2280-sbx1.localhost", "/version").await.1] {
        assert!(head.starts_with("get /version http/1.1"), "{head}");
        let id = header(&head, "x-request-id").unwrap_or_else(|| panic!("no request id in\n{head}"));
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "the proxy's own id: {head}");
        for gone in ["x-forwarded-", "forwarded:", "x-sandbar-request-id", "6.6.6.6", "evil.example", "gopher"] {
            assert!(!head.contains(gone), "{gone} reached the daemon's own API:\n{head}");
        }
    }
    let (answer, head) = sent("3000-sbx1.localhost", "/app?x=1").await;
    assert!(head.starts_with("get /proxy/3000/app?x=1 http/1.1"), "{head}\n{answer}");
    assert_eq!(header(&head, "x-forwarded-for").as_deref(), Some("127.0.0.1"), "{head}");
    assert_eq!(header(&head, "x-forwarded-host").as_deref(), Some("3000-sbx1.localhost"), "{head}");
    assert_eq!(header(&head, "x-forwarded-proto").as_deref(), Some("http"), "{head}");
    for gone in ["forwarded:", "x-sandbar-request-id", "6.6.6.6", "evil.example", "gopher"] {
        assert!(!head.contains(gone), "{gone} reached the app:\n{head}");
    }
}
