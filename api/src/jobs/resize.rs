//! `RESIZE_SANDBOX`: change a sandbox's CPU, memory or disk (disk only grows, and only while stopped).
//! `resizing`, then the state the runner reports (or the one before); a failure returns it there with the reason.

use sandbar_proto::runner::SandboxState;
use sandbar_proto::runner::{JobKind, JobOutcome, ResizeSandbox};
use sqlx::AnyConnection;

use super::create::to_u32;
use crate::App;
use crate::domain::apply::{Failure, JobDone, Next, settle};
use crate::domain::sandboxes::check_range;
use crate::domain::{quota, state};
use crate::error::{ApiError, ApiResult};
use crate::store::sandboxes::{self, Row, Text};

/// What a resize asks for (`None`: unchanged).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
}

/// Checks the request against the limits and the organization's quotas (CPU and memory count only while the
/// sandbox holds them).
pub async fn plan(
    app: &App,
    conn: &mut AnyConnection,
    row: &Row,
    current: SandboxState,
    ask: &Ask,
) -> ApiResult<JobKind> {
    let Ask { cpu, memory, disk } = validate(app, row, ask)?;
    let running = state::holds_compute(current);
    quota::check(
        conn,
        &row.organization_id,
        if running { cpu.unwrap_or(row.cpu) - row.cpu } else { 0 },
        if running { memory.unwrap_or(row.memory) - row.memory } else { 0 },
        disk.unwrap_or(row.disk) - row.disk,
        0,
    )
    .await?;
    Ok(JobKind::ResizeSandbox(ResizeSandbox {
        sandbox_id: row.id.clone(),
        cpu: cpu.map(to_u32),
        memory: memory.map(to_u32),
        disk: disk.map(to_u32),
    }))
}

fn validate(app: &App, row: &Row, r: &Ask) -> ApiResult<Ask> {
    let l = &app.config.limits;
    if r.cpu.is_none() && r.memory.is_none() && r.disk.is_none() {
        return Err(ApiError::bad_request("resize needs at least one of cpu, memory, disk"));
    }
    check_range("cpu", r.cpu, l.max_cpu, "vCPU")?;
    check_range("memory", r.memory, l.max_memory, "GiB")?;
    check_range("disk", r.disk, l.max_disk, "GiB")?;
    if let Some(d) = r.disk
        && d < row.disk
    {
        return Err(ApiError::bad_request(format!("disk can only grow: it is {} GiB, asked for {d} GiB", row.disk)));
    }
    Ok(*r)
}

pub(super) async fn on_result(done: &mut JobDone<'_>, job: &ResizeSandbox) -> ApiResult<()> {
    let Some(step) = done.sandbox(&job.sandbox_id).await? else { return Ok(()) };
    match done.outcome {
        JobOutcome::Failed { code, message } if step.in_step => {
            let reason = format!("resize failed ({code:?}): {message}");
            tracing::warn!(sandbox_id = %step.row.id, %reason, "resize failed");
            done.set_state(&step.row.id, done.prev, None).await?;
            sandboxes::set_text(done.conn, &step.row.id, Text::ErrorReason, &reason).await?;
            Ok(())
        }
        JobOutcome::Succeeded { .. } if step.in_step => {
            sandboxes::set_resources(done.conn, &step.row.id, job.cpu, job.memory, job.disk, done.now).await?;
            // A real runner reports the sandbox's state after the resize; without one it is where it was.
            settle(done, &step, Next::Reported { or: done.prev }, Failure::Error).await
        }
        _ => settle(done, &step, Next::Reported { or: done.prev }, Failure::Error).await,
    }
}
