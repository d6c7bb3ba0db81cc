//! `START_SANDBOX`: start a stopped (or failed) sandbox and wait for its daemon.

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, sandbox_id: &str) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.start(sandbox_id).await?))
}
