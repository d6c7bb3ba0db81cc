//! `FORK_SANDBOX`: commit the source sandbox's filesystem and create the fork from it (memory is not copied).

use sandbar_proto::runner::ForkSandbox;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: ForkSandbox) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.fork(req).await?))
}
