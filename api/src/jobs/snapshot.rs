//! `SNAPSHOT_SANDBOX`: commit a sandbox's filesystem to a local image, a snapshot of the organization. The
//! snapshot row is `pending`, then `active` with its size (or `error`); the sandbox shows `snapshotting` and goes
//! back to where it was, also when only the snapshot failed.

use sandbar_proto::runner::{JobKind, JobOutcome, SandboxState, SnapshotSandbox};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;
use crate::store::snapshots;

pub fn plan(row: &Row, image: String) -> JobKind {
    JobKind::SnapshotSandbox(SnapshotSandbox { sandbox_id: row.id.clone(), image })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &SnapshotSandbox) -> ApiResult<()> {
    let made = match done.outcome {
        JobOutcome::Succeeded { snapshot, .. } => Ok(snapshot.as_ref().and_then(|s| i64::try_from(s.size).ok())),
        JobOutcome::Failed { code, message } => Err(format!("{message} ({code:?})")),
    };
    snapshots::end_pending(done.conn, &job.image, made, done.now).await?;
    let Some(step) = done.sandbox(&job.sandbox_id).await? else { return Ok(()) };
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Previous).await
}
