//! Organizations, their quotas and usage, and API keys (stored as SHA-256 hashes, scoped to one organization,
//! optional expiry, revocable). Also reachable as `sandbar_api::auth` (what embedders and benches call).

use sqlx::AnyConnection;

use super::{Db, DbKind, Usage, sha256_hex};
use crate::config::Limits;

/// Prefix of every user API key, so a leaked one is recognisable.
pub const KEY_PREFIX: &str = "sbk_";

/// A new organization's first key (shown once; only its hash is kept).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub organization_id: String,
    pub key_id: String,
    pub api_key: String,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("no random source for the key: {0}")]
    Random(#[from] getrandom::Error),
}

pub async fn create_organization(db: &Db, name: &str, limits: &Limits, now_ms: i64) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO organizations (id, name, quota_cpu, quota_memory, quota_disk, quota_sandboxes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(name)
    .bind(limits.quota_cpu)
    .bind(limits.quota_memory)
    .bind(limits.quota_disk)
    .bind(limits.quota_sandboxes)
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    let mut conn = db.pool.acquire().await?;
    super::totals::ensure_org(&mut conn, &id).await?;
    Ok(id)
}

/// Creates a key for `organization_id`; returns `(key id, key)`.
pub async fn create_api_key(
    db: &Db,
    organization_id: &str,
    name: &str,
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<(String, String), KeyError> {
    let id = uuid::Uuid::new_v4().to_string();
    let key = format!("{KEY_PREFIX}{}", sandbar_support::token::url_safe(32)?);
    let hint = key.get(key.len().saturating_sub(4)..).unwrap_or_default();
    sqlx::query(
        "INSERT INTO api_keys (id, organization_id, name, key_hash, created_at, expires_at, value_hint) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(organization_id)
    .bind(name)
    .bind(sha256_hex(&key))
    .bind(now_ms)
    .bind(expires_at_ms)
    .bind(hint)
    .execute(&db.pool)
    .await?;
    Ok((id, key))
}

/// Revokes a key by id; false when there is no such key.
pub async fn revoke_api_key(db: &Db, key_id: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let r = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    super::notify::keys(&mut tx).await?;
    tx.commit().await?;
    db.keys.clear();
    Ok(r.rows_affected() == 1)
}

/// The organization named `org_name` (created with `limits` as quotas when missing) and a new key for it.
pub async fn bootstrap(db: &Db, org_name: &str, limits: &Limits, now_ms: i64) -> Result<Bootstrap, KeyError> {
    let existing: Option<String> =
        sqlx::query_scalar("SELECT id FROM organizations WHERE name = $1 ORDER BY created_at LIMIT 1")
            .bind(org_name)
            .fetch_optional(&db.pool)
            .await?;
    let organization_id = match existing {
        Some(id) => id,
        None => create_organization(db, org_name, limits, now_ms).await?,
    };
    let (key_id, api_key) = create_api_key(db, &organization_id, "bootstrap", None, now_ms).await?;
    Ok(Bootstrap { organization_id, key_id, api_key })
}

/// The organization of a valid (known, unexpired, unrevoked) key.
pub async fn organization_of_key(db: &Db, key: &str, now_ms: i64) -> Result<Option<String>, sqlx::Error> {
    Ok(key_of(db, key, now_ms).await?.map(|(_, org)| org))
}

/// `(key id, organization)` of a valid key: from [`Db::keys`] when it was looked up lately, else one indexed read.
pub async fn key_of(db: &Db, key: &str, now_ms: i64) -> Result<Option<(String, String)>, sqlx::Error> {
    let hash = sha256_hex(key);
    if let Some(hit) = db.keys.get(&hash, now_ms) {
        return Ok(Some(hit));
    }
    let since = std::time::Instant::now();
    let row: Option<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT id, organization_id, expires_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(&hash)
    .bind(now_ms)
    .fetch_optional(&db.read)
    .await?;
    Ok(row.map(|(id, org, expires_at)| {
        db.keys.put(&hash, &id, &org, expires_at, since);
        (id, org)
    }))
}

/// An API key as a list shows it (never the key itself: only its last characters).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub value_hint: Option<String>,
}

const KEY_COLUMNS: &str = "id, organization_id, name, created_at, expires_at, value_hint";

/// The organization's keys that are not revoked (expired ones included), oldest first.
pub async fn list_keys(db: &Db, org: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 AND revoked_at IS NULL ORDER BY created_at, id"
    )))
    .bind(org)
    .fetch_all(&db.pool)
    .await
}

/// One key by id (revoked or not).
pub async fn key_by_id(db: &Db, id: &str) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1")))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
}

/// Revokes the organization's unrevoked keys named `name`; how many were.
pub async fn revoke_keys_named(db: &Db, org: &str, name: &str, now_ms: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let r = sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 WHERE organization_id = $2 AND name = $3 AND revoked_at IS NULL",
    )
    .bind(now_ms)
    .bind(org)
    .bind(name)
    .execute(&mut *tx)
    .await?;
    super::notify::keys(&mut tx).await?;
    tx.commit().await?;
    db.keys.clear();
    Ok(r.rows_affected())
}

/// Locks the organization's row on PostgreSQL, so concurrent requests of one organization cannot both slip under
/// a quota or take one name (SQLite transactions are serial already).
pub async fn lock_org(kind: DbKind, conn: &mut AnyConnection, org: &str) -> Result<(), sqlx::Error> {
    if kind == DbKind::Postgres {
        sqlx::query("SELECT id FROM organizations WHERE id = $1 FOR UPDATE").bind(org).execute(&mut *conn).await?;
    }
    Ok(())
}

/// An organization's quotas.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub sandboxes: i64,
}

/// An organization's quotas, and its live sandboxes' count and usage (its totals, `super::totals`).
pub async fn quota_and_usage(conn: &mut AnyConnection, org: &str) -> Result<(Quota, i64, Usage), sqlx::Error> {
    type QuotaRow = (i64, i64, i64, i64, i64, i64, i64, i64);
    let (cpu, memory, disk, sandboxes, count, uc, um, ud): QuotaRow = sqlx::query_as(
        "SELECT o.quota_cpu, o.quota_memory, o.quota_disk, o.quota_sandboxes, COALESCE(t.sandboxes, 0), \
         COALESCE(t.cpu, 0), COALESCE(t.memory, 0), COALESCE(t.disk, 0) \
         FROM organizations o LEFT JOIN organization_totals t ON t.organization_id = o.id WHERE o.id = $1",
    )
    .bind(org)
    .fetch_one(&mut *conn)
    .await?;
    Ok((Quota { cpu, memory, disk, sandboxes }, count, Usage { cpu: uc, memory: um, disk: ud }))
}

/// The name of organization `org`, if there is one.
pub async fn name(conn: &mut AnyConnection, org: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1").bind(org).fetch_optional(conn).await
}

/// Sets organization `org`'s own image-bytes limit (`None`: the API's default; `Some(0)`: no limit). For operators
/// and tests; there is no REST endpoint for it.
pub async fn set_image_quota(db: &Db, org: &str, bytes: Option<i64>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE organizations SET quota_image_bytes = $1 WHERE id = $2")
        .bind(bytes)
        .bind(org)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Organization `org`'s build network as stored (`crate::domain::builds::network_of` reads it); `None` when unset.
pub async fn build_network(conn: &mut AnyConnection, org: &str) -> Result<Option<String>, sqlx::Error> {
    let v: Option<Option<String>> = sqlx::query_scalar("SELECT build_network FROM organizations WHERE id = $1")
        .bind(org)
        .fetch_optional(conn)
        .await?;
    Ok(v.flatten())
}

/// Sets the build network of the organization named or identified `org`; false when there is none.
pub async fn set_build_network(db: &Db, org: &str, value: Option<&str>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE organizations SET build_network = $1 WHERE id = $2 OR name = $2")
        .bind(value)
        .bind(org)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}
