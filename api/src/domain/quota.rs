//! Quotas: an organization's live sandboxes may not exceed its count, CPU, memory and disk limits (CPU and memory
//! count only for sandboxes that hold them, see `super::state::holds_compute`). What they use is read from the
//! organization's totals (`crate::store::totals`), one row; a new sandbox is added to them by [`reserve`]. [`overview`] reports every quota of
//! an organization with what it uses (`GET /organizations/{id}/usage`, the dashboard's organization page).

use sqlx::AnyConnection;

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::orgs::{self, Quota};
use crate::store::totals::{self, Delta};
use crate::store::{Usage, image_bytes, volumes};

/// Refuses with 403 when adding the given resources would exceed the organization's quotas.
pub async fn check(
    conn: &mut AnyConnection,
    org: &str,
    add_cpu: i64,
    add_memory: i64,
    add_disk: i64,
    add_count: i64,
) -> ApiResult<()> {
    let (quota, count, used) = orgs::quota_and_usage(conn, org).await?;
    let over = |what: &str, unit: &str, limit: i64, used: i64, add: i64| {
        ApiError::forbidden(format!(
            "Quota exceeded: the organization's {what} limit is {limit}{unit}, {used}{unit} in use, this request needs \
             {add}{unit} more. Stop or delete sandboxes, or ask for a higher quota."
        ))
    };
    if add_count > 0 && count + add_count > quota.sandboxes {
        return Err(over("sandbox count", "", quota.sandboxes, count, add_count));
    }
    if add_cpu > 0 && used.cpu + add_cpu > quota.cpu {
        return Err(over("CPU", " vCPU", quota.cpu, used.cpu, add_cpu));
    }
    if add_memory > 0 && used.memory + add_memory > quota.memory {
        return Err(over("memory", " GiB", quota.memory, used.memory, add_memory));
    }
    if add_disk > 0 && used.disk + add_disk > quota.disk {
        return Err(over("disk", " GiB", quota.disk, used.disk, add_disk));
    }
    Ok(())
}

/// Adds a new sandbox (`count` of them, with these resources) to organization `org`'s totals, or refuses with 403
/// like [`check`] when that would exceed a quota. Exact under concurrency: the check and the addition are one
/// statement (`store::totals::add_within_quota`); call it after the sequence row is taken (`store::totals`).
pub async fn reserve(conn: &mut AnyConnection, org: &str, add: Delta) -> ApiResult<()> {
    for _ in 0..2 {
        if totals::add_within_quota(conn, org, add).await? {
            return Ok(());
        }
        // Refused: say which quota (the totals do not move while this transaction holds the sequence row).
        check(conn, org, add.cpu, add.memory, add.disk, add.sandboxes).await?;
        // Nothing is over, so the organization had no totals row yet (made before `store::totals` existed).
        totals::ensure_org(conn, org).await?;
    }
    Err(ApiError::internal("quota", format!("the totals of organization {org} could not be updated")))
}

/// An organization's quotas beside what it uses.
#[derive(Debug, Clone)]
pub struct Overview {
    pub organization_id: String,
    pub name: String,
    /// Sandbox count, CPU (vCPU), memory and disk (GiB) limits.
    pub quota: Quota,
    /// Sandboxes not destroyed.
    pub sandboxes: i64,
    /// CPU and memory of the sandboxes that hold them, disk of all (see [`check`]).
    pub used: Usage,
    /// The image-bytes limit (`None`: no limit) and the bytes the organization's images hold (`super::image_quota`).
    pub image_limit: Option<i64>,
    pub image_bytes: i64,
    /// Volumes: the count limit and count, the byte limit and the bytes their runners last measured.
    pub volume_quota: i64,
    pub volumes: i64,
    pub volume_byte_limit: i64,
    pub volume_bytes: i64,
}

/// The quotas and usage of organization `id`, asked for by a caller of organization `caller_org`: another
/// organization's id is a 404, like an unknown one.
pub async fn overview(app: &App, caller_org: &str, id: &str) -> ApiResult<Overview> {
    let not_found = || ApiError::not_found(format!("Organization {id} not found"));
    if id != caller_org {
        return Err(not_found());
    }
    let mut conn = app.db.pool.acquire().await?;
    let name = orgs::name(&mut conn, id).await?.ok_or_else(not_found)?;
    let (quota, sandboxes, used) = orgs::quota_and_usage(&mut conn, id).await?;
    let image_limit = super::image_quota::limit(app, &mut conn, id).await?;
    let image_bytes = image_bytes::usage(&mut conn, id).await?;
    let (volumes, volume_bytes) = volumes::usage(&mut conn, id).await?;
    let l = &app.config.limits;
    Ok(Overview {
        organization_id: id.to_owned(),
        name,
        quota,
        sandboxes,
        used,
        image_limit,
        image_bytes,
        volume_quota: l.quota_volumes,
        volumes,
        volume_byte_limit: l.quota_volume_gib.saturating_mul(1 << 30),
        volume_bytes,
    })
}
