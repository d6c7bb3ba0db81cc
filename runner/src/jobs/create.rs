//! `CREATE_SANDBOX`: create and start a sandbox (claiming a warm-pool one when it matches); answers once its daemon
//! does. A registry image is pulled first, every time (see `crate::host::pull`); a snapshot or build made on another
//! runner is pulled from the internal registry when it is not here (`crate::host::registry`).

use sandbar_proto::runner::{CreateSandbox, SandboxState};

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: CreateSandbox) -> Result<Done, Failed> {
    if ctx.cp.is_some()
        && let Some(existing) = ctx.runner.get(&req.id).filter(|s| s.state == SandboxState::Started)
    {
        tracing::info!(job_id = %ctx.job_id, "create repeated after a restart: the sandbox exists");
        return Ok(Done::sandbox(existing));
    }
    if req.pull {
        let auth = ctx.registry_auth().await?;
        let id = req.id.clone();
        let mut log = move |line: &str| tracing::debug!(sandbox_id = %id, line, "pull");
        ctx.runner.pull_image(&req.image, &auth, &mut log).await?;
    } else if let Some(from) = req.pull_from.as_deref() {
        // One of sandbar's own images made on another runner: its copy in the internal registry.
        ctx.runner.ensure_own_image(&req.image, from).await?;
    }
    Ok(Done::sandbox(ctx.runner.create(req).await?))
}
