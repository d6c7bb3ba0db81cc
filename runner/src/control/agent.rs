//! The agent loop: post the full picture first (`POST /runners/{id}/sandboxes`, so the API reconciles after a
//! restart), then heartbeat every [`HEARTBEAT_INTERVAL_SECS`], long-poll `GET /runners/{id}/jobs?wait=` and carry
//! each job out once through [`crate::jobs`] (a job already in flight is not started again), post results with
//! retries, and push the state changes Docker caused, batched over 50 ms.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbar_proto::api::{HEARTBEAT_INTERVAL_SECS, MAX_POLL_WAIT_SECS};
use sandbar_proto::runner::StateChange;
use sandbar_support::backoff::Backoff;
use sandbar_support::sync::lock;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{ControlPlane, ControlPlaneError};
use crate::Runner;

/// Backoff between failed calls: 200 ms doubling to 5 s, with jitter.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Waits before retry `attempt`; false when `shutdown` came first.
async fn retry_wait(shutdown: &CancellationToken, attempt: u32) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(BACKOFF.delay(attempt)) => true,
    }
}

/// Runs the runner against the control plane until `shutdown`: heartbeats, job polling, state pushes. Returns when
/// cancelled, once the jobs still running have reported their results, or after `grace` (the API hands out again a
/// job whose result it did not get; every job is idempotent).
pub async fn run(runner: Runner, cp: ControlPlane, shutdown: CancellationToken, grace: Duration) {
    let id = runner.runner_id().to_owned();
    // Subscribe before the first full report, so nothing between the two is lost.
    let changes = runner.subscribe();
    let mut attempt = 0;
    loop {
        match cp.report_sandboxes(&id, &runner.list()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "initial report to the control plane failed; retrying");
                attempt += 1;
                if !retry_wait(&shutdown, attempt).await {
                    return;
                }
            }
        }
    }
    tracing::info!(runner_id = %id, "registered with the control plane");
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(heartbeats(runner.clone(), cp.clone(), shutdown.clone()));
    tasks.spawn(push_states(runner.clone(), cp.clone(), changes, shutdown.clone()));
    poll_jobs(runner, cp, shutdown, &tasks).await;
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "shutdown grace over with jobs still running; the API hands them out again"
        );
    }
}

async fn heartbeats(runner: Runner, cp: ControlPlane, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(HEARTBEAT_INTERVAL_SECS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut schedulable = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match cp.heartbeat(&runner).await {
            Ok(r) if r.schedulable != schedulable => {
                schedulable = r.schedulable;
                tracing::info!(schedulable, "control plane changed this runner's schedulability");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Forwards the runner's state changes, batched over 50 ms. A lagging receiver sends the whole picture instead.
async fn push_states(
    runner: Runner,
    cp: ControlPlane,
    mut changes: tokio::sync::broadcast::Receiver<StateChange>,
    shutdown: CancellationToken,
) {
    let id = runner.runner_id().to_owned();
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            c = changes.recv() => c,
        };
        let mut batch = Vec::new();
        let mut full = false;
        match first {
            Ok(c) => batch.push(c),
            Err(RecvError::Lagged(_)) => full = true,
            Err(RecvError::Closed) => return,
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Ok(next) = tokio::time::timeout_at(deadline, changes.recv()).await {
            match next {
                Ok(c) => batch.push(c),
                Err(RecvError::Lagged(_)) => full = true,
                Err(RecvError::Closed) => break,
            }
        }
        let mut attempt = 0;
        loop {
            let sent =
                if full { cp.report_sandboxes(&id, &runner.list()).await } else { cp.report_states(&id, &batch).await };
            match sent {
                Ok(()) => break,
                Err(ControlPlaneError::Status { status, message }) if (400..500).contains(&status) => {
                    tracing::warn!(status, %message, "control plane refused a state report; dropping it");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "state report failed; retrying");
                    attempt += 1;
                    if !retry_wait(&shutdown, attempt).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn poll_jobs(
    runner: Runner,
    cp: ControlPlane,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) {
    let id = runner.runner_id().to_owned();
    // Jobs being carried out or whose result is not yet acknowledged: a re-delivery of one of them is ignored.
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut attempt = 0;
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => return,
            p = cp.poll(&id, Duration::from_secs(MAX_POLL_WAIT_SECS)) => p,
        };
        let jobs = match polled {
            Ok(jobs) => {
                attempt = 0;
                jobs
            }
            Err(e) => {
                tracing::warn!(error = %e, "job poll failed");
                attempt += 1;
                if !retry_wait(&shutdown, attempt).await {
                    return;
                }
                continue;
            }
        };
        for job in jobs {
            if !lock(&in_flight).insert(job.id.clone()) {
                continue;
            }
            tracing::info!(job_id = %job.id, sandbox_id = %job.kind.sandbox_id(), kind = job.kind.tag(), "job");
            let (runner, cp, in_flight, shutdown) = (runner.clone(), cp.clone(), in_flight.clone(), shutdown.clone());
            tasks.spawn(async move {
                let job_id = job.id.clone();
                let result = crate::jobs::run(&runner, Some(&cp), job).await;
                let mut attempt = 0;
                loop {
                    match cp.report(runner.runner_id(), &result).await {
                        Ok(()) => break,
                        Err(ControlPlaneError::Status { status, message }) if (400..500).contains(&status) => {
                            tracing::warn!(job_id = %job_id, status, %message, "control plane refused a job result");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %job_id, error = %e, "reporting a job result failed; retrying");
                            attempt += 1;
                            if shutdown.is_cancelled() && attempt > 3 {
                                // The API re-delivers the job after we restart; it is idempotent.
                                break;
                            }
                            tokio::time::sleep(BACKOFF.delay(attempt)).await;
                        }
                    }
                }
                lock(&in_flight).remove(&job_id);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(BACKOFF.ceiling(0), Duration::from_millis(200));
        assert_eq!(BACKOFF.ceiling(1), Duration::from_millis(400));
        assert_eq!(BACKOFF.ceiling(30), Duration::from_secs(5));
    }
}
