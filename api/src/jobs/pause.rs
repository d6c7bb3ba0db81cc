//! `PAUSE_SANDBOX`: freeze a started sandbox's processes with their memory. `pausing`, then `paused`; a failed
//! pause leaves it as it was.

use sandbar_proto::runner::{JobKind, SandboxState};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;

pub fn plan(row: &Row) -> JobKind {
    JobKind::PauseSandbox { sandbox_id: row.id.clone() }
}

pub(super) async fn on_result(done: &mut JobDone<'_>, sandbox_id: &str) -> ApiResult<()> {
    let Some(step) = done.sandbox(sandbox_id).await? else { return Ok(()) };
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Previous).await
}
