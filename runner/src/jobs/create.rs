//! `CREATE_SANDBOX`: create and start a sandbox (claiming a warm-pool one when it matches); answers once its daemon
//! does.

use sandbar_proto::runner::{CreateSandbox, SandboxState};

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: CreateSandbox) -> Result<Done, Failed> {
    if ctx.cp.is_some()
        && let Some(existing) = ctx.runner.get(&req.id).filter(|s| s.state == SandboxState::Started)
    {
        tracing::info!(job_id = %ctx.job_id, "create repeated after a restart: the sandbox exists");
        return Ok(Done::sandbox(existing));
    }
    Ok(Done::sandbox(ctx.runner.create(req).await?))
}
