//! `POST /process/execute` and `POST /process/code-run` (engine: `engine::exec`).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use sandbar_proto::toolbox::{CodeRunRequest, CodeRunResponse, ExecuteRequest, ExecuteResponse};

use super::error::ApiResult;
use super::extract::ApiJson;
use crate::AppState;
use crate::engine::exec;

pub fn routes() -> Router<AppState> {
    Router::new().route("/process/execute", post(execute)).route("/process/code-run", post(code_run))
}

async fn execute(State(d): State<AppState>, ApiJson(req): ApiJson<ExecuteRequest>) -> ApiResult<Json<ExecuteResponse>> {
    Ok(Json(exec::execute(&d, req).await?))
}

async fn code_run(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<CodeRunRequest>,
) -> ApiResult<Json<CodeRunResponse>> {
    Ok(Json(exec::code_run(&d, req).await?))
}
