//! The runner's side of the job protocol (`sandbar_proto::api`): register and heartbeat with capacity, long-poll
//! for jobs, carry each out once, report results (retried until the API has them), push state changes Docker
//! caused, and send the full picture on start so the API reconciles after a restart.
//!
//! Jobs are idempotent by sandbox id: the API hands a claimed job out again until its result arrives, so a runner
//! that died mid-job finishes it after restarting (a create whose container already exists answers with it, a
//! destroy of a sandbox that is gone succeeds).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbar_proto::api::{HEARTBEAT_INTERVAL_SECS, HeartbeatResponse, MAX_POLL_WAIT_SECS};
use sandbar_proto::runner::{
    Job, JobErrorCode, JobKind, JobOutcome, JobResult, SandboxInfo, SandboxState, StateChange,
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::Runner;

/// How the runner reaches the control plane.
#[derive(Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    /// The API's base URL including `/api`, without a trailing slash.
    base: String,
    token: String,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A failed call to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("control plane unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("control plane answered {status}: {message}")]
    Status { status: u16, message: String },
}

impl ControlPlane {
    /// `api_url` is the API's base URL with its `/api` prefix (`http://127.0.0.1:3000/api`).
    pub fn new(api_url: &str, token: impl Into<String>) -> Result<Self, ControlPlaneError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { http, base: api_url.trim_end_matches('/').to_owned(), token: token.into() })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ControlPlaneError> {
        let resp = req.bearer_auth(&self.token).send().await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(body);
        Err(ControlPlaneError::Status { status, message })
    }

    fn url(&self, runner_id: &str, tail: &str) -> String {
        format!("{}/runners/{runner_id}/{tail}", self.base)
    }

    pub async fn heartbeat(&self, runner: &Runner) -> Result<HeartbeatResponse, ControlPlaneError> {
        let status = runner.status();
        let req = self.http.post(self.url(&status.runner_id, "heartbeat")).timeout(Duration::from_secs(10));
        Ok(self.send(req.json(&status)).await?.json().await?)
    }

    /// Long-polls for jobs; `[]` after `wait`.
    pub async fn poll(&self, runner_id: &str, wait: Duration) -> Result<Vec<Job>, ControlPlaneError> {
        let secs = wait.as_secs().min(MAX_POLL_WAIT_SECS);
        let req =
            self.http.get(self.url(runner_id, "jobs")).query(&[("wait", secs)]).timeout(Duration::from_secs(secs + 10));
        Ok(self.send(req).await?.json().await?)
    }

    pub async fn report(&self, runner_id: &str, result: &JobResult) -> Result<(), ControlPlaneError> {
        let url = self.url(runner_id, &format!("jobs/{}/result", result.job_id));
        self.send(self.http.post(url).timeout(Duration::from_secs(10)).json(result)).await.map(drop)
    }

    /// Lines of a running build job's output.
    pub async fn build_log(
        &self,
        runner_id: &str,
        job_id: &str,
        log: &sandbar_proto::api::BuildLog,
    ) -> Result<(), ControlPlaneError> {
        let url = self.url(runner_id, &format!("jobs/{job_id}/log"));
        self.send(self.http.post(url).timeout(Duration::from_secs(10)).json(log)).await.map(drop)
    }

    pub async fn report_states(&self, runner_id: &str, changes: &[StateChange]) -> Result<(), ControlPlaneError> {
        let req = self.http.post(self.url(runner_id, "states")).timeout(Duration::from_secs(10));
        self.send(req.json(changes)).await.map(drop)
    }

    pub async fn report_sandboxes(&self, runner_id: &str, list: &[SandboxInfo]) -> Result<(), ControlPlaneError> {
        let req = self.http.post(self.url(runner_id, "sandboxes")).timeout(Duration::from_secs(30));
        self.send(req.json(list)).await.map(drop)
    }
}

/// Backoff between failed calls: 200 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// Runs the runner against the control plane until `shutdown`: heartbeats, job polling, state pushes. Returns when
/// cancelled; results of jobs still running are reported before it returns (bounded by the jobs themselves).
pub async fn run(runner: Runner, cp: ControlPlane, shutdown: CancellationToken) {
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
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff(attempt)) => {}
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
    tasks.wait().await;
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
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff(attempt)) => {}
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
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff(attempt)) => {}
                }
                continue;
            }
        };
        for job in jobs {
            if !lock(&in_flight).insert(job.id.clone()) {
                continue;
            }
            tracing::info!(job_id = %job.id, sandbox_id = %job.kind.sandbox_id(), kind = job_kind(&job.kind), "job");
            let (runner, cp, in_flight, shutdown) = (runner.clone(), cp.clone(), in_flight.clone(), shutdown.clone());
            tasks.spawn(async move {
                let job_id = job.id.clone();
                let result = match &job.kind {
                    // Builds stream their output to the control plane while they run.
                    JobKind::BuildSnapshot(b) => crate::build::carry_out(&runner, &cp, &job.id, b).await,
                    _ => carry_out(&runner, job).await,
                };
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
                            tokio::time::sleep(backoff(attempt)).await;
                        }
                    }
                }
                lock(&in_flight).remove(&job_id);
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn job_kind(kind: &JobKind) -> &'static str {
    match kind {
        JobKind::CreateSandbox(_) => "create",
        JobKind::StartSandbox { .. } => "start",
        JobKind::StopSandbox(_) => "stop",
        JobKind::DestroySandbox { .. } => "destroy",
        JobKind::ResizeSandbox(_) => "resize",
        JobKind::UpdateSandboxNetwork(_) => "network",
        JobKind::ArchiveSandbox { .. } => "archive",
        JobKind::RestoreSandbox(_) => "restore",
        JobKind::BuildSnapshot(_) => "build",
        JobKind::ForkSandbox(_) => "fork",
        JobKind::SnapshotSandbox(_) => "snapshot",
        JobKind::RemoveSnapshot(_) => "remove-snapshot",
        JobKind::PauseSandbox { .. } => "pause",
        JobKind::ResumeSandbox { .. } => "resume",
    }
}

/// Carries out a job, treating a repeat of one already done as success.
async fn carry_out(runner: &Runner, job: Job) -> JobResult {
    let repeat = match &job.kind {
        JobKind::CreateSandbox(c) => runner.get(&c.id).filter(|s| s.state == SandboxState::Started),
        _ => None,
    };
    let job_id = job.id.clone();
    let sandbox_id = job.kind.sandbox_id().to_owned();
    let is_destroy = matches!(job.kind, JobKind::DestroySandbox { .. });
    if let Some(existing) = repeat {
        tracing::info!(job_id = %job_id, "create repeated after a restart: the sandbox exists");
        return JobResult {
            job_id,
            outcome: JobOutcome::Succeeded { sandbox: Some(Box::new(existing)), snapshot: None },
        };
    }
    let result = runner.handle(job).await;
    match &result.outcome {
        JobOutcome::Failed { code: JobErrorCode::SandboxNotFound, .. } if is_destroy => {
            tracing::info!(sandbox_id = %sandbox_id, "destroy of a sandbox that is already gone");
            JobResult { job_id, outcome: JobOutcome::Succeeded { sandbox: None, snapshot: None } }
        }
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
