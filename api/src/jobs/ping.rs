//! `PING_SANDBOX`: ask the runner whether a started sandbox's daemon answers an authenticated call. The job
//! changes no state: the sandbox stays `started` whatever the answer, and the job's own row records it (`done`, or
//! `failed` with the runner's reason).

use sandbar_proto::runner::{JobKind, JobOutcome, SandboxState};

use crate::App;
use crate::domain::apply::JobDone;
use crate::domain::sandboxes::{find, placed_runner};
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::sandboxes::Row;

pub fn plan(row: &Row) -> JobKind {
    JobKind::PingSandbox { sandbox_id: row.id.clone() }
}

/// Queues a ping of organization `org`'s sandbox `id` on its runner; returns the job's id. Another organization's
/// sandbox is not found; a sandbox that is not started has no daemon to ask (400).
pub async fn enqueue(app: &App, org: &str, id: &str) -> ApiResult<String> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = find(app, &mut tx, org, id, true).await?;
    let state = row.effective_state(app, now);
    if state != SandboxState::Started {
        return Err(ApiError::bad_request(format!(
            "only a started sandbox's daemon can be pinged; this one is {}",
            state.as_str()
        )));
    }
    let runner = placed_runner(&row)?;
    // No transition: the job goes through `started` and back.
    let job = jobs::enqueue(&mut tx, &runner, &plan(&row), SandboxState::Started, SandboxState::Started, now).await?;
    tx.commit().await?;
    app.wake_runner(&runner);
    Ok(job)
}

pub(super) async fn on_result(done: &mut JobDone<'_>, sandbox_id: &str) -> ApiResult<()> {
    if let JobOutcome::Failed { code, message } = done.outcome {
        tracing::warn!(sandbox_id, ?code, reason = %message, "the sandbox's daemon did not answer a ping");
    }
    Ok(())
}
