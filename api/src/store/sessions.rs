//! The dashboard's sessions: a row per sign-in, keyed by the SHA-256 of the cookie's value, tied to the API key
//! that signed in (a session lives only while that key does).

use super::{Db, sha256_hex};

/// A live session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub organization_id: String,
    pub api_key_id: String,
    pub csrf_token: String,
    pub expires_at: i64,
}

pub async fn insert(
    db: &Db,
    token: &str,
    org: &str,
    key_id: &str,
    csrf: &str,
    now_ms: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dashboard_sessions (token_hash, organization_id, api_key_id, csrf_token, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(sha256_hex(token))
    .bind(org)
    .bind(key_id)
    .bind(csrf)
    .bind(now_ms)
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The session of `token` if it is unexpired, not signed out, and its key is still valid.
pub async fn live(db: &Db, token: &str, now_ms: i64) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.organization_id, s.api_key_id, s.csrf_token, s.expires_at FROM dashboard_sessions s \
         JOIN api_keys k ON k.id = s.api_key_id \
         WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
         AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
    )
    .bind(sha256_hex(token))
    .bind(now_ms)
    .fetch_optional(&db.pool)
    .await
}

/// Ends the session of `token` (sign out), and forgets sessions that expired a day ago.
pub async fn end(db: &Db, token: &str, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dashboard_sessions SET revoked_at = $1 WHERE token_hash = $2")
        .bind(now_ms)
        .bind(sha256_hex(token))
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at < $1")
        .bind(now_ms - 86_400_000)
        .execute(&db.pool)
        .await?;
    Ok(())
}
