//! `RESTORE_SANDBOX`: bring an archived sandbox back from the store and start it, with the create spec the control
//! plane sends. An archive is the sandbox's layer over its base image; restored on another runner than the one that
//! archived it, a base that is one of sandbar's own images (a snapshot's, a build's, or a fork's, which is its
//! source's) is pulled from the internal registry first when the spec carries its pushed copy
//! (`crate::host::registry`): the pulled image has the base's ID, which is what the restore looks for.

use sandbar_proto::runner::CreateSandbox;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, spec: CreateSandbox) -> Result<Done, Failed> {
    if let Some(from) = spec.pull_from.as_deref() {
        ctx.runner.ensure_own_image(&spec.image, from).await?;
    }
    Ok(Done::sandbox(ctx.runner.restore(spec).await?))
}
