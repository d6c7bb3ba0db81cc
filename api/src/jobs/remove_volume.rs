//! `REMOVE_VOLUME`: the runner holding a deleted volume's data removes it. Success removes the volume's rows;
//! a failure leaves the volume in `error` with the runner's reason (a later delete tries again).

use sandbar_proto::runner::{JobOutcome, RemoveVolume};

use crate::domain::apply::JobDone;
use crate::domain::volumes;
use crate::error::ApiResult;

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &RemoveVolume) -> ApiResult<()> {
    let error = match done.outcome {
        JobOutcome::Succeeded { .. } => None,
        JobOutcome::Failed { message, .. } => Some(format!("removing its data failed: {message}")),
    };
    volumes::removed(done.conn, &job.volume_id, error.as_deref(), done.now).await
}
