//! The lifecycle at scale: with 10,000 sandboxes in the database, how long other requests (`GET
//! /api/sandbox/{id}`, 4 at a time) wait while a lifecycle tick runs (one in 40 due to stop, one in 100 due
//! to archive), while a runner reports all of them at once (its full reconcile) and while its heartbeat carries a
//! usage sample of every started one. Target: no GET waits more than 100 ms. On SQLite and (when reachable)
//! PostgreSQL; the API in-process with a hand-moved clock (`sandbar_testkit::scale`), no containers.
//! `api/tests/scale.rs` checks the same work for correctness; this prints its figures.
//!
//! `cargo run --release --bin lifecycle [-- SANDBOXES]`; PostgreSQL from `SANDBAR_TEST_DATABASE_URL` (as the
//! tests). For `benches/run`: `SANDBAR_BENCH_SAMPLES=FILE` appends the figures there as samples
//! (`sandbar_benches::report`); `LIFECYCLE_BASELINE_MS` (1000) is how long the baseline row probes while nothing
//! else runs (`benches/run --quick` shortens it).

use std::time::Duration;

use anyhow::Context as _;
use sandbar_testkit::api::{Harness, databases};
use sandbar_testkit::scale::{self, ProbeResult};
use serde_json::{Value, json};

const PROBES: usize = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    // The baseline's window (GETs while nothing else runs; printed, not recorded as a sample).
    let baseline = Duration::from_millis(sandbar_benches::env_num("LIFECYCLE_BASELINE_MS", 1000));
    let dbs = databases().await;
    if !dbs.iter().any(|d| d.label == "postgres") {
        for m in ["tick", "reconcile", "heartbeat"] {
            sample(&json!({"skip": format!("lifecycle_{m}_get_max_ms_pg"), "reason": "PostgreSQL not reachable"}))?;
        }
    }
    println!(
        "| database | work over {n} sandboxes | took ms | GETs meanwhile | GET p50 ms | GET p99 ms | GET max ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for db in dbs {
        let suffix = if db.label == "postgres" { "_pg" } else { "" };
        let (h, r) = Harness::start_with_runner(&db, 1 << 16, 1 << 16, 1 << 20).await;
        let seeded = scale::seed(&h, "r1", n).await;
        let ids: Vec<String> = seeded.iter().map(|(id, _)| id.clone()).collect();
        let (_, took, idle) = scale::probed(&h, &ids, PROBES, tokio::time::sleep(baseline)).await;
        row(db.label, "nothing (baseline)", took, &idle)?;

        h.clock.advance_secs(scale::ADVANCE_SECS);
        r.heartbeat(1 << 16, 1 << 16, 1 << 20).await;
        let (report, took, probe) = scale::probed(&h, &ids, PROBES, h.tick()).await;
        let what = format!("tick ({} stopped, {} archived)", report.stopped.len(), report.archived.len());
        row(db.label, &what, took, &probe)?;
        record("tick", suffix, took, &probe)?;

        let list = scale::infos(&r, &h.org, &seeded);
        let (status, took, probe) = scale::probed(&h, &ids, PROBES, scale::reconcile(&r, &list)).await;
        anyhow::ensure!(status.is_success(), "reconcile: {status}");
        row(db.label, "runner reconcile (all sandboxes)", took, &probe)?;
        record("reconcile", suffix, took, &probe)?;

        let states = scale::states(&h).await;
        let started: Vec<String> =
            states.iter().filter(|(_, (s, _))| s == "started").map(|(id, _)| id.clone()).collect();
        let (status, took, probe) = scale::probed(&h, &ids, PROBES, scale::heartbeat(&r, scale::usage(&started))).await;
        anyhow::ensure!(status.is_success(), "heartbeat: {status}");
        row(db.label, &format!("heartbeat ({} usage samples)", started.len()), took, &probe)?;
        record("heartbeat", suffix, took, &probe)?;
        h.stop().await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(db: &str, what: &str, took: Duration, p: &ProbeResult) -> anyhow::Result<()> {
    anyhow::ensure!(p.errors.is_empty(), "{db} {what}: GETs failed: {:?}", p.errors.first());
    println!(
        "| {db} | {what} | {:.0} | {} | {:.2} | {:.2} | {:.1} |",
        ms(took),
        p.latencies.len(),
        ms(p.quantile(0.5)),
        ms(p.quantile(0.99)),
        ms(p.max())
    );
    Ok(())
}

fn record(what: &str, suffix: &str, took: Duration, p: &ProbeResult) -> anyhow::Result<()> {
    for (m, v) in [("took_ms", ms(took)), ("get_p99_ms", ms(p.quantile(0.99))), ("get_max_ms", ms(p.max()))] {
        sample(&json!({"metric": format!("lifecycle_{what}_{m}{suffix}"), "subject": "api", "value": v}))?;
    }
    Ok(())
}

/// Appends one sample to `SANDBAR_BENCH_SAMPLES`, when set.
fn sample(v: &Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let Ok(path) = std::env::var("SANDBAR_BENCH_SAMPLES") else { return Ok(()) };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).context("samples file")?;
    writeln!(f, "{v}")?;
    Ok(())
}
