//! Quotas: an organization's live sandboxes may not exceed its count, CPU, memory and disk limits (CPU and memory
//! count only for sandboxes that hold them, see `super::state::holds_compute`).

use sqlx::AnyConnection;

use crate::error::{ApiError, ApiResult};
use crate::store::orgs;

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
