//! The `runners` table: what each runner's heartbeat says, and each runner's capacity beside what its sandboxes
//! use (placement decides with it).

use sandbar_proto::runner::RunnerStatus;
use sqlx::{AnyConnection, AnyPool};

use super::{Usage, b};

/// Registers a runner or updates it from a heartbeat.
pub async fn heartbeat(pool: &AnyPool, status: &RunnerStatus, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO runners (id, version, cpu, memory, disk, reported_sandboxes, storage_driver, disk_enforced, \
         registered_at, last_heartbeat) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, cpu = excluded.cpu, memory = excluded.memory, \
         disk = excluded.disk, reported_sandboxes = excluded.reported_sandboxes, \
         storage_driver = excluded.storage_driver, disk_enforced = excluded.disk_enforced, \
         last_heartbeat = excluded.last_heartbeat",
    )
    .bind(&status.runner_id)
    .bind(&status.version)
    .bind(i64::from(status.capacity.cpu))
    .bind(i64::from(status.capacity.memory))
    .bind(i64::from(status.capacity.disk))
    .bind(i64::from(status.sandboxes))
    .bind(&status.storage_driver)
    .bind(b(status.disk_enforced))
    .bind(now)
    .execute(pool)
    .await?;
    let mut conn = pool.acquire().await?;
    super::totals::ensure_runner(&mut conn, &status.runner_id).await
}

/// A runner's capacity and what its live sandboxes use.
#[derive(Debug, Clone)]
pub struct Load {
    pub id: String,
    pub last_heartbeat: i64,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub used: Usage,
}

/// Which runners to load.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// Those that heartbeat at or after this time.
    SeenSince(i64),
    /// This one.
    Id(&'a str),
}

/// The loads of the runners `which` names.
pub async fn loads(conn: &mut AnyConnection, which: Which<'_>) -> Result<Vec<Load>, sqlx::Error> {
    let filter = match which {
        Which::SeenSince(_) => "r.last_heartbeat >= $1",
        Which::Id(_) => "r.id = $1",
    };
    // What they use is their totals (`super::totals`), one row each.
    let q = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT r.id, r.last_heartbeat, r.cpu, r.memory, r.disk, COALESCE(t.cpu, 0) AS used_cpu, \
         COALESCE(t.memory, 0) AS used_memory, COALESCE(t.disk, 0) AS used_disk \
         FROM runners r LEFT JOIN runner_totals t ON t.runner_id = r.id \
         WHERE {filter}"
    )));
    let q = match which {
        Which::SeenSince(t) => q.bind(t),
        Which::Id(id) => q.bind(id.to_owned()),
    };
    let rows: Vec<LoadRow> = q.fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| Load {
            id: r.id,
            last_heartbeat: r.last_heartbeat,
            cpu: r.cpu,
            memory: r.memory,
            disk: r.disk,
            used: Usage { cpu: r.used_cpu, memory: r.used_memory, disk: r.used_disk },
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct LoadRow {
    id: String,
    last_heartbeat: i64,
    cpu: i64,
    memory: i64,
    disk: i64,
    used_cpu: i64,
    used_memory: i64,
    used_disk: i64,
}

/// `(runner, last heartbeat or 0)` of a build's runner.
pub async fn of_build(conn: &mut AnyConnection, build_id: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.runner_id, COALESCE(r.last_heartbeat, 0) FROM builds b LEFT JOIN runners r ON r.id = b.runner_id \
         WHERE b.id = $1",
    )
    .bind(build_id)
    .fetch_optional(conn)
    .await
}

/// Records `hash` as runner `runner_id`'s credential, replacing any earlier one.
pub async fn set_credential(
    pool: &AnyPool,
    runner_id: &str,
    hash: &str,
    daemon_networks: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO runner_credentials (runner_id, credential_hash, issued_at, daemon_networks) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (runner_id) DO UPDATE SET credential_hash = excluded.credential_hash, \
         issued_at = excluded.issued_at, daemon_networks = excluded.daemon_networks",
    )
    .bind(runner_id)
    .bind(hash)
    .bind(now)
    .bind(daemon_networks)
    .execute(pool)
    .await?;
    Ok(())
}

/// The networks (comma-separated CIDRs) runner `runner_id` declared at its last registration; `None` when it never
/// registered.
pub async fn daemon_networks(pool: &AnyPool, runner_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT daemon_networks FROM runner_credentials WHERE runner_id = $1")
        .bind(runner_id)
        .fetch_optional(pool)
        .await
}

/// The runner a credential (by its hash) was issued to.
pub async fn of_credential(pool: &AnyPool, hash: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT runner_id FROM runner_credentials WHERE credential_hash = $1")
        .bind(hash)
        .fetch_optional(pool)
        .await
}

/// How many runners sent a heartbeat at or after `since` (ms).
pub async fn count_seen_since(pool: &AnyPool, since: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM runners WHERE last_heartbeat >= $1").bind(since).fetch_one(pool).await
}
