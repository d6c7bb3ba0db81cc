//! `ARCHIVE_SANDBOX`: move a stopped sandbox's filesystem to the archive store and remove its container.

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, sandbox_id: &str) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.archive(sandbox_id).await?))
}
