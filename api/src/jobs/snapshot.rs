//! `SNAPSHOT_SANDBOX`: commit a sandbox's filesystem to a local image, a snapshot of the organization. The
//! snapshot row is `pending`, then `active` with its size (or `error`); the sandbox shows `snapshotting` and goes
//! back to where it was, also when only the snapshot failed. The image's size counts against the organization's
//! image bytes: one that takes it over its limit is removed again and the snapshot is `error` with the quota's
//! reason (see `crate::domain::image_quota`). Where the runner pushed the image (the internal registry) is recorded
//! with the snapshot, and frees its sandboxes from the runner; a failed push is recorded as its reason.

use sandbar_proto::runner::{JobKind, JobOutcome, SandboxState, SnapshotSandbox};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::domain::image_quota::{self, Made};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;
use crate::store::snapshots;

pub fn plan(row: &Row, image: String) -> JobKind {
    JobKind::SnapshotSandbox(SnapshotSandbox { sandbox_id: row.id.clone(), image })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &SnapshotSandbox) -> ApiResult<()> {
    let made = match done.outcome {
        JobOutcome::Succeeded { snapshot: Some(img), .. } => {
            let size = i64::try_from(img.size).ok();
            match snapshots::pending_of_image(done.conn, &job.image).await? {
                Some((id, org)) => {
                    let made = Made {
                        owner_id: &id,
                        org: &org,
                        kind: "snapshot",
                        runner_id: done.runner_id,
                        image: &job.image,
                        size: img.size,
                    };
                    match image_quota::charge(done.app, done.conn, made, done.now).await? {
                        None => Ok(size),
                        Some(reason) => {
                            let remove = super::remove_snapshot::pushed(&id, &job.image, img.pushed.clone());
                            super::enqueue(
                                done.conn,
                                done.runner_id,
                                &remove,
                                SandboxState::Destroying,
                                SandboxState::Destroying,
                                done.now,
                            )
                            .await?;
                            Err(reason)
                        }
                    }
                }
                None => Ok(size),
            }
        }
        JobOutcome::Succeeded { snapshot: None, .. } => Ok(None),
        JobOutcome::Failed { code, message } => Err(format!("{message} ({code:?})")),
    };
    let kept = made.is_ok();
    snapshots::end_pending(done.conn, &job.image, made, done.now).await?;
    // Where the runner pushed it: sandboxes of the snapshot may then go to any runner (see `crate::domain::placement`).
    if let JobOutcome::Succeeded { snapshot: Some(img), .. } = done.outcome
        && kept
        && (img.pushed.is_some() || img.push_error.is_some())
    {
        if let Some(reason) = &img.push_error {
            tracing::warn!(image = %job.image, %reason, "snapshot not pushed to the image registry; it stays on its runner");
        }
        snapshots::set_pushed(done.conn, &job.image, img.pushed.as_deref(), img.push_error.as_deref()).await?;
    }
    let Some(step) = done.sandbox(&job.sandbox_id).await? else { return Ok(()) };
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Previous).await
}
