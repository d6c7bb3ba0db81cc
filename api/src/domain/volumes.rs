//! Volumes: named storage of one organization that outlives the sandboxes mounting it (Daytona's
//! `daytona.volume`). A volume is `ready` at once; its data is a directory on the runner of the first sandbox that
//! mounts it (the runner's volume driver, `runner/src/host/volumes.rs`), and every later sandbox mounting it is
//! placed on that runner. Deleting a volume that a sandbox (not destroyed) mounts is refused; otherwise its runner
//! removes the data (`REMOVE_VOLUME`, `deleting`) and the row goes. Quotas: a count and the bytes the runners
//! measure (reported with their heartbeats): an organization at its byte quota can neither make nor mount volumes
//! until it frees space (the measure lags by up to a minute; the runner's disk is the hard stop).

use sandbar_proto::runner::{JobKind, RemoveVolume, SandboxState, VolumeMount};
use sqlx::AnyConnection;

use super::sandboxes::check_name;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::orgs;
use crate::store::volumes::{self, VolumeRow};

const GIB: i64 = 1 << 30;
/// Mounts one sandbox may have.
pub const MAX_MOUNTS: usize = 16;
/// Where sandbar's daemon lives in every sandbox: no volume may cover it.
const DAEMON_PATH: &str = "/usr/local/bin/sandbar-daemon";
/// Kernel file systems a volume may not shadow.
const SYSTEM_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Refuses with 403 when `org` may not add `add_count` volumes, or is at its byte quota.
async fn check_quota(app: &App, conn: &mut AnyConnection, org: &str, add_count: i64) -> ApiResult<()> {
    let (count, bytes) = volumes::usage(conn, org).await?;
    let l = &app.config.limits;
    if add_count > 0 && count + add_count > l.quota_volumes {
        return Err(ApiError::forbidden(format!(
            "Quota exceeded: the organization's volume count limit is {}, {count} in use. Delete volumes, or ask for \
             a higher quota.",
            l.quota_volumes
        )));
    }
    let limit = l.quota_volume_gib.saturating_mul(GIB);
    if bytes >= limit {
        return Err(ApiError::forbidden(format!(
            "Quota exceeded: the organization's volumes hold {bytes} bytes, at or over their limit of {} GiB. Free \
             space in them or delete volumes, or ask for a higher quota.",
            l.quota_volume_gib
        )));
    }
    Ok(())
}

/// Creates volume `name` (`ready`; its data appears on the runner of its first mount).
pub async fn create(app: &App, org: &str, name: &str) -> ApiResult<VolumeRow> {
    let name = name.trim();
    check_name(name, "volume")?;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    orgs::lock_org(app.db.kind, &mut tx, org).await?;
    if volumes::by_name(&mut tx, org, name).await?.is_some() {
        return Err(ApiError::conflict(format!("Volume with name {name} already exists")));
    }
    check_quota(app, &mut tx, org, 1).await?;
    let id = uuid::Uuid::new_v4().to_string();
    volumes::insert(&mut tx, &id, org, name, now).await?;
    let row = volumes::find(app.db.kind, &mut tx, org, &id, false)
        .await?
        .ok_or_else(|| ApiError::internal("volume create", "row vanished"))?;
    tx.commit().await?;
    tracing::info!(volume_id = %id, "volume created");
    Ok(row)
}

fn not_found(id_or_name: &str) -> ApiError {
    ApiError::not_found(format!("Volume {id_or_name} not found"))
}

/// The volume `id_or_name` of `org`, or 404 (another organization's is unknown too).
pub async fn get(app: &App, org: &str, id_or_name: &str) -> ApiResult<VolumeRow> {
    let mut conn = app.db.pool.acquire().await?;
    volumes::find(app.db.kind, &mut conn, org, id_or_name, false).await?.ok_or_else(|| not_found(id_or_name))
}

/// The volume named `name` of `org` (the SDK's `volume.get(name)`), or 404.
pub async fn by_name(app: &App, org: &str, name: &str) -> ApiResult<VolumeRow> {
    let mut conn = app.db.pool.acquire().await?;
    volumes::by_name(&mut conn, org, name).await?.ok_or_else(|| not_found(name))
}

/// Deletes a volume no live sandbox mounts: at once when no runner holds its data, else through its runner
/// (`deleting` until it reports). 409 naming the sandboxes that still mount it.
pub async fn delete(app: &App, org: &str, id: &str) -> ApiResult<()> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    orgs::lock_org(app.db.kind, &mut tx, org).await?;
    let vol = volumes::find(app.db.kind, &mut tx, org, id, true).await?.ok_or_else(|| not_found(id))?;
    if vol.state == "deleting" {
        return Ok(());
    }
    let users = volumes::users(&mut tx, &vol.id).await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "Volume {} is in use by sandbox(es) {}: delete them first (a stopped or archived sandbox still holds \
             its volumes)",
            vol.name,
            users.join(", ")
        )));
    }
    let Some(runner) = vol.runner_id.clone() else {
        volumes::remove(&mut tx, &vol.id).await?;
        tx.commit().await?;
        tracing::info!(volume_id = %vol.id, "volume deleted");
        return Ok(());
    };
    let job = JobKind::RemoveVolume(RemoveVolume { volume_id: vol.id.clone(), organization_id: org.to_owned() });
    // The job moves no sandbox: the states only fill the queue's columns.
    jobs::enqueue(&mut tx, &runner, &job, SandboxState::Destroying, SandboxState::Destroying, now).await?;
    volumes::set_state(&mut tx, &vol.id, "deleting", None, now).await?;
    tx.commit().await?;
    app.wake_runner(&runner);
    tracing::info!(volume_id = %vol.id, runner_id = %runner, "volume deletion queued");
    Ok(())
}

/// The result of a `REMOVE_VOLUME` job: the rows go, or the volume shows why its data could not be removed.
pub async fn removed(conn: &mut AnyConnection, volume_id: &str, error: Option<&str>, now: i64) -> ApiResult<()> {
    match error {
        None => volumes::remove(conn, volume_id).await?,
        Some(reason) => volumes::set_state(conn, volume_id, "error", Some(reason), now).await?,
    }
    Ok(())
}

/// A mount as the create asks for it (`volumeId` may be the volume's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountAsk {
    pub volume: String,
    pub mount_path: String,
    pub subpath: Option<String>,
}

/// Refuses a mount path that is not absolute and clean, is `/`, or covers the daemon or a kernel file system.
pub fn check_mount_path(path: &str) -> ApiResult<String> {
    let bad = |why: &str| Err(ApiError::bad_request(format!("invalid volume mountPath {path:?}: {why}")));
    if !path.starts_with('/') {
        return bad("it must be an absolute path");
    }
    if path.len() > 1024 || path.chars().any(|c| c.is_control() || matches!(c, ':' | ',')) {
        return bad("at most 1024 characters, no control characters, ':' or ','");
    }
    let clean = path.trim_end_matches('/');
    if clean.is_empty() {
        return bad("a volume cannot be mounted over the root of the sandbox");
    }
    if clean[1..].split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("no '.', '..' or empty segments");
    }
    let covers = |p: &str| p == clean || p.starts_with(&format!("{clean}/"));
    if covers(DAEMON_PATH) {
        return bad("it would cover sandbar's daemon (/usr/local/bin/sandbar-daemon)");
    }
    if SYSTEM_PATHS.iter().any(|s| covers(s) || clean.starts_with(&format!("{s}/"))) {
        return bad("/proc, /sys and /dev belong to the kernel");
    }
    Ok(clean.to_owned())
}

/// Refuses a subpath that could leave its volume: segments only, no `.` or `..` (leading and trailing `/` are
/// dropped). `None` for the whole volume.
pub fn check_subpath(sub: Option<&str>) -> ApiResult<Option<String>> {
    let Some(raw) = sub else { return Ok(None) };
    let clean = raw.trim_matches('/');
    if clean.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| Err(ApiError::bad_request(format!("invalid volume subpath {raw:?}: {why}")));
    if clean.len() > 512 || clean.chars().any(|c| c.is_control() || matches!(c, ':' | ',' | '\\')) {
        return bad("at most 512 characters, no control characters, ':', ',' or '\\'");
    }
    if clean.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("a path inside the volume: no '.', '..' or empty segments");
    }
    Ok(Some(clean.to_owned()))
}

/// The mounts of a new sandbox, resolved within `org`, and the runner that holds any of their data.
#[derive(Debug, Default)]
pub struct Resolved {
    pub mounts: Vec<VolumeMount>,
    pub runner: Option<String>,
}

/// Checks and resolves the mounts of a create (in its transaction, the organization locked): each volume must be
/// the organization's and `ready`, paths clean and distinct, the byte quota not reached, and every volume already
/// held by a runner held by the same one.
pub async fn resolve(app: &App, conn: &mut AnyConnection, org: &str, asks: &[MountAsk]) -> ApiResult<Resolved> {
    if asks.is_empty() {
        return Ok(Resolved::default());
    }
    if asks.len() > MAX_MOUNTS {
        return Err(ApiError::bad_request(format!("at most {MAX_MOUNTS} volumes per sandbox, got {}", asks.len())));
    }
    check_quota(app, conn, org, 0).await?;
    let mut out = Resolved::default();
    let mut holder: Option<(String, String)> = None;
    for ask in asks {
        let mount_path = check_mount_path(&ask.mount_path)?;
        let subpath = check_subpath(ask.subpath.as_deref())?;
        if out.mounts.iter().any(|m| m.mount_path == mount_path) {
            return Err(ApiError::bad_request(format!("two volumes are mounted at {mount_path}")));
        }
        let vol = volumes::find(app.db.kind, conn, org, ask.volume.trim(), true)
            .await?
            .ok_or_else(|| not_found(&ask.volume))?;
        if vol.state != "ready" {
            return Err(ApiError::bad_request(format!(
                "Volume {} is {} and cannot be mounted{}",
                vol.name,
                vol.state,
                vol.error_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            )));
        }
        if let Some(r) = &vol.runner_id {
            match &holder {
                Some((other, name)) if other != r => {
                    return Err(ApiError::bad_request(format!(
                        "volumes {name} and {} live on different runners ({other} and {r}); a sandbox runs on one \
                         runner, so mount them in different sandboxes",
                        vol.name
                    )));
                }
                _ => holder = Some((r.clone(), vol.name.clone())),
            }
        }
        out.mounts.push(VolumeMount { volume_id: vol.id, mount_path, subpath });
    }
    out.runner = holder.map(|(r, _)| r);
    Ok(out)
}

/// The one runner a new sandbox must go to given its image's (`image`) and its volumes' (`volumes`), or 400 when
/// they differ.
pub fn same_runner(image: Option<String>, volumes: Option<String>) -> ApiResult<Option<String>> {
    match (image, volumes) {
        (Some(i), Some(v)) if i != v => Err(ApiError::bad_request(format!(
            "this sandbox's image exists only on runner {i}, but its volumes live on runner {v}; create it from an \
             image both runners have, or without those volumes"
        ))),
        (i, v) => Ok(i.or(v)),
    }
}

/// Records the mounts of new sandbox `sandbox` placed on `runner` (which from now on holds every one of them).
pub async fn attach(
    conn: &mut AnyConnection,
    sandbox: &str,
    mounts: &[VolumeMount],
    runner: &str,
    now: i64,
) -> ApiResult<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(mounts).map_err(|e| ApiError::internal("volume mounts", e))?;
    volumes::set_sandbox_mounts(conn, sandbox, &json).await?;
    let mut seen = Vec::new();
    for m in mounts {
        if !seen.contains(&m.volume_id) {
            volumes::attach(conn, sandbox, &m.volume_id).await?;
            volumes::mounted(conn, &m.volume_id, runner, now).await?;
            seen.push(m.volume_id.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths() {
        assert_eq!(check_mount_path("/data/").unwrap(), "/data");
        assert_eq!(check_mount_path("/home/daytona/work").unwrap(), "/home/daytona/work");
        for bad in
            ["data", "/", "//", "/a/../b", "/a/./b", "/a//b", "/usr", "/usr/local/bin", "/proc", "/dev/shm", "/a:b"]
        {
            assert!(check_mount_path(bad).is_err(), "{bad}");
        }
        assert!(check_mount_path("/usr/share/x").is_ok() && check_mount_path("/devices").is_ok());
    }

    #[test]
    fn subpaths() {
        assert_eq!(check_subpath(None).unwrap(), None);
        assert_eq!(check_subpath(Some("/")).unwrap(), None);
        assert_eq!(check_subpath(Some("users/alice/")).unwrap().as_deref(), Some("users/alice"));
        for bad in ["..", "a/../../b", "a/./b", "a//b", "a\\b"] {
            assert!(check_subpath(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_runner() {
        assert_eq!(same_runner(None, Some("r".into())).unwrap().as_deref(), Some("r"));
        assert_eq!(same_runner(Some("r".into()), Some("r".into())).unwrap().as_deref(), Some("r"));
        assert!(same_runner(Some("a".into()), Some("b".into())).is_err());
    }
}
