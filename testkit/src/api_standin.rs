//! A stand-in for the API's internal surface (axum on 127.0.0.1:0) that follows `proto/src/api.rs`: routes and
//! their long-polled changes, authorize, activity reports. Its answers come from data the test sets (routes, API
//! keys, preview tokens); it counts the calls the proxy makes, so tests can check caching and single-flight.
//!
//! `POST /internal/authorize` without a credential answers as the API's rule does with the same data: a route
//! marked `public` is open on every port but the daemon's own ([`DAEMON_PORTS`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{ActivityReport, AuthorizeRequest, AuthorizeResponse, Route, RouteChanges};
use sandbar_proto::ports;
use sandbar_proto::runner::SandboxState;

use crate::daemon::TestDaemon;

/// The service token the proxy presents (and the stand-in and the stack's API accept).
pub const PROXY_TOKEN: &str = "proxy-service-token";

/// The daemon's own servers: never open without a credential, even on a public sandbox.
pub const DAEMON_PORTS: [u16; 3] = [ports::TOOLBOX, ports::SSH, ports::TERMINAL];

/// What the API stand-in knows.
#[derive(Default)]
pub struct ApiState {
    pub routes: Mutex<HashMap<String, Route>>,
    /// api key -> organization
    pub keys: Mutex<HashMap<String, String>>,
    /// preview token -> sandbox id
    pub preview_tokens: Mutex<HashMap<String, String>>,
    /// (seq, sandbox id) of every change, in order.
    pub changes: Mutex<Vec<(i64, String)>>,
    pub changed: tokio::sync::Notify,
    pub activity: Mutex<Vec<Vec<String>>>,
    pub route_lookups: AtomicUsize,
    pub authorize_calls: AtomicUsize,
}

pub type Api = Arc<ApiState>;

impl ApiState {
    /// An API key of `org`.
    pub fn add_key(&self, key: &str, org: &str) {
        self.keys.lock().unwrap().insert(key.to_owned(), org.to_owned());
    }

    /// A preview token of `sandbox_id`.
    pub fn add_preview_token(&self, token: &str, sandbox_id: &str) {
        self.preview_tokens.lock().unwrap().insert(token.to_owned(), sandbox_id.to_owned());
    }

    pub fn add_route(&self, route: Route) {
        self.routes.lock().unwrap().insert(route.sandbox_id.clone(), route);
    }

    /// Changes a route the way the real API does: new version, and a change the long-poll announces.
    pub fn update_route(&self, id: &str, f: impl FnOnce(&mut Route)) {
        {
            let mut routes = self.routes.lock().unwrap();
            let r = routes.get_mut(id).unwrap();
            f(r);
            r.version += 1;
        }
        let mut changes = self.changes.lock().unwrap();
        let seq = changes.last().map_or(0, |c| c.0) + 1;
        changes.push((seq, id.to_owned()));
        drop(changes);
        self.changed.notify_waiters();
    }
}

/// A started, private route of `org` to `daemon`.
pub fn route(id: &str, org: &str, daemon: &TestDaemon) -> Route {
    Route {
        sandbox_id: id.into(),
        organization_id: org.into(),
        state: SandboxState::Started,
        daemon_addr: Some(daemon.addr.clone()),
        ssh_addr: None,
        sandbox_ip: Some("127.0.0.1".into()),
        daemon_token: daemon.token.clone(),
        public: false,
        auto_stop_interval: 15,
        wake_on_request: false,
        version: 1,
    }
}

fn service_ok(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {PROXY_TOKEN}"))
}

fn err(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({"statusCode": status.as_u16(), "message": msg}))).into_response()
}

async fn get_route(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    api.route_lookups.fetch_add(1, Ordering::SeqCst);
    // A little latency, as a real database lookup has, so bursts overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    match api.routes.lock().unwrap().get(&id) {
        Some(r) => Json(r.clone()).into_response(),
        None => err(StatusCode::NOT_FOUND, "unknown sandbox"),
    }
}

#[derive(serde::Deserialize)]
struct ChangesQuery {
    since: i64,
    wait: u64,
}

async fn changes(State(api): State<Api>, h: HeaderMap, Query(q): Query<ChangesQuery>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(30));
    loop {
        let notified = api.changed.notified();
        {
            let changes = api.changes.lock().unwrap();
            let seq = changes.last().map_or(0, |c| c.0);
            let ids: Vec<String> = changes.iter().filter(|c| c.0 > q.since).map(|c| c.1.clone()).collect();
            if !ids.is_empty() || tokio::time::Instant::now() >= deadline {
                return Json(RouteChanges { seq, sandbox_ids: ids }).into_response();
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn authorize(State(api): State<Api>, h: HeaderMap, Json(req): Json<AuthorizeRequest>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    api.authorize_calls.fetch_add(1, Ordering::SeqCst);
    let Some(route) = api.routes.lock().unwrap().get(&req.sandbox_id).cloned() else {
        return err(StatusCode::NOT_FOUND, "sandbox not found");
    };
    if let Some(key) = &req.api_key {
        return match api.keys.lock().unwrap().get(key) {
            None => err(StatusCode::UNAUTHORIZED, "unknown API key"),
            Some(org) if *org != route.organization_id => err(StatusCode::NOT_FOUND, "sandbox not found"),
            Some(org) => Json(AuthorizeResponse { organization_id: org.clone(), ttl_secs: 30 }).into_response(),
        };
    }
    if let Some(token) = &req.preview_token {
        if DAEMON_PORTS.contains(&req.port) {
            return err(StatusCode::UNAUTHORIZED, "preview tokens do not open the daemon's ports");
        }
        return match api.preview_tokens.lock().unwrap().get(token) {
            Some(id) if *id == req.sandbox_id => {
                Json(AuthorizeResponse { organization_id: route.organization_id.clone(), ttl_secs: 30 }).into_response()
            }
            _ => err(StatusCode::UNAUTHORIZED, "invalid preview token"),
        };
    }
    if route.public && !DAEMON_PORTS.contains(&req.port) {
        return Json(AuthorizeResponse { organization_id: route.organization_id, ttl_secs: 30 }).into_response();
    }
    err(StatusCode::UNAUTHORIZED, "missing credential: send an API key or a preview token")
}

async fn activity(State(api): State<Api>, h: HeaderMap, Json(r): Json<ActivityReport>) -> Response {
    if !service_ok(&h) {
        return err(StatusCode::UNAUTHORIZED, "service token required");
    }
    api.activity.lock().unwrap().push(r.sandbox_ids);
    StatusCode::NO_CONTENT.into_response()
}

/// The stand-in with one started sandbox `sbx1` of `org-a` on a real daemon (token `daemon-token-1`), and `key`
/// an API key of `org-a`: returns the state, the base URL and the daemon.
pub async fn start_with_sandbox(key: &str) -> (Api, String, TestDaemon) {
    let (api, api_url) = start_api().await;
    let daemon = TestDaemon::start_token("daemon-token-1");
    api.add_route(route("sbx1", "org-a", &daemon));
    api.add_key(key, "org-a");
    (api, api_url, daemon)
}

/// Starts the API stand-in; returns its state and base URL (with `/api`).
pub async fn start_api() -> (Api, String) {
    let api: Api = Arc::new(ApiState::default());
    let app = axum::Router::new()
        .route("/api/internal/routes/changes", get(changes))
        .route("/api/internal/routes/{id}", get(get_route))
        .route("/api/internal/authorize", post(authorize))
        .route("/api/internal/activity", post(activity))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (api, format!("http://{addr}/api"))
}
