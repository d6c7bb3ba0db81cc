//! `UPDATE_SANDBOX_NETWORK`: change a sandbox's egress policy (at once while it runs, at its next start otherwise).

use sandbar_proto::runner::UpdateSandboxNetwork;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: UpdateSandboxNetwork) -> Result<Done, Failed> {
    Ok(Done::sandbox(ctx.runner.update_network(req).await?))
}
