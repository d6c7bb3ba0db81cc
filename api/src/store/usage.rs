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

/// What a sample stores in `sandbox_usage`, after `sandbox_id` and `sampled_at`, in the order of [`record`]'s SQL.
fn latest_values(u: &SandboxUsage) -> [Option<i64>; 10] {
    [
        Some(n(u.cpu_nanos)),
        opt(u.cpu_millicores),
        Some(n(u.memory_bytes)),
        opt(u.memory_limit_bytes),
        opt(u.memory_peak_bytes),
        opt(u.oom_kills),
        opt(u.pids),
        opt(u.net_rx_bytes),
        opt(u.net_tx_bytes),
        opt(u.disk_bytes),
    ]
}

/// What a sample stores in `sandbox_usage_history` (no memory limit or peak there).
fn history_values(u: &SandboxUsage) -> [Option<i64>; 8] {
    [
        Some(n(u.cpu_nanos)),
        opt(u.cpu_millicores),
        Some(n(u.memory_bytes)),
        opt(u.oom_kills),
        opt(u.pids),
        opt(u.net_rx_bytes),
        opt(u.net_tx_bytes),
        opt(u.disk_bytes),
    ]
}

/// `VALUES` rows of parameters from `$first` on: a sandbox id, then `numbers` BIGINTs, a row each of `rows`.
/// `CAST` gives PostgreSQL the parameters' types (a NULL has none of its own); both databases name the columns
/// `column1`, `column2`...
fn values(first: usize, rows: usize, numbers: usize) -> String {
    let rows: Vec<String> = (0..rows)
        .map(|r| {
            let base = first + r * (1 + numbers);
            let numbers: Vec<String> = (1..=numbers).map(|c| format!("CAST(${} AS BIGINT)", base + c)).collect();
            format!("(${base}, {})", numbers.join(", "))
        })
        .collect();
    rows.join(", ")
}

/// Stores each of `samples` as the latest of its sandbox, and in the history unless the sandbox has a history row
/// newer than `history_after`: two statements whatever their number. Only sandboxes placed on `runner` are touched
/// (a runner reports only its own); returns the ids that were. The ids must be distinct (one statement cannot
/// write a row twice: the caller, `crate::domain::usage`, splits a report that names a sandbox twice).
///
/// Each sample's sandbox and history are looked up by key through a subquery per row, never joined: a join lets
/// the planner scan all of a runner's sandboxes, or the whole recent history, for every batch (it did, on
/// PostgreSQL, with the statistics of a freshly filled table).
pub async fn record(
    conn: &mut AnyConnection,
    runner: &str,
    now: i64,
    history_after: i64,
    samples: &[&SandboxUsage],
) -> Result<Vec<String>, sqlx::Error> {
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "INSERT INTO sandbox_usage (sandbox_id, sampled_at, cpu_nanos, cpu_millicores, memory_bytes, \
         memory_limit_bytes, memory_peak_bytes, oom_kills, pids, net_rx_bytes, net_tx_bytes, disk_bytes) \
         SELECT v.column1, CAST($2 AS BIGINT), v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, \
         v.column8, v.column9, v.column10, v.column11 FROM (VALUES {}) AS v \
         WHERE (SELECT s.runner_id FROM sandboxes s WHERE s.id = v.column1) = $1 \
         ON CONFLICT (sandbox_id) DO UPDATE SET sampled_at = excluded.sampled_at, cpu_nanos = excluded.cpu_nanos, \
         cpu_millicores = excluded.cpu_millicores, memory_bytes = excluded.memory_bytes, \
         memory_limit_bytes = excluded.memory_limit_bytes, memory_peak_bytes = excluded.memory_peak_bytes, \
         oom_kills = excluded.oom_kills, pids = excluded.pids, net_rx_bytes = excluded.net_rx_bytes, \
         net_tx_bytes = excluded.net_tx_bytes, disk_bytes = excluded.disk_bytes \
         RETURNING sandbox_id",
        values(3, samples.len(), 10)
    );
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(runner).bind(now);
    for u in samples {
        q = q.bind(u.sandbox_id.as_str());
        for v in latest_values(u) {
            q = q.bind(v);
        }
    }
    let recorded = q.fetch_all(&mut *conn).await?;
    let recorded_set: std::collections::HashSet<&str> = recorded.iter().map(String::as_str).collect();
    let history: Vec<&&SandboxUsage> =
        samples.iter().filter(|u| recorded_set.contains(u.sandbox_id.as_str())).collect();
    if history.is_empty() {
        return Ok(recorded);
    }
    // The sample as just stored as the latest (its values, at `now`), unless the history has one newer than
    // `history_after`.
    let sql = format!(
        "INSERT INTO sandbox_usage_history (sandbox_id, sampled_at, cpu_nanos, cpu_millicores, memory_bytes, \
         oom_kills, pids, net_rx_bytes, net_tx_bytes, disk_bytes) \
         SELECT v.column1, CAST($2 AS BIGINT), v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, \
         v.column8, v.column9 FROM (VALUES {}) AS v \
         WHERE COALESCE((SELECT MAX(h.sampled_at) FROM sandbox_usage_history h WHERE h.sandbox_id = v.column1), $1) \
         <= $1 ON CONFLICT DO NOTHING",
        values(3, history.len(), 8)
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(history_after).bind(now);
    for u in history {
        q = q.bind(u.sandbox_id.as_str());
        for v in history_values(u) {
            q = q.bind(v);
        }
    }
    q.execute(&mut *conn).await?;
    Ok(recorded)
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
