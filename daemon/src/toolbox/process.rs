//! `POST /process/execute` and `POST /process/code-run` (engine: `engine::exec`). A large output is streamed
//! from its spool file into `result` (`stream.rs`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use sandbar_proto::toolbox::{CodeRunRequest, ExecuteRequest};
use serde::Serialize;

use super::error::ApiResult;
use super::extract::ApiJson;
use super::stream::{json_response, json_with_text};
use crate::AppState;
use crate::engine::exec::{self, Output, WithOutput};
use crate::engine::session::Streams;

pub fn routes() -> Router<AppState> {
    Router::new().route("/process/execute", post(execute)).route("/process/code-run", post(code_run))
}

async fn execute(State(d): State<AppState>, ApiJson(req): ApiJson<ExecuteRequest>) -> ApiResult<Response> {
    let out = exec::execute(&d, req).await?;
    respond(out, |r, text| r.result = text)
}

async fn code_run(State(d): State<AppState>, ApiJson(req): ApiJson<CodeRunRequest>) -> ApiResult<Response> {
    let out = exec::code_run(&d, req).await?;
    respond(out, |r, text| r.result = text)
}

/// The response with its `result`: set in memory when small, else streamed from the spool file.
fn respond<T: Serialize>(out: WithOutput<T>, set_result: impl FnOnce(&mut T, String)) -> ApiResult<Response> {
    let WithOutput { mut response, result } = out;
    match result {
        Output::Text(text) => {
            set_result(&mut response, text);
            Ok(Json(response).into_response())
        }
        Output::Spooled(log) => {
            let pieces = json_with_text(&response, "result", log.text(Streams::Both))
                .map_err(|e| crate::engine::Error::internal("serializing the response", e))?;
            Ok(json_response(pieces))
        }
    }
}
