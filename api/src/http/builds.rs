//! The build logs users follow (`GET .../build-logs?follow=true`, plain chunked text) and the endpoint runners
//! stream a build's output to (`POST /runners/{id}/jobs/{jobId}/log`). The output is stored as numbered batches,
//! so a follower reads everything from the start on any API instance and its stream ends when the build ends.
//! Followers are woken by a notify on every append and result; other API instances' writes (PostgreSQL) are seen
//! at the next poll interval. What a build is: `crate::domain::builds`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{BuildLog, MAX_BUILD_LOG_BYTES, MAX_BUILD_LOG_LINE};
use sandbar_proto::runner::JobKind;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, RunnerAuth};
use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::domain::builds::{context_unsupported, followers, wake_followers};
use crate::domain::sandboxes::find;
use crate::domain::snapshots::find_snapshot;
use crate::store::{self, sandboxes};

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
    State(app): State<App>,
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
    let job = store::jobs::payload(&app.db.pool, &job_id, &runner_id).await?;
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
    let (log_bytes, last_attempt) = store::builds::lock_log(&mut tx, &build.build_id, now).await?;
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
    let offset = i64::try_from(log.offset).unwrap_or(i64::MAX);
    store::builds::append_log(&mut tx, &build.build_id, &log.attempt, offset, &text).await?;
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
    let row = find(app, &mut conn, org, id, false).await?;
    let build = sandboxes::build_of(&mut conn, &row.id).await?.ok_or_else(|| {
        ApiError::not_found(format!("Sandbox {id} was not built from a Dockerfile: it has no build logs"))
    })?;
    Ok((row.id, build))
}

async fn snapshot_build(app: &App, org: &str, id: &str) -> ApiResult<(String, String)> {
    let snap = find_snapshot(app, org, id).await?;
    let build = snap.build_id.ok_or_else(|| {
        ApiError::not_found(format!("Snapshot {id} was not built from a Dockerfile: it has no build logs"))
    })?;
    Ok((snap.id, build))
}

/// Whose build logs a request asks for.
#[derive(Debug, Clone, Copy)]
enum Of {
    Sandbox,
    Snapshot,
}

/// `(id, build id)` of the sandbox or snapshot `id` of `org`.
async fn build_of(app: &App, org: &str, of: Of, id: &str) -> ApiResult<(String, String)> {
    match of {
        Of::Sandbox => sandbox_build(app, org, id).await,
        Of::Snapshot => snapshot_build(app, org, id).await,
    }
}

async fn logs_url(app: &App, caller: &Caller, headers: &HeaderMap, of: Of, id: &str) -> ApiResult<Response> {
    let (id, _) = build_of(app, &caller.organization_id, of, id).await?;
    let what = match of {
        Of::Sandbox => "sandbox",
        Of::Snapshot => "snapshots",
    };
    let url = format!("{}/api/{what}/{id}/build-logs", origin(headers, app));
    Ok(Json(BuildLogsUrl { url }).into_response())
}

async fn logs(app: App, caller: &Caller, of: Of, id: &str, q: &QueryPairs) -> ApiResult<Response> {
    let follow = q.bool("follow")?.unwrap_or(false);
    let (_, build) = build_of(&app, &caller.organization_id, of, id).await?;
    Ok(log_response(app, build, follow))
}

async fn sandbox_logs_url(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    logs_url(&app, &caller, &headers, Of::Sandbox, &id).await
}

async fn snapshot_logs_url(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    logs_url(&app, &caller, &headers, Of::Snapshot, &id).await
}

async fn sandbox_logs(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    logs(app, &caller, Of::Sandbox, &id, &q).await
}

async fn snapshot_logs(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    logs(app, &caller, Of::Snapshot, &id, &q).await
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
            let woken = followers().notified();
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
        let state = store::builds::state(&mut conn, &self.build_id).await?;
        let ended = state.as_deref().is_none_or(|s| !matches!(s, "pending" | "building"));
        let rows = store::builds::read_log(&mut conn, &self.build_id, self.last_seq).await?;
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
