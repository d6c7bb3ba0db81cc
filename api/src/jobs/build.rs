//! `BUILD_SNAPSHOT`: build a Dockerfile into a local image on one runner. Its build row is `pending`, `building`
//! once claimed, then `done` or `failed`; the result moves the build's snapshots (`active` or `build_failed`) and
//! the sandboxes waiting for it (their create job, or `build_failed`). See `crate::domain::builds`.

use sandbar_proto::runner::{BuildSnapshot, JobKind, JobOutcome, SandboxState};

use crate::App;
use crate::domain::apply::JobDone;
use crate::error::ApiResult;
use crate::store::{self, sandboxes, snapshots};

pub fn plan(build_id: &str, image: &str, dockerfile: &str) -> JobKind {
    JobKind::BuildSnapshot(BuildSnapshot {
        build_id: build_id.to_owned(),
        image: image.to_owned(),
        dockerfile: dockerfile.to_owned(),
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
    let (state, reason) = match done.outcome {
        JobOutcome::Succeeded { .. } => ("done", None),
        JobOutcome::Failed { message, .. } => ("failed", Some(message.clone())),
    };
    if !store::builds::finish(done.conn, &job.build_id, state, reason.as_deref(), now).await? {
        return Ok(());
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
                let create = super::create::plan(&row);
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
