//! The operator's runner administration under `/api/admin/runners`: list the runners with their schedule, and
//! cordon, uncordon or drain one (`sandbar runner ...`). Decisions: `crate::domain::drain`.
//!
//! Who may call it: only a caller presenting `Authorization: Bearer <--admin-token>` (compared in constant time).
//! Without a configured token the endpoints are off (403 with the reason). No other credential opens them: an
//! organization's API key or dashboard session, a runner's credential, the proxy's or the metrics token are a 403,
//! no credential at all a 401. Runners are shared by every organization, so no organization may close one.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::domain::drain::{self, Schedule};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/admin/runners", get(list))
        .route("/admin/runners/{runner_id}/cordon", post(cordon))
        .route("/admin/runners/{runner_id}/uncordon", post(uncordon))
        .route("/admin/runners/{runner_id}/drain", post(drain_runner))
}

/// The operator, by the admin token.
#[derive(Debug)]
pub struct AdminAuth;

impl FromRequestParts<App> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Some(expected) = app.config.admin_token.as_deref().filter(|t| !t.is_empty()) else {
            return Err(ApiError::forbidden("runner administration is off: start the API with --admin-token"));
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("missing admin token (Authorization: Bearer ...)"))?;
        if !sandbar_support::ct_eq(presented.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::forbidden(
                "runner administration needs the operator's admin token; an API key or service token does not open it",
            ));
        }
        Ok(Self)
    }
}

/// `GET /admin/runners`: every registered runner with its schedule.
async fn list(State(app): State<App>, _: AdminAuth) -> ApiResult<Response> {
    Ok(Json(drain::list(&app).await?).into_response())
}

/// `POST /admin/runners/{id}/cordon`: no new sandboxes there; what runs stays.
async fn cordon(State(app): State<App>, _: AdminAuth, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(drain::set(&app, &id, Schedule::Cordoned, false).await?).into_response())
}

/// `POST /admin/runners/{id}/uncordon`: the runner takes new sandboxes again (a move in progress stops).
async fn uncordon(State(app): State<App>, _: AdminAuth, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(drain::set(&app, &id, Schedule::Active, false).await?).into_response())
}

/// `POST /admin/runners/{id}/drain[?move=true]`: cordoned and draining; with `move`, its sandboxes are moved to
/// other runners by archive and restore.
async fn drain_runner(
    State(app): State<App>,
    _: AdminAuth,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let move_out = q.bool("move")?.unwrap_or(false);
    Ok(Json(drain::set(&app, &id, Schedule::Draining, move_out).await?).into_response())
}
