//! Image bytes: a per-organization quota on what its images hold on the runners' disks. Three operations leave an
//! image of the organization's on a runner: a snapshot taken from a sandbox (`sandbar-snapshot:{id}`), a
//! Dockerfile build (`sandbar-build:{hash}`) and a fork (`sandbar-fork:{id}`). Their runner reports each image's
//! size with the job's result, and the API keeps a ledger (`image_bytes`, one row per snapshot, build or fork) of
//! what is there; a row goes when its image does (the `REMOVE_SNAPSHOT` job of a deleted snapshot or a collected
//! build succeeded, the fork was destroyed or archived).
//!
//! The limit is the organization's own `quota_image_bytes` when set, else the API's `--quota-image-gib`; 0 (either
//! one; negative values count as 0) is no limit. The size is Docker's size of the image, base layers included, so
//! layers images share are counted once per image: the ledger can only overstate what is on disk.
//!
//! How the quota holds: an operation does not start (403, with the limit and the usage) while the organization is
//! at or over its limit. Its size is known only when the image exists, so the result is checked again: an image
//! that takes the organization over its limit is removed at once and the operation fails with the quota's reason
//! (a snapshot `error`, a build `failed` with its snapshots and sandboxes `build_failed`, a fork `error` with its
//! container and image destroyed); nothing it made is left. So the quota holds up to one operation's overshoot at
//! most: the image of an operation started under the limit is on the runner's disk from when it is made until its
//! removal job runs (and concurrent operations, each started under the limit, can each overshoot that way).

use sqlx::AnyConnection;

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::{image_bytes, orgs};

const GIB: i64 = 1 << 30;

/// Bytes for people: `1.5 GiB`, `300.0 MiB`, `12 bytes`.
pub fn human(bytes: i64) -> String {
    let b = bytes as f64;
    match bytes.unsigned_abs() {
        n if n >= 1 << 30 => format!("{:.1} GiB", b / GIB as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", b / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", b / 1024.0),
        _ => format!("{bytes} bytes"),
    }
}

/// Bytes for people, exactly too when that adds something: `900 bytes`, `1.5 GiB (1610612736 bytes)`.
fn both(bytes: i64) -> String {
    if bytes.unsigned_abs() < 1 << 10 { human(bytes) } else { format!("{} ({bytes} bytes)", human(bytes)) }
}

/// The organization's image-bytes limit; `None`: no limit.
pub async fn limit(app: &App, conn: &mut AnyConnection, org: &str) -> Result<Option<i64>, sqlx::Error> {
    let bytes = match image_bytes::own_limit(conn, org).await? {
        Some(b) => b,
        None => app.config.limits.quota_image_gib.saturating_mul(GIB),
    };
    Ok((bytes > 0).then_some(bytes))
}

/// Refuses with 403 a `what` (a snapshot, a build, a fork) of an organization at or over its image-bytes limit.
pub async fn check(app: &App, conn: &mut AnyConnection, org: &str, what: &str) -> ApiResult<()> {
    let Some(limit) = limit(app, conn, org).await? else { return Ok(()) };
    let used = image_bytes::usage(conn, org).await?;
    if used < limit {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "Quota exceeded: the organization's image storage limit is {} and {} is in use, so no {what} can start. \
         Delete snapshots, forks or sandboxes built from Dockerfiles you no longer need, or ask for a higher quota.",
        both(limit),
        both(used)
    )))
}

/// An image an operation made, as its result reports it.
#[derive(Debug)]
pub struct Made<'a> {
    /// The snapshot, build or fork (sandbox) it belongs to.
    pub owner_id: &'a str,
    pub org: &'a str,
    /// `snapshot`, `build` or `fork`.
    pub kind: &'a str,
    pub runner_id: &'a str,
    pub image: &'a str,
    pub size: u64,
}

/// Records an image in the ledger. `Some(reason)` when it took the organization over its limit: the caller must
/// remove the image and fail the operation with the reason (the row stays until the removal is done, as the bytes
/// do).
pub async fn charge(
    app: &App,
    conn: &mut AnyConnection,
    made: Made<'_>,
    now: i64,
) -> Result<Option<String>, sqlx::Error> {
    // Results of one organization are charged one at a time (PostgreSQL; SQLite transactions are serial).
    orgs::lock_org(app.db.kind, conn, made.org).await?;
    let used = image_bytes::usage(conn, made.org).await?;
    let bytes = i64::try_from(made.size).unwrap_or(i64::MAX);
    let entry = image_bytes::Entry {
        owner_id: made.owner_id,
        org: made.org,
        kind: made.kind,
        runner_id: made.runner_id,
        image: made.image,
        bytes,
        now,
    };
    image_bytes::record(conn, entry).await?;
    let Some(limit) = limit(app, conn, made.org).await? else { return Ok(None) };
    let after = used.saturating_add(bytes);
    if after <= limit {
        return Ok(None);
    }
    tracing::info!(
        org = made.org,
        owner_id = made.owner_id,
        kind = made.kind,
        bytes,
        used,
        limit,
        "image over the organization's quota; removing it"
    );
    Ok(Some(format!(
        "Quota exceeded: the {} made an image of {}, which would take the organization's image storage to {}, over \
         its limit of {}; the image was removed. Delete snapshots, forks or sandboxes built from Dockerfiles you no \
         longer need, or ask for a higher quota.",
        made.kind,
        both(bytes),
        both(after),
        both(limit)
    )))
}

/// The image of `owner_id` is gone from its runner: it no longer counts.
pub async fn released(conn: &mut AnyConnection, owner_id: &str) -> Result<(), sqlx::Error> {
    if image_bytes::forget(conn, owner_id).await? > 0 {
        tracing::debug!(owner_id, "image bytes released");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(12), "12 bytes");
        assert_eq!(super::human(3 << 20), "3.0 MiB");
        assert_eq!(super::human(3 << 29), "1.5 GiB");
    }
}
