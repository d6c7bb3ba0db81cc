//! `/version`, `/user-home-dir`, `/work-dir`, `/env`, `/init`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use sandbar_proto::toolbox::{DirResponse, EnvUpdate, InitRequest, InitResponse, VersionResponse};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::util::ApiJson;

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

fn valid_env_name(k: &str) -> bool {
    !k.is_empty() && !k.contains('=') && !k.contains('\0')
}

async fn update_env(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<EnvUpdate>,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    if let Some(bad) = req.set.keys().chain(req.unset.iter()).find(|k| !valid_env_name(k)) {
        return Err(ApiError::bad_request(format!("invalid environment variable name {bad:?}")));
    }
    if let Some((k, _)) = req.set.iter().find(|(_, v)| v.contains('\0')) {
        return Err(ApiError::bad_request(format!("value of {k} contains a NUL byte")));
    }
    d.update_env(req.set, &req.unset);
    Ok(Json(d.effective_env()))
}

async fn init(State(d): State<AppState>, ApiJson(req): ApiJson<InitRequest>) -> ApiResult<Json<InitResponse>> {
    if req.sandbox_id.trim().is_empty() {
        return Err(ApiError::bad_request("sandboxId must not be empty"));
    }
    if let Some(bad) = req.env.keys().find(|k| !valid_env_name(k)) {
        return Err(ApiError::bad_request(format!("invalid environment variable name {bad:?}")));
    }
    d.update_env(req.env, &[]);
    d.set_sandbox_id(req.sandbox_id.clone());
    tracing::info!(sandbox_id = %req.sandbox_id, "initialised");
    Ok(Json(InitResponse { sandbox_id: req.sandbox_id }))
}
