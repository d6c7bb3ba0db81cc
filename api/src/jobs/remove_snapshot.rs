//! `REMOVE_SNAPSHOT`: remove the image of a deleted snapshot taken from a sandbox from its runner. The snapshot
//! row is gone already and no sandbox moves, so the result changes nothing.

use sandbar_proto::runner::{JobKind, RemoveSnapshot};

use crate::domain::apply::JobDone;
use crate::error::ApiResult;
use crate::store::snapshots::SnapshotRow;

pub fn plan(snap: &SnapshotRow) -> JobKind {
    JobKind::RemoveSnapshot(RemoveSnapshot { snapshot_id: snap.id.clone(), image: snap.image_name.clone() })
}

pub(super) async fn on_result(_: &mut JobDone<'_>, job: &RemoveSnapshot) -> ApiResult<()> {
    tracing::debug!(snapshot_id = %job.snapshot_id, "snapshot image removal reported");
    Ok(())
}
