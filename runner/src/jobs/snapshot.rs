//! `SNAPSHOT_SANDBOX`: commit a sandbox as the image the control plane names; the answer carries the image too.

use sandbar_proto::runner::{SnapshotImage, SnapshotSandbox};

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: SnapshotSandbox) -> Result<Done, Failed> {
    let (info, img) = ctx.runner.snapshot_sandbox(req).await?;
    let snapshot = SnapshotImage { image: img.reference, image_id: img.id, size: img.size };
    Ok(Done { sandbox: Some(info), snapshot: Some(snapshot) })
}
