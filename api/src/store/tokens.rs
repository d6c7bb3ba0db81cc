//! Tokens that open a sandbox, stored as SHA-256 hashes: signed preview URL tokens (`preview_tokens`, per port,
//! expiring, revocable) and SSH access tokens (`ssh_access`).

use sqlx::{AnyConnection, AnyPool};

use super::sha256_hex;

/// Records a signed preview token for `sandbox_id`'s `port` until `expires_at`.
pub async fn insert_preview(
    conn: &mut AnyConnection,
    token: &str,
    sandbox_id: &str,
    port: u16,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO preview_tokens (token_hash, sandbox_id, port, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(sha256_hex(token))
        .bind(sandbox_id)
        .bind(i64::from(port))
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes a signed preview token; false when there was none for that sandbox and port.
pub async fn revoke_preview(
    conn: &mut AnyConnection,
    token: &str,
    sandbox_id: &str,
    port: u16,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE preview_tokens SET revoked_at = $1 WHERE token_hash = $2 AND sandbox_id = $3 AND port = $4",
    )
    .bind(now)
    .bind(sha256_hex(token))
    .bind(sandbox_id)
    .bind(i64::from(port))
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// When a valid signed preview token for `sandbox_id`'s `port` expires.
pub async fn preview_expiry(
    pool: &AnyPool,
    token: &str,
    sandbox_id: &str,
    port: u16,
    now: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT expires_at FROM preview_tokens WHERE token_hash = $1 AND sandbox_id = $2 AND port = $3 \
         AND revoked_at IS NULL AND expires_at > $4",
    )
    .bind(sha256_hex(token))
    .bind(sandbox_id)
    .bind(i64::from(port))
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// `(sandbox_id, expires_at)` a valid signed preview token for `port` opens.
pub async fn resolve_preview(
    pool: &AnyPool,
    token: &str,
    port: u16,
    now: i64,
) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sandbox_id, expires_at FROM preview_tokens WHERE token_hash = $1 AND port = $2 \
         AND revoked_at IS NULL AND expires_at > $3",
    )
    .bind(sha256_hex(token))
    .bind(i64::from(port))
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// Records an SSH access token.
pub async fn insert_ssh(
    conn: &mut AnyConnection,
    access_id: &str,
    sandbox_id: &str,
    token: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ssh_access (id, sandbox_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(access_id)
    .bind(sandbox_id)
    .bind(sha256_hex(token))
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes one SSH access token of a sandbox, or all of them (`None`).
pub async fn revoke_ssh(
    conn: &mut AnyConnection,
    sandbox_id: &str,
    token: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    match token {
        Some(token) => {
            sqlx::query(
                "UPDATE ssh_access SET revoked_at = $1 WHERE sandbox_id = $2 AND token_hash = $3 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(sandbox_id)
            .bind(sha256_hex(token))
            .execute(conn)
            .await?;
        }
        None => {
            sqlx::query("UPDATE ssh_access SET revoked_at = $1 WHERE sandbox_id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(sandbox_id)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// `(sandbox_id, expires_at, revoked_at)` of an SSH access token, within `org` when given.
pub async fn find_ssh(
    pool: &AnyPool,
    token: &str,
    org: Option<&str>,
) -> Result<Option<(String, i64, Option<i64>)>, sqlx::Error> {
    match org {
        Some(org) => {
            sqlx::query_as(
                "SELECT a.sandbox_id, a.expires_at, a.revoked_at FROM ssh_access a JOIN sandboxes s \
                 ON s.id = a.sandbox_id WHERE a.token_hash = $1 AND s.organization_id = $2",
            )
            .bind(sha256_hex(token))
            .bind(org)
            .fetch_optional(pool)
            .await
        }
        None => {
            sqlx::query_as("SELECT sandbox_id, expires_at, revoked_at FROM ssh_access WHERE token_hash = $1")
                .bind(sha256_hex(token))
                .fetch_optional(pool)
                .await
        }
    }
}

/// Drops preview and SSH access tokens that expired before `before` (no lookup accepts them any more); returns
/// how many.
pub async fn prune_expired(pool: &AnyPool, before: i64) -> Result<u64, sqlx::Error> {
    let p = sqlx::query("DELETE FROM preview_tokens WHERE expires_at < $1").bind(before).execute(pool).await?;
    let s = sqlx::query("DELETE FROM ssh_access WHERE expires_at < $1").bind(before).execute(pool).await?;
    Ok(p.rows_affected() + s.rows_affected())
}
