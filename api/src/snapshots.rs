//! Daytona's snapshot endpoints (`/api/snapshots`). A snapshot here is a name for a local image plus default
//! resources: there is no registry, so creating one from `imageName` records it (`active` at once) and a sandbox
//! created from it runs that image; a missing image shows up as the sandbox's `error` with the runner's reason.
//! With a `buildInfo` Dockerfile beyond `FROM image` the snapshot is built on a runner ([`crate::builds`]):
//! `building`, then `active` or `build_failed` with the build's reason, and sandboxes from it go to that runner.
//! Snapshots taken from a sandbox (`POST /sandbox/{id}/snapshot`, [`crate::fork`]) are committed images on the
//! sandbox's runner: `pending` until the runner has made them, with `sourceSandboxId` and `size`.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::App;
use crate::auth::Caller;
use crate::builds::{self, Source};
use crate::clock::iso;
use crate::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::sandbox::{BuildInfo, check_range, valid_name};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SnapshotRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub image_name: String,
    pub entrypoint: Option<String>,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
    /// The build that makes its image (a Dockerfile snapshot).
    pub build_id: Option<String>,
    /// `active`; `building` then `active` or `build_failed` for a Dockerfile snapshot; for a snapshot from a
    /// sandbox `pending` while its runner commits and `error` if that failed.
    pub state: String,
    pub error_reason: Option<String>,
    /// The sandbox a snapshot was taken from (`POST /sandbox/{id}/snapshot`).
    pub source_sandbox_id: Option<String>,
    /// The runner holding the image of a snapshot taken from a sandbox; `None`: the image is on every runner.
    pub runner_id: Option<String>,
    /// Bytes of the committed image.
    pub size: Option<i64>,
}

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

const COLUMNS: &str = "id, organization_id, name, image_name, entrypoint, cpu, memory, disk, created_at, updated_at, \
    last_used_at, build_id, state, error_reason, source_sandbox_id, runner_id, size";

impl SnapshotRow {
    fn to_dto(&self) -> SnapshotDto {
        SnapshotDto {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            general: false,
            name: self.name.clone(),
            image_name: self.image_name.clone(),
            state: self.state.clone(),
            // GiB, as Daytona reports image sizes.
            size: self.size.map(|b| (b as f64 / f64::from(1u32 << 30) * 1000.0).round() / 1000.0),
            entrypoint: self.entrypoint.as_deref().and_then(|e| serde_json::from_str(e).ok()),
            cpu: self.cpu,
            gpu: 0,
            mem: self.memory,
            disk: self.disk,
            error_reason: self.error_reason.clone(),
            created_at: iso(self.created_at),
            updated_at: iso(self.updated_at),
            last_used_at: self.last_used_at.map(iso),
            source_sandbox_id: self.source_sandbox_id.clone(),
        }
    }
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/snapshots", get(list).post(create))
        .route("/snapshots/{id}", get(get_one).delete(delete))
        .route("/snapshots/{id}/activate", post(activate))
}

/// The snapshot `id_or_name` of `org`, if any (sandbox creation resolves `snapshot` through this).
pub(crate) async fn find(
    conn: &mut AnyConnection,
    org: &str,
    id_or_name: &str,
) -> Result<Option<SnapshotRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM snapshots WHERE organization_id = $1 AND (id = $2 OR name = $2) LIMIT 1"
    )))
    .bind(org)
    .bind(id_or_name)
    .fetch_optional(conn)
    .await
}

async fn find_or_404(app: &App, org: &str, id: &str) -> ApiResult<SnapshotRow> {
    let mut conn = app.db.pool.acquire().await?;
    find(&mut conn, org, id).await?.ok_or_else(|| ApiError::not_found(format!("Snapshot {id} not found")))
}

async fn create(
    app: axum::extract::State<App>,
    caller: Caller,
    Json(body): Json<CreateSnapshotBody>,
) -> ApiResult<Response> {
    let name = body.name.trim();
    if !valid_name(name) {
        return Err(ApiError::bad_request(format!(
            "invalid snapshot name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )));
    }
    let l = app.config.limits;
    check_range("cpu", body.cpu, l.max_cpu, "vCPU")?;
    check_range("memory", body.memory, l.max_memory, "GiB")?;
    check_range("disk", body.disk, l.max_disk, "GiB")?;
    if body.gpu.unwrap_or(0) != 0 {
        return Err(ApiError::bad_request("GPUs are not available on sandbar; omit gpu or set it to 0"));
    }
    let (image, dockerfile) = match (&body.image_name, &body.build_info) {
        (Some(i), _) if !i.trim().is_empty() => (i.trim().to_owned(), None),
        (_, Some(bi)) => match builds::source(bi)? {
            Source::Image(i) => (i, None),
            Source::Dockerfile(d) => (builds::image_for(&d), Some(d)),
        },
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
    let now = app.now();
    let id = uuid::Uuid::new_v4().to_string();
    let mut conn = app.db.pool.begin().await?;
    if find(&mut conn, &caller.organization_id, name).await?.is_some() {
        return Err(ApiError::conflict(format!("Snapshot with name {name} already exists")));
    }
    let build = match &dockerfile {
        Some(d) => Some(builds::attach(&app, &mut conn, &caller.organization_id, d, (0, 0, 0)).await?),
        None => None,
    };
    sqlx::query(
        "INSERT INTO snapshots (id, organization_id, name, image_name, entrypoint, cpu, memory, disk, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(&id)
    .bind(&caller.organization_id)
    .bind(name)
    .bind(&image)
    .bind(entrypoint)
    .bind(body.cpu.unwrap_or(l.default_cpu))
    .bind(body.memory.unwrap_or(l.default_memory))
    .bind(body.disk.unwrap_or(l.default_disk))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if let Some(b) = &build {
        // Queued or running builds show as `building` at once, so the SDK follows the log from the start.
        let state = if b.state == "done" { "active" } else { "building" };
        sqlx::query("UPDATE snapshots SET build_id = $1, state = $2 WHERE id = $3")
            .bind(&b.build_id)
            .bind(state)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
    }
    let row = find(&mut conn, &caller.organization_id, &id)
        .await?
        .ok_or_else(|| ApiError::internal("snapshot", "row vanished"))?;
    conn.commit().await?;
    if let Some(b) = &build {
        app.wake_runner(&b.runner_id);
    }
    Ok(Json(row.to_dto()).into_response())
}

async fn list(app: axum::extract::State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    let page = q.int("page")?.unwrap_or(1);
    let limit = q.int("limit")?.unwrap_or(100);
    if page < 1 || !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("page must be at least 1 and limit between 1 and 1000"));
    }
    // `sourceSandboxId` narrows the list to the snapshots taken from one sandbox.
    let source = q.get("sourceSandboxId").filter(|s| !s.is_empty());
    let filter = if source.is_some() { " AND source_sandbox_id = $2" } else { " AND $2 = ''" };
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM snapshots WHERE organization_id = $1{filter}"
    )))
    .bind(&caller.organization_id)
    .bind(source.unwrap_or(""))
    .fetch_one(&app.db.pool)
    .await?;
    let rows: Vec<SnapshotRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM snapshots WHERE organization_id = $1{filter} \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    )))
    .bind(&caller.organization_id)
    .bind(source.unwrap_or(""))
    .bind(limit)
    .bind((page - 1) * limit)
    .fetch_all(&app.db.pool)
    .await?;
    let items = rows.iter().map(SnapshotRow::to_dto).collect();
    Ok(Json(PaginatedSnapshots { items, total, page, total_pages: (total + limit - 1) / limit }).into_response())
}

async fn get_one(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(find_or_404(&app, &caller.organization_id, &id).await?.to_dto()).into_response())
}

async fn activate(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(find_or_404(&app, &caller.organization_id, &id).await?.to_dto()).into_response())
}

async fn delete(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = find_or_404(&app, &caller.organization_id, &id).await?;
    // A snapshot taken from a sandbox owns its image on its runner: that goes too (crate::fork).
    let Some(runner) = crate::fork::delete_snapshot(&app, &row).await? else {
        sqlx::query("DELETE FROM snapshots WHERE id = $1").bind(&row.id).execute(&app.db.pool).await?;
        return Ok(Json(serde_json::json!({})).into_response());
    };
    app.wake_runner(&runner);
    Ok(Json(serde_json::json!({})).into_response())
}
