//! The `builds` and `build_logs` tables: Dockerfile builds on one runner, and their output as numbered batches.

use sqlx::AnyConnection;

/// `(id, runner_id, state, pushed_image)` of `org`'s newest build of the Dockerfile `hash` that is not failed, on
/// a runner that heartbeat at or after `seen_since`.
pub async fn reusable(
    conn: &mut AnyConnection,
    org: &str,
    hash: &str,
    seen_since: i64,
) -> Result<Option<(String, String, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.id, b.runner_id, b.state, b.pushed_image FROM builds b JOIN runners r ON r.id = b.runner_id \
         WHERE b.organization_id = $1 AND b.dockerfile_hash = $2 AND b.state IN ('pending', 'building', 'done') \
         AND r.last_heartbeat >= $3 ORDER BY b.created_at DESC LIMIT 1",
    )
    .bind(org)
    .bind(hash)
    .bind(seen_since)
    .fetch_optional(conn)
    .await
}

/// True when `org` has a build of the Dockerfile `hash` (whatever its state): its image is the organization's.
pub async fn owned(conn: &mut AnyConnection, org: &str, hash: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM builds WHERE organization_id = $1 AND dockerfile_hash = $2")
        .bind(org)
        .bind(hash)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// The columns of a new build.
#[derive(Debug)]
pub struct NewBuild<'a> {
    pub id: &'a str,
    pub org: &'a str,
    pub hash: &'a str,
    pub dockerfile: &'a str,
    pub image: &'a str,
    pub runner: &'a str,
    pub now: i64,
}

/// Inserts a `pending` build.
pub async fn insert(conn: &mut AnyConnection, b: NewBuild<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO builds (id, organization_id, dockerfile_hash, dockerfile, image_name, runner_id, state, \
         log_bytes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
    )
    .bind(b.id)
    .bind(b.org)
    .bind(b.hash)
    .bind(b.dockerfile)
    .bind(b.image)
    .bind(b.runner)
    .bind(b.now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A pending build is claimed: `building`. False when it was not pending.
pub async fn set_building(conn: &mut AnyConnection, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE builds SET state = 'building', updated_at = $1 WHERE id = $2 AND state = 'pending'")
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// A running build ended (`done` or `failed` with the reason). False when it had ended already.
pub async fn finish(
    conn: &mut AnyConnection,
    id: &str,
    state: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE builds SET state = $1, error_reason = $2, updated_at = $3, finished_at = $3 \
         WHERE id = $4 AND state IN ('pending', 'building')",
    )
    .bind(state)
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// A done build's image is gone from its runner: the build counts as failed, so the next one builds again. Returns
/// the ids of the builds that were done.
pub async fn image_gone(
    conn: &mut AnyConnection,
    runner_id: &str,
    image: &str,
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let ids = sqlx::query_scalar("SELECT id FROM builds WHERE image_name = $1 AND runner_id = $2 AND state = 'done'")
        .bind(image)
        .bind(runner_id)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE builds SET state = 'failed', error_reason = 'the built image is no longer on its runner', \
         updated_at = $1 WHERE image_name = $2 AND runner_id = $3 AND state = 'done'",
    )
    .bind(now)
    .bind(image)
    .bind(runner_id)
    .execute(conn)
    .await?;
    Ok(ids)
}

/// The ids of builds of `(runner_id, image)` in `state`.
pub async fn of_image(
    conn: &mut AnyConnection,
    runner_id: &str,
    image: &str,
    state: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM builds WHERE runner_id = $1 AND image_name = $2 AND state = $3 ORDER BY id")
        .bind(runner_id)
        .bind(image)
        .bind(state)
        .fetch_all(conn)
        .await
}

/// True when a build other than `except` (of any organization: identical Dockerfiles build the same image name)
/// still has, or is making, the image `image` on `runner_id`.
pub async fn image_shared(
    conn: &mut AnyConnection,
    runner_id: &str,
    image: &str,
    except: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM builds WHERE runner_id = $1 AND image_name = $2 AND id <> $3 \
         AND state IN ('pending', 'building', 'done', 'removing')",
    )
    .bind(runner_id)
    .bind(image)
    .bind(except)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// `(runner_id, image)` of built images nothing needs since before `cutoff`: every build of that image on that
/// runner is done (or failed) and finished before `cutoff`; no snapshot names one of those builds (or the image,
/// when it is a snapshot of an image on every runner); and no sandbox on that runner runs the image or waits for
/// those builds, unless it was destroyed before `cutoff`.
pub async fn unused_images(conn: &mut AnyConnection, cutoff: i64) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT b.runner_id, b.image_name FROM builds b \
         WHERE b.state = 'done' AND COALESCE(b.finished_at, b.updated_at) < $1 \
         AND NOT EXISTS (SELECT 1 FROM builds o WHERE o.runner_id = b.runner_id AND o.image_name = b.image_name \
             AND (o.state IN ('pending', 'building', 'removing') \
                  OR (o.state = 'done' AND COALESCE(o.finished_at, o.updated_at) >= $1))) \
         AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE \
             (s.build_id IS NULL AND s.image_name = b.image_name) \
             OR s.build_id IN (SELECT o.id FROM builds o WHERE o.runner_id = b.runner_id AND o.image_name = b.image_name)) \
         AND NOT EXISTS (SELECT 1 FROM sandboxes x WHERE x.runner_id = b.runner_id \
             AND (x.snapshot = b.image_name \
                  OR x.build_id IN (SELECT o.id FROM builds o WHERE o.runner_id = b.runner_id AND o.image_name = b.image_name)) \
             AND (x.state <> 'destroyed' OR x.state_at >= $1)) \
         ORDER BY b.runner_id, b.image_name LIMIT 100",
    )
    .bind(cutoff)
    .fetch_all(conn)
    .await
}

/// Moves the builds of `(runner_id, image)` from `from` to `to` (`finished_at` becomes `now` when `restart_grace`);
/// how many moved.
pub async fn move_image(
    conn: &mut AnyConnection,
    runner_id: &str,
    image: &str,
    (from, to): (&str, &str),
    restart_grace: bool,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let sql = if restart_grace {
        "UPDATE builds SET state = $1, updated_at = $5, finished_at = $5 \
         WHERE runner_id = $2 AND image_name = $3 AND state = $4"
    } else {
        "UPDATE builds SET state = $1, updated_at = $5 WHERE runner_id = $2 AND image_name = $3 AND state = $4"
    };
    let r = sqlx::query(sql).bind(to).bind(runner_id).bind(image).bind(from).bind(now).execute(conn).await?;
    Ok(r.rows_affected())
}

/// Deletes build `id` with its log.
pub async fn delete(conn: &mut AnyConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM build_logs WHERE build_id = $1").bind(id).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM builds WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// `(organization, state)` of a build, if it exists.
pub async fn org_and_state(conn: &mut AnyConnection, id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT organization_id, state FROM builds WHERE id = $1").bind(id).fetch_optional(conn).await
}

/// A build's state, if it exists.
pub async fn state(conn: &mut AnyConnection, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM builds WHERE id = $1").bind(id).fetch_optional(conn).await
}

/// Locks the build's row (PostgreSQL), so concurrent appends number their batches one after the other; returns
/// `(log bytes so far, attempt of the last batch)`.
pub async fn lock_log(conn: &mut AnyConnection, id: &str, now: i64) -> Result<(i64, Option<String>), sqlx::Error> {
    sqlx::query("UPDATE builds SET updated_at = $1 WHERE id = $2").bind(now).bind(id).execute(&mut *conn).await?;
    sqlx::query_as("SELECT log_bytes, log_attempt FROM builds WHERE id = $1").bind(id).fetch_one(conn).await
}

/// Appends a batch of log text (once per `(attempt, offset)`); false when it was stored already.
pub async fn append_log(
    conn: &mut AnyConnection,
    id: &str,
    attempt: &str,
    offset: i64,
    text: &str,
) -> Result<bool, sqlx::Error> {
    let seq: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(MAX(seq), 0) + 1 AS BIGINT) FROM build_logs WHERE build_id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let inserted = sqlx::query(
        "INSERT INTO build_logs (build_id, seq, attempt, line_offset, text) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (build_id, attempt, line_offset) DO NOTHING",
    )
    .bind(id)
    .bind(seq)
    .bind(attempt)
    .bind(offset)
    .bind(text)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE builds SET log_bytes = log_bytes + $1, log_attempt = $2 WHERE id = $3")
        .bind(text.len() as i64)
        .bind(attempt)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    super::notify::logs(conn).await?;
    Ok(true)
}

/// `(seq, text)` of the batches after `after_seq` (200 at most).
pub async fn read_log(conn: &mut AnyConnection, id: &str, after_seq: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as("SELECT seq, text FROM build_logs WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT 200")
        .bind(id)
        .bind(after_seq)
        .fetch_all(conn)
        .await
}

/// Records where the runner pushed a build's image (or why it could not).
pub async fn set_pushed(
    conn: &mut AnyConnection,
    id: &str,
    pushed: Option<&str>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE builds SET pushed_image = $1, push_error = $2 WHERE id = $3")
        .bind(pushed)
        .bind(error)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The copy of build `id`'s image in the internal registry, if it was pushed.
pub async fn pushed(conn: &mut AnyConnection, id: &str) -> Result<Option<String>, sqlx::Error> {
    let v: Option<Option<String>> =
        sqlx::query_scalar("SELECT pushed_image FROM builds WHERE id = $1").bind(id).fetch_optional(conn).await?;
    Ok(v.flatten())
}
