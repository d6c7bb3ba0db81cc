//! The edge's isolation rules, against the proxy in-process, a real daemon, an app in the "sandbox" that echoes
//! everything it receives, and the API stand-in: no credential the proxy recognised reaches an app (every
//! combination, private and public sandboxes, plain requests and WebSockets), a query-string token becomes a
//! redirect with the cookie, cross-origin requests to the daemon's ports are refused, preview tokens do not open
//! them, and revocation closes open WebSockets and SSH sessions.

// Setup helpers outside #[test] functions panic on a broken test setup, as the tests do.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use sandbar_proxy::ssh_gateway::{SshTarget, SshTargetResolver};
use sandbar_testkit::api_standin::{self, start_with_sandbox};
use sandbar_testkit::daemon::TestDaemon;
use sandbar_testkit::proxy::{Proxy, SshGateway, daemon_host_key, serve};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// An API key of org A, shaped like the API's (`sbk_`), and the sandbox's preview token.
const KEY: &str = "sbk_edge0123456789abcdef";
const PREVIEW: &str = "pvtok-edge-0123456789";

struct World {
    api: api_standin::Api,
    daemon: TestDaemon,
    proxy: Proxy,
    app: u16,
    http: reqwest::Client,
}

async fn world() -> World {
    let (api, api_url, daemon) = start_with_sandbox(KEY).await;
    api.add_preview_token(PREVIEW, "sbx1");
    let proxy = Proxy::start(&api_url).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    World { api, daemon, proxy, app: echo_app().await, http }
}

/// The app in the sandbox: answers every request with everything it received (request line and headers), and on
/// `/ws` sends the same as its first WebSocket message, then echoes.
async fn echo_app() -> u16 {
    fn dump(method: &Method, uri: &Uri, h: &HeaderMap) -> String {
        let mut out = format!("{method} {uri}\n");
        for (k, v) in h {
            out.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        out
    }
    async fn echo(method: Method, uri: Uri, h: HeaderMap) -> String {
        dump(&method, &uri, &h)
    }
    async fn ws(method: Method, uri: Uri, h: HeaderMap, up: WebSocketUpgrade) -> Response {
        let seen = dump(&method, &uri, &h);
        up.on_upgrade(|mut s| async move {
            if s.send(AxMessage::Text(seen.into())).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = s.recv().await {
                let reply = match m {
                    AxMessage::Text(t) => AxMessage::Text(t),
                    AxMessage::Close(_) => break,
                    _ => continue,
                };
                if s.send(reply).await.is_err() {
                    break;
                }
            }
        })
    }
    serve(axum::Router::new().route("/ws", axum::routing::get(ws)).fallback(echo)).await
}

/// What must never appear in what the app received.
fn assert_clean(seen: &str, what: &str) {
    for secret in [KEY, PREVIEW, "sandbar_preview_token", "DAYTONA_SANDBOX_AUTH_KEY", "x-daytona-preview-token"] {
        assert!(!seen.contains(secret), "{what}: the app saw {secret:?}:\n{seen}");
    }
    assert!(!seen.to_ascii_lowercase().contains("x-sandbar-daemon-token"), "{what}: daemon token leaked:\n{seen}");
}

/// The credentials a request may carry, as a bit set.
const BEARER: u8 = 1;
const HEADER: u8 = 2;
const QUERY: u8 = 4;
const COOKIE: u8 = 8;
const APP_COOKIE: u8 = 16;

fn describe(mask: u8) -> String {
    let names =
        [(BEARER, "bearer"), (HEADER, "header"), (QUERY, "query"), (COOKIE, "cookie"), (APP_COOKIE, "app-cookie")];
    names.iter().filter(|(b, _)| mask & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join("+")
}

fn with_credentials(mut r: reqwest::RequestBuilder, mask: u8) -> reqwest::RequestBuilder {
    if mask & BEARER != 0 {
        r = r.bearer_auth(KEY);
    }
    if mask & HEADER != 0 {
        r = r.header("x-daytona-preview-token", PREVIEW);
    }
    let mut cookies = Vec::new();
    if mask & COOKIE != 0 {
        cookies.push(format!("sandbar_preview_token={PREVIEW}"));
    }
    if mask & APP_COOKIE != 0 {
        cookies.push("theirs=1".to_owned());
    }
    if !cookies.is_empty() {
        r = r.header("cookie", cookies.join("; "));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_recognised_credential_reaches_the_app() {
    let w = world().await;
    let host = format!("{}-sbx1.localhost", w.app);
    for public in [false, true] {
        if public {
            w.api.update_route("sbx1", |r| r.public = true);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for mask in 0u8..32 {
            let what = format!("public={public} {}", describe(mask));
            let query = if mask & QUERY != 0 { format!("&DAYTONA_SANDBOX_AUTH_KEY={PREVIEW}") } else { String::new() };
            // POST: a query token on a page load is redirected instead (below).
            let url = w.proxy.http_url(&format!("/echo?x=1{query}"));
            let r = with_credentials(w.http.post(&url).header("host", &host).body("b"), mask).send().await.unwrap();
            let admitted = public || mask & (BEARER | HEADER | QUERY | COOKIE) != 0;
            let status = r.status().as_u16();
            let seen = r.text().await.unwrap();
            if !admitted {
                assert_eq!(status, 401, "{what}: {seen}");
                continue;
            }
            assert_eq!(status, 200, "{what}: {seen}");
            assert!(seen.starts_with("POST /echo?x=1\n"), "{what}: {seen}");
            assert_clean(&seen, &what);
            assert_eq!(seen.contains("cookie: theirs=1\n"), mask & APP_COOKIE != 0, "{what}: {seen}");

            // The same credentials on a WebSocket upgrade: the app's first message is what it received.
            let mut req = format!("ws://{}/ws?y=2{query}", w.proxy.http).into_client_request().unwrap();
            let h = req.headers_mut();
            h.insert("host", host.parse().unwrap());
            if mask & BEARER != 0 {
                h.insert("authorization", format!("Bearer {KEY}").parse().unwrap());
            }
            if mask & HEADER != 0 {
                h.insert("x-daytona-preview-token", PREVIEW.parse().unwrap());
            }
            if mask & (COOKIE | APP_COOKIE) != 0 {
                let c = match mask & (COOKIE | APP_COOKIE) {
                    COOKIE => format!("sandbar_preview_token={PREVIEW}"),
                    APP_COOKIE => "theirs=1".to_owned(),
                    _ => format!("theirs=1; sandbar_preview_token={PREVIEW}"),
                };
                h.insert("cookie", c.parse().unwrap());
            }
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            let first = ws.next().await;
            let Some(Ok(Message::Text(seen))) = first else { panic!("{what}: no first message: {first:?}") };
            assert!(seen.starts_with("GET /ws?y=2\n"), "{what}: {seen}");
            assert_clean(&seen, &format!("{what} (WebSocket)"));
            ws.close(None).await.unwrap_or_else(|e| panic!("{what}: closing: {e}"));
        }
    }
    // An app's own Authorization is the app's business; an API key never is, whatever else came with it.
    let r = w
        .http
        .get(w.proxy.http_url("/echo"))
        .header("host", &host)
        .header("x-daytona-preview-token", PREVIEW)
        .header("authorization", "Bearer app-own-token")
        .send()
        .await
        .unwrap();
    let seen = r.text().await.unwrap();
    assert!(seen.contains("authorization: Bearer app-own-token\n"), "{seen}");
    assert_clean(&seen, "app authorization");
    // Two Authorization headers and split Cookie headers (as HTTP/2 clients send them): each is cleaned.
    let raw = format!(
        "GET /echo HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer app-own-token\r\nAuthorization: bearer {KEY}\r\n\
         Cookie: a=1\r\nCookie: sandbar_preview_token={PREVIEW}; b=2\r\nConnection: close\r\n\r\n"
    );
    let out = sandbar_testkit::proxy::raw(w.proxy.http, &raw).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_clean(&out, "repeated headers");
    assert!(out.contains("authorization: Bearer app-own-token\n") && out.contains("cookie: a=1; b=2\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_token_on_a_page_load_becomes_a_redirect_with_the_cookie() {
    let w = world().await;
    let host = format!("{}-sbx1.localhost", w.app);
    let r = w
        .http
        .get(w.proxy.http_url(&format!("/page?a=1&DAYTONA_SANDBOX_AUTH_KEY={PREVIEW}&b=2")))
        .header("host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let h = r.headers();
    assert_eq!(h["location"], "/page?a=1&b=2");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let cookie = h["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("sandbar_preview_token={PREVIEW};")) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // The browser follows it with the cookie and gets the page; the app sees neither.
    let pair = cookie.split(';').next().unwrap().to_owned();
    let r = w.http.get(w.proxy.http_url("/page?a=1&b=2")).header("host", &host).header("cookie", pair).send().await;
    let seen = r.unwrap().text().await.unwrap();
    assert!(seen.starts_with("GET /page?a=1&b=2\n"), "{seen}");
    assert_clean(&seen, "after the redirect");
    // A bad token is not redirected: 401.
    let r = w
        .http
        .get(w.proxy.http_url("/page?DAYTONA_SANDBOX_AUTH_KEY=wrong"))
        .header("host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preview_tokens_and_cookies_never_open_the_daemon_ports() {
    let w = world().await;
    for port in [2280u16, 22220, 22222] {
        let host = format!("{port}-sbx1.localhost");
        for (how, r) in [
            ("header", w.http.get(w.proxy.http_url("/version")).header("x-daytona-preview-token", PREVIEW)),
            ("query", w.http.get(w.proxy.http_url(&format!("/version?DAYTONA_SANDBOX_AUTH_KEY={PREVIEW}")))),
            (
                "cookie",
                w.http.get(w.proxy.http_url("/version")).header("cookie", format!("sandbar_preview_token={PREVIEW}")),
            ),
        ] {
            let r = r.header("host", &host).send().await.unwrap();
            assert_eq!(r.status(), 401, "preview token ({how}) on {port}");
            assert!(r.headers().get("set-cookie").is_none(), "no cookie for a refused token");
        }
    }
    // The toolbox path too; an API key still opens it.
    let url = w.proxy.http_url("/toolbox/sbx1/version");
    let r = w.http.get(&url).header("x-daytona-preview-token", PREVIEW).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(w.http.get(&url).bearer_auth(KEY).send().await.unwrap().status(), 200);
    let r = w.http.get(w.proxy.http_url("/version")).header("host", "2280-sbx1.localhost").bearer_auth(KEY);
    assert_eq!(r.send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_origin_requests_to_the_daemon_ports_are_refused() {
    let w = world().await;
    let port = w.proxy.http.port();
    let evil = format!("http://{}-evil.localhost:{port}", w.app);
    let marker = w.daemon.work.join("pwned");
    let exec = |origin: Option<String>, file: &str| {
        let mut r = w
            .http
            .post(w.proxy.http_url("/toolbox/sbx1/process/execute"))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"command": format!("touch {}", w.daemon.work.join(file).display())}));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let r = exec(Some(evil.clone()), "pwned").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sandbar-error"], "cross-origin");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("cross-origin"), "{body}");
    assert_eq!(exec(Some("null".into()), "pwned").await.unwrap().status(), 403);
    assert!(!marker.exists(), "the daemon ran a cross-origin command");
    // The request's own origin, and no Origin at all (SDKs), pass.
    assert_eq!(exec(Some(format!("http://{}", w.proxy.http)), "same-origin").await.unwrap().status(), 200);
    assert_eq!(exec(None, "no-origin").await.unwrap().status(), 200);
    assert!(w.daemon.work.join("same-origin").exists() && w.daemon.work.join("no-origin").exists());
    // A plain GET is not state-changing: it passes.
    let r = w.http.get(w.proxy.http_url("/toolbox/sbx1/version")).bearer_auth(KEY).header("origin", &evil);
    assert_eq!(r.send().await.unwrap().status(), 200);
    // A preview host of the toolbox: its own origin passes, another's does not.
    let host = format!("2280-sbx1.localhost:{port}");
    let post = |origin: String| {
        w.http
            .post(w.proxy.http_url("/process/execute"))
            .header("host", &host)
            .header("origin", origin)
            .bearer_auth(KEY)
            .json(&serde_json::json!({"command": "true"}))
            .send()
    };
    let r = post(format!("http://{host}")).await.unwrap();
    assert_eq!(r.status(), 200, "{:?} {}", r.headers().clone(), r.text().await.unwrap());
    assert_eq!(post(evil.clone()).await.unwrap().status(), 403);
    // WebSocket upgrades (the PTY) are checked whatever their method.
    let pty = format!("ws://{}/toolbox/sbx1/process/pty/create-connect?id=p1&cols=80&rows=24", w.proxy.http);
    let mut req = pty.clone().into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    req.headers_mut().insert("origin", evil.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let mut req = pty.replace("id=p1", "id=p2").into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    req.headers_mut().insert("origin", format!("http://{}", w.proxy.http).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.close(None).await.unwrap();
    // App ports decide their own policy: a cross-origin POST reaches the app.
    let r = w
        .http
        .post(w.proxy.http_url("/echo"))
        .header("host", format!("{}-sbx1.localhost", w.app))
        .header("origin", &evil)
        .header("x-daytona-preview-token", PREVIEW)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Reads the WebSocket until it closes; returns the close code (or `None` for a close without a frame).
async fn close_code<S>(ws: &mut S, within: Duration) -> Option<u16>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the WebSocket stayed open after its access was revoked"),
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_closes_open_websockets() {
    let w = world().await;
    let host = format!("{}-sbx1.localhost", w.app);
    let open = |token: Option<&str>| {
        let mut req = format!("ws://{}/ws", w.proxy.http).into_client_request().unwrap();
        req.headers_mut().insert("host", host.parse().unwrap());
        if let Some(t) = token {
            req.headers_mut().insert("x-daytona-preview-token", t.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    // A public sandbox's app WebSocket, opened without a credential, ends when the sandbox is made private.
    w.api.update_route("sbx1", |r| r.public = true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut anon, _) = open(None).await.unwrap();
    // One opened with the preview token survives that (the token still opens the port).
    let (mut with_token, _) = open(Some(PREVIEW)).await.unwrap();
    assert!(matches!(anon.next().await, Some(Ok(Message::Text(_)))));
    assert!(matches!(with_token.next().await, Some(Ok(Message::Text(_)))));
    w.api.update_route("sbx1", |r| r.public = false);
    assert_eq!(close_code(&mut anon, Duration::from_secs(20)).await, Some(1008));
    futures_util::SinkExt::send(&mut with_token, Message::Text("still here".into())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), with_token.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("the preview-token WebSocket was closed: {other:?}"),
    }
    // The preview token rotates (a restart does that): the WebSocket it opened ends too.
    w.api.preview_tokens.lock().unwrap().clear();
    w.api.update_route("sbx1", |r| r.version += 0);
    assert_eq!(close_code(&mut with_token, Duration::from_secs(20)).await, Some(1008));

    // A PTY opened with an API key ends when the sandbox stops.
    let pty = format!("ws://{}/toolbox/sbx1/process/pty/create-connect?id=rv&cols=80&rows=24", w.proxy.http);
    let mut req = pty.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))), "the PTY's connected message");
    w.api.update_route("sbx1", |r| r.state = sandbar_proto::runner::SandboxState::Stopped);
    assert_eq!(close_code(&mut ws, Duration::from_secs(20)).await, Some(1008));
    let text = reqwest::get(format!("http://{}/metrics", w.proxy.metrics)).await.unwrap().text().await.unwrap();
    assert!(text.contains("sandbar_proxy_open_websockets 0"), "{text}");
}

/// A resolver whose tokens can be revoked.
struct Revocable {
    targets: Mutex<HashMap<String, SshTarget>>,
}

#[async_trait::async_trait]
impl SshTargetResolver for Revocable {
    async fn resolve(&self, token: &str) -> Result<SshTarget, String> {
        self.targets.lock().unwrap().get(token).cloned().ok_or_else(|| "this SSH access token was revoked".to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_ssh_access_ends_an_open_session() {
    const TOKEN: &str = "sshtok-revocable-0123";
    let daemon = TestDaemon::start_token("gateway-revoke-token");
    let target = SshTarget {
        sandbox_id: "sbx-rv".into(),
        daemon_addr: daemon.ssh.clone(),
        daemon_token: daemon.token.clone(),
        daemon_host_key: Some(daemon_host_key(&daemon)),
    };
    let resolver = Arc::new(Revocable { targets: Mutex::new(HashMap::from([(TOKEN.to_owned(), target)])) });
    let gateway = SshGateway::start(resolver.clone()).await;
    let mut child = gateway
        .ssh(TOKEN, &[], "echo open; sleep 120; echo never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 5];
        stdout.read_exact(&mut buf).map(|()| (buf, stdout))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&first.0, b"open\n");
    resolver.targets.lock().unwrap().clear();
    let out = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                return Some((status, err));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let (status, stderr) = out.expect("the SSH session stayed open after its token was revoked");
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("access revoked") && stderr.contains("revoked"), "{stderr}");
}
