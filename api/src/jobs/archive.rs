//! `ARCHIVE_SANDBOX`: export a stopped sandbox's filesystem to the runner's archive store and remove its
//! container. `archiving`, then `archived` (whatever the runner last saw of the container).

use sandbar_proto::runner::{JobKind, SandboxState};

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;

pub fn plan(row: &Row) -> JobKind {
    JobKind::ArchiveSandbox { sandbox_id: row.id.clone() }
}

pub(super) async fn on_result(done: &mut JobDone<'_>, sandbox_id: &str) -> ApiResult<()> {
    let Some(step) = done.sandbox(sandbox_id).await? else { return Ok(()) };
    settle(done, &step, Next::Always(SandboxState::Archived), Failure::Error).await
}
