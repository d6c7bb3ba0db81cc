//! `PAUSE_SANDBOX`: freeze a started sandbox's processes, memory kept.

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, sandbox_id: &str) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.pause(sandbox_id).await?))
}
