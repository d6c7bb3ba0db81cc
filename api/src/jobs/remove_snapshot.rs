//! `REMOVE_SNAPSHOT`: remove an image the organization no longer needs from its runner: a deleted snapshot's
//! taken from a sandbox, a collected build's, or one that went over the image quota (then keyed by the snapshot's
//! or the build's id). No sandbox moves. When the runner removed it, its bytes no longer count against the
//! organization, and collected builds (`removing`) go with their logs; when it refused (a container still uses the
//! image), collected builds are `done` again for another grace period (see `crate::domain::builds`).

use sandbar_proto::runner::{JobKind, JobOutcome, RemoveSnapshot};

use crate::domain::apply::JobDone;
use crate::domain::image_quota;
use crate::error::ApiResult;
use crate::store;
use crate::store::snapshots::SnapshotRow;

/// The removal of a deleted snapshot's image from its runner, and of its copy in the internal registry.
pub fn plan(snap: &SnapshotRow) -> JobKind {
    pushed(&snap.id, &snap.image_name, snap.pushed_image.clone())
}

/// The removal of `image`, keyed (for the job queue's ordering) by `owner_id`, the snapshot or build it belongs to.
pub fn image(owner_id: &str, image: &str) -> JobKind {
    pushed(owner_id, image, None)
}

/// [`image`], and its copy `pushed` in the internal registry (deleted there by the runner).
pub fn pushed(owner_id: &str, image: &str, pushed: Option<String>) -> JobKind {
    JobKind::RemoveSnapshot(RemoveSnapshot { snapshot_id: owner_id.to_owned(), image: image.to_owned(), pushed })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &RemoveSnapshot) -> ApiResult<()> {
    let collected = store::builds::of_image(done.conn, done.runner_id, &job.image, "removing").await?;
    match done.outcome {
        JobOutcome::Succeeded { .. } => {
            image_quota::released(done.conn, &job.snapshot_id).await?;
            for id in &collected {
                image_quota::released(done.conn, id).await?;
                store::builds::delete(done.conn, id).await?;
            }
            tracing::info!(owner_id = %job.snapshot_id, image = %job.image, builds = collected.len(), "image removed");
        }
        JobOutcome::Failed { message, .. } => {
            tracing::warn!(owner_id = %job.snapshot_id, image = %job.image, %message, "image not removed");
            let back = ("removing", "done");
            store::builds::move_image(done.conn, done.runner_id, &job.image, back, true, done.now).await?;
        }
    }
    Ok(())
}
