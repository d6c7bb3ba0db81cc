//! `sandbox_usage` (the latest usage sample of each sandbox) and `sandbox_usage_history` (samples a step apart),
//! as runners' heartbeats report them.

use sandbar_proto::runner::SandboxUsage;
use sqlx::{AnyConnection, AnyPool};

/// One stored sample. Byte and nanosecond counts are clamped to `i64::MAX` on the way in.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageRow {
    pub sampled_at: i64,
    pub cpu_nanos: i64,
    pub cpu_millicores: Option<i64>,
    pub memory_bytes: i64,
    /// Not kept in the history (always `None` there).
    pub memory_limit_bytes: Option<i64>,
    /// Not kept in the history (always `None` there).
    pub memory_peak_bytes: Option<i64>,
    pub oom_kills: Option<i64>,
    pub pids: Option<i64>,
    pub net_rx_bytes: Option<i64>,
    pub net_tx_bytes: Option<i64>,
    pub disk_bytes: Option<i64>,
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn opt(v: Option<u64>) -> Option<i64> {
    v.map(n)
}

/// Stores `sample` as the latest of its sandbox, and in the history unless the sandbox has a history row newer
/// than `history_after`. Only a sandbox placed on `runner` is touched (a runner reports only its own); returns
/// whether it was.
pub async fn record(
    conn: &mut AnyConnection,
    runner: &str,
    now: i64,
    history_after: i64,
    u: &SandboxUsage,
) -> Result<bool, sqlx::Error> {
    // `CAST` gives PostgreSQL the parameters' types in a SELECT list (a NULL has none of its own).
    let r = sqlx::query(
        "INSERT INTO sandbox_usage (sandbox_id, sampled_at, cpu_nanos, cpu_millicores, memory_bytes, \
         memory_limit_bytes, memory_peak_bytes, oom_kills, pids, net_rx_bytes, net_tx_bytes, disk_bytes) \
         SELECT id, CAST($3 AS BIGINT), CAST($4 AS BIGINT), CAST($5 AS BIGINT), CAST($6 AS BIGINT), \
         CAST($7 AS BIGINT), CAST($8 AS BIGINT), CAST($9 AS BIGINT), CAST($10 AS BIGINT), CAST($11 AS BIGINT), \
         CAST($12 AS BIGINT), CAST($13 AS BIGINT) FROM sandboxes WHERE id = $1 AND runner_id = $2 \
         ON CONFLICT (sandbox_id) DO UPDATE SET sampled_at = excluded.sampled_at, cpu_nanos = excluded.cpu_nanos, \
         cpu_millicores = excluded.cpu_millicores, memory_bytes = excluded.memory_bytes, \
         memory_limit_bytes = excluded.memory_limit_bytes, memory_peak_bytes = excluded.memory_peak_bytes, \
         oom_kills = excluded.oom_kills, pids = excluded.pids, net_rx_bytes = excluded.net_rx_bytes, \
         net_tx_bytes = excluded.net_tx_bytes, disk_bytes = excluded.disk_bytes",
    )
    .bind(&u.sandbox_id)
    .bind(runner)
    .bind(now)
    .bind(n(u.cpu_nanos))
    .bind(opt(u.cpu_millicores))
    .bind(n(u.memory_bytes))
    .bind(opt(u.memory_limit_bytes))
    .bind(opt(u.memory_peak_bytes))
    .bind(opt(u.oom_kills))
    .bind(opt(u.pids))
    .bind(opt(u.net_rx_bytes))
    .bind(opt(u.net_tx_bytes))
    .bind(opt(u.disk_bytes))
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO sandbox_usage_history (sandbox_id, sampled_at, cpu_nanos, cpu_millicores, memory_bytes, \
         oom_kills, pids, net_rx_bytes, net_tx_bytes, disk_bytes) \
         SELECT sandbox_id, sampled_at, cpu_nanos, cpu_millicores, memory_bytes, oom_kills, pids, net_rx_bytes, \
         net_tx_bytes, disk_bytes FROM sandbox_usage WHERE sandbox_id = $1 AND NOT EXISTS \
         (SELECT 1 FROM sandbox_usage_history h WHERE h.sandbox_id = $1 AND h.sampled_at > $2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&u.sandbox_id)
    .bind(history_after)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

const LATEST: &str = "sampled_at, cpu_nanos, cpu_millicores, memory_bytes, memory_limit_bytes, memory_peak_bytes, \
                      oom_kills, pids, net_rx_bytes, net_tx_bytes, disk_bytes";
const HISTORY: &str = "sampled_at, cpu_nanos, cpu_millicores, memory_bytes, CAST(NULL AS BIGINT) AS memory_limit_bytes, \
                       CAST(NULL AS BIGINT) AS memory_peak_bytes, oom_kills, pids, net_rx_bytes, net_tx_bytes, \
                       disk_bytes";

/// The latest sample of `sandbox`, if any.
pub async fn latest(conn: &mut AnyConnection, sandbox: &str) -> Result<Option<UsageRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {LATEST} FROM sandbox_usage WHERE sandbox_id = $1")))
        .bind(sandbox)
        .fetch_optional(conn)
        .await
}

/// The history of `sandbox` from `since` on, oldest first.
pub async fn history(conn: &mut AnyConnection, sandbox: &str, since: i64) -> Result<Vec<UsageRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HISTORY} FROM sandbox_usage_history WHERE sandbox_id = $1 AND sampled_at >= $2 ORDER BY sampled_at"
    )))
    .bind(sandbox)
    .bind(since)
    .fetch_all(conn)
    .await
}

/// Drops history rows older than `history_before` and latest samples older than `latest_before`; returns how many
/// rows went.
pub async fn prune(pool: &AnyPool, history_before: i64, latest_before: i64) -> Result<u64, sqlx::Error> {
    let h = sqlx::query("DELETE FROM sandbox_usage_history WHERE sampled_at < $1")
        .bind(history_before)
        .execute(pool)
        .await?;
    let l = sqlx::query("DELETE FROM sandbox_usage WHERE sampled_at < $1").bind(latest_before).execute(pool).await?;
    Ok(h.rows_affected() + l.rows_affected())
}
