//! `DESTROY_SANDBOX`: remove a sandbox's container (and archive). `destroying`, then `destroyed`; a runner that
//! no longer has the sandbox counts as done. A fork's image goes with it (the runner removes it), and with it the
//! image's bytes from the organization's count.

use sandbar_proto::runner::{JobErrorCode, JobKind, JobOutcome, SandboxState};
use sqlx::AnyConnection;

use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::domain::image_quota;
use crate::error::ApiResult;
use crate::store;
use crate::store::sandboxes::Row;

pub fn job(sandbox_id: &str) -> JobKind {
    JobKind::DestroySandbox { sandbox_id: sandbox_id.to_owned() }
}

/// Cancels the sandbox's jobs no runner has claimed; `None` when nothing exists on any runner yet (then the
/// sandbox is gone at once).
pub async fn plan(conn: &mut AnyConnection, row: &Row, now: i64) -> ApiResult<Option<JobKind>> {
    let claimed = store::jobs::cancel_pending(conn, &row.id, now).await?;
    Ok((row.provisioned != 0 || claimed != 0).then(|| job(&row.id)))
}

pub(super) async fn on_result(done: &mut JobDone<'_>, sandbox_id: &str) -> ApiResult<()> {
    let Some(step) = done.sandbox(sandbox_id).await? else { return Ok(()) };
    let gone = matches!(
        done.outcome,
        JobOutcome::Succeeded { .. } | JobOutcome::Failed { code: JobErrorCode::SandboxNotFound, .. }
    );
    if gone {
        // A fork's image went with it.
        image_quota::released(done.conn, sandbox_id).await?;
        // The clean-up of a fork refused by the image quota (`error`, queued from there): it stays `error` with the
        // quota's reason, which is what the caller waiting for `started` must see.
        if done.via == SandboxState::Error && step.current == SandboxState::Error {
            return Ok(());
        }
        if step.current != SandboxState::Destroyed {
            done.set_state(&step.row.id, SandboxState::Destroyed, None).await?;
        }
        return Ok(());
    }
    settle(done, &step, Next::Always(SandboxState::Destroyed), Failure::Error).await
}
