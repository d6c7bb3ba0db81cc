//! `FORK_SANDBOX`: copy a sandbox's filesystem (`docker commit`) into a new sandbox on the same runner. The job
//! belongs to the fork: `creating`, then `started`; the source keeps its state. The result carries the fork's image
//! size, which counts against the organization's image bytes: a fork whose image takes the organization over its
//! limit goes to `error` with the quota's reason, and a destroy job removes its container and image (the fork stays
//! `error`; see `crate::domain::image_quota`).

use sandbar_proto::runner::{CreateSandbox, ForkSandbox, JobKind, JobOutcome, SandboxState};

use super::create::spec;
use crate::domain::apply::{self, Failure, JobDone, Next, settle};
use crate::domain::image_quota::{self, Made};
use crate::error::ApiResult;
use crate::store::orgs;
use crate::store::sandboxes::Row;

/// The fork of `source` into the new row `fork`.
pub fn plan(source: &Row, fork: &Row) -> JobKind {
    let fork: CreateSandbox = spec(fork);
    JobKind::ForkSandbox(ForkSandbox { source_sandbox_id: source.id.clone(), fork })
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &ForkSandbox) -> ApiResult<()> {
    if let JobOutcome::Succeeded { snapshot: Some(_), .. } = done.outcome {
        // The organization before the sandbox, in the order creates and forks lock them (PostgreSQL).
        orgs::lock_org(done.app.db.kind, done.conn, &job.fork.organization_id).await?;
    }
    let Some(step) = done.sandbox(&job.fork.id).await? else { return Ok(()) };
    if let JobOutcome::Succeeded { sandbox, snapshot: Some(img) } = done.outcome
        && step.in_step
    {
        let made = Made {
            owner_id: &step.row.id,
            org: &step.row.organization_id,
            kind: "fork",
            runner_id: done.runner_id,
            image: &img.image,
            size: img.size,
        };
        if let Some(reason) = image_quota::charge(done.app, done.conn, made, done.now).await? {
            if let Some(info) = sandbox {
                // Provisioned: a later delete must reach the runner, whatever happens to the clean-up.
                apply::record_info(done.conn, info).await?;
            }
            done.set_state(&step.row.id, SandboxState::Error, Some(&reason)).await?;
            let destroy = super::destroy::job(&step.row.id);
            super::enqueue(done.conn, done.runner_id, &destroy, SandboxState::Error, SandboxState::Error, done.now)
                .await?;
            return Ok(());
        }
    }
    settle(done, &step, Next::Reported { or: SandboxState::Started }, Failure::Error).await
}
