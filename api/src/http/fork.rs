//! Fork, snapshot-from-sandbox and pause (`POST /sandbox/{id}/fork`, `/snapshot`, `/pause`), as the Daytona SDK
//! 0.226.1 calls them (`sandbox.fork(name)`, `sandbox.create_snapshot(name)`, `sandbox.pause()`). Both copies take
//! a sandbox's filesystem only (`docker commit` on its runner); see `crate::domain::sandboxes::fork` and
//! `crate::domain::snapshots::from_sandbox`.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Json, Path};
use super::sandbox::ok;
use crate::App;
use crate::domain::{lifecycle, sandboxes, snapshots};

/// Daytona's `ForkSandbox`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkSandboxBody {
    /// Name of the new sandbox; its id when absent.
    pub name: Option<String>,
}

/// Daytona's `CreateSandboxSnapshot`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxSnapshotBody {
    pub name: String,
    /// Must be false (the default): sandboxes are containers, and a snapshot holds their filesystem only.
    pub include_memory: Option<bool>,
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/sandbox/{id}/fork", post(fork))
        .route("/sandbox/{id}/snapshot", post(snapshot))
        .route("/sandbox/{id}/pause", post(pause))
}

/// `POST /sandbox/{id}/fork`: answers 200 with the new sandbox (`creating`); the SDK then waits for `started`.
async fn fork(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ForkSandboxBody>,
) -> ApiResult<Response> {
    let row = sandboxes::fork(&app, &caller.organization_id, &id, body.name.as_deref()).await?;
    let row = sandboxes::wait_while_creating(&app, row).await?;
    Ok(ok(&app, &row))
}

/// `POST /sandbox/{id}/snapshot`: answers 200 with the sandbox (`snapshotting`); the SDK polls until it leaves that
/// state, by when the snapshot is `active` (or `error`, with the runner's reason).
async fn snapshot(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateSandboxSnapshotBody>,
) -> ApiResult<Response> {
    if body.include_memory.unwrap_or(false) {
        return Err(ApiError::bad_request(
            "includeMemory is not supported: sandbar sandboxes are containers, and a snapshot holds their filesystem \
             only (memory and running processes are not copied); send includeMemory=false",
        ));
    }
    let row = snapshots::from_sandbox(&app, &caller.organization_id, &id, body.name.trim()).await?;
    Ok(ok(&app, &row))
}

/// `POST /sandbox/{id}/pause`: 200 with the sandbox (`pausing`); the SDK polls until it leaves that state.
async fn pause(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = lifecycle::pause(&app, &caller.organization_id, &id).await?;
    Ok(ok(&app, &row))
}
