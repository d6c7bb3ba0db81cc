//! The `jobs` table: the queue runners long-poll. A job is a row keyed by id, ordered by the global sequence,
//! with the kind's wire name (`JobKind::tag`) and its JSON payload, and the `traceparent` of the request that queued
//! it (`crate::trace::current`), which the runner continues.

use sandbar_proto::runner::{Job, JobKind, SandboxState};
use sqlx::{AnyConnection, AnyPool};

use super::next_seq;

/// Queues `kind` for `runner_id`. `via` is the transitional state the sandbox is put in for it (a result only
/// moves the sandbox on while it is still there); `prev` the state to return to when the job fails harmlessly.
pub async fn enqueue(
    conn: &mut AnyConnection,
    runner_id: &str,
    kind: &JobKind,
    prev: SandboxState,
    via: SandboxState,
    now: i64,
) -> Result<String, sqlx::Error> {
    let seq = next_seq(&mut *conn).await?;
    enqueue_at(conn, seq, runner_id, kind, prev, via, now).await
}

/// [`enqueue`] with a sequence number the caller took (`super::next_seq`) in this transaction.
pub async fn enqueue_at(
    conn: &mut AnyConnection,
    seq: i64,
    runner_id: &str,
    kind: &JobKind,
    prev: SandboxState,
    via: SandboxState,
    now: i64,
) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::to_string(kind).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let traceparent = crate::trace::current().map(|t| t.header());
    super::notify::jobs(&mut *conn, runner_id).await?;
    sqlx::query(
        "INSERT INTO jobs (id, seq, runner_id, sandbox_id, kind, payload, prev_state, via_state, state, created_at, \
         traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10)",
    )
    .bind(&id)
    .bind(seq)
    .bind(runner_id)
    .bind(kind.sandbox_id())
    .bind(kind.tag())
    .bind(payload)
    .bind(prev.as_str())
    .bind(via.as_str())
    .bind(now)
    .bind(traceparent)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Claims `runner_id`'s pending jobs (oldest first, at most one unfinished job per sandbox so a destroy never
/// overtakes the create before it) and those handed out before `redeliver_before`. One UPDATE: on PostgreSQL a
/// concurrent claimer re-checks `state`/`handed_at` on the locked row and skips it, on SQLite writers are serial,
/// so no job is handed out twice at once.
pub async fn claim(pool: &AnyPool, runner_id: &str, now: i64, redeliver_before: i64) -> Result<Vec<Job>, sqlx::Error> {
    let mut rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "UPDATE jobs SET state = 'claimed', handed_at = $1 WHERE runner_id = $2 \
         AND (state = 'pending' OR (state = 'claimed' AND handed_at < $3)) \
         AND NOT EXISTS (SELECT 1 FROM jobs j2 WHERE j2.sandbox_id = jobs.sandbox_id \
             AND j2.state IN ('pending', 'claimed') AND j2.seq < jobs.seq) \
         RETURNING id, payload, seq, traceparent",
    )
    .bind(now)
    .bind(runner_id)
    .bind(redeliver_before)
    .fetch_all(pool)
    .await?;
    rows.sort_by_key(|r| r.2);
    let mut jobs = Vec::with_capacity(rows.len());
    for (id, payload, _, traceparent) in rows {
        match serde_json::from_str::<JobKind>(&payload) {
            Ok(kind) => jobs.push(Job { id, kind, traceparent }),
            Err(e) => tracing::error!(job_id = %id, error = %e, "stored job does not parse"),
        }
    }
    Ok(jobs)
}

/// A job as a result handler needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub sandbox_id: String,
    pub payload: String,
    pub prev_state: String,
    pub via_state: String,
    /// `pending`, `claimed`, `done`, `failed` or `cancelled`.
    pub state: String,
}

/// Job `job_id` of `runner_id`.
pub async fn find(conn: &mut AnyConnection, job_id: &str, runner_id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sandbox_id, payload, prev_state, via_state, state FROM jobs WHERE id = $1 AND runner_id = $2",
    )
    .bind(job_id)
    .bind(runner_id)
    .fetch_optional(conn)
    .await
}

/// Marks an unfinished job `done` or `failed` (with the runner's error). `false` when it was finished already: on
/// PostgreSQL the row lock makes a second, concurrent completion (a retried result on another API instance, the
/// deadline sweep) wait and then find it finished, so a result is applied once.
pub async fn complete(
    conn: &mut AnyConnection,
    job_id: &str,
    state: &str,
    error: Option<String>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET state = $1, completed_at = $2, error = $3 WHERE id = $4 AND state IN ('pending', 'claimed')",
    )
    .bind(state)
    .bind(now)
    .bind(error)
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    super::notify::job_done(conn, job_id).await?;
    Ok(true)
}

/// Unfinished jobs queued before `before`: `(id, runner_id, kind tag, created_at)`, oldest first.
pub async fn unfinished_before(pool: &AnyPool, before: i64) -> Result<Vec<(String, String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, runner_id, kind, created_at FROM jobs WHERE state IN ('pending', 'claimed') AND created_at < $1 \
         ORDER BY created_at",
    )
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Cancels a sandbox's jobs no runner has claimed yet; returns how many claimed ones are still out.
pub async fn cancel_pending(conn: &mut AnyConnection, sandbox_id: &str, now: i64) -> Result<i64, sqlx::Error> {
    sqlx::query("UPDATE jobs SET state = 'cancelled', completed_at = $1 WHERE sandbox_id = $2 AND state = 'pending'")
        .bind(now)
        .bind(sandbox_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE sandbox_id = $1 AND state = 'claimed'")
        .bind(sandbox_id)
        .fetch_one(conn)
        .await
}

/// Whether a sandbox has an unfinished job.
pub async fn in_flight(conn: &mut AnyConnection, sandbox_id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE sandbox_id = $1 AND state IN ('pending', 'claimed')")
            .bind(sandbox_id)
            .fetch_one(conn)
            .await?;
    Ok(n > 0)
}

/// `(state, error)` of a job.
pub async fn status(pool: &AnyPool, job_id: &str) -> Result<(String, Option<String>), sqlx::Error> {
    sqlx::query_as("SELECT state, error FROM jobs WHERE id = $1").bind(job_id).fetch_one(pool).await
}

/// `(payload, state)` of job `job_id` of `runner_id`.
pub async fn payload(pool: &AnyPool, job_id: &str, runner_id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT payload, state FROM jobs WHERE id = $1 AND runner_id = $2")
        .bind(job_id)
        .bind(runner_id)
        .fetch_optional(pool)
        .await
}

/// Makes a runner's claimed, unfinished jobs due for redelivery at once.
pub async fn redeliver_now(conn: &mut AnyConnection, runner_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET handed_at = 0 WHERE runner_id = $1 AND state = 'claimed'")
        .bind(runner_id)
        .execute(&mut *conn)
        .await?;
    super::notify::jobs(conn, runner_id).await
}

/// Drops jobs completed before `before`; returns how many.
pub async fn prune(pool: &AnyPool, before: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM jobs WHERE completed_at IS NOT NULL AND completed_at < $1")
        .bind(before)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// Jobs no runner has claimed yet, counted by kind (for the metrics scrape).
pub async fn count_pending_by_kind(pool: &AnyPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, COUNT(*) FROM jobs WHERE state = 'pending' GROUP BY kind").fetch_all(pool).await
}
