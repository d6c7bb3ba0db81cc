//! Fork and snapshot-from-sandbox (`POST /sandbox/{id}/fork`, `POST /sandbox/{id}/snapshot`), as the Daytona SDK
//! 0.226.1 calls them (`sandbox.fork(name)`, `sandbox.create_snapshot(name)`).
//!
//! Both copy a sandbox's **filesystem** on its runner (`docker commit`); memory and running processes are never
//! copied. A fork is a new sandbox (`creating`, then `started`) created from that copy with the source's spec and its
//! own id, name and tokens; the two diverge from then on, and the source keeps its state. A snapshot records a
//! snapshot row (`pending`, then `active` with its size and `sourceSandboxId`) while the sandbox shows
//! `snapshotting` and then returns to its previous state. The copies are local images (no registry), so forks and
//! sandboxes created from such a snapshot are placed on the runner that holds them.
//!
//! Pause (`POST /sandbox/{id}/pause`, `sandbox.pause()`) freezes a started sandbox's processes with their memory
//! (`pausing`, then `paused`); a start of a paused sandbox resumes it (`resuming`, then `started`).

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sandbar_proto::runner::{
    ForkSandbox, JobKind, JobOutcome, RemoveSnapshot, SandboxState, SnapshotSandbox, fork_image,
};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::auth::Caller;
use crate::db::random_token;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::sandbox::{self, Row, bump, check_quota, create_job, enqueue, load, set_state, valid_name};
use crate::state::{self, CopyKind};
use crate::{App, runners};

/// Repository of the images snapshots from sandboxes are committed to; the tag is the snapshot's id (names are
/// per organization and may be upper case, image references may not).
pub const SNAPSHOT_IMAGE_REPO: &str = "sandbar-snapshot";

/// Daytona's `ForkSandbox`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkSandboxBody {
    /// Name of the new sandbox; its id when absent.
    pub name: Option<String>,
}

/// Daytona's `CreateSandboxSnapshot`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxSnapshotBody {
    pub name: String,
    /// Must be false (the default): sandboxes are containers, and a snapshot holds their filesystem only.
    pub include_memory: Option<bool>,
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/sandbox/{id}/fork", post(fork))
        .route("/sandbox/{id}/snapshot", post(snapshot))
        .route("/sandbox/{id}/pause", post(pause))
}

/// Refuses unless `runner` heartbeats and has room for the request (the same overcommit as [`runners::place`]):
/// copies live on one runner, so there is no other choice of placement.
pub(crate) async fn place_on(
    app: &App,
    conn: &mut AnyConnection,
    runner: &str,
    cpu: i64,
    memory: i64,
    disk: i64,
) -> ApiResult<String> {
    let idle = state::IDLE_STATES_SQL;
    let row: Option<(i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT r.last_heartbeat, r.cpu, r.memory, r.disk, \
         CAST(COALESCE(SUM(CASE WHEN s.state NOT IN {idle} THEN s.cpu ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN s.state NOT IN {idle} THEN s.memory ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(s.disk), 0) AS BIGINT) \
         FROM runners r LEFT JOIN sandboxes s ON s.runner_id = r.id AND s.state <> 'destroyed' \
         WHERE r.id = $1 GROUP BY r.id, r.last_heartbeat, r.cpu, r.memory, r.disk"
    )))
    .bind(runner)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((seen, c, m, d, uc, um, ud)) = row else {
        return Err(ApiError::unavailable(format!("runner {runner}, which holds the image, is not registered")));
    };
    if seen < app.now() - runners::unreachable_after_ms(&app.config) {
        return Err(ApiError::unavailable(format!(
            "runner {runner}, which holds the image (images are local to a runner), is unreachable; retry when it is back"
        )));
    }
    let l = &app.config.limits;
    if uc + cpu > c * l.cpu_overcommit || um + memory > m * l.memory_overcommit || ud + disk > d {
        return Err(ApiError::unavailable(format!(
            "runner {runner}, which holds the image (images are local to a runner), has no room for {cpu} vCPU, \
             {memory} GiB memory and {disk} GiB disk; stop or delete sandboxes there and retry"
        )));
    }
    Ok(runner.to_owned())
}

fn check_name(name: &str, what: &str) -> ApiResult<()> {
    if valid_name(name) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "invalid {what} name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
    )))
}

/// `POST /sandbox/{id}/fork`: answers 200 with the new sandbox (`creating`); the SDK then waits for `started`.
async fn fork(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ForkSandboxBody>,
) -> ApiResult<Response> {
    let app = app.0;
    let org = caller.organization_id;
    let fork_id = uuid::Uuid::new_v4().to_string();
    let name = match body.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => {
            check_name(n, "sandbox")?;
            n.to_owned()
        }
        _ => fork_id.clone(),
    };
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    crate::sandbox::lock_org(&app, &mut tx, &org).await?;
    let src = load(&app, &mut tx, Some(&org), &id, true).await?.ok_or_else(|| ApiError::sandbox_not_found(&id))?;
    state::plan_copy(src.effective_state(&app, now), CopyKind::Fork).map_err(|r| ApiError::bad_request(r.0))?;
    let runner = src
        .runner_id
        .clone()
        .ok_or_else(|| ApiError::conflict("the sandbox was never placed on a runner, so there is nothing to fork"))?;
    crate::sandbox::ensure_name_free(&mut tx, &org, &name).await?;
    // A fork is a new started sandbox of the source's size: quotas as for a create.
    check_quota(&mut tx, &org, src.cpu, src.memory, src.disk, 1).await?;
    place_on(&app, &mut tx, &runner, src.cpu, src.memory, src.disk).await?;
    // Every column of the source, but a new identity: id, name, tokens, times, and the fork's own image. Columns
    // this statement does not name take their defaults.
    sqlx::query(
        "INSERT INTO sandboxes (id, organization_id, name, runner_id, state, desired_state, snapshot, os_user, env, \
         labels, public, network_block_all, network_allow_list, target, cpu, memory, disk, auto_stop, auto_archive, \
         auto_delete, daemon_token, preview_token, provisioned, created_at, updated_at, last_activity_at, state_at, \
         version) \
         SELECT $1, organization_id, $2, runner_id, 'creating', 'started', $3, os_user, env, labels, public, \
         network_block_all, network_allow_list, target, cpu, memory, disk, auto_stop, auto_archive, auto_delete, '', \
         $4, 0, $5, $5, $5, $5, 0 FROM sandboxes WHERE id = $6",
    )
    .bind(&fork_id)
    .bind(&name)
    .bind(fork_image(&fork_id))
    .bind(random_token(24))
    .bind(now)
    .bind(&src.id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sandbox_labels (sandbox_id, key, value) SELECT $1, key, value FROM sandbox_labels \
         WHERE sandbox_id = $2",
    )
    .bind(&fork_id)
    .bind(&src.id)
    .execute(&mut *tx)
    .await?;
    let row =
        load(&app, &mut tx, None, &fork_id, false).await?.ok_or_else(|| ApiError::internal("fork", "row vanished"))?;
    let JobKind::CreateSandbox(spec) = create_job(&row) else {
        return Err(ApiError::internal("fork", "create_job made another kind of job"));
    };
    let job = JobKind::ForkSandbox(ForkSandbox { source_sandbox_id: src.id.clone(), fork: spec });
    enqueue(&mut tx, &runner, &job, SandboxState::Creating, SandboxState::Creating, now).await?;
    bump(&mut tx, &fork_id, now).await?;
    let row = load(&app, &mut tx, None, &fork_id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_runner(&runner);
    app.wake_routes();
    tracing::info!(sandbox_id = %fork_id, source = %src.id, runner_id = %runner, "sandbox fork requested");
    let row = sandbox::wait_while_creating(&app, row).await?;
    Ok(Json(row.to_dto(&app)).into_response())
}

/// `POST /sandbox/{id}/snapshot`: answers 200 with the sandbox (`snapshotting`); the SDK polls until it leaves that
/// state, by when the snapshot is `active` (or `error`, with the runner's reason).
async fn snapshot(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateSandboxSnapshotBody>,
) -> ApiResult<Response> {
    let app = app.0;
    let org = caller.organization_id;
    if body.include_memory.unwrap_or(false) {
        return Err(ApiError::bad_request(
            "includeMemory is not supported: sandbar sandboxes are containers, and a snapshot holds their filesystem \
             only (memory and running processes are not copied); send includeMemory=false",
        ));
    }
    let name = body.name.trim();
    check_name(name, "snapshot")?;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    crate::sandbox::lock_org(&app, &mut tx, &org).await?;
    let row = load(&app, &mut tx, Some(&org), &id, true).await?.ok_or_else(|| ApiError::sandbox_not_found(&id))?;
    // A name clash is reported as such whatever the sandbox's state.
    if crate::snapshots::find(&mut tx, &org, name).await?.is_some() {
        return Err(ApiError::conflict(format!("Snapshot with name {name} already exists")));
    }
    let current = row.effective_state(&app, now);
    state::plan_copy(current, CopyKind::Snapshot).map_err(|r| ApiError::bad_request(r.0))?;
    let runner = row.runner_id.clone().ok_or_else(|| {
        ApiError::conflict("the sandbox was never placed on a runner, so there is nothing to snapshot")
    })?;
    let snapshot_id = uuid::Uuid::new_v4().to_string();
    let image = format!("{SNAPSHOT_IMAGE_REPO}:{snapshot_id}");
    sqlx::query(
        "INSERT INTO snapshots (id, organization_id, name, image_name, entrypoint, cpu, memory, disk, created_at, \
         updated_at, state, source_sandbox_id, runner_id) \
         VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, $8, 'pending', $9, $10)",
    )
    .bind(&snapshot_id)
    .bind(&org)
    .bind(name)
    .bind(&image)
    .bind(row.cpu)
    .bind(row.memory)
    .bind(row.disk)
    .bind(now)
    .bind(&row.id)
    .bind(&runner)
    .execute(&mut *tx)
    .await?;
    let job = JobKind::SnapshotSandbox(SnapshotSandbox { sandbox_id: row.id.clone(), image });
    enqueue(&mut tx, &runner, &job, row.stored_state(), state::SNAPSHOT_VIA, now).await?;
    set_state(&mut tx, &row.id, state::SNAPSHOT_VIA, None, now).await?;
    let after = load(&app, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_runner(&runner);
    app.wake_routes();
    tracing::info!(sandbox_id = %after.id, snapshot_id = %snapshot_id, "snapshot from sandbox requested");
    Ok(Json(after.to_dto(&app)).into_response())
}

/// `POST /sandbox/{id}/pause`: 200 with the sandbox (`pausing`); the SDK polls until it leaves that state.
async fn pause(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let app = app.0;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = load(&app, &mut tx, Some(&caller.organization_id), &id, true)
        .await?
        .ok_or_else(|| ApiError::sandbox_not_found(&id))?;
    let Some(next) = state::plan_pause(row.effective_state(&app, now)).map_err(|r| ApiError::bad_request(r.0))? else {
        return Ok(Json(row.to_dto(&app)).into_response());
    };
    let runner = row.runner_id.clone().ok_or_else(|| ApiError::conflict("the sandbox was never placed on a runner"))?;
    let job = JobKind::PauseSandbox { sandbox_id: row.id.clone() };
    enqueue(&mut tx, &runner, &job, row.stored_state(), next, now).await?;
    set_state(&mut tx, &row.id, next, None, now).await?;
    sqlx::query("UPDATE sandboxes SET desired_state = 'paused' WHERE id = $1").bind(&row.id).execute(&mut *tx).await?;
    let after = load(&app, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_runner(&runner);
    app.wake_routes();
    Ok(Json(after.to_dto(&app)).into_response())
}

/// The start of a paused sandbox: a resume job instead of a start (`POST /sandbox/{id}/start` asks this first).
/// `None` when the sandbox is not paused (or resuming): the ordinary start applies.
pub(crate) async fn resume_if_paused(app: &App, org: &str, id: &str) -> ApiResult<Option<Row>> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let Some(row) = load(app, &mut tx, Some(org), id, true).await? else { return Ok(None) };
    let next = match state::plan_resume(row.effective_state(app, now)) {
        None => return Ok(None),
        Some(state::Plan::Job(next, _)) => next,
        Some(_) => return Ok(Some(row)),
    };
    let runner = row.runner_id.clone().ok_or_else(|| ApiError::conflict("the sandbox was never placed on a runner"))?;
    let job = JobKind::ResumeSandbox { sandbox_id: row.id.clone() };
    enqueue(&mut tx, &runner, &job, row.stored_state(), next, now).await?;
    set_state(&mut tx, &row.id, next, None, now).await?;
    sqlx::query("UPDATE sandboxes SET desired_state = 'started' WHERE id = $1").bind(&row.id).execute(&mut *tx).await?;
    let after = load(app, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_runner(&runner);
    app.wake_routes();
    Ok(Some(after))
}

/// Applies the part of a job result that concerns a snapshot row (the sandbox itself moves through the runner
/// result handler): `active` with the image's size, or `error` with the runner's reason.
pub(crate) async fn record_result(
    conn: &mut AnyConnection,
    kind: &JobKind,
    outcome: &JobOutcome,
    now: i64,
) -> Result<(), sqlx::Error> {
    let JobKind::SnapshotSandbox(job) = kind else { return Ok(()) };
    match outcome {
        JobOutcome::Succeeded { snapshot, .. } => {
            let size = snapshot.as_ref().and_then(|s| i64::try_from(s.size).ok());
            sqlx::query(
                "UPDATE snapshots SET state = 'active', size = $1, error_reason = NULL, updated_at = $2 \
                 WHERE image_name = $3 AND state = 'pending'",
            )
            .bind(size)
            .bind(now)
            .bind(&job.image)
            .execute(conn)
            .await?;
        }
        JobOutcome::Failed { code, message } => {
            sqlx::query(
                "UPDATE snapshots SET state = 'error', error_reason = $1, updated_at = $2 \
                 WHERE image_name = $3 AND state = 'pending'",
            )
            .bind(format!("{message} ({code:?})"))
            .bind(now)
            .bind(&job.image)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// Deletes a snapshot taken from a sandbox and queues the removal of its image on its runner; returns that runner
/// (to wake), or `None` for a snapshot that is only a name for an image (nothing to remove). Refused with 409 while
/// a sandbox still runs the image (Docker keeps an image a container uses) or while the image is being made.
pub(crate) async fn delete_snapshot(app: &App, snap: &crate::snapshots::SnapshotRow) -> ApiResult<Option<String>> {
    let Some(runner) = snap.runner_id.clone() else { return Ok(None) };
    if snap.state == "pending" {
        return Err(ApiError::conflict(format!(
            "Snapshot {} is still being taken; delete it once it is active",
            snap.name
        )));
    }
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sandboxes WHERE snapshot = $1 AND state <> 'destroyed' ORDER BY created_at LIMIT 5",
    )
    .bind(&snap.image_name)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "Snapshot {} is used by sandbox(es) {}; delete them first",
            snap.name,
            users.join(", ")
        )));
    }
    sqlx::query("DELETE FROM snapshots WHERE id = $1").bind(&snap.id).execute(&mut *tx).await?;
    if snap.state == "active" {
        let job =
            JobKind::RemoveSnapshot(RemoveSnapshot { snapshot_id: snap.id.clone(), image: snap.image_name.clone() });
        enqueue(&mut tx, &runner, &job, SandboxState::Destroying, SandboxState::Destroying, now).await?;
    }
    tx.commit().await?;
    Ok(Some(runner))
}

/// Whether a failed job should put its sandbox back in the state it was in rather than in `error`: a failed
/// snapshot leaves the sandbox as it was (only the snapshot failed), and so does a failed pause.
pub(crate) fn failure_restores(kind: &JobKind) -> bool {
    matches!(kind, JobKind::SnapshotSandbox(_) | JobKind::PauseSandbox { .. })
}
