//! `FORK_SANDBOX`: copy a sandbox's filesystem (`docker commit`) into a new sandbox on the same runner. The job
//! belongs to the fork: `creating`, then `started`; the source keeps its state.

use sandbar_proto::runner::{CreateSandbox, ForkSandbox, JobKind, SandboxState};

use super::create::spec;
use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::error::ApiResult;
use crate::store::sandboxes::Row;

/// The fork of `source` into the new row `fork`.
pub fn plan(source: &Row, fork: &Row) -> JobKind {
    let fork: CreateSandbox = spec(fork);
    JobKind::ForkSandbox(ForkSandbox { source_sandbox_id: source.id.clone(), fork })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &ForkSandbox) -> ApiResult<()> {
    let Some(step) = done.sandbox(&job.fork.id).await? else { return Ok(()) };
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Error).await
}
