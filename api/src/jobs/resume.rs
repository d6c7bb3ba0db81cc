//! `RESUME_SANDBOX`: thaw a paused sandbox (what a start of a paused sandbox does). `resuming`, then `started`.

use sandbar_proto::runner::{JobKind, SandboxState};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;

pub fn plan(row: &Row) -> JobKind {
    JobKind::ResumeSandbox { sandbox_id: row.id.clone() }
}

pub(super) async fn on_result(done: &mut JobDone<'_>, sandbox_id: &str) -> ApiResult<()> {
    let Some(step) = done.sandbox(sandbox_id).await? else { return Ok(()) };
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Error).await
}
