//! Daytona's registry credentials endpoints (`/api/docker-registry`): create (201), list, get, update (PATCH), delete
//! (204), for the caller's organization only (another organization's entry is a 404 like an unknown one). No
//! response carries a password. The runner's side, `GET /runners/{id}/jobs/{jobId}/registry-auth`, hands a job's
//! credentials to the runner carrying it (see `crate::domain::registries::for_job`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, RunnerAuth};
use super::error::{ApiResult, Json, Path};
use crate::App;
use crate::clock::iso;
use crate::domain::registries::{self, Fields};
use crate::store::registries::RegistryRow;

/// Daytona's `DockerRegistry`: never the password.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DockerRegistryDto {
    pub id: String,
    pub name: String,
    pub url: String,
    pub username: String,
    pub project: String,
    /// `organization` (Daytona's other types, `internal`, `public`, `transient` and `backup`, are its own).
    pub registry_type: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Daytona's `CreateDockerRegistry`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateDockerRegistryBody {
    pub name: String,
    pub url: String,
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub project: Option<String>,
}

/// Daytona's `UpdateDockerRegistry`: without `password` the stored one is kept.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateDockerRegistryBody {
    pub name: String,
    pub url: String,
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
}

fn dto(r: &RegistryRow) -> DockerRegistryDto {
    DockerRegistryDto {
        id: r.id.clone(),
        name: r.name.clone(),
        url: r.url.clone(),
        username: r.username.clone(),
        project: r.project.clone(),
        registry_type: r.registry_type.clone(),
        created_at: iso(r.created_at),
        updated_at: iso(r.updated_at),
    }
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/docker-registry", get(list).post(create))
        .route("/docker-registry/{id}", get(get_one).patch(update).delete(delete))
        .route("/runners/{runner_id}/jobs/{job_id}/registry-auth", get(job_auth))
}

async fn list(State(app): State<App>, caller: Caller) -> ApiResult<Response> {
    let rows = crate::store::registries::list(&app.db.pool, &caller.organization_id).await?;
    Ok(Json(rows.iter().map(dto).collect::<Vec<_>>()).into_response())
}

async fn create(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<CreateDockerRegistryBody>,
) -> ApiResult<Response> {
    let fields = Fields {
        name: body.name,
        url: body.url,
        username: body.username,
        password: Some(body.password),
        project: body.project,
    };
    let row = registries::create(&app, &caller.organization_id, fields).await?;
    Ok((StatusCode::CREATED, Json(dto(&row))).into_response())
}

async fn get_one(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(dto(&registries::get(&app, &caller.organization_id, &id).await?)).into_response())
}

async fn update(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateDockerRegistryBody>,
) -> ApiResult<Response> {
    let fields = Fields {
        name: body.name,
        url: body.url,
        username: body.username,
        password: body.password,
        project: body.project,
    };
    Ok(Json(dto(&registries::update(&app, &caller.organization_id, &id, fields).await?)).into_response())
}

async fn delete(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    registries::delete(&app, &caller.organization_id, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /runners/{id}/jobs/{jobId}/registry-auth` (the runner's own credential): `[RegistryAuth]` for the job.
async fn job_auth(
    State(app): State<App>,
    _: RunnerAuth,
    Path((runner_id, job_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(Json(registries::for_job(&app, &runner_id, &job_id).await?).into_response())
}
