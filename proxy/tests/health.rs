//! The proxy's admin listener: `/healthz` answers while the process serves, `/readyz` only while the route-change
//! feed from the API answers (503 with the reason while the API is stopped, 200 again once it is back), and
//! `/metrics` is there only: the edge listeners do not serve it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqwest::StatusCode;
use sandbar_testkit::proxy::Proxy;

/// An API that answers the route-change feed with "nothing changed", on `addr`, until `stop` fires; then it closes
/// its listener and its connections.
async fn serve_api(addr: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let app = Router::new().route(
        "/api/internal/routes/changes",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            axum::Json(serde_json::json!({"seq": 1, "sandboxIds": []}))
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

async fn fetch(url: &str) -> (StatusCode, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// Asks `url` until it answers `want` (at most 60 s); its last body.
async fn becomes(url: &str, want: StatusCode) -> String {
    let mut last = String::new();
    for _ in 0..300 {
        let (s, body) = fetch(url).await;
        if s == want {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{url} never answered {want}; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_route_feed_and_metrics_stay_on_the_admin_listener() {
    let (api, stop, task) = serve_api("127.0.0.1:0".parse().unwrap()).await;
    let proxy =
        Proxy::start_with(&format!("http://{api}/api"), |c| c.changes_wait = std::time::Duration::from_secs(1)).await;
    let admin = |p: &str| format!("http://{}{p}", proxy.metrics);

    let (s, body) = fetch(&admin("/healthz")).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"status":"ok"}"#));
    let body = becomes(&admin("/readyz"), StatusCode::OK).await;
    assert_eq!(body, r#"{"status":"ready"}"#);
    assert!(proxy.metrics_text().await.contains("sandbar_proxy_route_feed_up 1"));

    // The edge does not serve the metrics (nor the admin's health), whatever the host.
    for path in ["/metrics", "/readyz"] {
        let (s, body) = fetch(&proxy.http_url(path)).await;
        assert_ne!(s, StatusCode::OK, "{path}: {body}");
        assert!(!body.contains("sandbar_proxy_"), "{body}");
    }

    // The API stops: not ready, saying why; the process still lives.
    stop.send(()).unwrap();
    task.await.unwrap();
    let body = becomes(&admin("/readyz"), StatusCode::SERVICE_UNAVAILABLE).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["message"].as_str().unwrap().contains("route feed from the API is down"), "{v}");
    assert_eq!(fetch(&admin("/healthz")).await.0, StatusCode::OK);
    assert!(proxy.metrics_text().await.contains("sandbar_proxy_route_feed_up 0"));

    // Back on the same address: ready again.
    let (_api, stop, task) = serve_api(api).await;
    becomes(&admin("/readyz"), StatusCode::OK).await;
    let (s, body) = fetch(&admin("/nothing")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("\"message\""), "{body}");
    stop.send(()).unwrap();
    task.await.unwrap();
}
