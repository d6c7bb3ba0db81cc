//! `FORK_SANDBOX`: commit the source sandbox's filesystem and create the fork from it (memory is not copied). The
//! answer carries the fork's image (id and size) too, which the control plane counts against the organization's
//! quota.

use sandbar_proto::runner::{ForkSandbox, SnapshotImage};

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: ForkSandbox) -> Result<Done, Failed> {
    let fork_id = req.fork.id.clone();
    let info = ctx.runner.fork(req).await?;
    // The fork runs, so its image is there; an inspect that fails only leaves the size out.
    let snapshot = match ctx.runner.fork_image_info(&fork_id).await {
        Ok(img) => {
            img.map(|i| SnapshotImage { image: i.reference, image_id: i.id, size: i.size, ..Default::default() })
        }
        Err(e) => {
            tracing::warn!(sandbox_id = %fork_id, error = %e, "cannot inspect the fork's image");
            None
        }
    };
    Ok(Done { sandbox: Some(info), snapshot })
}
