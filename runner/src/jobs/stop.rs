//! `STOP_SANDBOX`: stop a sandbox gracefully within its deadline, or kill it (`force`).

use sandbar_proto::runner::StopSandbox;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: StopSandbox) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.stop(req).await?))
}
