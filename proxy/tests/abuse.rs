//! Hostile clients against the proxy, with a real daemon behind it: a slowloris client (request head sent byte by
//! byte over raw TCP) is cut after the head deadline while everyone else is served; a WebSocket client flooding
//! frames at an app that reads slowly is held back (backpressure), so the proxy process's memory stays bounded and
//! other clients are served meanwhile; a burst of requests with one credential makes one authorize call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sandbar_testkit::api_standin::start_with_sandbox;
use sandbar_testkit::proxy::{Proxy, ProxyProcess, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const KEY_A: &str = "key-of-org-a";

/// Reads until the peer closes (or `limit` passes); returns what came and whether it closed.
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut out)).await.is_ok();
    (out, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slowloris_client_is_cut_while_others_are_served() {
    let (_, api_url, _daemon) = start_with_sandbox(KEY_A).await;
    let proxy = Proxy::start_with(&api_url, |c| c.header_timeout = Duration::from_millis(1500)).await;
    let http = reqwest::Client::new();
    let version = proxy.http_url("/toolbox/sbx1/version");

    // The slow client sends its head one byte every 100 ms: 3 s for the whole head, twice the deadline.
    let head =
        format!("GET /toolbox/sbx1/version HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY_A}\r\n\r\n");
    let mut slow = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let dripping = tokio::spawn(async move {
        let mut sent = 0;
        for b in head.as_bytes() {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
        (sent, head.len(), answer, closed)
    });
    // Meanwhile everyone else is served.
    for _ in 0..5 {
        let r = http.get(&version).bearer_auth(KEY_A).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (sent, total, answer, closed) = dripping.await.unwrap();
    assert!(closed, "the slow connection must be closed");
    assert!(answer.is_empty(), "no response for an unfinished head: {}", String::from_utf8_lossy(&answer));
    assert!(sent < total, "cut before the head was complete ({sent} of {total} bytes)");
    assert!(proxy.metric("sandbar_proxy_header_timeouts_total").await >= 1.0);

    // The deadline is for the head only: a request that takes longer than it, once its head is in, is not cut.
    let r = http
        .post(proxy.http_url("/toolbox/sbx1/process/execute"))
        .bearer_auth(KEY_A)
        .json(&serde_json::json!({"command": "sleep 2; echo patient"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("patient"));

    // A kept-alive connection may idle longer than the deadline before its next request (the keep-alive timeout
    // governs idling), and a head sent at once is answered.
    let timeouts_before = proxy.metric("sandbar_proxy_header_timeouts_total").await;
    let mut kept = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let req = format!("GET /toolbox/sbx1/version HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY_A}\r\n\r\n");
    for round in 0..2 {
        kept.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        tokio::time::sleep(Duration::from_millis(2000)).await;
    }
    assert_eq!(proxy.metric("sandbar_proxy_header_timeouts_total").await, timeouts_before);
}

/// A WebSocket app "in the sandbox" that reads one frame every 20 ms and counts the bytes.
async fn start_slow_reader(read: Arc<AtomicU64>) -> u16 {
    use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
    use axum::response::Response;
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(move |up: WebSocketUpgrade| {
            let read = read.clone();
            async move {
                let r: Response = up.on_upgrade(move |mut s| async move {
                    while let Some(Ok(m)) = s.recv().await {
                        match m {
                            AxMessage::Binary(b) => {
                                read.fetch_add(b.len() as u64, Ordering::Relaxed);
                            }
                            AxMessage::Close(_) => break,
                            _ => {}
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                r
            }
        }),
    );
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_flood_is_held_back_and_memory_stays_bounded() {
    let (_, api_url, _daemon) = start_with_sandbox(KEY_A).await;
    let read = Arc::new(AtomicU64::new(0));
    let app = start_slow_reader(read.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(env!("CARGO_BIN_EXE_sandbar-proxy"), &api_url, dir.path(), &["--threads", "2"]);
    let proxy_http = proxy.addr("http");
    let http = reqwest::Client::new();
    let version = format!("http://{}/toolbox/sbx1/version", proxy_http);
    assert_eq!(http.get(&version).bearer_auth(KEY_A).send().await.unwrap().status(), 200);
    let (rss_before, _) = proxy.memory_kib();

    let mut req = format!("ws://{}/ws", proxy_http).into_client_request().unwrap();
    req.headers_mut().insert("host", format!("{app}-sbx1.localhost").parse().unwrap());
    req.headers_mut().insert("authorization", format!("Bearer {KEY_A}").parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let (mut sink, _stream) = ws.split();
    // Flood: 64 KiB frames as fast as the connection takes them, for 4 s (1 GiB if nothing held us back).
    let sent = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn({
        let sent = sent.clone();
        async move {
            let frame = vec![0x5au8; 64 << 10];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
            while tokio::time::Instant::now() < deadline && sent.load(Ordering::Relaxed) < (1 << 30) {
                match tokio::time::timeout_at(deadline, sink.send(Message::Binary(frame.clone().into()))).await {
                    Ok(Ok(())) => {
                        sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            sink
        }
    });
    // Others are served during the flood.
    let mut peak = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = http.get(&version).bearer_auth(KEY_A).send().await.unwrap();
        assert_eq!(r.status(), 200);
        peak = peak.max(proxy.memory_kib().0);
    }
    let _sink = flood.await.unwrap();
    let (rss_after, hwm) = proxy.memory_kib();
    let (sent, read) = (sent.load(Ordering::Relaxed), read.load(Ordering::Relaxed));
    eprintln!(
        "flood: client sent {} MiB, app read {} MiB; proxy RSS {} -> peak {} -> {} KiB (high-water {} KiB)",
        sent >> 20,
        read >> 20,
        rss_before,
        peak,
        rss_after,
        hwm
    );
    assert!(read > 0, "the app got frames through the proxy");
    // Held back: the client could only send what the slow reader took plus what the buffers on the way hold.
    assert!(sent < 512 << 20, "the flood was not held back: {} MiB sent", sent >> 20);
    // Generous bound: the proxy's memory grew by less than 64 MiB however much the client pushed.
    assert!(hwm < rss_before + (64 << 10), "proxy memory grew from {rss_before} KiB to {hwm} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_with_one_credential_makes_one_authorize_call() {
    let (api, api_url, _daemon) = start_with_sandbox(KEY_A).await;
    let proxy = Proxy::start(&api_url).await;
    let http = reqwest::Client::new();
    let url = proxy.http_url("/toolbox/sbx1/version");
    for (key, status) in [(KEY_A, 200), ("not-a-key", 401)] {
        let before = api.authorize_calls.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (c, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move { c.get(url).bearer_auth(key).send().await.unwrap().status() }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), status);
        }
        // Granted answers are cached for their ttl (30 s here), refusals for REFUSAL_TTL: one call for the burst, or
        // one per REFUSAL_TTL that a burst of refusals lasted on a loaded machine (without single-flight and the
        // cache it would be one per request).
        let windows = 1 + (started.elapsed().as_millis() / sandbar_proxy::control::cache::REFUSAL_TTL.as_millis());
        let calls = api.authorize_calls.load(Ordering::SeqCst) - before;
        let allowed = if status == 200 { 1 } else { usize::try_from(windows).unwrap() };
        assert!(calls >= 1 && calls <= allowed, "{key}: {calls} authorize calls for 40 requests (allowed {allowed})");
    }
    // A refusal is not remembered for long: the same bad key is asked about again after a moment.
    let before = api.authorize_calls.load(Ordering::SeqCst);
    tokio::time::sleep(sandbar_proxy::control::cache::REFUSAL_TTL + Duration::from_millis(200)).await;
    assert_eq!(http.get(&url).bearer_auth("not-a-key").send().await.unwrap().status(), 401);
    assert_eq!(api.authorize_calls.load(Ordering::SeqCst) - before, 1);
}
