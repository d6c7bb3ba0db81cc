//! `START_SANDBOX`: start a stopped sandbox's container. `starting`, then `started`; its preview token rotates.

use sandbar_proto::runner::{JobKind, JobOutcome, SandboxState};

use crate::domain::apply::{Failure, JobDone, Next, Step, settle};
use crate::error::{ApiResult, new_token};
use crate::store::sandboxes::{self, Row, Text};

pub fn plan(row: &Row) -> JobKind {
    JobKind::StartSandbox { sandbox_id: row.id.clone() }
}

pub(super) async fn on_result(done: &mut JobDone<'_>, sandbox_id: &str) -> ApiResult<()> {
    let Some(step) = done.sandbox(sandbox_id).await? else { return Ok(()) };
    rotate_preview_token(done, &step).await?;
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Error).await
}

/// Preview tokens rotate on every (successful) start, so a URL handed out before a stop does not outlive it.
pub(super) async fn rotate_preview_token(done: &mut JobDone<'_>, step: &Step) -> ApiResult<()> {
    if step.in_step && matches!(done.outcome, JobOutcome::Succeeded { .. }) {
        sandboxes::set_text(done.conn, &step.row.id, Text::PreviewToken, &new_token(24)?).await?;
    }
    Ok(())
}
