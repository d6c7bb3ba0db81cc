//! Runner jobs: queueing ([`enqueue`]), claiming ([`claim`], a runner's long-poll) and applying results
//! ([`on_result`]). One file per kind holds that kind's `plan` (the job a sandbox row asks for) and `on_result`
//! (what its result does to the rows); the shared result rules are `crate::domain::apply::settle`.
//!
//! A new job kind is a variant in `sandbar_proto::runner::JobKind`, a file here, and the runner's side
//! (`runner/src/jobs/`): the one `match` in [`on_result`] has no `_` arm, so the compiler lists what is missing.

pub mod archive;
pub mod build;
pub mod create;
pub mod destroy;
pub mod fork;
pub mod network;
pub mod pause;
pub mod ping;
pub mod pull;
pub mod remove_snapshot;
pub mod remove_volume;
pub mod resize;
pub mod restore;
pub mod resume;
pub mod snapshot;
pub mod start;
pub mod stop;

use sandbar_proto::runner::{Job, JobErrorCode, JobKind, JobOutcome, JobResult};

use crate::App;
use crate::config::JobDeadlines;
use crate::domain::apply::JobDone;
use crate::domain::state;
use crate::error::{ApiError, ApiResult};
use crate::store;
pub use crate::store::jobs::{enqueue, in_flight, redeliver_now};

/// A job handed out and not completed is handed out again after this long (a runner that restarted resumes it;
/// a live runner ignores a job it is still carrying out). A full report (`POST .../sandboxes`) makes them due at once.
pub const REDELIVER_AFTER_SECS: i64 = 10;

/// How long a job may go without a result, from when it was queued, before the API fails it with
/// `JobErrorCode::Timeout` ([`expire`]): its sandbox then leaves its transitional state the way any failure of that
/// kind leaves it, so nothing stays `creating` or `archiving` because a runner died, hangs or cannot reach the API.
/// A job failed so is never handed out again (a claim takes only `pending` and `claimed` jobs), so a runner that
/// comes back after a long network cut does not carry out work its user was told had failed; a result that comes
/// later (the runner had it running) is accepted and ignored, and what the runner did meanwhile reaches the API
/// through its full report when it regains contact. The deadlines are `--job-deadline-secs` and its siblings
/// (`crate::config::JobDeadlines`; defaults 10 min, 30 for a create, 60 for archive, restore, fork, snapshot and
/// pulls, 120 for builds).
pub fn deadline_ms(deadlines: &JobDeadlines, tag: &str) -> i64 {
    let deadline = match tag {
        "BUILD_SNAPSHOT" => deadlines.build,
        "ARCHIVE_SANDBOX" | "RESTORE_SANDBOX" | "FORK_SANDBOX" | "SNAPSHOT_SANDBOX" | "PULL_IMAGE" => deadlines.long,
        // A create may pull its image.
        "CREATE_SANDBOX" => deadlines.create,
        _ => deadlines.short,
    };
    i64::try_from(deadline.as_millis()).unwrap_or(i64::MAX)
}

/// Fails every unfinished job past its [`deadline_ms`] as if its runner had said `TIMEOUT`; returns their ids.
pub async fn expire(app: &App) -> Result<Vec<String>, sqlx::Error> {
    let now = app.now();
    let deadlines = &app.config.job_deadlines;
    let shortest = deadlines.all().into_iter().min().unwrap_or_default();
    let shortest_ms = i64::try_from(shortest.as_millis()).unwrap_or(i64::MAX);
    let mut expired = Vec::new();
    for (id, runner_id, tag, created_at) in store::jobs::unfinished_before(&app.db.pool, now - shortest_ms).await? {
        let deadline = deadline_ms(deadlines, &tag);
        if now.saturating_sub(created_at) < deadline {
            continue;
        }
        let outcome = JobOutcome::Failed {
            code: JobErrorCode::Timeout,
            message: format!("no result from runner {runner_id} within {}", human(deadline)),
        };
        match on_result(app, &runner_id, &JobResult { job_id: id.clone(), outcome }).await {
            Ok(()) => {
                tracing::warn!(job_id = %id, kind = %tag, runner_id = %runner_id, "job failed: no result by its deadline");
                expired.push(id);
            }
            Err(e) => tracing::warn!(job_id = %id, error = %e.message, "cannot expire a job"),
        }
    }
    Ok(expired)
}

/// `30 minutes`, or `45 s` for a deadline of no whole minutes.
fn human(ms: i64) -> String {
    if ms % 60_000 == 0 { format!("{} minutes", ms / 60_000) } else { format!("{} s", ms / 1000) }
}

/// Claims `runner_id`'s due jobs (see `store::jobs::claim`); claimed builds start `building`.
pub async fn claim(app: &App, runner_id: &str) -> Result<Vec<Job>, sqlx::Error> {
    let now = app.now();
    let jobs = store::jobs::claim(&app.db.pool, runner_id, now, now - REDELIVER_AFTER_SECS * 1000).await?;
    let builds: Vec<String> = jobs
        .iter()
        .filter_map(|j| if let JobKind::BuildSnapshot(b) = &j.kind { Some(b.build_id.clone()) } else { None })
        .collect();
    build::claimed(app, &builds).await?;
    for j in &jobs {
        app.metrics.job_claimed(j.kind.tag());
    }
    Ok(jobs)
}

/// Applies the result of `runner_id`'s job (idempotent: a retried or late report of a finished or cancelled job is
/// accepted and ignored).
pub async fn on_result(app: &App, runner_id: &str, res: &JobResult) -> ApiResult<()> {
    let job_id = &res.job_id;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let Some(job) = store::jobs::find(&mut tx, job_id, runner_id).await? else {
        return Err(ApiError::not_found(format!("no job {job_id} for runner {runner_id}")));
    };
    if !matches!(job.state.as_str(), "pending" | "claimed") {
        return Ok(());
    }
    let (job_state, error) = match &res.outcome {
        JobOutcome::Succeeded { .. } => ("done", None),
        JobOutcome::Failed { code, message } => ("failed", Some(format!("{code:?}: {message}"))),
    };
    if !store::jobs::complete(&mut tx, job_id, job_state, error, now).await? {
        return Ok(());
    }
    let kind: JobKind = serde_json::from_str(&job.payload).map_err(|e| ApiError::internal("stored job", e))?;
    let mut done = JobDone {
        app,
        conn: &mut tx,
        runner_id,
        outcome: &res.outcome,
        prev: state::parse(&job.prev_state),
        via: state::parse(&job.via_state),
        now,
        wake_followers: false,
    };
    match &kind {
        JobKind::CreateSandbox(j) => create::on_result(&mut done, j).await?,
        JobKind::StartSandbox { sandbox_id } => start::on_result(&mut done, sandbox_id).await?,
        JobKind::StopSandbox(j) => stop::on_result(&mut done, j).await?,
        JobKind::DestroySandbox { sandbox_id } => destroy::on_result(&mut done, sandbox_id).await?,
        JobKind::ResizeSandbox(j) => resize::on_result(&mut done, j).await?,
        JobKind::UpdateSandboxNetwork(j) => network::on_result(&mut done, j).await?,
        JobKind::ArchiveSandbox { sandbox_id } => archive::on_result(&mut done, sandbox_id).await?,
        JobKind::RestoreSandbox(j) => restore::on_result(&mut done, j).await?,
        JobKind::BuildSnapshot(j) => build::on_result(&mut done, j).await?,
        JobKind::ForkSandbox(j) => fork::on_result(&mut done, j).await?,
        JobKind::SnapshotSandbox(j) => snapshot::on_result(&mut done, j).await?,
        JobKind::RemoveSnapshot(j) => remove_snapshot::on_result(&mut done, j).await?,
        JobKind::PauseSandbox { sandbox_id } => pause::on_result(&mut done, sandbox_id).await?,
        JobKind::ResumeSandbox { sandbox_id } => resume::on_result(&mut done, sandbox_id).await?,
        JobKind::PingSandbox { sandbox_id } => ping::on_result(&mut done, sandbox_id).await?,
        JobKind::RemoveVolume(j) => remove_volume::on_result(&mut done, j).await?,
        JobKind::PullImage(j) => pull::on_result(&mut done, j).await?,
    }
    let wake_followers = done.wake_followers;
    tx.commit().await?;
    app.metrics.job_completed(kind.tag(), job_state == "done");
    if wake_followers {
        crate::domain::builds::wake_followers();
    }
    // The next job of that sandbox may now be claimable, and the sandbox's route changed.
    app.wake_runner(runner_id);
    app.wake_routes();
    Ok(())
}
