//! The runner's own small HTTP API. `GET /healthz` (the process serves) and `GET /readyz` (it is registered with
//! the API and the last call got through, and Docker answers a ping; otherwise 503 with the reason) answer anyone,
//! cheaply, and say no more than that, as the API's do. `GET /health` (Docker answers), `GET /info` (capacity, host
//! facts and sandboxes, without secrets) and `GET /metrics` (Prometheus text) need
//! `Authorization: Bearer <runner token>`.
//!
//! Metric names follow Prometheus' conventions (prefix `sandbar_runner_`, units in the name, counters end in
//! `_total`): sandboxes by state, capacity and allocation in CPUs and bytes, memory the started sandboxes use, and
//! the CPU time they used, a counter that sums each container's cgroup CPU time as this process saw it grow (time a
//! sandbox used between the last scrape and its stop is not counted; a counter never goes down when one stops).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Runner;
use crate::control::Contact;
use crate::host::cgroup;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sandbar_proto::runner::{RunnerStatus, SandboxInfo, SandboxState};
use sandbar_support::sync::lock;
use serde::Serialize;

#[derive(Clone)]
struct AppState {
    runner: Runner,
    token: Arc<str>,
    contact: Arc<Contact>,
    cpu: Arc<Mutex<CpuTime>>,
}

/// The CPU time of started sandboxes, summed as it grew: each container's last reading and the total.
#[derive(Default)]
struct CpuTime {
    seen: HashMap<String, u64>,
    total_nanos: u64,
}

impl CpuTime {
    /// Adds what each container used since its last reading (all of it for one not seen before; a reading below
    /// the last, a restarted container's, counts from zero) and forgets containers no longer read.
    fn update(&mut self, readings: &[(String, u64)]) -> u64 {
        let mut seen = HashMap::with_capacity(readings.len());
        for (id, nanos) in readings {
            let last = self.seen.get(id).copied().unwrap_or(0);
            self.total_nanos += if *nanos >= last { nanos - last } else { *nanos };
            seen.insert(id.clone(), *nanos);
        }
        self.seen = seen;
        self.total_nanos
    }
}

/// How long `/readyz` waits for Docker's ping.
const DOCKER_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The router of the runner's API; `contact` is the control-plane client's (`ControlPlane::contact`).
pub fn router(runner: Runner, token: &str, contact: Arc<Contact>) -> Router {
    let state = AppState { runner, token: token.into(), contact, cpu: Arc::default() };
    let open = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz));
    let guarded = Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    open.merge(guarded).with_state(state)
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

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let not_ready = |message: &str| {
        let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {message}"));
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        resp
    };
    if let Some(why) = s.contact.not_ready() {
        return not_ready(&why);
    }
    match tokio::time::timeout(DOCKER_PING_TIMEOUT, s.runner.ping()).await {
        Ok(Ok(())) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => not_ready(&format!("Docker is not answering: {e}")),
        Err(_) => not_ready("Docker did not answer a ping within 3 s"),
    }
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

async fn metrics(State(s): State<AppState>) -> Response {
    let list = s.runner.list();
    let status = s.runner.status();
    // Used: read from the containers' cgroups (cgroup v1 or v2, Docker's cgroupfs or systemd layout).
    let (mut memory, mut cpu) = (0u64, Vec::new());
    for i in list.iter().filter(|i| i.state == SandboxState::Started && !i.container_id.is_empty()) {
        let usage = cgroup::usage(Path::new("/sys/fs/cgroup"), &i.container_id);
        memory += usage.memory_bytes;
        cpu.push((i.container_id.clone(), usage.cpu_nanos));
    }
    let cpu_nanos = lock(&s.cpu).update(&cpu);
    match render(&list, &status, memory, cpu_nanos) {
        Ok(out) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding metrics: {e}")),
    }
}

const GIB: i64 = 1 << 30;

/// The text exposition of what the runner holds and uses.
fn render(
    list: &[SandboxInfo],
    status: &RunnerStatus,
    memory_bytes: u64,
    cpu_nanos: u64,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("sandbar_runner");
    let by_state = Family::<StateLabel, Gauge>::default();
    for i in list {
        by_state.get_or_create(&StateLabel { state: i.state.as_str().to_owned() }).inc();
    }
    registry.register("sandboxes", "Sandboxes on this runner by state", by_state);

    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    let (cap, alloc) = (status.capacity, status.allocated);
    registry.register("capacity_cpus", "CPUs this runner offers", gauge(i64::from(cap.cpu)));
    registry.register("capacity_memory_bytes", "Memory this runner offers", gauge(i64::from(cap.memory) * GIB));
    registry.register("capacity_disk_bytes", "Disk this runner hands out", gauge(i64::from(cap.disk) * GIB));
    registry.register("allocated_cpus", "CPUs of sandboxes that are not destroyed", gauge(i64::from(alloc.cpu)));
    registry.register(
        "allocated_memory_bytes",
        "Memory of sandboxes that are not destroyed",
        gauge(i64::from(alloc.memory) * GIB),
    );
    registry.register(
        "allocated_disk_bytes",
        "Disk of sandboxes that are not destroyed",
        gauge(i64::from(alloc.disk) * GIB),
    );

    let used_mem: Gauge<u64, AtomicU64> = Gauge::default();
    used_mem.set(memory_bytes);
    registry.register("memory_used_bytes", "Memory used by started sandboxes (cgroup accounting)", used_mem);
    let used_cpu: Counter<f64, AtomicU64> = Counter::default();
    used_cpu.inc_by(cpu_nanos as f64 / 1e9);
    registry.register("cpu_used_seconds", "CPU time used by started sandboxes, as seen by this runner", used_cpu);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sandbar_proto::runner::Capacity;

    fn status() -> RunnerStatus {
        RunnerStatus {
            runner_id: "r".into(),
            version: "0".into(),
            capacity: Capacity { cpu: 4, memory: 8, disk: 100 },
            allocated: Capacity { cpu: 1, memory: 1, disk: 3 },
            sandboxes: 0,
            started: 0,
            storage_driver: "overlay2".into(),
            disk_enforced: false,
            cgroup_version: 2,
            volumes: Vec::new(),
            usage: Vec::new(),
        }
    }

    #[test]
    fn names_carry_units_and_cpu_is_a_counter_in_seconds() {
        let text = render(&[], &status(), 1024, 1_500_000_000).unwrap();
        for line in [
            "# TYPE sandbar_runner_cpu_used_seconds counter",
            "sandbar_runner_cpu_used_seconds_total 1.5",
            "sandbar_runner_memory_used_bytes 1024",
            "sandbar_runner_capacity_cpus 4",
            "sandbar_runner_capacity_memory_bytes 8589934592",
            "sandbar_runner_allocated_disk_bytes 3221225472",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("gib"), "{text}");
    }

    #[test]
    fn cpu_time_only_grows() {
        let mut t = CpuTime::default();
        assert_eq!(t.update(&[("a".into(), 100), ("b".into(), 50)]), 150);
        assert_eq!(t.update(&[("a".into(), 130)]), 180, "b stopped: its time stays counted");
        assert_eq!(t.update(&[("a".into(), 10), ("b".into(), 5)]), 195, "a restarted, b is new again");
    }

    /// Every `sandbar_runner_*` metric the sample Grafana dashboard queries is one this runner exposes.
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../../deploy/grafana/sandbar.json");
        // A family shows in a scrape once it has a series: a runner with one sandbox.
        let sandbox = SandboxInfo {
            id: "s1".into(),
            name: None,
            organization_id: "o".into(),
            runner_id: "r".into(),
            container_id: "c".into(),
            image: "img".into(),
            state: SandboxState::Started,
            error_reason: None,
            resources: Default::default(),
            disk_enforced: false,
            daemon_addr: None,
            ssh_addr: None,
            daemon_token: String::new(),
            daemon_host_key: None,
            user: None,
            env: Default::default(),
            labels: Default::default(),
            auto: Default::default(),
        };
        let text = render(&[sandbox], &status(), 0, 0).unwrap();
        assert!(text.contains("sandbar_runner_sandboxes{state=\"started\"} 1"), "{text}");
        let used = sandbar_support::prom::queried(dashboard, "sandbar_runner_");
        assert!(used.len() >= 3, "{used:?}");
        for name in used {
            assert!(sandbar_support::prom::exposes(&text, &name), "the dashboard queries {name}, not in\n{text}");
        }
    }
}
