//! `REMOVE_VOLUME`: delete a deleted volume's data from this host (gone already is success).

use sandbar_proto::runner::RemoveVolume;

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: RemoveVolume) -> Result<Done, Failed> {
    ctx.runner.remove_volume(req).await?;
    Ok(Done::default())
}
