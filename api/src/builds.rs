//! Dockerfile builds: what `POST /snapshots` and `POST /sandbox` do with a `buildInfo` beyond `FROM image`, and the
//! build logs users follow.
//!
//! A build is a row (`builds`) and a `BUILD_SNAPSHOT` job for one runner, which builds the image
//! `sandbar-build:<sha256 of the Dockerfile>` through Docker's build API from local base images (there is no
//! registry). The image then exists on that runner only, so a sandbox or snapshot made from it is pinned there. An
//! identical Dockerfile of the same organization reuses the earlier build (queued, running or done) instead of
//! building again; a failed build is retried by the next request.
//!
//! States: a snapshot is `building` until the build ends (`active`, or `build_failed` with the reason); a sandbox is
//! `pending_build` until a runner claims the build, `building_snapshot` while it runs, then `creating` with its
//! create job queued (or `build_failed`). The runner streams the output (`POST /runners/{id}/jobs/{jobId}/log`),
//! stored as rows, so a follower (`GET .../build-logs?follow=true`, plain chunked text) reads everything from the
//! start on any API instance and its stream ends when the build ends. Followers are woken by a notify on every
//! append and result; other API instances' writes (PostgreSQL) are seen at the next poll interval.

use std::sync::LazyLock;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{BuildLog, MAX_BUILD_LOG_BYTES, MAX_BUILD_LOG_LINE};
use sandbar_proto::runner::{BuildSnapshot, JobKind, JobOutcome, SandboxState};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use tokio::sync::Notify;

use crate::App;
use crate::auth::{Caller, RunnerAuth};
use crate::db::sha256_hex;
use crate::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::sandbox::{self, BuildInfo};

/// Dockerfiles larger than this are refused.
pub const MAX_DOCKERFILE_BYTES: usize = 256 << 10;
/// Repository of built images; the tag is the Dockerfile's SHA-256.
pub const BUILD_IMAGE_REPO: &str = "sandbar-build";

/// Woken on every log append and build end, in this process.
static LOG_APPENDED: LazyLock<Notify> = LazyLock::new(Notify::new);

pub(crate) fn wake_followers() {
    LOG_APPENDED.notify_waiters();
}

/// What a `buildInfo` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Nothing but `FROM image` (what `Image.base("x")` sends): that image as it is, no build.
    Image(String),
    /// A Dockerfile to build.
    Dockerfile(String),
}

/// The image a Dockerfile names when it is nothing but `FROM image`.
fn from_only(content: &str) -> Option<String> {
    let lines: Vec<&str> = content.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let [from] = lines.as_slice() else { return None };
    let mut words = from.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(kw), Some(image), None) if kw.eq_ignore_ascii_case("FROM") && !image.starts_with("--") => {
            Some(image.to_owned())
        }
        _ => None,
    }
}

/// Checks a `buildInfo` (400s a person can act on) and says what it asks for.
pub(crate) fn source(bi: &BuildInfo) -> ApiResult<Source> {
    if bi.context_hashes.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(context_unsupported());
    }
    let dockerfile = bi.dockerfile_content.as_deref().unwrap_or_default();
    if dockerfile.trim().is_empty() {
        return Err(ApiError::bad_request("buildInfo.dockerfileContent is required (the Dockerfile to build)"));
    }
    if dockerfile.len() > MAX_DOCKERFILE_BYTES {
        return Err(ApiError::bad_request(format!(
            "buildInfo.dockerfileContent is {} bytes; at most {MAX_DOCKERFILE_BYTES} are accepted",
            dockerfile.len()
        )));
    }
    if let Some(image) = from_only(dockerfile) {
        return Ok(Source::Image(image));
    }
    let has_from = dockerfile.lines().any(|l| {
        let l = l.trim_start();
        l.len() > 4 && l.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("FROM "))
    });
    if !has_from {
        return Err(ApiError::bad_request("the Dockerfile has no FROM line: start it with FROM <local image>"));
    }
    Ok(Source::Dockerfile(dockerfile.to_owned()))
}

fn context_unsupported() -> ApiError {
    ApiError::bad_request(
        "build contexts (contextHashes: local files the SDK uploads to object storage for COPY/ADD) are not \
         supported by sandbar, which has no object storage; build from a Dockerfile without local files (run_commands, \
         env, workdir) or build the image locally (docker build -t NAME .) and use snapshot=NAME",
    )
}

/// The image a Dockerfile builds into.
pub(crate) fn image_for(dockerfile: &str) -> String {
    format!("{BUILD_IMAGE_REPO}:{}", sha256_hex(dockerfile))
}

/// A build something waits for.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub build_id: String,
    pub runner_id: String,
    /// `pending`, `building` or `done`.
    pub state: String,
}

/// The organization's build of `dockerfile` to use: an earlier identical one (not failed, on a reachable runner),
/// or a new one queued on a runner with room for `(cpu, memory, disk)`. The caller commits, then wakes the runner.
pub(crate) async fn attach(
    app: &App,
    conn: &mut AnyConnection,
    org: &str,
    dockerfile: &str,
    (cpu, memory, disk): (i64, i64, i64),
) -> ApiResult<Attached> {
    let now = app.now();
    let hash = sha256_hex(dockerfile);
    let image = image_for(dockerfile);
    let earlier: Option<(String, String, String)> = sqlx::query_as(
        "SELECT b.id, b.runner_id, b.state FROM builds b JOIN runners r ON r.id = b.runner_id \
         WHERE b.organization_id = $1 AND b.dockerfile_hash = $2 AND b.state IN ('pending', 'building', 'done') \
         AND r.last_heartbeat >= $3 ORDER BY b.created_at DESC LIMIT 1",
    )
    .bind(org)
    .bind(&hash)
    .bind(now - crate::runners::unreachable_after_ms(&app.config))
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((build_id, runner_id, state)) = earlier {
        tracing::info!(build_id = %build_id, state = %state, "reusing an identical build");
        return Ok(Attached { build_id, runner_id, state });
    }
    let runner_id = crate::runners::place(app, conn, cpu, memory, disk).await?;
    let build_id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO builds (id, organization_id, dockerfile_hash, dockerfile, image_name, runner_id, state, \
         log_bytes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
    )
    .bind(&build_id)
    .bind(org)
    .bind(&hash)
    .bind(dockerfile)
    .bind(&image)
    .bind(&runner_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let job = JobKind::BuildSnapshot(BuildSnapshot {
        build_id: build_id.clone(),
        image: image.clone(),
        dockerfile: dockerfile.to_owned(),
    });
    sandbox::enqueue(conn, &runner_id, &job, SandboxState::PendingBuild, SandboxState::BuildingSnapshot, now).await?;
    tracing::info!(build_id = %build_id, runner_id = %runner_id, image = %image, "build queued");
    Ok(Attached { build_id, runner_id, state: "pending".into() })
}

/// Ties a new sandbox to its build; true when it must wait for it (then it is `pending_build` or
/// `building_snapshot` and its create job is queued when the build succeeds).
pub(crate) async fn link_sandbox(
    conn: &mut AnyConnection,
    sandbox_id: &str,
    build: &Attached,
    now: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query("UPDATE sandboxes SET build_id = $1 WHERE id = $2")
        .bind(&build.build_id)
        .bind(sandbox_id)
        .execute(&mut *conn)
        .await?;
    let waiting = match build.state.as_str() {
        "pending" => SandboxState::PendingBuild,
        "building" => SandboxState::BuildingSnapshot,
        _ => return Ok(false),
    };
    sandbox::set_state(conn, sandbox_id, waiting, None, now).await?;
    Ok(true)
}

/// The runner a built snapshot's image lives on (`None` for a snapshot of an image every runner has). Refuses a
/// snapshot that is not active, or whose runner is unreachable.
pub(crate) async fn snapshot_runner(
    app: &App,
    conn: &mut AnyConnection,
    snap: &crate::snapshots::SnapshotRow,
) -> ApiResult<Option<String>> {
    match snap.state.as_str() {
        "active" => {}
        "build_failed" | "error" => {
            return Err(ApiError::bad_request(format!(
                "Snapshot {} failed to build and cannot be used: {}",
                snap.name,
                snap.error_reason.as_deref().unwrap_or("no reason recorded")
            )));
        }
        other => {
            return Err(ApiError::bad_request(format!("Snapshot {} is {other}; wait until it is active", snap.name)));
        }
    }
    let Some(build_id) = snap.build_id.as_deref() else { return Ok(None) };
    let runner: Option<(String, i64)> = sqlx::query_as(
        "SELECT b.runner_id, COALESCE(r.last_heartbeat, 0) FROM builds b LEFT JOIN runners r ON r.id = b.runner_id \
         WHERE b.id = $1",
    )
    .bind(build_id)
    .fetch_optional(&mut *conn)
    .await?;
    match runner {
        Some((runner, seen)) if seen >= app.now() - crate::runners::unreachable_after_ms(&app.config) => {
            Ok(Some(runner))
        }
        Some((runner, _)) => Err(ApiError::unavailable(format!(
            "snapshot {} was built on runner {runner}, which is unreachable (its image exists only there)",
            snap.name
        ))),
        None => Ok(None),
    }
}

/// A runner claimed build jobs: the builds are running, and sandboxes waiting for them are `building_snapshot`.
pub(crate) async fn claimed(app: &App, build_ids: &[String]) -> Result<(), sqlx::Error> {
    if build_ids.is_empty() {
        return Ok(());
    }
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    for id in build_ids {
        let r =
            sqlx::query("UPDATE builds SET state = 'building', updated_at = $1 WHERE id = $2 AND state = 'pending'")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if r.rows_affected() == 0 {
            continue;
        }
        let waiting: Vec<String> =
            sqlx::query_scalar("SELECT id FROM sandboxes WHERE build_id = $1 AND state = 'pending_build'")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        for sandbox_id in waiting {
            sandbox::set_state(&mut tx, &sandbox_id, SandboxState::BuildingSnapshot, None, now).await?;
        }
    }
    tx.commit().await?;
    app.wake_routes();
    Ok(())
}

/// A build job's result (inside the result's transaction): the build ends, its snapshots become `active` or
/// `build_failed`, and its waiting sandboxes get their create job or `build_failed`.
pub(crate) async fn finished(
    app: &App,
    conn: &mut AnyConnection,
    build_id: &str,
    outcome: &JobOutcome,
    now: i64,
) -> ApiResult<()> {
    let (state, reason) = match outcome {
        JobOutcome::Succeeded { .. } => ("done", None),
        JobOutcome::Failed { message, .. } => ("failed", Some(message.clone())),
    };
    let r = sqlx::query(
        "UPDATE builds SET state = $1, error_reason = $2, updated_at = $3, finished_at = $3 \
         WHERE id = $4 AND state IN ('pending', 'building')",
    )
    .bind(state)
    .bind(reason.clone())
    .bind(now)
    .bind(build_id)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(());
    }
    tracing::info!(build_id, state, reason = reason.as_deref().unwrap_or(""), "build finished");
    let snapshot_state = if reason.is_none() { "active" } else { "build_failed" };
    sqlx::query(
        "UPDATE snapshots SET state = $1, error_reason = $2, updated_at = $3 \
         WHERE build_id = $4 AND state IN ('pending', 'building')",
    )
    .bind(snapshot_state)
    .bind(reason.clone())
    .bind(now)
    .bind(build_id)
    .execute(&mut *conn)
    .await?;
    let waiting: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM sandboxes WHERE build_id = $1 AND state IN ('pending_build', 'building_snapshot')",
    )
    .bind(build_id)
    .fetch_all(&mut *conn)
    .await?;
    for id in waiting {
        match &reason {
            None => {
                let Some(row) = sandbox::load(app, conn, None, &id, true).await? else { continue };
                let Some(runner) = row.runner_id.clone() else { continue };
                sandbox::set_state(conn, &id, SandboxState::Creating, None, now).await?;
                let job = sandbox::create_job(&row);
                sandbox::enqueue(conn, &runner, &job, SandboxState::Creating, SandboxState::Creating, now).await?;
            }
            Some(reason) => {
                let why = format!("the image build failed: {reason}");
                sandbox::set_state(conn, &id, SandboxState::BuildFailed, Some(&why), now).await?;
            }
        }
    }
    Ok(())
}

/// A create found a built image gone from its runner (removed by hand): the build no longer counts as done, so the
/// next identical Dockerfile builds again instead of reusing it.
pub(crate) async fn image_missing(
    conn: &mut AnyConnection,
    runner_id: &str,
    image: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    if !image.starts_with(&format!("{BUILD_IMAGE_REPO}:")) {
        return Ok(());
    }
    sqlx::query(
        "UPDATE builds SET state = 'failed', error_reason = 'the built image is no longer on its runner', \
         updated_at = $1 WHERE image_name = $2 AND runner_id = $3 AND state = 'done'",
    )
    .bind(now)
    .bind(image)
    .bind(runner_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// States of sandboxes that wait for a build (no container on any runner yet).
pub(crate) fn waits_for_build(state: &str) -> bool {
    matches!(state, "pending_build" | "building_snapshot")
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/runners/{runner_id}/jobs/{job_id}/log", post(append))
        .route("/sandbox/{id}/build-logs-url", get(sandbox_logs_url))
        .route("/sandbox/{id}/build-logs", get(sandbox_logs))
        .route("/snapshots/{id}/build-logs-url", get(snapshot_logs_url))
        .route("/snapshots/{id}/build-logs", get(snapshot_logs))
        .route("/object-storage/push-access", get(push_access))
}

/// The SDK asks for object storage credentials before it uploads a local build context: say at once that there
/// is none.
async fn push_access(_: Caller) -> ApiError {
    context_unsupported()
}

/// `POST /runners/{runnerId}/jobs/{jobId}/log`: stores a batch of a running build's output.
async fn append(
    app: axum::extract::State<App>,
    _: RunnerAuth,
    Path((runner_id, job_id)): Path<(String, String)>,
    Json(log): Json<BuildLog>,
) -> ApiResult<Response> {
    if log.attempt.is_empty() || log.attempt.len() > 64 {
        return Err(ApiError::bad_request("attempt must be 1-64 characters"));
    }
    if log.lines.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let job: Option<(String, String)> =
        sqlx::query_as("SELECT payload, state FROM jobs WHERE id = $1 AND runner_id = $2")
            .bind(&job_id)
            .bind(&runner_id)
            .fetch_optional(&app.db.pool)
            .await?;
    let Some((payload, job_state)) = job else {
        return Err(ApiError::not_found(format!("no job {job_id} for runner {runner_id}")));
    };
    let Ok(JobKind::BuildSnapshot(build)) = serde_json::from_str::<JobKind>(&payload) else {
        return Err(ApiError::bad_request(format!("job {job_id} is not a build: it has no log")));
    };
    if !matches!(job_state.as_str(), "pending" | "claimed") {
        // A late retry after the result: the build's log is closed.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    // Locks the build's row (PostgreSQL), so concurrent appends number their batches one after the other.
    sqlx::query("UPDATE builds SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&build.build_id)
        .execute(&mut *tx)
        .await?;
    let (log_bytes, last_attempt): (i64, Option<String>) =
        sqlx::query_as("SELECT log_bytes, log_attempt FROM builds WHERE id = $1")
            .bind(&build.build_id)
            .fetch_one(&mut *tx)
            .await?;
    let used = u64::try_from(log_bytes).unwrap_or(0);
    if used >= MAX_BUILD_LOG_BYTES {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut text = String::new();
    if log.offset == 0 && last_attempt.as_deref().is_some_and(|a| a != log.attempt) {
        text.push_str("[sandbar: the runner restarted; building again]\n");
    }
    for line in &log.lines {
        let mut cut = line.len().min(MAX_BUILD_LOG_LINE);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        text.push_str(line.get(..cut).unwrap_or_default());
        text.push('\n');
        if used + text.len() as u64 > MAX_BUILD_LOG_BYTES {
            text.push_str("[sandbar: the build log is too long; the rest is not kept]\n");
            break;
        }
    }
    let seq: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(MAX(seq), 0) + 1 AS BIGINT) FROM build_logs WHERE build_id = $1")
            .bind(&build.build_id)
            .fetch_one(&mut *tx)
            .await?;
    let inserted = sqlx::query(
        "INSERT INTO build_logs (build_id, seq, attempt, line_offset, text) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (build_id, attempt, line_offset) DO NOTHING",
    )
    .bind(&build.build_id)
    .bind(seq)
    .bind(&log.attempt)
    .bind(i64::try_from(log.offset).unwrap_or(i64::MAX))
    .bind(&text)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() > 0 {
        sqlx::query("UPDATE builds SET log_bytes = log_bytes + $1, log_attempt = $2 WHERE id = $3")
            .bind(text.len() as i64)
            .bind(&log.attempt)
            .bind(&build.build_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    wake_followers();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildLogsUrl {
    pub url: String,
}

/// The base URL the caller reached this API at (`http(s)://host`), for URLs it is meant to call back.
fn origin(headers: &HeaderMap, app: &App) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| app.config.listen.to_string());
    let scheme = match headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

async fn sandbox_build(app: &App, org: &str, id: &str) -> ApiResult<(String, String)> {
    let mut conn = app.db.pool.acquire().await?;
    let row =
        sandbox::load(app, &mut conn, Some(org), id, false).await?.ok_or_else(|| ApiError::sandbox_not_found(id))?;
    let build: Option<String> =
        sqlx::query_scalar("SELECT build_id FROM sandboxes WHERE id = $1").bind(&row.id).fetch_one(&mut *conn).await?;
    let build = build.ok_or_else(|| {
        ApiError::not_found(format!("Sandbox {id} was not built from a Dockerfile: it has no build logs"))
    })?;
    Ok((row.id, build))
}

async fn snapshot_build(app: &App, org: &str, id: &str) -> ApiResult<(String, String)> {
    let mut conn = app.db.pool.acquire().await?;
    let snap = crate::snapshots::find(&mut conn, org, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Snapshot {id} not found")))?;
    let build = snap.build_id.ok_or_else(|| {
        ApiError::not_found(format!("Snapshot {id} was not built from a Dockerfile: it has no build logs"))
    })?;
    Ok((snap.id, build))
}

async fn sandbox_logs_url(
    app: axum::extract::State<App>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, _) = sandbox_build(&app, &caller.organization_id, &id).await?;
    let url = format!("{}/api/sandbox/{id}/build-logs", origin(&headers, &app));
    Ok(Json(BuildLogsUrl { url }).into_response())
}

async fn snapshot_logs_url(
    app: axum::extract::State<App>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, _) = snapshot_build(&app, &caller.organization_id, &id).await?;
    let url = format!("{}/api/snapshots/{id}/build-logs", origin(&headers, &app));
    Ok(Json(BuildLogsUrl { url }).into_response())
}

async fn sandbox_logs(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let follow = q.bool("follow")?.unwrap_or(false);
    let (_, build) = sandbox_build(&app, &caller.organization_id, &id).await?;
    Ok(log_response(app.0, build, follow))
}

async fn snapshot_logs(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let follow = q.bool("follow")?.unwrap_or(false);
    let (_, build) = snapshot_build(&app, &caller.organization_id, &id).await?;
    Ok(log_response(app.0, build, follow))
}

/// Where a log reader is.
struct Reader {
    app: App,
    build_id: String,
    last_seq: i64,
    follow: bool,
    done: bool,
}

impl Reader {
    /// The next piece of the log: `None` at its end (the build ended and everything was read, or without
    /// `follow`, everything stored so far was read).
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let woken = LOG_APPENDED.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.read().await {
                Ok((_, Some(text))) => return Some(Bytes::from(text)),
                Ok((ended, None)) if ended || !self.follow => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(build_id = %self.build_id, error = %e, "reading a build log failed");
                    self.done = true;
                    return Some(Bytes::from_static(b"[sandbar: reading the build log failed]\n"));
                }
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(self.app.poll_interval()) => {}
            }
        }
    }

    /// Whether the build had ended before the read, and the text after `last_seq` (lines reach the API before the
    /// result, so an ended build with nothing more to read is complete).
    async fn read(&mut self) -> Result<(bool, Option<String>), sqlx::Error> {
        let mut conn = self.app.db.pool.acquire().await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM builds WHERE id = $1")
            .bind(&self.build_id)
            .fetch_optional(&mut *conn)
            .await?;
        let ended = state.as_deref().is_none_or(|s| matches!(s, "done" | "failed"));
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, text FROM build_logs WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT 200")
                .bind(&self.build_id)
                .bind(self.last_seq)
                .fetch_all(&mut *conn)
                .await?;
        let Some((last, _)) = rows.last() else { return Ok((ended, None)) };
        self.last_seq = *last;
        Ok((ended, Some(rows.into_iter().map(|(_, t)| t).collect())))
    }
}

fn log_response(app: App, build_id: String, follow: bool) -> Response {
    let reader = Reader { app, build_id, last_seq: 0, follow, done: false };
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        r.next().await.map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), r))
    });
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dockerfile: &str) -> BuildInfo {
        BuildInfo { dockerfile_content: Some(dockerfile.into()), context_hashes: None }
    }

    #[test]
    fn sources() {
        assert_eq!(source(&info("FROM python:3.12\n")).unwrap(), Source::Image("python:3.12".into()));
        assert_eq!(source(&info("# c\n\nfrom busybox\n")).unwrap(), Source::Image("busybox".into()));
        let df = "FROM x\nRUN y\n";
        assert_eq!(source(&info(df)).unwrap(), Source::Dockerfile(df.into()));
        assert!(matches!(source(&info("FROM x AS y")).unwrap(), Source::Dockerfile(_)));
        assert!(source(&info("RUN y\n")).is_err());
        assert!(source(&info("  ")).is_err());
        assert!(source(&BuildInfo { dockerfile_content: None, context_hashes: None }).is_err());
        let ctx = BuildInfo { dockerfile_content: Some(df.into()), context_hashes: Some(vec!["h".into()]) };
        assert!(source(&ctx).is_err());
        assert!(source(&info(&format!("FROM x\nRUN {}\n", "a".repeat(MAX_DOCKERFILE_BYTES)))).is_err());
        assert_eq!(image_for(df), format!("sandbar-build:{}", sha256_hex(df)));
    }
}
