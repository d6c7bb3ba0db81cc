//! Runner scheduling (`runners.schedule`, `runners.move_out`) and the moves of sandboxes off a draining runner
//! (`sandbox_moves`). The decisions are in `crate::domain::drain`.

use sqlx::{AnyConnection, AnyPool};

/// A runner as the operator sees it (`GET /api/admin/runners`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunnerRow {
    pub id: String,
    pub version: String,
    pub schedule: String,
    pub move_out: i64,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub registered_at: i64,
    pub last_heartbeat: i64,
    /// Its sandboxes that are not destroyed.
    pub sandboxes: i64,
}

/// Every runner, by id; `only` narrows to one.
pub async fn list(pool: &AnyPool, only: Option<&str>) -> Result<Vec<RunnerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.version, r.schedule, r.move_out, r.cpu, r.memory, r.disk, r.registered_at, r.last_heartbeat, \
         COUNT(s.id) AS sandboxes \
         FROM runners r LEFT JOIN sandboxes s ON s.runner_id = r.id AND s.state <> 'destroyed' \
         WHERE ($1 = '' OR r.id = $1) \
         GROUP BY r.id, r.version, r.schedule, r.move_out, r.cpu, r.memory, r.disk, r.registered_at, r.last_heartbeat \
         ORDER BY r.id",
    )
    .bind(only.unwrap_or_default())
    .fetch_all(pool)
    .await
}

/// Sets a runner's schedule; false when there is no such runner.
pub async fn set_schedule(pool: &AnyPool, runner: &str, schedule: &str, move_out: bool) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE runners SET schedule = $2, move_out = $3 WHERE id = $1")
        .bind(runner)
        .bind(schedule)
        .bind(super::b(move_out))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The schedule of one runner (`None`: not registered).
pub async fn schedule_of(conn: &mut AnyConnection, runner: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT schedule FROM runners WHERE id = $1").bind(runner).fetch_optional(conn).await
}

/// Runners that take no new sandboxes.
pub async fn unschedulable(conn: &mut AnyConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM runners WHERE schedule <> 'active'").fetch_all(conn).await
}

/// Drops the moves still planned off `runner` (uncordoned, or drained without moving).
pub async fn cancel_moves(pool: &AnyPool, runner: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM sandbox_moves WHERE from_runner = $1").bind(runner).execute(pool).await?;
    Ok(done.rows_affected())
}

/// A sandbox on a runner being emptied; `restart` is `None` while no move started.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Moving {
    pub id: String,
    pub runner_id: String,
    pub state: String,
    pub volumes: String,
    pub restart: Option<i64>,
}

/// The sandboxes (started, stopped or archived) of draining runners that move their sandboxes out.
pub async fn to_move(pool: &AnyPool) -> Result<Vec<Moving>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id, s.runner_id, s.state, s.volumes, m.restart FROM sandboxes s \
         JOIN runners r ON r.id = s.runner_id \
         LEFT JOIN sandbox_moves m ON m.sandbox_id = s.id \
         WHERE r.schedule = 'draining' AND r.move_out = 1 AND s.state IN ('started', 'stopped', 'archived') \
         ORDER BY s.id",
    )
    .fetch_all(pool)
    .await
}

/// Records that `sandbox` is moving off `runner` (kept as first recorded when it already is).
pub async fn start_move(
    pool: &AnyPool,
    sandbox: &str,
    runner: &str,
    restart: bool,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sandbox_moves (sandbox_id, from_runner, restart, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (sandbox_id) DO NOTHING",
    )
    .bind(sandbox)
    .bind(runner)
    .bind(super::b(restart))
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// The move of `sandbox` is over.
pub async fn end_move(pool: &AnyPool, sandbox: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sandbox_moves WHERE sandbox_id = $1").bind(sandbox).execute(pool).await?;
    Ok(())
}

/// Puts an archived sandbox (no container anywhere) on `runner`, where its restore is about to be queued.
pub async fn rehome(conn: &mut AnyConnection, sandbox: &str, runner: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sandboxes SET runner_id = $2 WHERE id = $1").bind(sandbox).bind(runner).execute(conn).await?;
    Ok(())
}
