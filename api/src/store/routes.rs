//! The `route_changes` table: one row per change of a sandbox's route version, which the proxy long-polls.

use sqlx::AnyPool;

/// `(seq, sandbox_id)` of the changes after `since`, oldest first, at most `limit`.
pub async fn changes(pool: &AnyPool, since: i64, limit: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT seq, sandbox_id FROM route_changes WHERE seq > $1 ORDER BY seq LIMIT $2")
        .bind(since)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The newest change's seq.
pub async fn head(pool: &AnyPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MAX(seq) FROM route_changes").fetch_one(pool).await
}

/// Drops changes recorded before `before`; returns how many.
pub async fn prune(pool: &AnyPool, before: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM route_changes WHERE at < $1").bind(before).execute(pool).await?;
    Ok(r.rows_affected())
}
