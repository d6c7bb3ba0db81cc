//! The lifecycle at scale: 10,000 sandboxes in the database, a timer tick, a runner's full reconcile and a
//! heartbeat carrying a usage sample of every started sandbox, each while GETs keep coming. Asserts correctness
//! only (every due sandbox handled, nothing else touched, every GET answered); how long the GETs waited is a
//! figure of `benches/src/bin/lifecycle.rs` (target: under 100 ms), never a timed assertion here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use sandbar_testkit::api::{Harness, databases};
use sandbar_testkit::scale::{self, Kind};

const SANDBOXES: usize = 10_000;
/// GETs in flight while the work runs: they must all be answered (the benchmark sends 4 at a time and times them).
const PROBES: usize = 1;
/// Bounded in time: a stuck tick or reconcile fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_sandboxes_tick_reconcile_heartbeat() {
    tokio::time::timeout(DEADLINE, async {
        for db in databases().await {
            run(&db).await;
        }
    })
    .await
    .expect("the test ran past its deadline");
}

async fn run(db: &sandbar_testkit::api::TestDb) {
    let label = db.label;
    let (h, r) = Harness::start_with_runner(db, 1 << 16, 1 << 16, 1 << 20).await;
    let seeded = scale::seed(&h, "r1", SANDBOXES).await;
    let ids: Vec<String> = seeded.iter().map(|(id, _)| id.clone()).collect();
    let of = |kinds: &[Kind]| -> BTreeSet<String> {
        seeded.iter().filter(|(_, k)| kinds.contains(k)).map(|(id, _)| id.clone()).collect()
    };
    h.clock.advance_secs(scale::ADVANCE_SECS);
    // The runner kept beating meanwhile (one that went silent is unreachable, and the timers wait for it).
    r.heartbeat(1 << 16, 1 << 16, 1 << 20).await;
    let before = scale::states(&h).await;

    // The tick: exactly the due sandboxes stop or archive, nothing else moves.
    let (report, _, probe) = scale::probed(&h, &ids, PROBES, h.tick()).await;
    assert!(
        probe.errors.is_empty(),
        "{label}: GETs failed during the tick: {:?}",
        &probe.errors[..3.min(probe.errors.len())]
    );
    assert!(!probe.latencies.is_empty(), "{label}: no GET was answered during the tick");
    let stopped: BTreeSet<String> = report.stopped.iter().cloned().collect();
    let archived: BTreeSet<String> = report.archived.iter().cloned().collect();
    assert_eq!(stopped, of(&[Kind::StopDue]), "{label}: the tick must stop exactly the sandboxes due to stop");
    assert_eq!(archived, of(&[Kind::ArchiveDue]), "{label}: the tick must archive exactly the sandboxes due");
    assert!(
        report.deleted.is_empty() && report.restarted.is_empty() && report.expired.is_empty(),
        "{label}: {report:?}"
    );
    let after_tick = scale::states(&h).await;
    for (id, kind) in &seeded {
        let want = match kind {
            Kind::StopDue => "stopping",
            Kind::ArchiveDue => "archiving",
            Kind::Idle | Kind::Stopped => before[id].0.as_str(),
        };
        assert_eq!(after_tick[id].0, want, "{label}: {id} ({kind:?}) after the tick");
        if matches!(kind, Kind::Idle | Kind::Stopped) {
            assert_eq!(after_tick[id], before[id], "{label}: the tick touched {id}, which was not due");
        }
    }

    // A full reconcile: the runner reports every sandbox as it has it, but a few started ones it lost and a few it
    // saw stop. Sandboxes with a job in flight (the tick's stops and archives) are left to their jobs.
    let lost: BTreeSet<String> = seeded
        .iter()
        .enumerate()
        .filter(|(i, (_, k))| *k == Kind::Idle && i % 97 == 1)
        .map(|(_, (id, _))| id.clone())
        .collect();
    let exited: BTreeSet<String> = seeded
        .iter()
        .enumerate()
        .filter(|(i, (id, k))| *k == Kind::Idle && i % 89 == 2 && !lost.contains(id))
        .map(|(_, (id, _))| id.clone())
        .collect();
    assert!(!lost.is_empty() && !exited.is_empty());
    let mut list = scale::infos(&r, &h.org, &seeded);
    list.retain(|i| !lost.contains(&i.id));
    for info in &mut list {
        if exited.contains(&info.id) {
            info.state = sandbar_proto::runner::SandboxState::Stopped;
        }
    }
    let (status, _, probe) = scale::probed(&h, &ids, PROBES, scale::reconcile(&r, &list)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{label}: reconcile of {} sandboxes", list.len());
    assert!(
        probe.errors.is_empty(),
        "{label}: GETs failed during the reconcile: {:?}",
        &probe.errors[..3.min(probe.errors.len())]
    );
    let after = scale::states(&h).await;
    for (id, _) in &seeded {
        let want = if lost.contains(id) {
            "error"
        } else if exited.contains(id) {
            "stopped"
        } else {
            after_tick[id].0.as_str()
        };
        assert_eq!(after[id].0, want, "{label}: {id} after the reconcile");
        if !lost.contains(id) && !exited.contains(id) {
            assert_eq!(after[id], after_tick[id], "{label}: the reconcile touched {id}, which it reported as it was");
        }
    }

    // A heartbeat with a usage sample of every started sandbox: each one recorded.
    let started: Vec<String> = after.iter().filter(|(_, (s, _))| s == "started").map(|(id, _)| id.clone()).collect();
    assert!(started.len() > SANDBOXES / 2, "{label}: {} started", started.len());
    let (status, _, probe) = scale::probed(&h, &ids, PROBES, scale::heartbeat(&r, scale::usage(&started))).await;
    assert_eq!(status, StatusCode::OK, "{label}: heartbeat");
    assert!(
        probe.errors.is_empty(),
        "{label}: GETs failed during the heartbeat: {:?}",
        &probe.errors[..3.min(probe.errors.len())]
    );
    assert_eq!(scale::usage_rows(&h).await, started.len() as i64, "{label}: every started sandbox's sample recorded");
    h.stop().await;
}
