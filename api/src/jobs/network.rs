//! `UPDATE_SANDBOX_NETWORK`: apply a sandbox's network settings now (a running sandbox) or keep them for its next
//! start. The sandbox stays in its state (the job's `via` is that state); a failure that leaves a running sandbox
//! without the settings the user asked for puts it in `error`.

use sandbar_proto::network::{NetworkPolicy, UpdateSandboxNetwork};
use sandbar_proto::runner::{JobErrorCode, JobKind, JobOutcome, SandboxState};

use crate::domain::apply::JobDone;
use crate::error::ApiResult;

pub fn plan(sandbox_id: &str, policy: NetworkPolicy) -> JobKind {
    JobKind::UpdateSandboxNetwork(UpdateSandboxNetwork { sandbox_id: sandbox_id.to_owned(), policy })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &UpdateSandboxNetwork) -> ApiResult<()> {
    let Some(step) = done.sandbox(&job.sandbox_id).await? else { return Ok(()) };
    // A runner that no longer has the sandbox has nothing to apply (a re-created sandbox gets the stored settings).
    if let JobOutcome::Failed { code, message } = done.outcome
        && *code != JobErrorCode::SandboxNotFound
        && step.current == SandboxState::Started
    {
        let reason = format!("network settings could not be applied ({code:?}): {message}");
        done.set_state(&step.row.id, SandboxState::Error, Some(&reason)).await?;
    }
    Ok(())
}
