//! The runner's `/healthz` and `/readyz` answer anyone; `/metrics` and `/info` only the runner token. `/readyz`
//! follows the control plane: 503 with the reason until the runner has registered, 200 once it has, 503 again
//! while the API is stopped, 200 once it is back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::TestRunner;

const TOKEN: &str = "runner-http-token";

/// A control plane that takes everything and hands out no job, on `addr`, until `stop` fires; then it closes its
/// listener and its connections (stopped, as far as the runner can tell).
async fn fake_api(addr: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/api/runners/{r}/sandboxes", post(|| async { StatusCode::NO_CONTENT }))
        .route("/api/runners/{r}/states", post(|| async { StatusCode::NO_CONTENT }))
        .route("/api/runners/{r}/register", post(|| async { axum::Json(serde_json::json!({"credential": "c"})) }))
        .route("/api/runners/{r}/heartbeat", post(|| async { axum::Json(serde_json::json!({"schedulable": true})) }))
        .route(
            "/api/runners/{r}/jobs",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                axum::Json(serde_json::json!([]))
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, task)
}

async fn get_status(http: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut r = http.get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// Asks `/readyz` until it answers `want` (at most 60 s); its last body.
async fn ready_becomes(http: &reqwest::Client, url: &str, want: StatusCode) -> String {
    let mut last = String::new();
    for _ in 0..300 {
        let (s, body) = get_status(http, url, None).await;
        if s == want {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("/readyz never answered {want}; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_open_metrics_need_the_token_and_readiness_follows_the_api() {
    let (_t, runner) = TestRunner::start("health").await;
    let (api, stop, task) = fake_api("127.0.0.1:0".parse().unwrap()).await;
    let cp = sandbar_runner::control::ControlPlane::new(&format!("http://{api}/api"), "join").unwrap();
    let app = sandbar_runner::http::router(runner.clone(), TOKEN, cp.contact());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{root}{p}");

    let (s, body) = get_status(&http, &url("/healthz"), None).await;
    assert_eq!(
        (s, serde_json::from_str::<serde_json::Value>(&body).unwrap()),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    // Not registered yet: not ready, with the reason.
    let (s, body) = get_status(&http, &url("/readyz"), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("not registered"), "{body}");
    // Metrics and info: the runner token only.
    for path in ["/metrics", "/info", "/health"] {
        for token in [None, Some("wrong"), Some("runner-http-tokeN")] {
            let (s, body) = get_status(&http, &url(path), token).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} {token:?}: {body}");
            assert!(!body.contains("sandbar_runner"), "{body}");
        }
    }
    let (s, text) = get_status(&http, &url("/metrics"), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(text.contains("# TYPE sandbar_runner_cpu_used_seconds counter"), "{text}");
    assert!(text.contains("sandbar_runner_capacity_memory_bytes "), "{text}");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent =
        tokio::spawn(sandbar_runner::control::run(runner.clone(), cp, shutdown.clone(), Duration::from_secs(5)));
    let body = ready_becomes(&http, &url("/readyz"), StatusCode::OK).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), serde_json::json!({"status": "ready"}));

    // The API stops: not ready, saying why; back on the same address: ready again.
    stop.send(()).unwrap();
    task.await.unwrap();
    let body = ready_becomes(&http, &url("/readyz"), StatusCode::SERVICE_UNAVAILABLE).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("control plane unreachable"), "{message}");
    let (_api, stop, task) = fake_api(api).await;
    ready_becomes(&http, &url("/readyz"), StatusCode::OK).await;
    // /healthz never depended on the API.
    assert_eq!(get_status(&http, &url("/healthz"), None).await.0, StatusCode::OK);

    shutdown.cancel();
    agent.await.unwrap();
    stop.send(()).unwrap();
    task.await.unwrap();
}
