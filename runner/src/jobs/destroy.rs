//! `DESTROY_SANDBOX`: remove the sandbox's container (or, for an archived one, its archive) and forget it.

use sandbar_proto::runner::JobErrorCode;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, sandbox_id: &str) -> Result<Done, Failed> {
    match ctx.runner.destroy(sandbox_id).await {
        Ok(()) => Ok(Done::default()),
        // Delivered again after a restart: the first one did it.
        Err(e) if ctx.cp.is_some() && e.code() == JobErrorCode::SandboxNotFound => {
            tracing::info!(sandbox_id, "destroy of a sandbox that is already gone");
            Ok(Done::default())
        }
        Err(e) => Err(e.into()),
    }
}
