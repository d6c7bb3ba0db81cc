//! `RESUME_SANDBOX`: thaw a paused sandbox; its processes go on where they were.

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, sandbox_id: &str) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.resume(sandbox_id).await?))
}
