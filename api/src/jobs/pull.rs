//! `PULL_IMAGE`: a runner pulls a snapshot's registry image (`POST /snapshots` with a registry `imageName`). The
//! snapshot is `pulling`, then `active` with the image's size or `error` with the registry's reason. A snapshot
//! deleted meanwhile is left alone.

use sandbar_proto::runner::{JobKind, JobOutcome, PullImage};

use crate::domain::apply::JobDone;
use crate::error::ApiResult;
use crate::store::snapshots;

pub fn plan(snapshot_id: &str, org: &str, image: &str) -> JobKind {
    JobKind::PullImage(PullImage {
        snapshot_id: snapshot_id.to_owned(),
        organization_id: org.to_owned(),
        image: image.to_owned(),
    })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &PullImage) -> ApiResult<()> {
    let pulled = match done.outcome {
        JobOutcome::Succeeded { snapshot, .. } => Ok(snapshot.as_ref().and_then(|s| i64::try_from(s.size).ok())),
        JobOutcome::Failed { message, .. } => Err(message.clone()),
    };
    tracing::info!(snapshot_id = %job.snapshot_id, image = %job.image, ok = pulled.is_ok(), "snapshot pull ended");
    snapshots::end_pull(done.conn, &job.snapshot_id, pulled, done.now).await?;
    Ok(())
}
