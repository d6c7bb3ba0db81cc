//! `/version`, `/user-home-dir`, `/work-dir`, `/env`, `/init` (engine: `engine::daemon`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use sandbar_proto::toolbox::{DirResponse, EnvUpdate, InitRequest, InitResponse, VersionResponse};

use super::error::ApiResult;
use super::extract::ApiJson;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/version", get(version))
        .route("/user-home-dir", get(home_dir))
        .route("/work-dir", get(work_dir))
        .route("/env", get(env).post(update_env))
        .route("/init", post(init))
}

async fn version() -> Json<VersionResponse> {
    Json(VersionResponse { version: env!("CARGO_PKG_VERSION").to_owned() })
}

async fn home_dir(State(d): State<AppState>) -> Json<DirResponse> {
    Json(DirResponse { dir: d.home.to_string_lossy().into_owned() })
}

async fn work_dir(State(d): State<AppState>) -> Json<DirResponse> {
    Json(DirResponse { dir: d.work_dir.to_string_lossy().into_owned() })
}

async fn env(State(d): State<AppState>) -> Json<BTreeMap<String, String>> {
    Json(d.effective_env())
}

async fn update_env(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<EnvUpdate>,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    Ok(Json(d.change_env(req)?))
}

async fn init(State(d): State<AppState>, ApiJson(req): ApiJson<InitRequest>) -> ApiResult<Json<InitResponse>> {
    Ok(Json(d.init(req)?))
}
