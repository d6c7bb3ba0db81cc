//! The proxy against the real API (in-process, hand-moved clock) and real daemons started and stopped by a runner
//! speaking the job protocol: auto-stopped sandboxes woken by authorized requests (one start for a burst, a bounded
//! wait, clear 409s otherwise), and Daytona's signed preview URLs (`{port}-{token}.{domain}`) working until they
//! expire or are expired, checked with reqwest and curl.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use sandbar_testkit::proxy::{json_of, start_app};
use sandbar_testkit::stack::Stack;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_auto_stopped_sandbox_wakes_for_a_burst_of_authorized_requests() {
    let s = Stack::start(|_| {}).await;
    let id = s.started_sandbox(json!({"autoStopInterval": 15})).await;
    let (st, b, _) = s.exec(&id, "echo before").await;
    assert_eq!((st, b["result"].as_str().map(str::trim)), (200, Some("before")), "{b}");

    s.auto_stop(&id, 15).await;
    let starts_before = s.runner.starts.load(Ordering::SeqCst);
    // A burst of calls for the stopped sandbox: all are held while it starts, then answered by its new daemon.
    let mut calls = Vec::new();
    for i in 0..12 {
        let (http, url, key) =
            (s.http.clone(), s.proxy.http_url(&format!("/toolbox/{id}/process/execute")), s.key.clone());
        calls.push(tokio::spawn(async move {
            let r = http.post(url).bearer_auth(key).json(&json!({"command": format!("echo woke-{i}")})).send().await;
            json_of(r.unwrap()).await
        }));
    }
    for (i, c) in calls.into_iter().enumerate() {
        let (st, b, _) = c.await.unwrap();
        assert_eq!(st, 200, "request {i}: {b}");
        assert_eq!(b["result"].as_str().unwrap().trim(), format!("woke-{i}"));
    }
    assert_eq!(s.state(&id).await, "started");
    assert_eq!(s.runner.starts.load(Ordering::SeqCst) - starts_before, 1, "one start for the whole burst");
    assert_eq!(s.proxy.metric("sandbar_proxy_wake_requests_total").await, 1.0);

    // A sandbox its user stopped stays stopped: a clear 409, and nothing is started.
    let (st, v) = s.call(Method::POST, &format!("/sandbox/{id}/stop"), None).await;
    assert_eq!(st, 200, "{v}");
    s.wait_state(&id, "stopped").await;
    let mut last = (0, Value::Null, Default::default());
    for _ in 0..50 {
        last = s.exec(&id, "echo no").await;
        if last.0 == 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, b, h) = last;
    assert_eq!(st, 409, "{b}");
    assert_eq!(h["x-sandbar-error"], "sandbox-stopped");
    assert!(b["message"].as_str().unwrap().contains(&format!("{id} is stopped")), "{b}");
    assert_eq!(s.state(&id).await, "stopped");
    assert_eq!(s.proxy.metric("sandbar_proxy_wake_requests_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waking_is_bounded_and_only_for_authorized_callers() {
    let s = Stack::start(|c| c.wake_timeout = Duration::from_millis(1500)).await;
    let app = start_app().await;
    let id = s.started_sandbox(json!({"autoStopInterval": 5, "public": true})).await;
    let preview =
        |path: &str| s.http.get(s.proxy.http_url(path)).header("host", format!("{app}-{id}.localhost")).send();
    let (st, b, _) = json_of(preview("/hello").await.unwrap()).await;
    assert_eq!(st, 200, "{b}");
    s.auto_stop(&id, 5).await;

    // Anonymous traffic to a public sandbox does not start it, and says what would.
    let (st, b, h) = json_of(preview("/hello").await.unwrap()).await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(h["x-sandbar-error"], "sandbox-stopped");
    assert!(b["message"].as_str().unwrap().contains("API key or preview token starts it"), "{b}");
    assert_eq!(s.state(&id).await, "stopped");

    // A start that takes longer than the wake timeout: a clear 409 after the bounded wait, not a hang.
    s.runner.hold_starts.store(true, Ordering::SeqCst);
    let (st, b, h) = s.exec(&id, "echo slow").await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(h["x-sandbar-error"], "sandbox-starting");
    assert!(b["message"].as_str().unwrap().contains("being started"), "{b}");
    assert_eq!(s.proxy.metric("sandbar_proxy_wake_timeouts_total").await, 1.0);
    assert_eq!(s.state(&id).await, "starting");
    // Once the start completes, waiting requests go through (no second start is asked for).
    s.runner.hold_starts.store(false, Ordering::SeqCst);
    let (st, b, _) = s.exec(&id, "echo finally").await;
    assert_eq!((st, b["result"].as_str().map(str::trim)), (200, Some("finally")), "{b}");
    assert_eq!(s.proxy.metric("sandbar_proxy_wake_requests_total").await, 1.0);
    assert_eq!(s.runner.starts.load(Ordering::SeqCst), 1);

    // Archived: 410 with the reason; never started by a request.
    let (st, _) = s.call(Method::POST, &format!("/sandbox/{id}/stop"), None).await;
    assert_eq!(st, 200);
    s.wait_state(&id, "stopped").await;
    let (st, v) = s.call(Method::POST, &format!("/sandbox/{id}/archive"), None).await;
    assert_eq!(st, 200, "{v}");
    let mut last = (0, Value::Null, Default::default());
    for _ in 0..50 {
        last = s.exec(&id, "echo no").await;
        // `archiving` answers 410 too; wait for the runner's result.
        if last.0 == 410 && last.1["message"].as_str().is_some_and(|m| m.contains("archived")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, 410, "{}", last.1);
    assert!(last.1["message"].as_str().unwrap().contains("archived"), "{}", last.1);
    assert_eq!(s.runner.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_preview_urls_work_until_expired() {
    let s = Stack::start(|_| {}).await;
    let app = start_app().await;
    let id = s.started_sandbox(json!({})).await;

    let path = format!("/sandbox/{id}/ports/{app}/signed-preview-url?expiresInSeconds=600");
    let (st, signed) = s.call(Method::GET, &path, None).await;
    assert_eq!(st, 200, "{signed}");
    let token = signed["token"].as_str().unwrap().to_owned();
    let url = signed["url"].as_str().unwrap().to_owned();
    // Daytona's form: the token stands where the sandbox id would, on the proxy's own domain and port.
    assert_eq!(url, format!("http://{app}-{token}.localhost:{}", s.proxy.http.port()));
    assert_eq!(signed["port"], app);
    assert_eq!(signed["sandboxId"], id.as_str());

    // Works with no header or cookie at all; nothing of the token reaches the app.
    let (st, body, _) = s.get_signed(&url, "/hello?x=1").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.starts_with("hello from the sandbox /hello?x=1 leaked=[]"), "{body}");
    // curl too (a real client resolving the name itself through --resolve).
    let host = format!("{app}-{token}.localhost");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--resolve", &format!("{host}:{}:127.0.0.1", s.proxy.http.port())])
        .arg(format!("{url}/hello"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hello from the sandbox /hello"), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    // The token opens only its own port.
    let other = url.replacen(&format!("http://{app}-"), "http://2280-", 1);
    let (st, body, h) = s.get_signed(&other, "/hello?x=1").await;
    assert_eq!(st, 401, "{body}");
    assert_eq!(h["x-sandbar-error"], "signed-url-invalid");
    // A token nobody issued.
    let forged = url.replace(&token, &"0".repeat(32));
    assert_eq!(s.get_signed(&forged, "/hello?x=1").await.0, 401);

    // Expired through the API: it stops working at once (the route-change feed carries it), with a clear message.
    let (st, v) =
        s.call(Method::POST, &format!("/sandbox/{id}/ports/{app}/signed-preview-url/{token}/expire"), None).await;
    assert_eq!(st, 200, "{v}");
    let mut last = (0, String::new(), Default::default());
    for _ in 0..40 {
        last = s.get_signed(&url, "/hello?x=1").await;
        if last.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, 401, "{}", last.1);
    assert!(last.1.contains("expired or revoked"), "{}", last.1);

    // Expiry by time: a 2 s URL works, then (API time moved past it, and the proxy's cache no longer than the
    // token's life) stops.
    let path = format!("/sandbox/{id}/ports/{app}/signed-preview-url?expiresInSeconds=2");
    let (_, short) = s.call(Method::GET, &path, None).await;
    let short_url = short["url"].as_str().unwrap().to_owned();
    assert_eq!(s.get_signed(&short_url, "/hello?x=1").await.0, 200);
    s.clock.advance_secs(3);
    s.runner.heartbeat().await;
    let mut last = 0;
    for _ in 0..60 {
        last = s.get_signed(&short_url, "/hello?x=1").await.0;
        if last == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 401, "an expired signed URL must stop working");
    // A new one works.
    let path = format!("/sandbox/{id}/ports/{app}/signed-preview-url");
    let (_, fresh) = s.call(Method::GET, &path, None).await;
    assert_eq!(s.get_signed(fresh["url"].as_str().unwrap(), "/hello?x=1").await.0, 200);
}
