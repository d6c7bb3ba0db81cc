//! `ARCHIVE_SANDBOX`: export a stopped sandbox's filesystem to the runner's archive store and remove its
//! container. `archiving`, then `archived` (whatever the runner last saw of the container). A fork's image goes
//! with its container, so it no longer counts against the organization's image bytes.
//!
//! A failure (the store answered errors or nothing until the runner's retries were spent, Docker's export broke,
//! or the job's deadline passed) leaves it `stopped` with the reason: the runner removes the container only once
//! the archive is complete, so the sandbox is still there, and archiving it again (by hand or by its
//! auto-archive timer, counted again from the failure) is how it is retried.

use sandbar_proto::runner::{JobKind, JobOutcome, SandboxState};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::domain::image_quota;
use crate::error::ApiResult;
use crate::store::sandboxes::Row;

pub fn plan(row: &Row) -> JobKind {
    JobKind::ArchiveSandbox { sandbox_id: row.id.clone() }
}

pub(super) async fn on_result(done: &mut JobDone<'_>, sandbox_id: &str) -> ApiResult<()> {
    if matches!(done.outcome, JobOutcome::Succeeded { .. }) {
        image_quota::released(done.conn, sandbox_id).await?;
    }
    let Some(step) = done.sandbox(sandbox_id).await? else { return Ok(()) };
    if let JobOutcome::Failed { code, message } = done.outcome
        && step.in_step
    {
        let reason = format!("archive failed ({code:?}): {message}");
        tracing::warn!(sandbox_id = %step.row.id, %reason, "archive failed");
        return done.set_state(&step.row.id, SandboxState::Stopped, Some(&reason)).await;
    }
    settle(done, &step, Next::Always(SandboxState::Archived), Failure::Error).await
}
