//! `/proxy/{port}/{*path}`: the daemon forwards HTTP (bodies streamed) and WebSocket upgrades to 127.0.0.1:{port}
//! inside the sandbox, keeps the query, and never passes its own credential on.

use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::routing::{any, get};
use futures_util::{SinkExt, StreamExt};
use sandbar_testkit::daemon::TestDaemon;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A server "inside the sandbox": echoes what it received, and a WebSocket echo at /ws.
async fn backend() -> std::io::Result<u16> {
    async fn echo(method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap, body: String) -> String {
        let token = headers.contains_key("x-sandbar-daemon-token") || headers.contains_key("x-sandbar-daemon-auth");
        format!("{method} {uri} token={token} body={body}")
    }
    async fn ws(up: WebSocketUpgrade) -> axum::response::Response {
        up.on_upgrade(|mut s| async move {
            while let Some(Ok(m)) = s.recv().await {
                if let AxMessage::Text(t) = m
                    && s.send(AxMessage::Text(format!("echo:{}", t.as_str()).into())).await.is_err()
                {
                    break;
                }
            }
        })
    }
    let app = axum::Router::new().route("/ws", get(ws)).fallback(any(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

#[tokio::test]
async fn http_is_forwarded_with_query_and_body_without_the_token() {
    let d = TestDaemon::start();
    let port = backend().await.unwrap();
    let r = d.client.get(d.url(&format!("/proxy/{port}/a/b?x=1&y=2"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "GET /a/b?x=1&y=2 token=false body=");
    let r = d.client.post(d.url(&format!("/proxy/{port}/"))).body("hello").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "POST / token=false body=hello");
    let r = d.client.get(d.url(&format!("/proxy/{port}"))).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "GET / token=false body=");
    // The old token header, should a client send one, does not reach the app either.
    let r =
        d.client.get(d.url(&format!("/proxy/{port}/old"))).header("x-sandbar-daemon-token", "x").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "GET /old token=false body=");
}

#[tokio::test]
async fn token_required_and_errors_are_clear() {
    let d = TestDaemon::start();
    let port = backend().await.unwrap();
    let r = reqwest::get(d.url(&format!("/proxy/{port}/x"))).await.unwrap();
    assert_eq!(r.status(), 401);
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (s, b) = d.get(&format!("/proxy/{closed}/x")).await;
    assert_eq!(s, 502, "{b}");
    assert!(b["message"].as_str().unwrap().contains(&format!("port {closed}")), "{b}");
    assert_eq!(d.get("/proxy/0/x").await.0, 400);
    assert_eq!(d.get("/proxy/99999/x").await.0, 400);
    assert_eq!(d.get("/proxy/abc/x").await.0, 400);
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    let d = TestDaemon::start();
    let port = backend().await.unwrap();
    let mut req = d.ws_url(&format!("/proxy/{port}/ws")).into_client_request().unwrap();
    let auth = d.sign("GET", req.uri().path_and_query().unwrap().as_str());
    req.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..100 {
        ws.send(Message::Text(format!("m{i}").into())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), format!("echo:m{i}")),
            other => panic!("{other:?}"),
        }
    }
    ws.close(None).await.unwrap();
}
