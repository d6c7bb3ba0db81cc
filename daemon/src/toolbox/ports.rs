//! `GET /port` and `GET /port/{port}/in-use` (engine: `engine::ports`).

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use sandbar_proto::toolbox::{PortInUse, PortList};

use super::error::{ApiError, ApiResult};
use crate::AppState;
use crate::engine::ports;

pub fn routes() -> Router<AppState> {
    Router::new().route("/port", get(list)).route("/port/{port}/in-use", get(in_use))
}

async fn list() -> ApiResult<Json<PortList>> {
    Ok(Json(PortList { ports: ports::listening()? }))
}

async fn in_use(Path(port): Path<String>) -> ApiResult<Json<PortInUse>> {
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("port must be a number from 1 to 65535, not {port:?}")))?;
    Ok(Json(PortInUse { is_in_use: ports::in_use(port)? }))
}
