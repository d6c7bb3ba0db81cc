//! `STOP_SANDBOX`: stop a sandbox (`force` kills at once; a paused one is thawed first). `stopping`, then
//! `stopped` (an ephemeral sandbox is then destroyed).

use sandbar_proto::runner::{JobKind, SandboxState, StopSandbox};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;

pub fn plan(row: &Row, force: bool) -> JobKind {
    JobKind::StopSandbox(StopSandbox { sandbox_id: row.id.clone(), force, timeout_secs: None })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &StopSandbox) -> ApiResult<()> {
    let Some(step) = done.sandbox(&job.sandbox_id).await? else { return Ok(()) };
    settle(done, &step, Next::Reported { or: SandboxState::Stopped }, Failure::Error).await
}
