//! `BUILD_SNAPSHOT`: build a Dockerfile into a local image on one runner. Its build row is `pending`, `building`
//! once claimed, then `done` or `failed`; the result moves the build's snapshots (`active` or `build_failed`) and
//! the sandboxes waiting for it (their create job, or `build_failed`). See `crate::domain::builds`. The image's size
//! counts against the organization's image bytes: a build whose image takes it over its limit fails with the
//! quota's reason and its image is removed again (see `crate::domain::image_quota`).

use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::{BuildSnapshot, JobKind, JobOutcome, SandboxState, SnapshotImage};

use crate::App;
use crate::domain::apply::JobDone;
use crate::domain::image_quota::{self, Made};
use crate::error::ApiResult;
use crate::store::{self, sandboxes, snapshots};

/// `pull`: the registry images the Dockerfile names, pulled first; `network`: the organization's build network.
pub fn plan(
    build_id: &str,
    image: &str,
    dockerfile: &str,
    pull: Vec<String>,
    network: Option<NetworkPolicy>,
) -> JobKind {
    JobKind::BuildSnapshot(BuildSnapshot {
        build_id: build_id.to_owned(),
        image: image.to_owned(),
        dockerfile: dockerfile.to_owned(),
        pull,
        network,
    })
}

/// A runner claimed build jobs: the builds are running, and sandboxes waiting for them are `building_snapshot`.
pub async fn claimed(app: &App, build_ids: &[String]) -> Result<(), sqlx::Error> {
    if build_ids.is_empty() {
        return Ok(());
    }
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    for id in build_ids {
        if !store::builds::set_building(&mut tx, id, now).await? {
            continue;
        }
        for sandbox_id in sandboxes::of_build(&mut tx, id, "('pending_build')").await? {
            sandboxes::set_state(&mut tx, &sandbox_id, SandboxState::BuildingSnapshot, None, now).await?;
        }
    }
    tx.commit().await?;
    app.wake_routes();
    Ok(())
}

/// The build ends, its snapshots become `active` or `build_failed`, and its waiting sandboxes get their create
/// job or `build_failed`.
pub(super) async fn on_result(done: &mut JobDone<'_>, job: &BuildSnapshot) -> ApiResult<()> {
    done.wake_followers = true;
    let now = done.now;
    let (mut state, mut reason) = match done.outcome {
        JobOutcome::Succeeded { .. } => ("done", None),
        JobOutcome::Failed { message, .. } => ("failed", Some(message.clone())),
    };
    if let JobOutcome::Succeeded { snapshot: Some(img), .. } = done.outcome
        && let Some(why) = over_quota(done, job, img).await?
    {
        (state, reason) = ("failed", Some(why));
    }
    if !store::builds::finish(done.conn, &job.build_id, state, reason.as_deref(), now).await? {
        return Ok(());
    }
    if let JobOutcome::Succeeded { snapshot: Some(img), .. } = done.outcome
        && reason.is_none()
        && (img.pushed.is_some() || img.push_error.is_some())
    {
        if let Some(why) = &img.push_error {
            tracing::warn!(build_id = %job.build_id, reason = %why, "build not pushed to the image registry; it stays on its runner");
        }
        store::builds::set_pushed(done.conn, &job.build_id, img.pushed.as_deref(), img.push_error.as_deref()).await?;
    }
    tracing::info!(build_id = %job.build_id, state, reason = reason.as_deref().unwrap_or(""), "build finished");
    let snapshot_state = if reason.is_none() { "active" } else { "build_failed" };
    snapshots::build_ended(done.conn, &job.build_id, snapshot_state, reason.as_deref(), now).await?;
    for id in sandboxes::of_build(done.conn, &job.build_id, "('pending_build', 'building_snapshot')").await? {
        match &reason {
            None => {
                let Some(row) = sandboxes::load(done.app.db.kind, done.conn, None, &id, true).await? else { continue };
                let Some(runner) = row.runner_id.clone() else { continue };
                sandboxes::set_state(done.conn, &id, SandboxState::Creating, None, now).await?;
                // The built image is on that runner: nothing to pull.
                let create = super::create::plan(&row, false);
                super::enqueue(done.conn, &runner, &create, SandboxState::Creating, SandboxState::Creating, now)
                    .await?;
            }
            Some(reason) => {
                let why = format!("the image build failed: {reason}");
                sandboxes::set_state(done.conn, &id, SandboxState::BuildFailed, Some(&why), now).await?;
            }
        }
    }
    Ok(())
}

/// Charges a finished build's image to its organization; `Some(reason)` when that took it over its image quota.
/// The image is then removed again, unless a build of another organization (or an earlier one) still has it on
/// that runner, in which case only this build lets go of it.
async fn over_quota(done: &mut JobDone<'_>, job: &BuildSnapshot, img: &SnapshotImage) -> ApiResult<Option<String>> {
    let Some((org, state)) = store::builds::org_and_state(done.conn, &job.build_id).await? else { return Ok(None) };
    if !matches!(state.as_str(), "pending" | "building") {
        return Ok(None);
    }
    let made = Made {
        owner_id: &job.build_id,
        org: &org,
        kind: "build",
        runner_id: done.runner_id,
        image: &job.image,
        size: img.size,
    };
    let Some(reason) = image_quota::charge(done.app, done.conn, made, done.now).await? else { return Ok(None) };
    if store::builds::image_shared(done.conn, done.runner_id, &job.image, &job.build_id).await? {
        image_quota::released(done.conn, &job.build_id).await?;
    } else {
        let remove = super::remove_snapshot::image(&job.build_id, &job.image);
        let via = SandboxState::Destroying;
        super::enqueue(done.conn, done.runner_id, &remove, via, via, done.now).await?;
    }
    Ok(Some(reason))
}
