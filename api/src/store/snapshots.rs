//! The `snapshots` table: names for images with default resources; built ones point at their build, ones taken
//! from a sandbox at the runner that holds their image.

use sqlx::{AnyConnection, AnyPool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SnapshotRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub image_name: String,
    pub entrypoint: Option<String>,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    /// The build that makes its image (a Dockerfile snapshot).
    pub build_id: Option<String>,
    /// `active`; `building` then `active` or `build_failed` for a Dockerfile snapshot; for a snapshot from a
    /// sandbox `pending` while its runner commits and `error` if that failed.
    pub state: String,
    pub error_reason: Option<String>,
    /// The sandbox a snapshot was taken from (`POST /sandbox/{id}/snapshot`).
    pub source_sandbox_id: Option<String>,
    /// The runner holding the image of a snapshot taken from a sandbox; `None`: the image is on every runner.
    pub runner_id: Option<String>,
    /// Bytes of the committed image.
    pub size: Option<i64>,
    /// Its image's copy in the internal registry (a snapshot taken from a sandbox): sandboxes of it may then go to
    /// any runner, which pulls it.
    pub pushed_image: Option<String>,
    /// Why the push to the internal registry failed (the image stays on its runner only).
    pub push_error: Option<String>,
}

const COLUMNS: &str = "id, organization_id, name, image_name, entrypoint, cpu, memory, disk, created_at, updated_at, \
    last_used_at, build_id, state, error_reason, source_sandbox_id, runner_id, size, pushed_image, push_error";

/// The snapshot `id_or_name` of `org`, if any.
pub async fn find(conn: &mut AnyConnection, org: &str, id_or_name: &str) -> Result<Option<SnapshotRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM snapshots WHERE organization_id = $1 AND (id = $2 OR name = $2) LIMIT 1"
    )))
    .bind(org)
    .bind(id_or_name)
    .fetch_optional(conn)
    .await
}

/// The columns of a new snapshot.
#[derive(Debug)]
pub struct NewSnapshot<'a> {
    pub id: &'a str,
    pub org: &'a str,
    pub name: &'a str,
    pub image: &'a str,
    pub entrypoint: Option<String>,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub now: i64,
}

/// Inserts an `active` snapshot of an image.
pub async fn insert(conn: &mut AnyConnection, s: NewSnapshot<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (id, organization_id, name, image_name, entrypoint, cpu, memory, disk, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(s.id)
    .bind(s.org)
    .bind(s.name)
    .bind(s.image)
    .bind(s.entrypoint)
    .bind(s.cpu)
    .bind(s.memory)
    .bind(s.disk)
    .bind(s.now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a `pending` snapshot that `runner` is to commit from sandbox `source`.
pub async fn insert_from_sandbox(
    conn: &mut AnyConnection,
    s: NewSnapshot<'_>,
    source: &str,
    runner: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (id, organization_id, name, image_name, entrypoint, cpu, memory, disk, created_at, \
         updated_at, state, source_sandbox_id, runner_id) \
         VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, $8, 'pending', $9, $10)",
    )
    .bind(s.id)
    .bind(s.org)
    .bind(s.name)
    .bind(s.image)
    .bind(s.cpu)
    .bind(s.memory)
    .bind(s.disk)
    .bind(s.now)
    .bind(source)
    .bind(runner)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ties a snapshot to its build, in `state`.
pub async fn set_build(conn: &mut AnyConnection, id: &str, build_id: &str, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET build_id = $1, state = $2 WHERE id = $3")
        .bind(build_id)
        .bind(state)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A page of `org`'s snapshots (newest first), narrowed to those taken from `source` when given, and the total.
pub async fn list(
    pool: &AnyPool,
    org: &str,
    source: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<SnapshotRow>, i64), sqlx::Error> {
    let filter = if source.is_some() { " AND source_sandbox_id = $2" } else { " AND $2 = ''" };
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM snapshots WHERE organization_id = $1{filter}"
    )))
    .bind(org)
    .bind(source.unwrap_or(""))
    .fetch_one(pool)
    .await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM snapshots WHERE organization_id = $1{filter} \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    )))
    .bind(org)
    .bind(source.unwrap_or(""))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok((rows, total))
}

pub async fn delete(conn: &mut AnyConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM snapshots WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// `(id, organization)` of the pending snapshot of `image`, if any.
pub async fn pending_of_image(conn: &mut AnyConnection, image: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, organization_id FROM snapshots WHERE image_name = $1 AND state = 'pending'")
        .bind(image)
        .fetch_optional(conn)
        .await
}

/// A pending snapshot of `image` ends: `active` with its size in bytes, or `error` with the reason.
pub async fn end_pending(
    conn: &mut AnyConnection,
    image: &str,
    made: Result<Option<i64>, String>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let (state, size, reason) = match made {
        Ok(size) => ("active", size, None),
        Err(reason) => ("error", None, Some(reason)),
    };
    sqlx::query(
        "UPDATE snapshots SET state = $1, size = $2, error_reason = $3, updated_at = $4 \
         WHERE image_name = $5 AND state = 'pending'",
    )
    .bind(state)
    .bind(size)
    .bind(reason)
    .bind(now)
    .bind(image)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts a new snapshot in `state` (`pulling` while a runner pulls its registry image).
pub async fn set_state(conn: &mut AnyConnection, id: &str, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET state = $1 WHERE id = $2").bind(state).bind(id).execute(conn).await?;
    Ok(())
}

/// A `pulling` snapshot ends: `active` with the image's size in bytes, or `error` with the reason.
pub async fn end_pull(
    conn: &mut AnyConnection,
    id: &str,
    pulled: Result<Option<i64>, String>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let (state, size, reason) = match pulled {
        Ok(size) => ("active", size, None),
        Err(reason) => ("error", None, Some(reason)),
    };
    sqlx::query(
        "UPDATE snapshots SET state = $1, size = $2, error_reason = $3, updated_at = $4          WHERE id = $5 AND state = 'pulling'",
    )
    .bind(state)
    .bind(size)
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The snapshots of a build that ended: `state` (`active` or `build_failed`) with the build's reason.
pub async fn build_ended(
    conn: &mut AnyConnection,
    build_id: &str,
    state: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE snapshots SET state = $1, error_reason = $2, updated_at = $3 \
         WHERE build_id = $4 AND state IN ('pending', 'building')",
    )
    .bind(state)
    .bind(reason)
    .bind(now)
    .bind(build_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records where the runner pushed a new snapshot's image (or why it could not).
pub async fn set_pushed(
    conn: &mut AnyConnection,
    image: &str,
    pushed: Option<&str>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET pushed_image = $1, push_error = $2 WHERE image_name = $3")
        .bind(pushed)
        .bind(error)
        .bind(image)
        .execute(conn)
        .await?;
    Ok(())
}
