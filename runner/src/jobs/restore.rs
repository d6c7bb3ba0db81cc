//! `RESTORE_SANDBOX`: bring an archived sandbox back from the store and start it, with the create spec the control
//! plane sends.

use sandbar_proto::runner::CreateSandbox;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, spec: CreateSandbox) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.restore(spec).await?))
}
