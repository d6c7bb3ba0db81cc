//! Many sandboxes in the API's database at once, for the lifecycle-at-scale test (`api/tests/scale.rs`) and its
//! benchmark (`benches/src/bin/lifecycle.rs`): rows written straight through the store (creating 10,000 through
//! the API and a fake runner would take minutes), a fixed mix of timers, and a [`Probe`] that keeps GETs going
//! while a tick or a runner's report runs, to see whether they wait.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandbar_api::store::sandboxes::{self, NewRow};
use sandbar_proto::runner::{Capacity, RunnerStatus, SandboxInfo, SandboxState, SandboxUsage};
use tokio_util::sync::CancellationToken;

use crate::api::{FakeRunner, Harness};

/// What a seeded sandbox is, and so what the timers owe it once the clock moved [`ADVANCE_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Started, auto-stop off: nothing is due.
    Idle,
    /// Started, idle past its 15-minute auto-stop: the tick stops it.
    StopDue,
    /// Stopped past its 10-minute auto-archive: the tick archives it.
    ArchiveDue,
    /// Stopped, every timer off: nothing is due.
    Stopped,
}

/// How far the clock moves after seeding: past every due timer (15 and 10 minutes), before none of the others.
pub const ADVANCE_SECS: i64 = 20 * 60;

/// The kind of the `i`-th seeded sandbox: one in 40 due to stop, one in 100 due to archive, some stopped for good.
pub fn kind_of(i: usize) -> Kind {
    if i.is_multiple_of(40) {
        Kind::StopDue
    } else if i % 100 == 5 {
        Kind::ArchiveDue
    } else if i % 7 == 3 {
        Kind::Stopped
    } else {
        Kind::Idle
    }
}

/// A seeded sandbox's id (sorted in seeding order).
pub fn id_of(i: usize) -> String {
    format!("scale-{i:05}")
}

/// Inserts `n` sandboxes of `h`'s organization on `runner` (one transaction), provisioned, in the states and with
/// the timers [`kind_of`] says, at the clock's current time. Returns `(id, kind)` in seeding order.
pub async fn seed(h: &Harness, runner: &str, n: usize) -> Vec<(String, Kind)> {
    let now = h.app.now();
    let mut tx = h.app.db.pool.begin().await.expect("begin");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (id, kind) = (id_of(i), kind_of(i));
        let (auto_stop, auto_archive) = match kind {
            Kind::StopDue => (15, 0),
            Kind::ArchiveDue => (0, 10),
            Kind::Idle | Kind::Stopped => (0, 0),
        };
        sandboxes::insert(
            &mut tx,
            NewRow {
                id: &id,
                org: &h.org,
                name: &id,
                runner,
                image: "img",
                user: "sandbar",
                env_json: "{}".into(),
                labels_json: "{}".into(),
                public: false,
                network_block_all: false,
                network_allow_list: None,
                target: "local".into(),
                cpu: 1,
                memory: 1,
                disk: 1,
                auto_stop,
                auto_archive,
                auto_delete: -1,
                preview_token: format!("preview-{id}"),
                now,
            },
        )
        .await
        .expect("insert");
        out.push((id, kind));
    }
    // The states, by kind, in a few statements; the daemon as `FakeRunner::info` reports it.
    let key = crate::api::fake_host_key("");
    for (state, desired, ids) in [
        ("started", "started", ids_of(&out, &[Kind::Idle, Kind::StopDue])),
        ("stopped", "stopped", ids_of(&out, &[Kind::ArchiveDue, Kind::Stopped])),
    ] {
        for chunk in ids.chunks(500) {
            let list = chunk.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE sandboxes SET state = '{state}', desired_state = '{desired}', provisioned = 1, \
                 daemon_addr = '172.17.0.9:2280', ssh_addr = '172.17.0.9:22220', \
                 daemon_token = 'daemon-token-' || id, daemon_host_key = '{key}' || id WHERE id IN ({list})"
            )))
            .execute(&mut *tx)
            .await
            .expect("set states");
        }
    }
    tx.commit().await.expect("commit");
    // The rows were written behind the API's back: its per-organization and per-runner totals count them now.
    sandbar_api::store::totals::reconcile(&h.app.db.pool).await.expect("reconcile totals");
    out
}

fn ids_of(seeded: &[(String, Kind)], kinds: &[Kind]) -> Vec<String> {
    seeded.iter().filter(|(_, k)| kinds.contains(k)).map(|(id, _)| id.clone()).collect()
}

/// Every sandbox's `(state, state_at)`, by id.
pub async fn states(h: &Harness) -> HashMap<String, (String, i64)> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, state, state_at FROM sandboxes").fetch_all(&h.app.db.pool).await.expect("states");
    rows.into_iter().map(|(id, s, at)| (id, (s, at))).collect()
}

/// How many sandboxes have a latest usage sample.
pub async fn usage_rows(h: &Harness) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM sandbox_usage").fetch_one(&h.app.db.pool).await.expect("usage count")
}

/// What `runner` would report of the seeded sandboxes: each in the state it has (started or stopped).
pub fn infos(runner: &FakeRunner, org: &str, seeded: &[(String, Kind)]) -> Vec<SandboxInfo> {
    seeded
        .iter()
        .map(|(id, k)| {
            let st =
                if matches!(k, Kind::Idle | Kind::StopDue) { SandboxState::Started } else { SandboxState::Stopped };
            runner.info(id, org, st)
        })
        .collect()
}

/// `runner`'s full report of `list` (`POST /runners/{id}/sandboxes`, what a runner sends when it (re)starts).
pub async fn reconcile(runner: &FakeRunner, list: &[SandboxInfo]) -> reqwest::StatusCode {
    runner.post("sandboxes", serde_json::to_value(list).expect("json")).await
}

/// `runner`'s heartbeat carrying `usage` (a sample of each of its started sandboxes, as a real runner sends).
pub async fn heartbeat(runner: &FakeRunner, usage: Vec<SandboxUsage>) -> reqwest::StatusCode {
    let status = RunnerStatus {
        runner_id: runner.id.clone(),
        version: "test".into(),
        capacity: Capacity { cpu: 1 << 16, memory: 1 << 16, disk: 1 << 20 },
        allocated: Capacity::default(),
        sandboxes: usage.len() as u32,
        started: usage.len() as u32,
        storage_driver: "overlay2".into(),
        disk_enforced: false,
        cgroup_version: 2,
        volumes: Vec::new(),
        usage,
    };
    runner.post("heartbeat", serde_json::to_value(status).expect("json")).await
}

/// A heartbeat's usage sample of each of `ids`.
pub fn usage(ids: &[String]) -> Vec<SandboxUsage> {
    ids.iter()
        .map(|id| SandboxUsage {
            sandbox_id: id.clone(),
            cpu_nanos: 1_000_000,
            memory_bytes: 64 << 20,
            ..Default::default()
        })
        .collect()
}

/// GETs of sandboxes by id, `concurrency` at a time, until stopped: how long other requests wait while something
/// else runs.
pub struct Probe {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<ProbeResult>>,
}

/// What a [`Probe`] saw: each GET's latency, and every failure (status and body, or the client's error).
#[derive(Debug, Default)]
pub struct ProbeResult {
    pub latencies: Vec<Duration>,
    pub errors: Vec<String>,
}

impl ProbeResult {
    /// The `q` quantile (0..=1) of the latencies; zero when there are none.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() as f64 * q) as usize).min(l.len() - 1)]
    }

    pub fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }
}

impl Probe {
    /// Starts `concurrency` loops of `GET /sandbox/{id}` over `ids` with `h`'s key.
    pub fn start(h: &Harness, ids: &[String], concurrency: usize) -> Self {
        let stop = CancellationToken::new();
        let tasks = (0..concurrency)
            .map(|w| {
                let (http, base, key, stop) = (h.http.clone(), h.base.clone(), h.key.clone(), stop.clone());
                let ids = ids.to_vec();
                tokio::spawn(async move {
                    let mut r = ProbeResult::default();
                    let mut i = w;
                    while !stop.is_cancelled() {
                        let id = &ids[i % ids.len()];
                        i += concurrency;
                        let t = Instant::now();
                        let resp = http
                            .get(format!("{base}/sandbox/{id}"))
                            .bearer_auth(&key)
                            .timeout(Duration::from_secs(60))
                            .send()
                            .await;
                        match resp {
                            Ok(resp) if resp.status().is_success() => {
                                let _ = resp.bytes().await;
                                r.latencies.push(t.elapsed());
                            }
                            Ok(resp) => {
                                let status = resp.status();
                                r.errors.push(format!("GET {id}: {status} {}", resp.text().await.unwrap_or_default()));
                            }
                            Err(e) => r.errors.push(format!("GET {id}: {e}")),
                        }
                    }
                    r
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the loops (each finishes its GET in flight) and gathers what they saw.
    pub async fn finish(self) -> ProbeResult {
        self.stop.cancel();
        let mut all = ProbeResult::default();
        for t in self.tasks {
            let r = t.await.expect("probe task");
            all.latencies.extend(r.latencies);
            all.errors.extend(r.errors);
        }
        all
    }
}

/// Runs `work` while a [`Probe`] of `concurrency` GETs runs; the probe starts first and runs a little past the
/// end, so the GETs overlap the whole of it. Returns what `work` returned, how long it took and the probe.
pub async fn probed<T>(
    h: &Harness,
    ids: &[String],
    concurrency: usize,
    work: impl std::future::Future<Output = T>,
) -> (T, Duration, ProbeResult) {
    let probe = Probe::start(h, ids, concurrency);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let out = work.await;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(50)).await;
    (out, took, probe.finish().await)
}
