//! The `docker_registries` table: an organization's registry credentials (`/docker-registry`).

use sqlx::{AnyConnection, AnyPool};

/// A row; `password` never leaves the API except to a runner pulling for one of the organization's jobs.
#[derive(Clone, sqlx::FromRow)]
pub struct RegistryRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub url: String,
    pub host: String,
    pub username: String,
    pub password: String,
    pub project: String,
    pub registry_type: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for RegistryRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryRow")
            .field("id", &self.id)
            .field("organization_id", &self.organization_id)
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str =
    "id, organization_id, name, url, host, username, password, project, registry_type, created_at, updated_at";

pub async fn insert(conn: &mut AnyConnection, r: &RegistryRow) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO docker_registries ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )))
    .bind(&r.id)
    .bind(&r.organization_id)
    .bind(&r.name)
    .bind(&r.url)
    .bind(&r.host)
    .bind(&r.username)
    .bind(&r.password)
    .bind(&r.project)
    .bind(&r.registry_type)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rewrites every field but the id, the organization and `created_at`.
pub async fn update(conn: &mut AnyConnection, r: &RegistryRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE docker_registries SET name = $1, url = $2, host = $3, username = $4, password = $5, project = $6, \
         updated_at = $7 WHERE id = $8 AND organization_id = $9",
    )
    .bind(&r.name)
    .bind(&r.url)
    .bind(&r.host)
    .bind(&r.username)
    .bind(&r.password)
    .bind(&r.project)
    .bind(r.updated_at)
    .bind(&r.id)
    .bind(&r.organization_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// `org`'s registry `id`, if any.
pub async fn find(conn: &mut AnyConnection, org: &str, id: &str) -> Result<Option<RegistryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM docker_registries WHERE organization_id = $1 AND id = $2"
    )))
    .bind(org)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// `org`'s registries, oldest first.
pub async fn list(pool: &AnyPool, org: &str) -> Result<Vec<RegistryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM docker_registries WHERE organization_id = $1 ORDER BY created_at, id"
    )))
    .bind(org)
    .fetch_all(pool)
    .await
}

/// `org`'s registries for `host`, newest first (the newest entry wins when there are several).
pub async fn for_host(conn: &mut AnyConnection, org: &str, host: &str) -> Result<Vec<RegistryRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM docker_registries WHERE organization_id = $1 AND host = $2 \
         ORDER BY updated_at DESC, id"
    )))
    .bind(org)
    .bind(host)
    .fetch_all(conn)
    .await
}

/// Deletes `org`'s registry `id`; false when there was none.
pub async fn delete(conn: &mut AnyConnection, org: &str, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM docker_registries WHERE organization_id = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// How many registries `org` has.
pub async fn count(conn: &mut AnyConnection, org: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM docker_registries WHERE organization_id = $1")
        .bind(org)
        .fetch_one(conn)
        .await
}
