//! Daytona's volume endpoints (`/api/volumes`), as the SDK's `daytona.volume` calls them: list, create, get by id
//! or by name, delete. Callers reach only their organization's volumes (another organization's is a 404 like an
//! unknown one). What a volume is and the rules of mounting one: `crate::domain::volumes`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::clock::iso;
use crate::domain::volumes;
use crate::store::volumes::{self as rows, VolumeRow};

/// Daytona's `VolumeDto` (required: id, name, organizationId, state, createdAt, updatedAt; errorReason nullable).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDto {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    /// `ready`, `deleting` or `error` (of Daytona's `creating, ready, pending_create, pending_delete, deleting,
    /// deleted, error`).
    pub state: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    pub error_reason: Option<String>,
    /// Bytes the volume holds, as its runner last measured them (sandbar's; the SDK keeps it as an extra).
    pub size_bytes: i64,
}

/// Daytona's `CreateVolume`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateVolumeBody {
    pub name: String,
}

fn dto(row: &VolumeRow) -> VolumeDto {
    VolumeDto {
        id: row.id.clone(),
        name: row.name.clone(),
        organization_id: row.organization_id.clone(),
        state: row.state.clone(),
        created_at: iso(row.created_at),
        updated_at: iso(row.updated_at),
        last_used_at: row.last_used_at.map(iso),
        error_reason: row.error_reason.clone(),
        size_bytes: row.size_bytes,
    }
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/volumes", get(list).post(create))
        .route("/volumes/by-name/{name}", get(by_name))
        .route("/volumes/{volume_id}", get(get_one).delete(delete))
}

/// `GET /volumes[?includeDeleted=]`: the organization's volumes, oldest first. Deleted volumes leave no row, so
/// `includeDeleted` has nothing to add (it is still checked to be a boolean).
async fn list(State(app): State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    q.bool("includeDeleted")?;
    let list = rows::list(&app.db.pool, &caller.organization_id).await?;
    Ok(Json(list.iter().map(dto).collect::<Vec<_>>()).into_response())
}

/// `POST /volumes`: 200 with the new volume (`ready`), 409 when the name is taken, 403 over the quotas.
async fn create(State(app): State<App>, caller: Caller, Json(body): Json<CreateVolumeBody>) -> ApiResult<Response> {
    let row = volumes::create(&app, &caller.organization_id, &body.name).await?;
    Ok(Json(dto(&row)).into_response())
}

async fn get_one(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = volumes::get(&app, &caller.organization_id, &id).await?;
    Ok(Json(dto(&row)).into_response())
}

async fn by_name(State(app): State<App>, caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    let row = volumes::by_name(&app, &caller.organization_id, &name).await?;
    Ok(Json(dto(&row)).into_response())
}

/// `DELETE /volumes/{id}`: 200 (the data goes at once, or through its runner while the volume shows `deleting`),
/// 409 naming the sandboxes that still mount it.
async fn delete(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    volumes::delete(&app, &caller.organization_id, &id).await?;
    Ok(StatusCode::OK.into_response())
}
