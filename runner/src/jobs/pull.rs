//! `PULL_IMAGE`: pull a registry image for a snapshot (`POST /snapshots` naming a registry image), with the
//! organization's credentials; the result carries the image's id and size.

use sandbar_proto::runner::{PullImage, SnapshotImage};

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: PullImage) -> Result<Done, Failed> {
    let auth = ctx.registry_auth().await?;
    let snapshot_id = req.snapshot_id.clone();
    let mut log = move |line: &str| tracing::info!(snapshot_id = %snapshot_id, line, "pull");
    let img = ctx.runner.pull_image(&req.image, &auth, &mut log).await?;
    Ok(Done {
        sandbox: None,
        snapshot: Some(SnapshotImage { image: img.reference, image_id: img.id, size: img.size, ..Default::default() }),
    })
}
