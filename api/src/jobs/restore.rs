//! `RESTORE_SANDBOX`: bring an archived sandbox back from the archive store (with its whole spec from the row) and
//! start it. `restoring`, then `started`. A failure leaves it `archived` with the reason: the archive is still in
//! the store (a runner deletes it only once the sandbox runs again), and a later start tries again.

use sandbar_proto::runner::{CreateSandbox, JobKind, JobOutcome, SandboxState};

use super::create::spec;
use super::start::rotate_preview_token;
use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;

pub fn plan(row: &Row) -> JobKind {
    JobKind::RestoreSandbox(spec(row))
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &CreateSandbox) -> ApiResult<()> {
    let Some(step) = done.sandbox(&job.id).await? else { return Ok(()) };
    if let JobOutcome::Failed { code, message } = done.outcome
        && step.in_step
    {
        let reason = format!("restore failed ({code:?}): {message}");
        tracing::warn!(sandbox_id = %step.row.id, %reason, "restore failed");
        return done.set_state(&step.row.id, SandboxState::Archived, Some(&reason)).await;
    }
    rotate_preview_token(done, &step).await?;
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Error).await
}
