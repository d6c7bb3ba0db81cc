//! Snapshots. A snapshot is a name for an image plus default resources. One made from `imageName` (an image the
//! organization may name, see [`super::images`]) is `active` at once when the image is local (a missing image shows
//! as the sandbox's `error` with the runner's reason); a registry image is `pulling` while a runner pulls it with
//! the organization's credentials (`PULL_IMAGE`), then `active` with its size, or `error` with the registry's
//! reason. Sandboxes from it pull again on whichever runner they are placed (every use pulls). One with a `buildInfo` Dockerfile beyond `FROM image`
//! is built on a runner (`building`, then `active` or `build_failed`; see [`super::builds`]), and sandboxes from it
//! go to that runner. One taken from a sandbox (`POST /sandbox/{id}/snapshot`) is the sandbox's filesystem
//! committed on its runner (`pending` until the runner made it, with `sourceSandboxId` and `size`), while the
//! sandbox shows `snapshotting` and then returns to its previous state. Either image, built or taken, pins its
//! sandboxes to its runner unless that runner pushed it to the operator's internal registry (then any runner,
//! which pulls it: see [`super::placement`]); deleting such a snapshot removes its image from its runner, from the
//! registry and from the other reachable runners (which may have pulled it).

use sandbar_proto::runner::SandboxState;

use super::sandboxes::{check_name, find};
use super::{builds, image_quota, images, placement, state};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::orgs;
use crate::store::sandboxes::{self, Row};
use crate::store::snapshots::{self, NewSnapshot, SnapshotRow};

/// Repository of the images snapshots from sandboxes are committed to; the tag is the snapshot's id (names are
/// per organization and may be upper case, image references may not).
pub const SNAPSHOT_IMAGE_REPO: &str = "sandbar-snapshot";

/// The snapshot `id` (or name) of `org`, or 404.
pub async fn find_snapshot(app: &App, org: &str, id: &str) -> ApiResult<SnapshotRow> {
    let mut conn = app.db.pool.acquire().await?;
    snapshots::find(&mut conn, org, id).await?.ok_or_else(|| ApiError::not_found(format!("Snapshot {id} not found")))
}

/// A snapshot to record, checked by the HTTP layer.
#[derive(Debug)]
pub struct NewImageSnapshot {
    pub name: String,
    pub image: String,
    /// A Dockerfile to build into `image` first.
    pub dockerfile: Option<String>,
    pub entrypoint: Option<String>,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
}

/// Records a snapshot of an image (`active`), or of a Dockerfile's build (`building` until it ends).
pub async fn create(app: &App, org: &str, new: NewImageSnapshot) -> ApiResult<SnapshotRow> {
    let now = app.now();
    let id = uuid::Uuid::new_v4().to_string();
    let mut tx = app.db.pool.begin().await?;
    if snapshots::find(&mut tx, org, &new.name).await?.is_some() {
        return Err(ApiError::conflict(format!("Snapshot with name {} already exists", new.name)));
    }
    let source = match &new.dockerfile {
        Some(d) => builds::Source::Dockerfile(d.clone()),
        None => builds::Source::Image(new.image.clone()),
    };
    builds::check_source(app, &mut tx, org, &source).await?;
    let build = match &new.dockerfile {
        Some(d) => Some(builds::attach(app, &mut tx, org, d, (0, 0, 0)).await?),
        None => None,
    };
    let row = NewSnapshot {
        id: &id,
        org,
        name: &new.name,
        image: &new.image,
        entrypoint: new.entrypoint,
        cpu: new.cpu,
        memory: new.memory,
        disk: new.disk,
        now,
    };
    snapshots::insert(&mut tx, row).await?;
    if let Some(b) = &build {
        // Queued or running builds show as `building` at once, so the SDK follows the log from the start.
        let state = if b.state == "done" { "active" } else { "building" };
        snapshots::set_build(&mut tx, &id, &b.build_id, state).await?;
    }
    let pull_on = match (&build, &source) {
        (None, builds::Source::Image(image)) if images::pulled(&app.config, image) => {
            let runner = placement::place(app, &mut tx, 0, 0, 0).await?;
            snapshots::set_state(&mut tx, &id, "pulling").await?;
            let job = jobs::pull::plan(&id, org, image);
            let via = SandboxState::PullingSnapshot;
            jobs::enqueue(&mut tx, &runner, &job, via, via, now).await?;
            Some(runner)
        }
        _ => None,
    };
    let row =
        snapshots::find(&mut tx, org, &id).await?.ok_or_else(|| ApiError::internal("snapshot", "row vanished"))?;
    tx.commit().await?;
    if let Some(runner) = build.as_ref().map(|b| &b.runner_id).or(pull_on.as_ref()) {
        app.wake_runner(runner);
    }
    Ok(row)
}

/// Takes a snapshot of sandbox `id`: the sandbox shows `snapshotting` until its runner committed the image.
pub async fn from_sandbox(app: &App, org: &str, id: &str, name: &str) -> ApiResult<Row> {
    check_name(name, "snapshot")?;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    orgs::lock_org(app.db.kind, &mut tx, org).await?;
    let row = find(app, &mut tx, org, id, true).await?;
    // A name clash is reported as such whatever the sandbox's state.
    if snapshots::find(&mut tx, org, name).await?.is_some() {
        return Err(ApiError::conflict(format!("Snapshot with name {name} already exists")));
    }
    let current = row.effective_state(app, now);
    state::plan_copy(current, state::CopyKind::Snapshot).map_err(|r| ApiError::bad_request(r.0))?;
    let runner = row.runner_id.clone().ok_or_else(|| {
        ApiError::conflict("the sandbox was never placed on a runner, so there is nothing to snapshot")
    })?;
    image_quota::check(app, &mut tx, org, "snapshot").await?;
    let snapshot_id = uuid::Uuid::new_v4().to_string();
    let image = format!("{SNAPSHOT_IMAGE_REPO}:{snapshot_id}");
    let new = NewSnapshot {
        id: &snapshot_id,
        org,
        name,
        image: &image,
        entrypoint: None,
        cpu: row.cpu,
        memory: row.memory,
        disk: row.disk,
        now,
    };
    snapshots::insert_from_sandbox(&mut tx, new, &row.id, &runner).await?;
    let job = jobs::snapshot::plan(&row, image);
    jobs::enqueue(&mut tx, &runner, &job, row.stored_state(), state::SNAPSHOT_VIA, now).await?;
    sandboxes::set_state(&mut tx, &row.id, state::SNAPSHOT_VIA, None, now).await?;
    let after = sandboxes::load(app.db.kind, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_runner(&runner);
    app.wake_routes();
    tracing::info!(sandbox_id = %after.id, snapshot_id = %snapshot_id, "snapshot from sandbox requested");
    Ok(after)
}

/// Deletes a snapshot. One taken from a sandbox owns its image on its runner: its removal is queued, and it is
/// refused with 409 while a sandbox still runs the image (Docker keeps an image a container uses) or while the
/// image is being made.
pub async fn delete(app: &App, snap: &SnapshotRow) -> ApiResult<()> {
    let Some(runner) = snap.runner_id.clone() else {
        let mut conn = app.db.pool.acquire().await?;
        snapshots::delete(&mut conn, &snap.id).await?;
        return Ok(());
    };
    if snap.state == "pending" {
        return Err(ApiError::conflict(format!(
            "Snapshot {} is still being taken; delete it once it is active",
            snap.name
        )));
    }
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let users = sandboxes::users_of_image(&mut tx, &snap.image_name).await?;
    // Only the snapshot's own organization's sandboxes are named: others' names and ids are not the caller's to see.
    let own: Vec<&str> = users.iter().filter(|(_, o)| *o == snap.organization_id).map(|(n, _)| n.as_str()).collect();
    if !own.is_empty() {
        return Err(ApiError::conflict(format!(
            "Snapshot {} is used by sandbox(es) {}; delete them first",
            snap.name,
            own.join(", ")
        )));
    }
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "Snapshot {} is still in use by a sandbox and cannot be deleted yet",
            snap.name
        )));
    }
    snapshots::delete(&mut tx, &snap.id).await?;
    let mut woken = vec![runner.clone()];
    if snap.state == "active" {
        let job = jobs::remove_snapshot::plan(snap);
        jobs::enqueue(&mut tx, &runner, &job, SandboxState::Destroying, SandboxState::Destroying, now).await?;
        // A pushed image may have been pulled by any runner its sandboxes went to (a restore too): every reachable
        // runner drops its copy (none there is success); the registry's goes with its own runner's job, above. A
        // runner away now keeps its copy, unused (nothing names the deleted snapshot any more).
        if snap.pushed_image.is_some() {
            let since = placement::reachable_since(app, now);
            let others = crate::store::runners::loads(&mut tx, crate::store::runners::Which::SeenSince(since)).await?;
            for other in others.into_iter().map(|r| r.id).filter(|r| *r != runner) {
                let job = jobs::remove_snapshot::image(&snap.id, &snap.image_name);
                jobs::enqueue(&mut tx, &other, &job, SandboxState::Destroying, SandboxState::Destroying, now).await?;
                woken.push(other);
            }
        }
    }
    tx.commit().await?;
    for r in &woken {
        app.wake_runner(r);
    }
    Ok(())
}
