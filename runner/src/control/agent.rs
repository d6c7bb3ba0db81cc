//! The agent loop: post the full picture first (`POST /runners/{id}/sandboxes`, so the API reconciles after a
//! restart), then heartbeat every [`HEARTBEAT_INTERVAL_SECS`], long-poll `GET /runners/{id}/jobs?wait=` and carry
//! each job out once through [`crate::jobs`] (a job already in flight, or finished in the last
//! [`FINISHED_REMEMBERED`] jobs, is not started again), post results with retries, and push the state changes
//! Docker caused, batched over 50 ms.
//!
//! A network cut between the runner and the API: every call has a timeout (a black-holed connection fails like a
//! refused one), sandboxes keep running, results and state changes are retried until the API has them. A claim
//! answered while the connection was cut may reach the runner late, after the job was handed out again and even
//! after its result was acknowledged: the finished-jobs memory keeps such a late copy from running twice. Once a
//! heartbeat gets through after failing, the runner posts its full picture again, so the API reconciles what
//! changed meanwhile (a job it failed by its deadline while the runner could not report, a sandbox that stopped)
//! and hands out at once the jobs whose claims were lost on the cut connections.

use std::collections::{HashSet, VecDeque};
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

/// How many finished jobs' ids the runner remembers, to ignore a late copy of one (see the module doc).
const FINISHED_REMEMBERED: usize = 4096;

/// The jobs this runner is carrying out or has finished lately.
#[derive(Default)]
struct Seen {
    /// Being carried out, or their result not yet acknowledged: a re-delivery is ignored.
    in_flight: HashSet<String>,
    /// Acknowledged (or refused) results, newest last; a copy that arrives late is ignored.
    finished: VecDeque<String>,
}

impl Seen {
    /// True when `job_id` is new: it is then in flight.
    fn start(&mut self, job_id: &str) -> bool {
        if self.finished.iter().any(|f| f == job_id) {
            return false;
        }
        self.in_flight.insert(job_id.to_owned())
    }

    fn finish(&mut self, job_id: &str) {
        self.in_flight.remove(job_id);
        if self.finished.len() >= FINISHED_REMEMBERED {
            self.finished.pop_front();
        }
        self.finished.push_back(job_id.to_owned());
    }
}

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
    // Set by a failed heartbeat: the API may have failed jobs by their deadline or missed state changes meanwhile.
    let mut out_of_touch = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match cp.heartbeat(&runner).await {
            Ok(r) => {
                if r.schedulable != schedulable {
                    schedulable = r.schedulable;
                    tracing::info!(schedulable, "control plane changed this runner's schedulability");
                }
                if out_of_touch {
                    match cp.report_sandboxes(runner.runner_id(), &runner.list()).await {
                        Ok(()) => {
                            out_of_touch = false;
                            tracing::info!("control plane reachable again; sent it the full picture");
                        }
                        Err(e) => tracing::warn!(error = %e, "full report after a lost contact failed; retrying"),
                    }
                }
            }
            Err(e) => {
                out_of_touch = true;
                tracing::warn!(error = %e, "heartbeat failed");
            }
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
    let seen: Arc<Mutex<Seen>> = Arc::default();
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
            if !lock(&seen).start(&job.id) {
                tracing::debug!(job_id = %job.id, "job already in flight or finished; this copy is ignored");
                continue;
            }
            tracing::info!(job_id = %job.id, sandbox_id = %job.kind.sandbox_id(), kind = job.kind.tag(), "job");
            let (runner, cp, seen, shutdown) = (runner.clone(), cp.clone(), seen.clone(), shutdown.clone());
            tasks.spawn(async move {
                let job_id = job.id.clone();
                let result = crate::jobs::run(&runner, Some(&cp), job).await;
                let mut attempt = 0;
                let mut acknowledged = false;
                loop {
                    match cp.report(runner.runner_id(), &result).await {
                        Ok(()) => {
                            acknowledged = true;
                            break;
                        }
                        Err(ControlPlaneError::Status { status, message }) if (400..500).contains(&status) => {
                            tracing::warn!(job_id = %job_id, status, %message, "control plane refused a job result");
                            acknowledged = true;
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
                let mut jobs = lock(&seen);
                if acknowledged {
                    jobs.finish(&job_id);
                } else {
                    // Given up at shutdown: the API hands it out again after the restart.
                    jobs.in_flight.remove(&job_id);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_is_not_started_again() {
        let mut seen = Seen::default();
        assert!(seen.start("a"));
        assert!(!seen.start("a"), "in flight");
        seen.finish("a");
        assert!(!seen.start("a"), "a late copy of a finished job");
        for i in 0..FINISHED_REMEMBERED {
            seen.finish(&i.to_string());
        }
        assert_eq!(seen.finished.len(), FINISHED_REMEMBERED);
        assert!(seen.start("a"), "forgotten after FINISHED_REMEMBERED newer ones");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(BACKOFF.ceiling(0), Duration::from_millis(200));
        assert_eq!(BACKOFF.ceiling(1), Duration::from_millis(400));
        assert_eq!(BACKOFF.ceiling(30), Duration::from_secs(5));
    }
}
