//! The `volumes` table (named per organization; the runner holding the data; the bytes it last measured) and
//! `sandbox_volumes` (which sandbox mounts which volume, for the in-use check).

use sqlx::{AnyConnection, AnyPool};

use super::DbKind;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VolumeRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    /// `ready`, `deleting` (its runner is removing the data) or `error`.
    pub state: String,
    pub error_reason: Option<String>,
    /// The runner holding the data; `None` until a sandbox first mounts the volume.
    pub runner_id: Option<String>,
    pub size_bytes: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

const COLUMNS: &str =
    "id, organization_id, name, state, error_reason, runner_id, size_bytes, created_at, updated_at, last_used_at";

/// The volume `id_or_name` of `org`, if any. `lock` takes a row lock on PostgreSQL.
pub async fn find(
    kind: DbKind,
    conn: &mut AnyConnection,
    org: &str,
    id_or_name: &str,
    lock: bool,
) -> Result<Option<VolumeRow>, sqlx::Error> {
    let lock = if lock && kind == DbKind::Postgres { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM volumes WHERE organization_id = $1 AND (id = $2 OR name = $2) \
         ORDER BY CASE WHEN id = $2 THEN 0 ELSE 1 END LIMIT 1{lock}"
    )))
    .bind(org)
    .bind(id_or_name)
    .fetch_optional(conn)
    .await
}

/// The volume named `name` in `org` (names only, not ids).
pub async fn by_name(conn: &mut AnyConnection, org: &str, name: &str) -> Result<Option<VolumeRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM volumes WHERE organization_id = $1 AND name = $2"
    )))
    .bind(org)
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// The volumes of `org`, oldest first.
pub async fn list(pool: &AnyPool, org: &str) -> Result<Vec<VolumeRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM volumes WHERE organization_id = $1 ORDER BY created_at, id"
    )))
    .bind(org)
    .fetch_all(pool)
    .await
}

/// `(count, bytes)` of the volumes `org` holds.
pub async fn usage(conn: &mut AnyConnection, org: &str) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM volumes \
         WHERE organization_id = $1",
    )
    .bind(org)
    .fetch_one(conn)
    .await
}

/// Inserts a `ready` volume held by no runner yet.
pub async fn insert(conn: &mut AnyConnection, id: &str, org: &str, name: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO volumes (id, organization_id, name, state, size_bytes, created_at, updated_at) \
         VALUES ($1, $2, $3, 'ready', 0, $4, $4)",
    )
    .bind(id)
    .bind(org)
    .bind(name)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that `runner` holds the volume (its first mount), and that it was used at `now`.
pub async fn mounted(conn: &mut AnyConnection, id: &str, runner: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE volumes SET runner_id = COALESCE(runner_id, $1), last_used_at = $2, updated_at = $2 WHERE id = $3",
    )
    .bind(runner)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves a volume to `state` (with a reason for `error`).
pub async fn set_state(
    conn: &mut AnyConnection,
    id: &str,
    state: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE volumes SET state = $1, error_reason = $2, updated_at = $3 WHERE id = $4")
        .bind(state)
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes a volume's rows (its data is gone).
pub async fn remove(conn: &mut AnyConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sandbox_volumes WHERE volume_id = $1").bind(id).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM volumes WHERE id = $1").bind(id).execute(&mut *conn).await?;
    Ok(())
}

/// Records that `sandbox` mounts `volume`.
pub async fn attach(conn: &mut AnyConnection, sandbox: &str, volume: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO sandbox_volumes (sandbox_id, volume_id) VALUES ($1, $2)")
        .bind(sandbox)
        .bind(volume)
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives the fork `fork` the mounts of `source`.
pub async fn copy_mounts(conn: &mut AnyConnection, source: &str, fork: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sandbox_volumes (sandbox_id, volume_id) SELECT $1, volume_id FROM sandbox_volumes \
         WHERE sandbox_id = $2",
    )
    .bind(fork)
    .bind(source)
    .execute(conn)
    .await?;
    Ok(())
}

/// Names of (at most five) sandboxes not destroyed that mount `volume`.
pub async fn users(conn: &mut AnyConnection, volume: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT s.name FROM sandbox_volumes sv JOIN sandboxes s ON s.id = sv.sandbox_id \
         WHERE sv.volume_id = $1 AND s.state <> 'destroyed' ORDER BY s.created_at LIMIT 5",
    )
    .bind(volume)
    .fetch_all(conn)
    .await
}

/// `(volume id, sandbox id, sandbox name)` of every sandbox of `org` (not destroyed) that mounts a volume, oldest
/// sandbox first (the dashboard's volumes page).
pub async fn mounts_of_org(pool: &AnyPool, org: &str) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sv.volume_id, s.id, s.name FROM sandbox_volumes sv JOIN sandboxes s ON s.id = sv.sandbox_id \
         WHERE s.organization_id = $1 AND s.state <> 'destroyed' ORDER BY s.created_at, s.id",
    )
    .bind(org)
    .fetch_all(pool)
    .await
}

/// Records the bytes `runner` measured for the volumes it holds (others' reports are ignored).
pub async fn record_sizes(
    conn: &mut AnyConnection,
    runner: &str,
    sizes: &[sandbar_proto::runner::VolumeUsage],
) -> Result<(), sqlx::Error> {
    for v in sizes {
        sqlx::query("UPDATE volumes SET size_bytes = $1 WHERE id = $2 AND runner_id = $3")
            .bind(i64::try_from(v.bytes).unwrap_or(i64::MAX))
            .bind(&v.volume_id)
            .bind(runner)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Stores the mounts of a sandbox (JSON of `[VolumeMount]`) in its `volumes` column.
pub async fn set_sandbox_mounts(conn: &mut AnyConnection, sandbox: &str, json: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sandboxes SET volumes = $1 WHERE id = $2").bind(json).bind(sandbox).execute(conn).await?;
    Ok(())
}
