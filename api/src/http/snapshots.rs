//! Daytona's snapshot endpoints (`/api/snapshots`). What a snapshot is (a name for a local image, built from a
//! Dockerfile, or taken from a sandbox) is `crate::domain::snapshots`; here requests are checked and answered as
//! Daytona's `SnapshotDto`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::dto::BuildInfo;
use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::clock::iso;
use crate::domain::builds::{self, Source};
use crate::domain::sandboxes::{check_name, check_resources};
use crate::domain::snapshots::{self, NewImageSnapshot, find_snapshot};
use crate::store::snapshots::{self as rows, SnapshotRow};

/// Daytona's `SnapshotDto` (required: id, general, name, state, cpu, gpu, mem, disk, createdAt, updatedAt).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDto {
    pub id: String,
    pub organization_id: String,
    pub general: bool,
    pub name: String,
    pub image_name: String,
    pub state: String,
    pub size: Option<f64>,
    pub entrypoint: Option<Vec<String>>,
    pub cpu: i64,
    pub gpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    pub source_sandbox_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaginatedSnapshots {
    pub items: Vec<SnapshotDto>,
    pub total: i64,
    pub page: i64,
    pub total_pages: i64,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSnapshotBody {
    pub name: String,
    pub image_name: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub build_info: Option<BuildInfo>,
    pub cpu: Option<i64>,
    pub gpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
}

/// The snapshot as the SDK reads it.
fn dto(row: &SnapshotRow) -> SnapshotDto {
    SnapshotDto {
        id: row.id.clone(),
        organization_id: row.organization_id.clone(),
        general: false,
        name: row.name.clone(),
        image_name: row.image_name.clone(),
        state: row.state.clone(),
        // GiB, as Daytona reports image sizes.
        size: row.size.map(|b| (b as f64 / f64::from(1u32 << 30) * 1000.0).round() / 1000.0),
        entrypoint: row.entrypoint.as_deref().and_then(|e| serde_json::from_str(e).ok()),
        cpu: row.cpu,
        gpu: 0,
        mem: row.memory,
        disk: row.disk,
        error_reason: row.error_reason.clone(),
        created_at: iso(row.created_at),
        updated_at: iso(row.updated_at),
        last_used_at: row.last_used_at.map(iso),
        source_sandbox_id: row.source_sandbox_id.clone(),
    }
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/snapshots", get(list).post(create))
        .route("/snapshots/{id}", get(get_one).delete(delete))
        .route("/snapshots/{id}/activate", post(activate))
}

async fn create(State(app): State<App>, caller: Caller, Json(body): Json<CreateSnapshotBody>) -> ApiResult<Response> {
    let name = body.name.trim();
    check_name(name, "snapshot")?;
    check_resources(&app, body.cpu, body.memory, body.disk, body.gpu)?;
    let l = app.config.limits;
    let (image, dockerfile) = match (&body.image_name, &body.build_info) {
        (Some(i), _) if !i.trim().is_empty() => (i.trim().to_owned(), None),
        (_, Some(bi)) => {
            let hashes = bi.context_hashes.clone().unwrap_or_default();
            match builds::source(bi.dockerfile_content.as_deref(), &hashes)? {
                Source::Image(i) => (i, None),
                Source::Dockerfile(d) => (builds::image_for(&d), Some(d)),
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "imageName (an image present on the runners) or buildInfo.dockerfileContent is required",
            ));
        }
    };
    let entrypoint = match &body.entrypoint {
        Some(e) if !e.is_empty() => Some(serde_json::to_string(e).map_err(|e| ApiError::internal("entrypoint", e))?),
        _ => None,
    };
    let new = NewImageSnapshot {
        name: name.to_owned(),
        image,
        dockerfile,
        entrypoint,
        cpu: body.cpu.unwrap_or(l.default_cpu),
        memory: body.memory.unwrap_or(l.default_memory),
        disk: body.disk.unwrap_or(l.default_disk),
    };
    let row = snapshots::create(&app, &caller.organization_id, new).await?;
    Ok(Json(dto(&row)).into_response())
}

async fn list(State(app): State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    let page = q.int("page")?.unwrap_or(1);
    let limit = q.int("limit")?.unwrap_or(100);
    if page < 1 || !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("page must be at least 1 and limit between 1 and 1000"));
    }
    // `sourceSandboxId` narrows the list to the snapshots taken from one sandbox.
    let source = q.get("sourceSandboxId").filter(|s| !s.is_empty());
    let (rows, total) = rows::list(&app.db.pool, &caller.organization_id, source, limit, (page - 1) * limit).await?;
    let items = rows.iter().map(dto).collect();
    Ok(Json(PaginatedSnapshots { items, total, page, total_pages: (total + limit - 1) / limit }).into_response())
}

async fn get_one(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(dto(&find_snapshot(&app, &caller.organization_id, &id).await?)).into_response())
}

async fn activate(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(dto(&find_snapshot(&app, &caller.organization_id, &id).await?)).into_response())
}

async fn delete(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = find_snapshot(&app, &caller.organization_id, &id).await?;
    snapshots::delete(&app, &row).await?;
    Ok(Json(serde_json::json!({})).into_response())
}
