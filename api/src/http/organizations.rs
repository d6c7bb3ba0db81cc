//! `GET /organizations/{organizationId}/usage`: Daytona's `OrganizationUsageOverview` (the quotas and current usage
//! of CPU, memory and disk), with sandbar's other quotas beside it (sandbox count, image bytes, volumes). Only the
//! caller's own organization: another organization's id is a 404 like an unknown one. The caller's organization id
//! is in `GET /api-keys/current` (`organizationId`). Decisions: `crate::domain::quota::overview`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::auth::Caller;
use super::error::{ApiResult, Json, Path};
use crate::App;
use crate::domain::quota::{self, Overview};

/// Daytona's `OrganizationUsageOverview` (CPU in vCPU, memory and disk in GiB), and sandbar's other quotas.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationUsageOverview {
    pub total_cpu_quota: i64,
    /// Always 0: sandbar has no GPUs.
    pub total_gpu_quota: i64,
    pub total_memory_quota: i64,
    pub total_disk_quota: i64,
    /// vCPUs of the sandboxes that hold compute (not stopped, archived or failed).
    pub current_cpu_usage: i64,
    pub current_memory_usage: i64,
    /// GiB of disk of every sandbox not destroyed (stopped ones included).
    pub current_disk_usage: i64,
    /// Sandboxes the organization may hold, and holds (not destroyed).
    pub total_sandbox_quota: i64,
    pub current_sandbox_usage: i64,
    /// Bytes its snapshots, builds and forks may hold on the runners; null: no limit.
    pub total_image_bytes_quota: Option<i64>,
    pub current_image_bytes_usage: i64,
    /// Volumes it may hold, and holds.
    pub total_volume_quota: i64,
    pub current_volume_usage: i64,
    /// Bytes its volumes may hold, and hold as their runners last measured them.
    pub total_volume_bytes_quota: i64,
    pub current_volume_bytes_usage: i64,
}

impl From<&Overview> for OrganizationUsageOverview {
    fn from(o: &Overview) -> Self {
        Self {
            total_cpu_quota: o.quota.cpu,
            total_gpu_quota: 0,
            total_memory_quota: o.quota.memory,
            total_disk_quota: o.quota.disk,
            current_cpu_usage: o.used.cpu,
            current_memory_usage: o.used.memory,
            current_disk_usage: o.used.disk,
            total_sandbox_quota: o.quota.sandboxes,
            current_sandbox_usage: o.sandboxes,
            total_image_bytes_quota: o.image_limit,
            current_image_bytes_usage: o.image_bytes,
            total_volume_quota: o.volume_quota,
            current_volume_usage: o.volumes,
            total_volume_bytes_quota: o.volume_byte_limit,
            current_volume_bytes_usage: o.volume_bytes,
        }
    }
}

pub fn routes() -> Router<App> {
    Router::new().route("/organizations/{organization_id}/usage", get(usage))
}

async fn usage(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let o = quota::overview(&app, &caller.organization_id, &id).await?;
    Ok(Json(OrganizationUsageOverview::from(&o)).into_response())
}
