//! `REMOVE_SNAPSHOT`: remove the image of a deleted snapshot taken from a sandbox (gone already is success).

use sandbar_proto::runner::RemoveSnapshot;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: RemoveSnapshot) -> Result<Done, Failed> {
    ctx.runner.remove_snapshot_image(req).await?;
    Ok(Done::default())
}
