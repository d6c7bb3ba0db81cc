//! Runners and jobs (`sandbar_proto::api`): heartbeats register runners and their capacity, placement picks the
//! reachable runner with the most free room, jobs are rows claimed atomically by a runner's long-poll, results and
//! state reports move sandboxes through the state machine.

use std::collections::HashSet;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{HeartbeatResponse, MAX_POLL_WAIT_SECS};
use sandbar_proto::ports;
use sandbar_proto::runner::{
    Job, JobErrorCode, JobKind, JobOutcome, JobResult, RunnerStatus, SandboxInfo, SandboxState, StateChange,
};
use sqlx::AnyConnection;

use crate::App;
use crate::auth::RunnerAuth;
use crate::db::b;
use crate::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::sandbox::{self, Row};
use crate::state::{self, IDLE_STATES_SQL};

/// A job handed out and not completed is handed out again after this long (a runner that restarted resumes it;
/// a live runner ignores a job it is still carrying out). A full report (`POST .../sandboxes`) makes them due at once.
pub const REDELIVER_AFTER_SECS: i64 = 10;

/// How long a runner may stay silent before it is unreachable (`--runner-unreachable-secs`).
pub fn unreachable_after_ms(config: &crate::Config) -> i64 {
    i64::try_from(config.runner_unreachable_secs).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/runners/{runner_id}/heartbeat", post(heartbeat))
        .route("/runners/{runner_id}/jobs", get(poll))
        .route("/runners/{runner_id}/jobs/{job_id}/result", post(result))
        .route("/runners/{runner_id}/states", post(states))
        .route("/runners/{runner_id}/sandboxes", post(reconcile))
}

fn valid_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::bad_request(format!(
            "invalid runner id {id:?}: use 1-128 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// Picks the reachable runner with the most free room that fits the request (CPU and memory overcommitted by the
/// configured factors; disk not).
pub(crate) async fn place(app: &App, conn: &mut AnyConnection, cpu: i64, memory: i64, disk: i64) -> ApiResult<String> {
    let now = app.now();
    let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT r.id, r.cpu, r.memory, r.disk, \
         CAST(COALESCE(SUM(CASE WHEN s.state NOT IN {IDLE_STATES_SQL} THEN s.cpu ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN s.state NOT IN {IDLE_STATES_SQL} THEN s.memory ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(s.disk), 0) AS BIGINT) \
         FROM runners r LEFT JOIN sandboxes s ON s.runner_id = r.id AND s.state <> 'destroyed' \
         WHERE r.last_heartbeat >= $1 GROUP BY r.id, r.cpu, r.memory, r.disk"
    )))
    .bind(now - unreachable_after_ms(&app.config))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Err(ApiError::unavailable("no runner is available: start a runner (sandbar-runner) and retry"));
    }
    let l = &app.config.limits;
    let best = rows
        .iter()
        .filter_map(|(id, c, m, d, uc, um, ud)| {
            let (cap_c, cap_m, cap_d) = (c * l.cpu_overcommit, m * l.memory_overcommit, *d);
            let fits = uc + cpu <= cap_c && um + memory <= cap_m && ud + disk <= cap_d;
            // Room left after placing this sandbox, as fractions of each resource.
            let frac = |used: i64, cap: i64| if cap > 0 { (cap - used) as f64 / cap as f64 } else { 0.0 };
            fits.then(|| (frac(uc + cpu, cap_c) + frac(um + memory, cap_m) + frac(ud + disk, cap_d), id))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)));
    match best {
        Some((_, id)) => Ok(id.clone()),
        None => Err(ApiError::unavailable(format!(
            "no runner has room for {cpu} vCPU, {memory} GiB memory and {disk} GiB disk ({} reachable runner(s)); \
             stop or delete sandboxes, or add a runner",
            rows.len()
        ))),
    }
}

async fn heartbeat(
    app: axum::extract::State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    Json(status): Json<RunnerStatus>,
) -> ApiResult<Response> {
    valid_id(&runner_id)?;
    if status.runner_id != runner_id {
        return Err(ApiError::bad_request(format!(
            "runnerId {:?} in the body does not match {runner_id:?} in the path",
            status.runner_id
        )));
    }
    let now = app.now();
    sqlx::query(
        "INSERT INTO runners (id, version, cpu, memory, disk, reported_sandboxes, storage_driver, disk_enforced, \
         registered_at, last_heartbeat) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, cpu = excluded.cpu, memory = excluded.memory, \
         disk = excluded.disk, reported_sandboxes = excluded.reported_sandboxes, \
         storage_driver = excluded.storage_driver, disk_enforced = excluded.disk_enforced, \
         last_heartbeat = excluded.last_heartbeat",
    )
    .bind(&runner_id)
    .bind(&status.version)
    .bind(i64::from(status.capacity.cpu))
    .bind(i64::from(status.capacity.memory))
    .bind(i64::from(status.capacity.disk))
    .bind(i64::from(status.sandboxes))
    .bind(&status.storage_driver)
    .bind(b(status.disk_enforced))
    .bind(now)
    .execute(&app.db.pool)
    .await?;
    // Sandboxes on this runner were shown as `unknown` while it was silent: their routes are valid again.
    app.wake_routes();
    Ok(Json(HeartbeatResponse { schedulable: true }).into_response())
}

/// Claims this runner's pending jobs (oldest first, at most one unfinished job per sandbox so a destroy never
/// overtakes the create before it) and those handed out more than [`REDELIVER_AFTER_SECS`] ago. One UPDATE: on
/// PostgreSQL a concurrent claimer re-checks `state`/`handed_at` on the locked row and skips it, on SQLite writers
/// are serial, so no job is handed out twice at once.
async fn claim(app: &App, runner_id: &str) -> Result<Vec<Job>, sqlx::Error> {
    let now = app.now();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "UPDATE jobs SET state = 'claimed', handed_at = $1 WHERE runner_id = $2 \
         AND (state = 'pending' OR (state = 'claimed' AND handed_at < $3)) \
         AND NOT EXISTS (SELECT 1 FROM jobs j2 WHERE j2.sandbox_id = jobs.sandbox_id \
             AND j2.state IN ('pending', 'claimed') AND j2.seq < jobs.seq) \
         RETURNING id, payload, seq",
    )
    .bind(now)
    .bind(runner_id)
    .bind(now - REDELIVER_AFTER_SECS * 1000)
    .fetch_all(&app.db.pool)
    .await?;
    let mut rows = rows;
    rows.sort_by_key(|r| r.2);
    let mut jobs = Vec::with_capacity(rows.len());
    for (id, payload, _) in rows {
        match serde_json::from_str::<JobKind>(&payload) {
            Ok(kind) => jobs.push(Job { id, kind }),
            Err(e) => tracing::error!(job_id = %id, error = %e, "stored job does not parse"),
        }
    }
    let builds: Vec<String> = jobs
        .iter()
        .filter_map(|j| match &j.kind {
            JobKind::BuildSnapshot(b) => Some(b.build_id.clone()),
            _ => None,
        })
        .collect();
    crate::builds::claimed(app, &builds).await?;
    Ok(jobs)
}

async fn poll(
    app: axum::extract::State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    valid_id(&runner_id)?;
    let wait = q.int("wait")?.unwrap_or(0);
    if wait < 0 {
        return Err(ApiError::bad_request(format!("wait must be 0 or more seconds, got {wait}")));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_POLL_WAIT_SECS as i64) as u64);
    let notify = app.job_notify(&runner_id);
    loop {
        // Registered before the claim, so a job created between the claim and the wait still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let jobs = claim(&app, &runner_id).await?;
        let now = tokio::time::Instant::now();
        if !jobs.is_empty() || now >= deadline {
            return Ok(Json(jobs).into_response());
        }
        let nap = (deadline - now).min(app.poll_interval());
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

fn ssh_addr(daemon_addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = daemon_addr.parse().ok()?;
    Some(std::net::SocketAddr::new(addr.ip(), ports::SSH).to_string())
}

/// Records what a runner says about a sandbox's daemon.
async fn record_info(conn: &mut AnyConnection, info: &SandboxInfo) -> Result<(), sqlx::Error> {
    let ssh = info.daemon_addr.as_deref().and_then(ssh_addr);
    sqlx::query(
        "UPDATE sandboxes SET daemon_addr = $1, ssh_addr = $2, daemon_token = $3, provisioned = 1 WHERE id = $4",
    )
    .bind(info.daemon_addr.clone())
    .bind(ssh)
    .bind(&info.daemon_token)
    .bind(&info.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// After a sandbox stopped: destroy it at once when its auto-delete interval is 0 (ephemeral).
async fn delete_if_ephemeral(app: &App, conn: &mut AnyConnection, row: &Row, now: i64) -> Result<bool, sqlx::Error> {
    let Some(runner) = row.runner_id.as_deref() else { return Ok(false) };
    if row.auto_delete != 0 {
        return Ok(false);
    }
    let job = JobKind::DestroySandbox { sandbox_id: row.id.clone() };
    sandbox::enqueue(conn, runner, &job, SandboxState::Stopped, SandboxState::Destroying, now).await?;
    sandbox::set_state(conn, &row.id, SandboxState::Destroying, None, now).await?;
    sqlx::query("UPDATE sandboxes SET desired_state = 'destroyed' WHERE id = $1").bind(&row.id).execute(conn).await?;
    let _ = app;
    Ok(true)
}

async fn result(
    app: axum::extract::State<App>,
    _: RunnerAuth,
    Path((runner_id, job_id)): Path<(String, String)>,
    Json(res): Json<JobResult>,
) -> ApiResult<Response> {
    if res.job_id != job_id {
        return Err(ApiError::bad_request(format!(
            "jobId {:?} in the body does not match {job_id:?} in the path",
            res.job_id
        )));
    }
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let job: Option<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT sandbox_id, payload, prev_state, via_state, state FROM jobs WHERE id = $1 AND runner_id = $2",
    )
    .bind(&job_id)
    .bind(&runner_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((sandbox_id, payload, prev, via, job_state)) = job else {
        return Err(ApiError::not_found(format!("no job {job_id} for runner {runner_id}")));
    };
    if !matches!(job_state.as_str(), "pending" | "claimed") {
        // Already completed (a retried report) or cancelled: accepted and ignored.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (new_job_state, error) = match &res.outcome {
        JobOutcome::Succeeded { .. } => ("done", None),
        JobOutcome::Failed { code, message } => ("failed", Some(format!("{code:?}: {message}"))),
    };
    sqlx::query("UPDATE jobs SET state = $1, completed_at = $2, error = $3 WHERE id = $4")
        .bind(new_job_state)
        .bind(now)
        .bind(error)
        .bind(&job_id)
        .execute(&mut *tx)
        .await?;
    let kind: JobKind = serde_json::from_str(&payload).map_err(|e| ApiError::internal("stored job", e))?;
    match (&kind, &res.outcome) {
        (JobKind::BuildSnapshot(b), outcome) => {
            crate::builds::finished(&app, &mut tx, &b.build_id, outcome, now).await?
        }
        (JobKind::CreateSandbox(c), JobOutcome::Failed { code: JobErrorCode::ImageNotFound, .. }) => {
            crate::builds::image_missing(&mut tx, &runner_id, &c.image, now).await?;
        }
        _ => {}
    }
    crate::fork::record_result(&mut tx, &kind, &res.outcome, now).await?;
    let mut wake_runner = false;
    if let Some(row) = sandbox::load(&app, &mut tx, None, &sandbox_id, true).await? {
        let current = row.stored_state();
        let via = state::parse(&via);
        let in_step = current == via;
        match (&res.outcome, &kind) {
            // A network change moves no state. A runner that no longer has the sandbox has nothing to apply (a
            // re-created sandbox gets the stored settings); any other failure leaves a running sandbox without
            // the settings the user asked for, which must show.
            (JobOutcome::Failed { code, message }, JobKind::UpdateSandboxNetwork(_))
                if *code != JobErrorCode::SandboxNotFound && current == SandboxState::Started =>
            {
                let reason = format!("network settings could not be applied ({code:?}): {message}");
                sandbox::set_state(&mut tx, &row.id, SandboxState::Error, Some(&reason), now).await?;
            }
            (_, JobKind::UpdateSandboxNetwork(_)) => {}
            (JobOutcome::Succeeded { .. }, JobKind::DestroySandbox { .. })
            | (JobOutcome::Failed { code: JobErrorCode::SandboxNotFound, .. }, JobKind::DestroySandbox { .. })
                if current != SandboxState::Destroyed =>
            {
                sandbox::set_state(&mut tx, &row.id, SandboxState::Destroyed, None, now).await?;
            }
            (JobOutcome::Succeeded { sandbox: info, .. }, _) if in_step => {
                if let Some(info) = info.as_deref() {
                    record_info(&mut tx, info).await?;
                }
                let next = match (&kind, info.as_deref()) {
                    (JobKind::ResizeSandbox(r), _) => {
                        sqlx::query(
                            "UPDATE sandboxes SET cpu = COALESCE($1, cpu), memory = COALESCE($2, memory), \
                             disk = COALESCE($3, disk) WHERE id = $4",
                        )
                        .bind(r.cpu.map(i64::from))
                        .bind(r.memory.map(i64::from))
                        .bind(r.disk.map(i64::from))
                        .bind(&row.id)
                        .execute(&mut *tx)
                        .await?;
                        info.as_deref().map(|i| i.state).unwrap_or_else(|| state::parse(&prev))
                    }
                    // The container is gone; what the runner last saw of it does not matter.
                    (JobKind::ArchiveSandbox { .. }, _) => SandboxState::Archived,
                    (_, Some(info)) => info.state,
                    (JobKind::StopSandbox(_), None) => SandboxState::Stopped,
                    _ => SandboxState::Started,
                };
                if matches!(kind, JobKind::StartSandbox { .. } | JobKind::RestoreSandbox(_)) {
                    // Preview tokens rotate on every start.
                    sqlx::query("UPDATE sandboxes SET preview_token = $1 WHERE id = $2")
                        .bind(crate::db::random_token(24))
                        .bind(&row.id)
                        .execute(&mut *tx)
                        .await?;
                }
                let reason =
                    info.as_deref().and_then(|i| i.error_reason.clone()).filter(|_| next == SandboxState::Error);
                sandbox::set_state(&mut tx, &row.id, next, reason.as_deref(), now).await?;
                if next == SandboxState::Stopped {
                    wake_runner = delete_if_ephemeral(&app, &mut tx, &row, now).await?;
                }
            }
            // The sandbox moved on meanwhile (deleted while starting): keep what the runner said about it.
            (JobOutcome::Succeeded { sandbox: Some(info), .. }, _)
                if current != SandboxState::Destroyed && current != SandboxState::Destroying =>
            {
                record_info(&mut tx, info).await?;
            }
            (JobOutcome::Failed { code, message }, JobKind::ResizeSandbox(_)) if in_step => {
                let reason = format!("resize failed ({code:?}): {message}");
                tracing::warn!(sandbox_id = %row.id, %reason, "resize failed");
                sandbox::set_state(&mut tx, &row.id, state::parse(&prev), None, now).await?;
                sqlx::query("UPDATE sandboxes SET error_reason = $1 WHERE id = $2")
                    .bind(reason)
                    .bind(&row.id)
                    .execute(&mut *tx)
                    .await?;
            }
            // The archive is still in the store (a runner deletes it only once the sandbox runs again): the
            // sandbox stays archived, and a later start tries again.
            (JobOutcome::Failed { code, message }, JobKind::RestoreSandbox(_)) if in_step => {
                let reason = format!("restore failed ({code:?}): {message}");
                tracing::warn!(sandbox_id = %row.id, %reason, "restore failed");
                sandbox::set_state(&mut tx, &row.id, SandboxState::Archived, Some(&reason), now).await?;
            }
            (JobOutcome::Failed { .. }, _) if in_step && crate::fork::failure_restores(&kind) => {
                sandbox::set_state(&mut tx, &row.id, state::parse(&prev), None, now).await?;
            }
            (JobOutcome::Failed { code, message }, _) if in_step => {
                let reason = format!("{message} ({code:?})");
                sandbox::set_state(&mut tx, &row.id, SandboxState::Error, Some(&reason), now).await?;
            }
            _ => {}
        }
    }
    tx.commit().await?;
    if matches!(kind, JobKind::BuildSnapshot(_)) {
        crate::builds::wake_followers();
    }
    if wake_runner {
        app.wake_runner(&runner_id);
    }
    // The next job of that sandbox may now be claimable.
    app.wake_runner(&runner_id);
    app.wake_routes();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn in_flight(conn: &mut AnyConnection, sandbox_id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE sandbox_id = $1 AND state IN ('pending', 'claimed')")
            .bind(sandbox_id)
            .fetch_one(conn)
            .await?;
    Ok(n > 0)
}

/// Applies one unrequested report; true when the sandbox changed.
async fn observe(
    app: &App,
    conn: &mut AnyConnection,
    runner_id: &str,
    sandbox_id: &str,
    reported: SandboxState,
    reason: Option<String>,
    info: Option<&SandboxInfo>,
) -> ApiResult<bool> {
    let now = app.now();
    let Some(row) = sandbox::load(app, conn, None, sandbox_id, true).await? else {
        tracing::warn!(runner_id, sandbox_id, "runner reports a sandbox the API does not know");
        return Ok(false);
    };
    if row.runner_id.as_deref() != Some(runner_id) {
        tracing::warn!(runner_id, sandbox_id, "runner reports a sandbox placed elsewhere; ignored");
        return Ok(false);
    }
    let busy = in_flight(conn, &row.id).await?;
    if let Some(info) = info
        && !busy
        && row.stored_state() != SandboxState::Destroyed
    {
        record_info(conn, info).await?;
    }
    let Some(next) = state::observe(row.stored_state(), reported, busy) else { return Ok(info.is_some()) };
    sandbox::set_state(conn, &row.id, next, reason.as_deref().filter(|_| next != SandboxState::Started), now).await?;
    if next == SandboxState::Stopped {
        delete_if_ephemeral(app, conn, &row, now).await?;
    }
    Ok(true)
}

async fn states(
    app: axum::extract::State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    Json(changes): Json<Vec<StateChange>>,
) -> ApiResult<Response> {
    let mut tx = app.db.pool.begin().await?;
    for c in changes {
        let mut reason = c.reason.clone();
        if c.oom_killed {
            reason = Some(format!("{} (out of memory)", reason.unwrap_or_else(|| "killed".into())));
        } else if let Some(code) = c.exit_code {
            reason = Some(format!("{} (exit code {code})", reason.unwrap_or_else(|| "exited".into())));
        }
        observe(&app, &mut tx, &runner_id, &c.sandbox_id, c.state, reason, None).await?;
    }
    tx.commit().await?;
    app.wake_routes();
    app.wake_runner(&runner_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The runner's full picture: report states it knows, and mark sandboxes it no longer has.
async fn reconcile(
    app: axum::extract::State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    Json(list): Json<Vec<SandboxInfo>>,
) -> ApiResult<Response> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    // A full report is what a runner sends when it (re)starts: jobs it had claimed and not finished are handed
    // out again on its next poll instead of after the redelivery delay (it ignores those it is still running).
    sqlx::query("UPDATE jobs SET handed_at = 0 WHERE runner_id = $1 AND state = 'claimed'")
        .bind(&runner_id)
        .execute(&mut *tx)
        .await?;
    let mut seen = HashSet::new();
    for info in &list {
        seen.insert(info.id.clone());
        observe(&app, &mut tx, &runner_id, &info.id, info.state, info.error_reason.clone(), Some(info)).await?;
    }
    let ours: Vec<(String, String)> =
        sqlx::query_as("SELECT id, state FROM sandboxes WHERE runner_id = $1 AND state <> 'destroyed'")
            .bind(&runner_id)
            .fetch_all(&mut *tx)
            .await?;
    for (id, st) in ours {
        // A sandbox waiting for its image build has no container yet.
        if seen.contains(&id) || crate::builds::waits_for_build(&st) || in_flight(&mut tx, &id).await? {
            continue;
        }
        if st == "archived" {
            // An archived sandbox has no container by design: its filesystem is in the archive store.
            continue;
        }
        if st == "destroying" {
            sandbox::set_state(&mut tx, &id, SandboxState::Destroyed, None, now).await?;
        } else {
            let reason = format!("runner {runner_id} no longer has this sandbox's container");
            sandbox::set_state(&mut tx, &id, SandboxState::Error, Some(&reason), now).await?;
        }
    }
    tx.commit().await?;
    app.wake_routes();
    app.wake_runner(&runner_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ssh_addr_uses_the_daemon_ip() {
        assert_eq!(super::ssh_addr("172.17.0.2:2280").as_deref(), Some("172.17.0.2:22220"));
        assert_eq!(super::ssh_addr("[::1]:2280").as_deref(), Some("[::1]:22220"));
        assert_eq!(super::ssh_addr("nonsense"), None);
    }
}
