//! The proxy against real daemons and an API stand-in that follows proto/src/api.rs: HTTPS with the generated
//! certificate verified (reqwest and curl), toolbox calls, preview URLs (HTTP and WebSocket), the daemon's PTY
//! WebSocket, authentication, sandbox states, route changes, single-flight lookups, bad input, metrics, activity.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sandbar_proto::ports;
use sandbar_proto::runner::SandboxState;
use sandbar_testkit::api_standin::{self, start_with_sandbox};
use sandbar_testkit::daemon::TestDaemon;
use sandbar_testkit::proxy::{Proxy, json_of, raw, start_app};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const KEY_A: &str = "key-of-org-a";
const KEY_B: &str = "key-of-org-b";

struct World {
    api: api_standin::Api,
    daemon: TestDaemon,
    proxy: Proxy,
    http: reqwest::Client,
}

/// One started sandbox `sbx1` of org A on a real daemon, keys for orgs A and B, and the proxy.
async fn world() -> World {
    world_on("localhost").await
}

async fn world_on(domain: &str) -> World {
    let (api, api_url, daemon) = start_with_sandbox(KEY_A).await;
    api.add_key(KEY_B, "org-b");
    let proxy = Proxy::start_with(&api_url, |c| c.domain = domain.to_owned()).await;
    World { api, daemon, proxy, http: reqwest::Client::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toolbox_over_https_with_the_generated_certificate() {
    let w = world().await;
    let host = format!("localhost:{}", w.proxy.https.port());
    let client = w.proxy.https_client(&["localhost"]);
    let r = client
        .post(format!("https://{host}/toolbox/sbx1/process/execute"))
        .bearer_auth(KEY_A)
        .json(&json!({"command": "echo hi"}))
        .send()
        .await
        .unwrap();
    // Whichever ALPN picks (reqwest offers h2 when its http2 feature is on somewhere in the workspace); curl below
    // checks HTTP/2 explicitly.
    assert!(matches!(r.version(), reqwest::Version::HTTP_11 | reqwest::Version::HTTP_2), "{:?}", r.version());
    let (s, b, h) = json_of(r).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"].as_str().unwrap().trim(), "hi");
    assert_eq!(b["exitCode"], 0);
    assert!(h.contains_key("x-sandbar-request-id"));

    // curl verifies the certificate too (no -k), over HTTP/2.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "-w", "\n%{http_version} %{http_code}", "--cacert"])
        .arg(w.proxy.cert_path())
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", w.proxy.https.port())])
        .args(["-H", &format!("Authorization: Bearer {KEY_A}")])
        .arg(format!("https://{host}/toolbox/sbx1/work-dir"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.ends_with("\n2 200"), "{stdout}");
    assert!(stdout.contains(&*w.daemon.work.to_string_lossy()), "{stdout}");

    // A client that does not trust the certificate refuses it.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .resolve("localhost", w.proxy.https)
        .build()
        .unwrap();
    assert!(untrusting.get(format!("https://{host}/toolbox/sbx1/version")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_ids_are_the_clients_when_plain_else_the_proxys() {
    let w = world().await;
    let url = w.proxy.http_url("/toolbox/sbx1/version");
    let id_of = |r: &reqwest::Response| {
        let ours = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(r.headers()["x-sandbar-request-id"], ours.as_str(), "both headers carry the one id");
        ours
    };
    // Answered by the daemon, by the proxy itself (a refusal), and on the API's paths: the client's plain id back.
    for (key, path) in [(KEY_A, "/toolbox/sbx1/version"), ("not-a-key", "/toolbox/sbx1/version"), (KEY_A, "/api/x")] {
        let r = w.http.get(w.proxy.http_url(path)).bearer_auth(key).header("x-request-id", "client-1.a:b_c").send();
        assert_eq!(id_of(&r.await.unwrap()), "client-1.a:b_c", "{key} {path}");
    }
    // Without one, or with one that is not short and plain, the proxy's own: 32 hex digits, new each time.
    let mut seen = std::collections::HashSet::new();
    for sent in [None, Some("two words"), Some("x=1"), Some(&*"a".repeat(129))] {
        let mut req = w.http.get(&url).bearer_auth(KEY_A);
        if let Some(s) = sent {
            req = req.header("x-request-id", s);
        }
        let id = id_of(&req.send().await.unwrap());
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{sent:?} -> {id}");
        assert!(seen.insert(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authentication_failures_are_clear() {
    let w = world().await;
    let url = w.proxy.http_url("/toolbox/sbx1/work-dir");
    // No credential: 401 JSON in Daytona's error shape, marked as the proxy's.
    let (s, b, h) = json_of(w.http.get(&url).send().await.unwrap()).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(h["x-sandbar-error"], "unauthorized");
    assert_eq!(b["statusCode"], 401);
    assert!(b["message"].as_str().unwrap().contains("authentication required"));
    assert!(h.get("location").is_none());
    // A browser gets a small HTML page, never a redirect.
    let r = w.http.get(&url).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("authentication required"));
    // Unknown key: 401. Another organization's key: 404, as for a sandbox that does not exist.
    let (s, _, _) = json_of(w.http.get(&url).bearer_auth("nope").send().await.unwrap()).await;
    assert_eq!(s, 401);
    let (s, b, h) = json_of(w.http.get(&url).bearer_auth(KEY_B).send().await.unwrap()).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(h["x-sandbar-error"], "sandbox-not-found");
    let (s2, b2, _) =
        json_of(w.http.get(w.proxy.http_url("/toolbox/nosuch/work-dir")).bearer_auth(KEY_A).send().await.unwrap())
            .await;
    assert_eq!(s2, 404);
    assert_eq!(
        b["message"].as_str().unwrap().replace("sbx1", "X"),
        b2["message"].as_str().unwrap().replace("nosuch", "X")
    );
    // The right key works, and a client-sent daemon token is replaced by the real one (a wrong one would 401).
    let r = w.http.get(&url).bearer_auth(KEY_A).header("x-sandbar-daemon-token", "forged").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Authorize answers are cached for their ttl: repeated calls do not ask the API again.
    let before = w.api.authorize_calls.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(w.http.get(&url).bearer_auth(KEY_A).send().await.unwrap().status(), 200);
    }
    assert_eq!(w.api.authorize_calls.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_states_get_their_own_answers() {
    let w = world().await;
    let url = w.proxy.http_url("/toolbox/sbx1/work-dir");
    w.api.update_route("sbx1", |r| {
        r.state = SandboxState::Stopped;
        r.daemon_addr = None;
    });
    // The long-poll drops the cached route; allow it a moment.
    let mut last = (0, Value::Null, Default::default());
    for _ in 0..50 {
        last = json_of(w.http.get(&url).bearer_auth(KEY_A).send().await.unwrap()).await;
        if last.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, b, h) = last;
    assert_eq!(s, 409, "{b}");
    assert_eq!(h["x-sandbar-error"], "sandbox-stopped");
    assert!(b["message"].as_str().unwrap().contains("sbx1 is stopped"), "{b}");

    w.api.update_route("sbx1", |r| r.state = SandboxState::Archived);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, b, _) = json_of(w.http.get(&url).bearer_auth(KEY_A).send().await.unwrap()).await;
    assert_eq!(s, 410, "{b}");
    assert!(b["message"].as_str().unwrap().contains("archived"));

    w.api.update_route("sbx1", |r| r.state = SandboxState::Destroyed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, b, _) = json_of(w.http.get(&url).bearer_auth(KEY_A).send().await.unwrap()).await;
    assert_eq!(s, 410, "{b}");
    assert!(b["message"].as_str().unwrap().contains("deleted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_follows_a_daemon_that_moved() {
    let w = world().await;
    let url = w.proxy.http_url("/toolbox/sbx1/work-dir");
    let (s, b, _) = json_of(w.http.get(&url).bearer_auth(KEY_A).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(b["dir"], w.daemon.work.to_string_lossy().as_ref());
    // The sandbox restarts somewhere else, with a new daemon token.
    let moved = TestDaemon::start_token("daemon-token-2");
    w.api.update_route("sbx1", |r| {
        r.daemon_addr = Some(moved.addr.clone());
        r.daemon_token = moved.token.clone();
    });
    let mut dir = Value::Null;
    for _ in 0..50 {
        let (s, b, _) = json_of(w.http.get(&url).bearer_auth(KEY_A).send().await.unwrap()).await;
        assert_eq!(s, 200, "{b}");
        dir = b["dir"].clone();
        if dir == moved.work.to_string_lossy().as_ref() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dir, moved.work.to_string_lossy().as_ref());
    // The old daemon dies; the new one keeps answering. A dead daemon is a 502 that says so.
    drop(moved);
    let (s, b, h) = json_of(w.http.get(&url).bearer_auth(KEY_A).send().await.unwrap()).await;
    assert_eq!(s, 502, "{b}");
    assert_eq!(h["x-sandbar-error"], "daemon-unreachable");
    assert!(b["message"].as_str().unwrap().contains("daemon"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_makes_one_route_lookup() {
    let w = world().await;
    let before = w.api.route_lookups.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, url) = (w.http.clone(), w.proxy.http_url("/toolbox/sbx1/version"));
        tasks.push(tokio::spawn(async move { c.get(url).bearer_auth(KEY_A).send().await.unwrap().status() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Metrics are recorded when each request's logging phase ends, just after the response went out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.api.route_lookups.load(Ordering::SeqCst) - before, 1);
    // Metrics show it.
    let text = reqwest::get(format!("http://{}/metrics", w.proxy.metrics)).await.unwrap().text().await.unwrap();
    assert!(text.contains("sandbar_proxy_requests_total{class=\"2xx\"} 50"), "{text}");
    assert!(text.contains("sandbar_proxy_route_cache_misses_total 1"), "{text}");
    assert!(text.contains("sandbar_proxy_route_cache_hits_total 49"), "{text}");
    // Activity was reported, batched.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reports = w.api.activity.lock().unwrap().clone();
    assert!(!reports.is_empty() && reports.len() <= 3, "{reports:?}");
    assert!(reports.iter().all(|r| r == &vec!["sbx1".to_owned()]), "{reports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preview_urls_reach_a_server_in_the_sandbox() {
    // Verifying clients accept a wildcard only with two labels after it: `*.sandbar.localhost`, not `*.localhost`.
    let w = world_on("sandbar.localhost").await;
    let app = start_app().await;
    w.api.add_preview_token("preview-tok", "sbx1");
    let host = format!("{app}-sbx1.sandbar.localhost:{}", w.proxy.https.port());
    let client = w.proxy.https_client(&[&format!("{app}-sbx1.sandbar.localhost")]);
    let url = format!("https://{host}/hello?a=1");
    // Private sandbox: nothing -> 401; preview header -> 200 and nothing internal reaches the app.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let r = client.get(&url).header("x-daytona-preview-token", "preview-tok").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.starts_with("hello from the sandbox /hello?a=1 leaked=[]"), "{body}");
    // Query token on a page load: a redirect to the URL without it, and a cookie keeps the browser in (followed
    // here without the cookie, so the page itself is refused).
    let r = client.get(format!("https://{host}/hello?DAYTONA_SANDBOX_AUTH_KEY=preview-tok&b=2")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.url().path(), r.url().query()), (401, "/hello", Some("b=2")));
    let r = raw(
        w.proxy.http,
        &format!("GET /hello?DAYTONA_SANDBOX_AUTH_KEY=preview-tok&b=2 HTTP/1.1\r\nHost: {app}-sbx1.sandbar.localhost\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 302") && r.to_ascii_lowercase().contains("location: /hello?b=2\r\n"), "{r}");
    assert!(r.contains("sandbar_preview_token=preview-tok;"), "{r}");
    let r = client.get(&url).header("cookie", "sandbar_preview_token=preview-tok; theirs=1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().ends_with("cookie=theirs=1"));
    // An API key of the organization works too; a bad token does not.
    assert_eq!(client.get(&url).bearer_auth(KEY_A).send().await.unwrap().status(), 200);
    assert_eq!(client.get(&url).header("x-daytona-preview-token", "bad").send().await.unwrap().status(), 401);
    // Public sandbox: preview ports need nothing, the daemon's own ports still do.
    w.api.update_route("sbx1", |r| r.public = true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let toolbox_host = format!("2280-sbx1.sandbar.localhost:{}", w.proxy.http.port());
    let r = w.http.get(w.proxy.http_url("/work-dir")).header("host", &toolbox_host).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = w
        .http
        .get(w.proxy.http_url("/work-dir"))
        .header("host", &toolbox_host)
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Nothing listening on a port: a 502 from the daemon naming the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = w
        .http
        .get(w.proxy.http_url("/"))
        .header("host", format!("{closed}-sbx1.sandbar.localhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains(&format!("port {closed}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_access_is_asked_of_the_api_and_cached() {
    let w = world().await;
    let app = start_app().await;
    w.api.update_route("sbx1", |r| r.public = true);
    let get = |port: u16| {
        let (c, url) = (w.http.clone(), w.proxy.http_url("/hello"));
        async move { c.get(url).header("host", format!("{port}-sbx1.localhost")).send().await.unwrap().status() }
    };
    // Without a credential the proxy asks the API (once for a burst), which opens a public sandbox's own ports
    // and never the daemon's.
    for (port, status) in [(app, 200), (ports::TOOLBOX, 401), (ports::TERMINAL, 401)] {
        let before = w.api.authorize_calls.load(Ordering::SeqCst);
        let answers = futures_util::future::join_all((0..20).map(|_| get(port))).await;
        assert!(answers.iter().all(|s| *s == status), "port {port}: {answers:?}");
        assert_eq!(w.api.authorize_calls.load(Ordering::SeqCst) - before, 1, "port {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_echo_through_a_preview_url() {
    let w = world().await;
    let app = start_app().await;
    w.api.add_preview_token("preview-tok", "sbx1");
    let mut req = format!("ws://{}/ws", w.proxy.http).into_client_request().unwrap();
    req.headers_mut().insert("host", format!("{app}-sbx1.localhost").parse().unwrap());
    // Without a token the upgrade is refused with a 401, not a redirect.
    match tokio_tungstenite::connect_async(req.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    req.headers_mut().insert("x-daytona-preview-token", "preview-tok".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..200 {
        ws.send(Message::Text(format!("m{i}").into())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), format!("echo:m{i}")),
            other => panic!("{other:?}"),
        }
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::Binary(big.clone().into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert_eq!(b.len(), big.len()),
        other => panic!("{other:?}"),
    }
    let text = reqwest::get(format!("http://{}/metrics", w.proxy.metrics)).await.unwrap().text().await.unwrap();
    assert!(text.contains("sandbar_proxy_open_websockets 1"), "{text}");
    ws.close(None).await.unwrap();
}

/// Every upgrade stays open while the machine is busy. pingora 0.9.1 alone tears down about half of the upgrades
/// whose `101` is ready as soon as forwarding starts (cloudflare/pingora#946; `edge::upgrade` is the workaround):
/// threads spinning on every core make that common, as CI's load does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_under_cpu_load_all_stay_open() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let w = world().await;
    let app = start_app().await;
    w.api.add_preview_token("preview-tok", "sbx1");
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for i in 0..300 {
        let mut req = format!("ws://{}/ws", w.proxy.http).into_client_request().unwrap();
        req.headers_mut().insert("host", format!("{app}-sbx1.localhost").parse().unwrap());
        req.headers_mut().insert("x-daytona-preview-token", "preview-tok".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::Text(format!("u{i}").into())).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == format!("echo:u{i}") => {}
            other => failures.push(format!("upgrade {i}: {other:?}")),
        }
        let _ = ws.close(None).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    assert!(failures.is_empty(), "{} of 300 upgrades closed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pty_websocket_through_the_toolbox_path() {
    let w = world().await;
    let mut req = format!("ws://{}/toolbox/sbx1/process/pty/create-connect?id=p1&cols=100&rows=30", w.proxy.http)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {KEY_A}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => assert!(t.contains("connected"), "{t}"),
        other => panic!("{other:?}"),
    }
    ws.send(Message::Binary("stty size; echo done-$((6*7))\n".as_bytes().to_vec().into())).await.unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains("done-42") {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}; seen {seen:?}"),
        }
    }
    assert!(seen.contains("30 100"), "{seen}");
    // Quiet for a while: no idle cut.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ws.send(Message::Binary("exit\n".as_bytes().to_vec().into())).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1000);
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_4xx() {
    let w = world().await;
    for (host, path) in [("bad host", "/"), ("a..b", "/"), ("0-sbx1.localhost", "/"), ("x:99999999", "/")] {
        let out = raw(w.proxy.http, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{host}: {out}");
        assert!(out.to_ascii_lowercase().contains("x-sandbar-error: bad-"), "{out}");
    }
    let out =
        raw(w.proxy.http, "GET /toolbox/a%2F..%2Fb/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400") && out.contains("malformed sandbox id"), "{out}");
    let out = raw(w.proxy.http, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(w.proxy.http, "GET /elsewhere HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 404") && out.contains("no sandbox in this request"), "{out}");
    // A 2 MiB header is refused (4xx or closed), and the proxy keeps serving.
    let huge = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(2 << 20));
    let out = raw(w.proxy.http, &huge).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 4"), "{}", &out[..out.len().min(200)]);
    let r = w.http.get(w.proxy.http_url("/toolbox/sbx1/version")).bearer_auth(KEY_A).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_and_returns() {
    let w = world().await;
    let r = w.http.get(w.proxy.http_url("/toolbox/sbx1/version")).bearer_auth(KEY_A).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A slow request in flight finishes after shutdown starts.
    let (c, url) = (w.http.clone(), w.proxy.http_url("/toolbox/sbx1/process/execute"));
    let slow = tokio::spawn(async move {
        c.post(url)
            .bearer_auth(KEY_A)
            .json(&json!({"command": "sleep 1; echo late"}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.proxy.shutdown.send(true).unwrap();
    let body = slow.await.unwrap();
    assert!(body.contains("late"), "{body}");
    tokio::time::timeout(Duration::from_secs(15), w.proxy.task).await.unwrap().unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(w.proxy.http).await.is_err(), "listener closed");
}
