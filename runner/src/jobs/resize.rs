//! `RESIZE_SANDBOX`: change a sandbox's CPU and memory limits in place.

use sandbar_proto::runner::ResizeSandbox;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: ResizeSandbox) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.resize(req).await?))
}
