//! The runners' side of the API (`sandbar_proto::api`): heartbeats register runners and their capacity, a
//! long-poll hands out jobs (`crate::jobs::claim`), results and state reports move sandboxes
//! (`crate::jobs::on_result`, `crate::domain::apply`). Build logs arrive at `super::builds`.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{HeartbeatResponse, MAX_POLL_WAIT_SECS, RunnerRegistration, RunnerRegistrationRequest};
use sandbar_proto::runner::{JobOutcome, JobResult, RunnerStatus, SandboxInfo, StateChange};

use super::auth::{RunnerAuth, RunnerJoin};
use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::domain::{apply, daemon_addrs};
use crate::jobs;
use crate::store::runners;

/// The largest body a runner may send: its full report lists every sandbox it holds (about 600 bytes each), and a
/// host with 10,000 of them must still be heard (axum's default of 2 MiB stops at about 3,000). Only runners, with
/// their credential, reach these routes.
pub const MAX_RUNNER_BODY: usize = 64 << 20;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/runners/{runner_id}/register", post(register))
        .route("/runners/{runner_id}/heartbeat", post(heartbeat))
        .route("/runners/{runner_id}/jobs", get(poll))
        .route("/runners/{runner_id}/jobs/{job_id}/result", post(result))
        .route("/runners/{runner_id}/states", post(states))
        .route("/runners/{runner_id}/sandboxes", post(reconcile))
        .layer(DefaultBodyLimit::max(MAX_RUNNER_BODY))
}

fn valid_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::bad_request(format!(
            "invalid runner id {id:?}: use 1-128 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// Refuses a body that names another runner (or job) than the path.
fn same_id(what: &str, body: &str, path: &str) -> ApiResult<()> {
    if body == path {
        return Ok(());
    }
    Err(ApiError::bad_request(format!("{what} {body:?} in the body does not match {path:?} in the path")))
}

/// `POST /runners/{id}/register` with the join token, and optionally a [`RunnerRegistrationRequest`] body (the
/// networks its daemon addresses lie in; none: it may report no address): a fresh credential for runner `id` (the
/// previous one stops working), stored hashed. A runner registers at start and keeps the credential in memory.
async fn register(
    State(app): State<App>,
    _: RunnerJoin,
    Path(runner_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    valid_id(&runner_id)?;
    let req: RunnerRegistrationRequest = match body.is_empty() {
        true => RunnerRegistrationRequest::default(),
        false => serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid registration body: {e}")))?,
    };
    let networks = daemon_addrs::parse_networks(&req.daemon_networks)?;
    let credential = crate::error::new_token(32)?;
    let hash = crate::store::sha256_hex(&credential);
    runners::set_credential(&app.db.pool, &runner_id, &hash, &networks, app.now()).await?;
    tracing::info!(runner_id = %runner_id, daemon_networks = %networks, "runner registered");
    Ok(Json(RunnerRegistration { credential }).into_response())
}

async fn heartbeat(
    State(app): State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    Json(status): Json<RunnerStatus>,
) -> ApiResult<Response> {
    valid_id(&runner_id)?;
    same_id("runnerId", &status.runner_id, &runner_id)?;
    runners::heartbeat(&app.db.pool, &status, app.now()).await?;
    if !status.volumes.is_empty() {
        let mut conn = app.db.pool.acquire().await?;
        crate::store::volumes::record_sizes(&mut conn, &runner_id, &status.volumes).await?;
    }
    crate::domain::usage::record(&app, &runner_id, &status.usage).await?;
    // Sandboxes on this runner were shown as `unknown` while it was silent: their routes are valid again.
    app.wake_routes();
    Ok(Json(HeartbeatResponse { schedulable: true }).into_response())
}

/// `GET /runners/{id}/jobs?wait=N`: the runner's due jobs, waiting up to `N` seconds for one.
async fn poll(
    State(app): State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    valid_id(&runner_id)?;
    let wait = q.int("wait")?.unwrap_or(0);
    if wait < 0 {
        return Err(ApiError::bad_request(format!("wait must be 0 or more seconds, got {wait}")));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_POLL_WAIT_SECS as i64) as u64);
    let notify = app.job_notify(&runner_id);
    loop {
        // Registered before the claim, so a job created between the claim and the wait still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let jobs = jobs::claim(&app, &runner_id).await?;
        let now = tokio::time::Instant::now();
        if !jobs.is_empty() || now >= deadline {
            return Ok(Json(jobs).into_response());
        }
        let nap = (deadline - now).min(app.poll_interval());
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

async fn result(
    State(app): State<App>,
    _: RunnerAuth,
    Path((runner_id, job_id)): Path<(String, String)>,
    Json(res): Json<JobResult>,
) -> ApiResult<Response> {
    same_id("jobId", &res.job_id, &job_id)?;
    if let JobOutcome::Succeeded { sandbox: Some(info), .. } = &res.outcome {
        daemon_addrs::check(&app, &runner_id, &[info.as_ref()]).await?;
    }
    jobs::on_result(&app, &runner_id, &res).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn states(
    State(app): State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    Json(changes): Json<Vec<StateChange>>,
) -> ApiResult<Response> {
    apply::state_changes(&app, &runner_id, changes).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The runner's full picture: report states it knows, and mark sandboxes it no longer has.
async fn reconcile(
    State(app): State<App>,
    _: RunnerAuth,
    Path(runner_id): Path<String>,
    Json(list): Json<Vec<SandboxInfo>>,
) -> ApiResult<Response> {
    daemon_addrs::check(&app, &runner_id, &list.iter().collect::<Vec<_>>()).await?;
    apply::reconcile(&app, &runner_id, list).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
