//! `REMOVE_SNAPSHOT`: remove the image of a deleted snapshot taken from a sandbox (gone already is success), and its
//! copy in the internal registry.

use sandbar_proto::runner::RemoveSnapshot;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: RemoveSnapshot) -> Result<Done, Failed> {
    let pushed = req.pushed.clone();
    ctx.runner.remove_snapshot_image(req).await?;
    // Its copy in the internal registry too; a registry that keeps it fails nothing (logged).
    if let Some(reference) = pushed {
        ctx.runner.delete_pushed(&reference).await;
    }
    Ok(Done::default())
}
