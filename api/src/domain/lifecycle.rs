//! Lifecycle: the timers (auto-stop after inactivity, auto-delete and auto-archive after being stopped, restarts of
//! sandboxes the host stopped, job deadlines, pruning of old route changes, jobs, usage samples, expired tokens and
//! long-destroyed sandboxes, collecting unused build images), and pause/resume. The timers act through the same state
//! machine as users ([`super::apply::act`]) and read time from the app's [`crate::Clock`], so tests move
//! time instead of sleeping.
//!
//! Pause (`POST /sandbox/{id}/pause`, `sandbox.pause()`) freezes a started sandbox's processes with their memory
//! (`pausing`, then `paused`); a start of a paused sandbox resumes it (`resuming`, then `started`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use sandbar_proto::runner::{JobKind, SandboxState};

use super::apply::act;
use super::sandboxes::{find, placed_runner};
use super::state::{self, Action};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::sandboxes::{self, Row, Text, Timer};
use crate::store::{self};

/// What one pass of the timers did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub stopped: Vec<String>,
    pub deleted: Vec<String>,
    pub archived: Vec<String>,
    /// Sandboxes the host had stopped, started again.
    pub restarted: Vec<String>,
    /// Jobs failed for having no result by their deadline.
    pub expired: Vec<String>,
    /// Sandboxes that took a step off a draining runner (stop, archive, restore elsewhere: `super::drain`).
    pub moved: Vec<String>,
}

/// Route changes older than this are dropped (a proxy away longer than that must rebuild its cache).
pub const KEEP_ROUTE_CHANGES_MS: i64 = 24 * 3600 * 1000;
/// Completed, failed and cancelled jobs are kept this long for inspection.
pub const KEEP_JOBS_MS: i64 = 7 * 24 * 3600 * 1000;
/// A destroyed sandbox answers `GET /sandbox/{id}` as `destroyed` this long, then its row goes (404).
pub const KEEP_DESTROYED_MS: i64 = 7 * 24 * 3600 * 1000;
/// Preview and SSH access tokens are kept this long past their expiry (a late use is refused as expired).
pub const KEEP_EXPIRED_TOKENS_MS: i64 = 24 * 3600 * 1000;
/// At most this many destroyed sandboxes go in one pruning (once a minute), [`super::apply::BATCH`] a transaction,
/// so a first pruning of a large backlog does not hold the database.
const PRUNE_DESTROYED_PER_PASS: i64 = 1024;

/// Runs the timers once a second and pruning once a minute until `shutdown`.
pub async fn run(app: App, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = tick(&app).await {
            tracing::warn!(error = %e, "lifecycle timers");
        }
        if n.is_multiple_of(60)
            && let Err(e) = prune(&app).await
        {
            tracing::warn!(error = %e, "pruning");
        }
        if n.is_multiple_of(60)
            && let Err(e) = super::builds::collect(&app).await
        {
            tracing::warn!(error = %e, "collecting unused build images");
        }
        n += 1;
    }
}

/// Drops old route changes, old finished jobs, old usage samples, long-expired tokens and sandboxes destroyed
/// long ago (with every row that names them); returns how many rows went. Without this a host under constant churn
/// grows its database without bound (docs/reliability.md, the soak).
pub async fn prune(app: &App) -> Result<u64, sqlx::Error> {
    let now = app.now();
    let routes = store::routes::prune(&app.db.pool, now - KEEP_ROUTE_CHANGES_MS).await?;
    let jobs = store::jobs::prune(&app.db.pool, now - KEEP_JOBS_MS).await?;
    let usage = super::usage::prune(app).await?;
    let tokens = store::tokens::prune_expired(&app.db.pool, now - KEEP_EXPIRED_TOKENS_MS).await?;
    let gone = sandboxes::destroyed_before(&app.db.pool, now - KEEP_DESTROYED_MS, PRUNE_DESTROYED_PER_PASS).await?;
    let mut removed = 0;
    for batch in gone.chunks(super::apply::BATCH) {
        let mut tx = app.db.pool.begin().await?;
        for id in batch {
            removed += u64::from(sandboxes::remove_destroyed(&mut tx, id).await?);
        }
        tx.commit().await?;
    }
    Ok(routes + jobs + usage + tokens + removed)
}

/// One pass: every sandbox whose timer is due gets its action (refusals, e.g. a runner that became unreachable,
/// are logged and retried on the next pass). Counted and timed in the API's metrics.
pub async fn tick(app: &App) -> Result<TickReport, sqlx::Error> {
    let started = std::time::Instant::now();
    let result = pass(app).await;
    app.metrics.lifecycle_run(result.is_ok(), started.elapsed().as_secs_f64());
    result
}

async fn pass(app: &App) -> Result<TickReport, sqlx::Error> {
    let mut report = TickReport::default();
    let stop = sandboxes::due(&app.db.pool, Timer::AutoStop, app.now(), state::MAX_HOST_RESTARTS).await?;
    for id in stop {
        match act(app, None, &id, Action::Stop { force: false }, None).await {
            Ok(_) => report.stopped.push(id),
            Err(e) => tracing::debug!(sandbox_id = %id, error = %e.message, "auto-stop deferred"),
        }
    }
    let delete = sandboxes::due(&app.db.pool, Timer::AutoDelete, app.now(), state::MAX_HOST_RESTARTS).await?;
    for id in delete {
        match act(app, None, &id, Action::Delete, None).await {
            Ok(_) => report.deleted.push(id),
            Err(e) => tracing::debug!(sandbox_id = %id, error = %e.message, "auto-delete deferred"),
        }
    }
    let archive = sandboxes::due(&app.db.pool, Timer::AutoArchive, app.now(), state::MAX_HOST_RESTARTS).await?;
    for id in archive {
        match act(app, None, &id, Action::Archive, None).await {
            Ok(_) => report.archived.push(id),
            Err(e) => tracing::debug!(sandbox_id = %id, error = %e.message, "auto-archive deferred"),
        }
    }
    for id in sandboxes::host_stopped(&app.db.pool, state::MAX_HOST_RESTARTS).await? {
        match super::apply::restart_host_stopped(app, &id).await {
            Ok(true) => report.restarted.push(id),
            Ok(false) => {}
            Err(e) => tracing::info!(sandbox_id = %id, error = %e.message, "restart after a host stop deferred"),
        }
    }
    report.moved = super::drain::move_out(app).await?;
    report.expired = jobs::expire(app).await?;
    if report != TickReport::default() {
        tracing::info!(
            stopped = report.stopped.len(),
            deleted = report.deleted.len(),
            archived = report.archived.len(),
            restarted = report.restarted.len(),
            expired = report.expired.len(),
            moved = report.moved.len(),
            "lifecycle timers"
        );
    }
    Ok(report)
}

/// Pauses a started sandbox (`pausing`, the job's result: `paused`); a paused or pausing one is answered as it is.
pub async fn pause(app: &App, org: &str, id: &str) -> ApiResult<Row> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = find(app, &mut tx, org, id, true).await?;
    let Some(next) = state::plan_pause(row.effective_state(app, now)).map_err(|r| ApiError::bad_request(r.0))? else {
        return Ok(row);
    };
    let job = jobs::pause::plan(&row);
    move_by_job(app, tx, row, &job, next, "paused", now).await
}

/// The start of a paused sandbox: a resume job instead of a start (`POST /sandbox/{id}/start` asks this first).
/// `None` when the sandbox is not paused (or resuming): the ordinary start applies.
pub async fn resume_if_paused(app: &App, org: &str, id: &str) -> ApiResult<Option<Row>> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let Some(row) = sandboxes::load(app.db.kind, &mut tx, Some(org), id, true).await? else { return Ok(None) };
    let next = match state::plan_resume(row.effective_state(app, now)) {
        None => return Ok(None),
        Some(state::Plan::Job(next, _)) => next,
        Some(_) => return Ok(Some(row)),
    };
    let job = jobs::resume::plan(&row);
    move_by_job(app, tx, row, &job, next, "started", now).await.map(Some)
}

/// Queues `job` on the sandbox's runner and moves the sandbox to `next` (wanting `desired`), in `tx`, which it
/// commits; then wakes the runner and the proxies. Answers the sandbox as it is now.
async fn move_by_job(
    app: &App,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    row: Row,
    job: &JobKind,
    next: SandboxState,
    desired: &str,
    now: i64,
) -> ApiResult<Row> {
    let runner = placed_runner(&row)?;
    jobs::enqueue(&mut tx, &runner, job, row.stored_state(), next, now).await?;
    sandboxes::set_state(&mut tx, &row.id, next, None, now).await?;
    sandboxes::set_text(&mut tx, &row.id, Text::Desired, desired).await?;
    let after = sandboxes::load(app.db.kind, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_runner(&runner);
    app.wake_routes();
    Ok(after)
}
