//! `SNAPSHOT_SANDBOX`: commit a sandbox as the image the control plane names, and push it to the internal registry
//! when one is configured (`crate::host::registry`); the answer carries the image, and where it was pushed or why
//! the push failed.

use sandbar_proto::runner::{SnapshotImage, SnapshotSandbox};

use super::{Done, Failed, JobCtx};

pub(super) async fn run(ctx: &JobCtx<'_>, req: SnapshotSandbox) -> Result<Done, Failed> {
    let (info, img) = ctx.runner.snapshot_sandbox(req).await?;
    let (pushed, push_error) = pushed(ctx, &img.reference, None).await;
    let snapshot = SnapshotImage { image: img.reference, image_id: img.id, size: img.size, pushed, push_error };
    Ok(Done { sandbox: Some(info), snapshot: Some(snapshot) })
}

/// Pushes a made image to the internal registry: `(where, why not)` for the result. A failed push fails nothing.
pub(super) async fn pushed(ctx: &JobCtx<'_>, image: &str, tag: Option<&str>) -> (Option<String>, Option<String>) {
    match ctx.runner.push_own_image(image, tag).await {
        Ok(to) => (to, None),
        Err(reason) => (None, Some(reason)),
    }
}
