//! The dashboard through the proxy, against the real API in-process and real daemons: the proxy serves the
//! dashboard's pages and the REST API (never the services' own paths), and the dashboard's session cookie opens a
//! sandbox's toolbox only for requests the dashboard's own page makes (`Sec-Fetch-Site: same-origin`, same
//! `Origin`), only for its organization, and only while the session lives; a PTY WebSocket works with it.

// Setup helpers outside #[test] functions panic on a broken test setup, as the tests do.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use sandbar_testkit::stack::Stack;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in through the proxy with `key`: the session cookie's value and the page's CSRF token.
async fn sign_in(stack: &Stack, key: &str) -> (String, String) {
    let http = client();
    let origin = stack.proxy.http_url("");
    let r = http
        .post(stack.proxy.http_url("/dashboard/login"))
        .header("origin", &origin)
        .form(&[("key", key)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let set = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let value = set.split(';').next().unwrap().strip_prefix("sandbar_session=").unwrap().to_owned();
    let page = http
        .get(stack.proxy.http_url("/dashboard/sandboxes"))
        .header("cookie", format!("sandbar_session={value}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page.split(r#"name="csrf-token" content=""#).nth(1).unwrap().split('"').next().unwrap().to_owned();
    (value, csrf)
}

/// A toolbox GET through the proxy with the session cookie and `Sec-Fetch-Site` (if any).
async fn toolbox_get(stack: &Stack, id: &str, path: &str, session: &str, fetch_site: Option<&str>) -> (u16, Value) {
    let mut r = client()
        .get(stack.proxy.http_url(&format!("/toolbox/{id}{path}")))
        .header("cookie", format!("theirs=1; sandbar_session={session}"));
    if let Some(site) = fetch_site {
        r = r.header("sec-fetch-site", site);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_the_dashboard_and_the_rest_api_but_not_the_services_paths() {
    let stack = Stack::start(|_| {}).await;
    let http = client();
    let page = http.get(stack.proxy.http_url("/dashboard/login")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers().get("x-sandbar-request-id").is_some());
    assert!(page.text().await.unwrap().contains("Sign in"));
    // Without a session: the sign-in page.
    let r = http.get(stack.proxy.http_url("/dashboard/sandboxes")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/dashboard/login"));
    // The REST API, with a key, through the proxy.
    let r = http.get(stack.proxy.http_url("/api/sandbox")).bearer_auth(&stack.key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(stack.proxy.http_url("/api/sandbox")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The paths of the proxy's and runners' calls are not offered at the edge, however they are spelled.
    for p in [
        "/api/internal/routes/x",
        "/api//internal/authorize",
        "/api/%69nternal/routes/changes",
        "/api/./internal/activity",
        "/api/runners/r1/jobs",
    ] {
        let r = http.get(stack.proxy.http_url(p)).bearer_auth("proxy-token").send().await.unwrap();
        assert_eq!(r.status(), 404, "{p}");
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().is_some(), "{p}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_opens_its_organizations_toolbox_from_its_own_page_only() {
    let stack = Stack::start(|_| {}).await;
    let id = stack.started_sandbox(json!({})).await;
    let (session, csrf) = sign_in(&stack, &stack.key).await;

    let (s, v) = toolbox_get(&stack, &id, "/work-dir", &session, Some("same-origin")).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["dir"].as_str().is_some(), "{v}");
    // Not from the dashboard's page (another origin of the same site, another site, or no browser at all): the
    // cookie is not a credential.
    for site in [None, Some("same-site"), Some("cross-site"), Some("none")] {
        let (s, v) = toolbox_get(&stack, &id, "/work-dir", &session, site).await;
        assert_eq!(s, 401, "{site:?}: {v}");
    }
    // A state-changing toolbox call from another origin is refused before any credential counts.
    let r = client()
        .post(stack.proxy.http_url(&format!("/toolbox/{id}/files/folder?path=/tmp/evil&mode=755")))
        .header("cookie", format!("sandbar_session={session}"))
        .header("sec-fetch-site", "same-origin")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A made-up session is nothing.
    let (s, _) = toolbox_get(&stack, &id, "/work-dir", "not-a-session", Some("same-origin")).await;
    assert_eq!(s, 401);

    // Another organization's session: the sandbox does not exist for it.
    let other_key = stack.org_key("org-b").await;
    let (other, _) = sign_in(&stack, &other_key).await;
    let (s, v) = toolbox_get(&stack, &id, "/work-dir", &other, Some("same-origin")).await;
    assert_eq!(s, 404, "{v}");

    // A terminal: a PTY made and attached with the cookie, as the dashboard's page does.
    let origin = stack.proxy.http_url("");
    let r = client()
        .post(stack.proxy.http_url(&format!("/toolbox/{id}/process/pty")))
        .header("cookie", format!("sandbar_session={session}"))
        .header("sec-fetch-site", "same-origin")
        .header("origin", &origin)
        .json(&json!({"id": "dashboard-t1", "cols": 80, "rows": 24}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    // A WebSocket handshake, as Chromium sends it: no fetch metadata, its page's Origin. Without an Origin (not a
    // browser) the cookie is nothing; with another origin's, the handshake is refused.
    let url = format!("ws://{}/toolbox/{id}/process/pty/dashboard-t1/connect", stack.proxy.http);
    let handshake = |origin: Option<&str>| {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut().insert("cookie", format!("sandbar_session={session}").parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    for (o, status) in [(None, 401), (Some("http://evil.example"), 403)] {
        match handshake(o).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), status, "{o:?}"),
            other => panic!("{o:?}: {:?}", other.map(|_| ())),
        }
    }
    let (mut ws, _) = handshake(Some(&origin)).await.unwrap();
    ws.send(Message::Text("echo dash$((6*7))\n".into())).await.unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains("dash42") {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.expect("no PTY output").unwrap().unwrap();
        if let Message::Binary(b) = m {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    drop(ws);

    // Signed out: the session opens nothing it had not been answered for already (answers are cached for at most
    // half a minute, as for API keys).
    let r = client()
        .post(stack.proxy.http_url("/dashboard/logout"))
        .header("cookie", format!("sandbar_session={session}"))
        .header("origin", &origin)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let second = stack.started_sandbox(json!({})).await;
    let (s, v) = toolbox_get(&stack, &second, "/work-dir", &session, Some("same-origin")).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = stack.call(Method::GET, &format!("/sandbox/{second}"), None).await;
    assert_eq!(s, 200, "{v}");
}
