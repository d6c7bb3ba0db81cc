//! `/healthz` and `/readyz`, beside `/api` on the API's own listener, for supervisors, load balancers and
//! `sandbar up`. Unauthenticated and cheap: `/healthz` touches nothing (the process serves), `/readyz` asks the
//! database one count (it answers, and at least one runner sent a heartbeat recently enough to take a create).
//! They say no more than that: no names, counts or versions. The proxy does not forward them (only `/api/...` and
//! the dashboard reach the API through it).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::App;
use crate::domain::placement;
use crate::store;

use super::error::{ApiError, ApiResult};

pub fn routes() -> Router<App> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<App>) -> ApiResult<Response> {
    let since = placement::reachable_since(&app, app.now());
    if store::runners::count_seen_since(&app.db.pool, since).await? == 0 {
        return Err(ApiError::unavailable(
            "not ready: no runner has sent a heartbeat recently (creates would be refused until one does)",
        ));
    }
    Ok(axum::Json(serde_json::json!({"status": "ready"})).into_response())
}
