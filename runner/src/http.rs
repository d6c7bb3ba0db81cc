//! The runner's own small HTTP API: `GET /health`, `GET /info` (capacity, host facts and sandboxes, without
//! secrets) and `GET /metrics` (Prometheus text). Every route needs `Authorization: Bearer <runner token>`.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use crate::Runner;
use crate::host::cgroup;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sandbar_proto::runner::{Capacity, SandboxState};
use serde::Serialize;

#[derive(Clone)]
struct AppState {
    runner: Runner,
    token: std::sync::Arc<str>,
}

/// The router of the runner's API.
pub fn router(runner: Runner, token: &str) -> Router {
    let state = AppState { runner, token: token.into() };
    Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"statusCode": status.as_u16(), "message": message}))).into_response()
}

async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if s.token.is_empty() || !sandbar_support::ct_eq(presented.as_bytes(), s.token.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "missing or invalid runner token");
    }
    next.run(req).await
}

async fn health(State(s): State<AppState>) -> Response {
    match s.runner.ping().await {
        Ok(()) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("Docker is not answering: {e}")),
    }
}

/// A sandbox as `/info` shows it: no daemon token, no environment values.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxView {
    id: String,
    name: Option<String>,
    organization_id: String,
    container_id: String,
    image: String,
    state: SandboxState,
    error_reason: Option<String>,
    cpu: u32,
    memory: u32,
    disk: u32,
    daemon_addr: Option<String>,
}

async fn info(State(s): State<AppState>) -> Response {
    let host = s.runner.host();
    let sandboxes: Vec<_> = s
        .runner
        .list()
        .into_iter()
        .map(|i| SandboxView {
            id: i.id,
            name: i.name,
            organization_id: i.organization_id,
            container_id: i.container_id,
            image: i.image,
            state: i.state,
            error_reason: i.error_reason,
            cpu: i.resources.cpu,
            memory: i.resources.memory,
            disk: i.resources.disk,
            daemon_addr: i.daemon_addr,
        })
        .collect();
    axum::Json(serde_json::json!({
        "status": s.runner.status(),
        "docker": {"serverVersion": host.server_version, "apiVersion": host.api_version},
        "sandboxes": sandboxes,
    }))
    .into_response()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

async fn metrics(State(s): State<AppState>) -> Response {
    let list = s.runner.list();
    let status = s.runner.status();
    let mut registry = Registry::with_prefix("sandbar_runner");

    let by_state = Family::<StateLabel, Gauge>::default();
    for i in &list {
        by_state.get_or_create(&StateLabel { state: i.state.as_str().to_owned() }).inc();
    }
    registry.register("sandboxes", "Sandboxes on this runner by state", by_state);

    let capacity = Family::<ResourceLabel, Gauge>::default();
    let allocated = Family::<ResourceLabel, Gauge>::default();
    let set = |f: &Family<ResourceLabel, Gauge>, c: Capacity| {
        for (name, v) in [("cpu", c.cpu), ("memory_gib", c.memory), ("disk_gib", c.disk)] {
            f.get_or_create(&ResourceLabel { resource: name.into() }).set(i64::from(v));
        }
    };
    set(&capacity, status.capacity);
    set(&allocated, status.allocated);
    registry.register("capacity", "What this runner offers (cores, GiB)", capacity);
    registry.register("allocated", "Resources of sandboxes that are not destroyed (cores, GiB)", allocated);

    // Used: read from the containers' cgroups (cgroup v1 or v2, Docker's cgroupfs or systemd layout).
    let (mut mem, mut cpu_ns) = (0u64, 0u64);
    for i in list.iter().filter(|i| i.state == SandboxState::Started && !i.container_id.is_empty()) {
        let usage = cgroup::usage(Path::new("/sys/fs/cgroup"), &i.container_id);
        mem += usage.memory_bytes;
        cpu_ns += usage.cpu_nanos;
    }
    let used_mem: Gauge<u64, AtomicU64> = Gauge::default();
    used_mem.set(mem);
    registry.register("memory_used_bytes", "Memory used by started sandboxes (cgroup accounting)", used_mem);
    let used_cpu: Gauge<u64, AtomicU64> = Gauge::default();
    used_cpu.set(cpu_ns / 1_000_000);
    registry.register("cpu_used_milliseconds", "CPU time used by started sandboxes so far", used_cpu);

    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding metrics: {e}"));
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
