//! Carrying out the state machine's decisions on rows: a user's (or a timer's) action ([`act`]), a job's result
//! (the shared part, [`settle`]; each kind's own part is in `crate::jobs`), and a runner's unrequested reports
//! ([`observe`], [`reconcile`]). Everything runs inside one transaction per request and bumps the sandbox's route,
//! but for a runner's reports about many sandboxes at once: those go in transactions of [`BATCH`] sandboxes, so a
//! runner with thousands of them never holds the database (SQLite's one connection, PostgreSQL's row locks) for all
//! of them while other requests wait. Each sandbox's report is applied on its own terms (a conditional move), so a
//! report cut between two batches is simply sent again.

use std::collections::HashSet;

use sandbar_proto::ports;
use sandbar_proto::runner::{JobOutcome, SandboxInfo, SandboxState, StateChange};
use sqlx::AnyConnection;

use super::quota;
use super::state::{self, Action, JobTag, Plan};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{self, resize};
use crate::store::sandboxes::{self, Row, Text};

/// Carries out a lifecycle action through the state machine. `org: None` is the lifecycle timers (and the proxy's
/// wake). `resize` is the request of [`Action::Resize`].
pub async fn act(
    app: &App,
    org: Option<&str>,
    id: &str,
    action: Action,
    resize: Option<&resize::Ask>,
) -> ApiResult<Row> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row =
        sandboxes::load(app.db.kind, &mut tx, org, id, true).await?.ok_or_else(|| ApiError::sandbox_not_found(id))?;
    let current = row.effective_state(app, now);
    let plan = state::plan(current, action, row.provisioned != 0).map_err(|r| ApiError::bad_request(r.0))?;
    let desired = match action {
        Action::Start | Action::Recover => "started",
        Action::Stop { .. } => "stopped",
        Action::Delete => "destroyed",
        Action::Archive => "archived",
        Action::Resize { .. } => "resized",
    };
    let mut wake = None;
    // Where the job goes: the sandbox's runner, but for a restore, which may go to another one.
    let mut runner = row.runner_id.clone();
    match plan {
        Plan::Noop => {}
        Plan::Set(next) => sandboxes::set_state(&mut tx, &row.id, next, None, now).await?,
        Plan::Job(next, tag) => {
            // A sandbox that starts again needs its CPU and memory back.
            let idle = !state::holds_compute(current);
            let job = match tag {
                JobTag::Destroy => jobs::destroy::plan(&mut tx, &row, now).await?,
                JobTag::Start => {
                    if idle {
                        quota::check(&mut tx, &row.organization_id, row.cpu, row.memory, 0, 0).await?;
                    }
                    Some(jobs::start::plan(&row))
                }
                JobTag::Create => {
                    if idle {
                        quota::check(&mut tx, &row.organization_id, row.cpu, row.memory, 0, 0).await?;
                    }
                    Some(jobs::create::plan(&row, super::images::pulled(&app.config, &row.snapshot)))
                }
                JobTag::Restore => {
                    if idle {
                        quota::check(&mut tx, &row.organization_id, row.cpu, row.memory, 0, 0).await?;
                    }
                    runner = super::drain::restore_target(app, &mut tx, &row).await?;
                    Some(jobs::restore::plan(&row))
                }
                JobTag::Archive => Some(jobs::archive::plan(&row)),
                JobTag::Stop { force } => Some(jobs::stop::plan(&row, force)),
                JobTag::Resize => {
                    let ask = resize.ok_or_else(|| ApiError::bad_request("resize needs a body"))?;
                    Some(resize::plan(app, &mut tx, &row, current, ask).await?)
                }
            };
            match (job, runner) {
                (None, _) => sandboxes::set_state(&mut tx, &row.id, SandboxState::Destroyed, None, now).await?,
                (Some(job), Some(runner)) => {
                    jobs::enqueue(&mut tx, &runner, &job, row.stored_state(), next, now).await?;
                    sandboxes::set_state(&mut tx, &row.id, next, None, now).await?;
                    wake = Some(runner);
                }
                (Some(_), None) => {
                    return Err(ApiError::conflict(
                        "the sandbox was never placed on a runner; delete it and create it again",
                    ));
                }
            }
        }
    }
    if plan != Plan::Noop {
        sandboxes::set_text(&mut tx, &row.id, Text::Desired, desired).await?;
    }
    let after = sandboxes::load(app.db.kind, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    if let Some(r) = wake {
        app.wake_runner(&r);
    }
    if plan != Plan::Noop {
        app.wake_routes();
    }
    Ok(after)
}

/// A job's result being applied, inside the result's transaction.
pub struct JobDone<'a> {
    pub app: &'a App,
    pub conn: &'a mut AnyConnection,
    pub runner_id: &'a str,
    pub outcome: &'a JobOutcome,
    /// The state the sandbox was in before the job.
    pub prev: SandboxState,
    /// The state the job put the sandbox in: a result moves the sandbox on only while it is still there.
    pub via: SandboxState,
    pub now: i64,
    /// Set by a build's result: log followers must learn that the build ended.
    pub wake_followers: bool,
}

/// The job's sandbox as the result finds it.
#[derive(Debug)]
pub struct Step {
    pub row: Row,
    pub current: SandboxState,
    /// Still in the job's `via` state (nothing moved it on meanwhile).
    pub in_step: bool,
}

impl JobDone<'_> {
    /// The job's sandbox, locked; `None` when there is no such sandbox.
    pub async fn sandbox(&mut self, id: &str) -> ApiResult<Option<Step>> {
        let Some(row) = sandboxes::load(self.app.db.kind, self.conn, None, id, true).await? else { return Ok(None) };
        let current = row.stored_state();
        Ok(Some(Step { in_step: current == self.via, current, row }))
    }

    /// Moves the sandbox to `next`.
    pub async fn set_state(&mut self, id: &str, next: SandboxState, reason: Option<&str>) -> ApiResult<()> {
        Ok(sandboxes::set_state(self.conn, id, next, reason, self.now).await?)
    }
}

/// Where a successful job leaves its sandbox.
#[derive(Debug, Clone, Copy)]
pub enum Next {
    /// The state the runner reports, or `or` when it reports none.
    Reported { or: SandboxState },
    /// This state, whatever the runner reports.
    Always(SandboxState),
}

/// Where a failed job leaves its sandbox.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// `error`, with the runner's reason.
    Error,
    /// Back where it was before the job (only the job's own work failed).
    Previous,
}

/// The result rules every kind shares. While the sandbox is still in the job's step: a success records what the
/// runner says of it and moves it to `next` (an ephemeral sandbox that stopped is destroyed at once); a failure
/// moves it as `failure` says. A success after the sandbox moved on (deleted while starting) keeps what the runner
/// said about its daemon, unless it is being deleted.
pub async fn settle(done: &mut JobDone<'_>, step: &Step, next: Next, failure: Failure) -> ApiResult<()> {
    let now = done.now;
    match done.outcome {
        JobOutcome::Succeeded { sandbox: info, .. } if step.in_step => {
            let info = info.as_deref();
            if let Some(info) = info {
                record_info(done.conn, info).await?;
            }
            let next = match next {
                Next::Always(s) => s,
                Next::Reported { or } => info.map_or(or, |i| i.state),
            };
            let reason = info.and_then(|i| i.error_reason.clone()).filter(|_| next == SandboxState::Error);
            sandboxes::set_state(done.conn, &step.row.id, next, reason.as_deref(), now).await?;
            if next == SandboxState::Stopped {
                delete_if_ephemeral(done.conn, &step.row, now).await?;
            }
        }
        JobOutcome::Succeeded { sandbox: Some(info), .. }
            if !matches!(step.current, SandboxState::Destroyed | SandboxState::Destroying) =>
        {
            record_info(done.conn, info).await?;
        }
        JobOutcome::Failed { code, message } if step.in_step => match failure {
            Failure::Previous => done.set_state(&step.row.id, done.prev, None).await?,
            Failure::Error => {
                let reason = format!("{message} ({code:?})");
                done.set_state(&step.row.id, SandboxState::Error, Some(&reason)).await?;
            }
        },
        _ => {}
    }
    Ok(())
}

/// The SSH address of a sandbox whose daemon listens at `daemon_addr`.
fn ssh_addr(daemon_addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = daemon_addr.parse().ok()?;
    Some(std::net::SocketAddr::new(addr.ip(), ports::SSH).to_string())
}

/// Records what a runner says about a sandbox's daemon.
pub(crate) async fn record_info(conn: &mut AnyConnection, info: &SandboxInfo) -> Result<(), sqlx::Error> {
    sandboxes::record_info(conn, info, reported_ssh(info)).await
}

/// The SSH address a runner reported (a published port), else the one derived from its daemon address.
fn reported_ssh(info: &SandboxInfo) -> Option<String> {
    info.daemon_addr.as_ref()?;
    info.ssh_addr.clone().or_else(|| info.daemon_addr.as_deref().and_then(ssh_addr))
}

/// Whether `row` already holds what `info` says of the sandbox's daemon (so [`record_info`] would change nothing).
fn knows_daemon(row: &Row, info: &SandboxInfo) -> bool {
    row.provisioned != 0
        && row.daemon_addr == info.daemon_addr
        && row.ssh_addr == reported_ssh(info)
        && row.daemon_token == info.daemon_token
        && row.daemon_host_key == info.daemon_host_key
}

/// After a sandbox stopped: destroy it at once when its auto-delete interval is 0 (ephemeral). The caller wakes
/// the runner after committing.
async fn delete_if_ephemeral(conn: &mut AnyConnection, row: &Row, now: i64) -> Result<(), sqlx::Error> {
    let Some(runner) = row.runner_id.as_deref() else { return Ok(()) };
    if row.auto_delete != 0 {
        return Ok(());
    }
    let job = jobs::destroy::job(&row.id);
    jobs::enqueue(conn, runner, &job, SandboxState::Stopped, SandboxState::Destroying, now).await?;
    sandboxes::set_state(conn, &row.id, SandboxState::Destroying, None, now).await?;
    sandboxes::set_text(conn, &row.id, Text::Desired, "destroyed").await
}

/// Applies one unrequested report of `runner_id` about a sandbox (its state, and with a full report what it knows
/// of the daemon).
async fn observe(
    app: &App,
    conn: &mut AnyConnection,
    runner_id: &str,
    sandbox_id: &str,
    reported: SandboxState,
    reason: Option<String>,
    info: Option<&SandboxInfo>,
) -> ApiResult<()> {
    let now = app.now();
    let Some(row) = sandboxes::load(app.db.kind, conn, None, sandbox_id, true).await? else {
        tracing::warn!(runner_id, sandbox_id, "runner reports a sandbox the API does not know");
        return Ok(());
    };
    if row.runner_id.as_deref() != Some(runner_id) {
        tracing::warn!(runner_id, sandbox_id, "runner reports a sandbox placed elsewhere; ignored");
        return Ok(());
    }
    let busy = jobs::in_flight(conn, &row.id).await?;
    // A runner's full report mostly repeats what the row holds: written only when something changed.
    if let Some(info) = info
        && !busy
        && row.stored_state() != SandboxState::Destroyed
        && !knows_daemon(&row, info)
    {
        record_info(conn, info).await?;
    }
    let current = row.stored_state();
    let Some(next) = state::observe(current, reported, busy) else { return Ok(()) };
    let reason = reason.as_deref().filter(|_| next != SandboxState::Started);
    sandboxes::set_state(conn, &row.id, next, reason, now).await?;
    if state::host_stopped(current, next, &row.desired_state) {
        // Not the user's stop: the lifecycle starts it again (an ephemeral one too: nobody asked it to end).
        let fresh = now.saturating_sub(row.state_at) >= state::HOST_RESTART_RESET_AFTER_MS;
        sandboxes::mark_host_stop(conn, &row.id, fresh).await?;
        tracing::info!(runner_id, sandbox_id, state = %next, "the host stopped a sandbox its user wants started");
    } else if next == SandboxState::Stopped {
        delete_if_ephemeral(conn, &row, now).await?;
    }
    Ok(())
}

/// Starts again a sandbox the host stopped, when [`state::host_restart_due`] says so (re-checked under the row's
/// lock, so two API instances do not both start it). Its desired state stays as the user left it, and the restart
/// is counted. `Ok(false)`: not due (or no longer).
pub async fn restart_host_stopped(app: &App, id: &str) -> ApiResult<bool> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let Some(row) = sandboxes::load(app.db.kind, &mut tx, None, id, true).await? else { return Ok(false) };
    let current = row.effective_state(app, now);
    if !state::host_restart_due(&row, current, now) || jobs::in_flight(&mut tx, &row.id).await? {
        return Ok(false);
    }
    let Some(runner) = row.runner_id.clone() else { return Ok(false) };
    // Stopped and error sandboxes hold no compute: the restart takes it back, within the organization's quota.
    quota::check(&mut tx, &row.organization_id, row.cpu, row.memory, 0, 0).await?;
    jobs::enqueue(&mut tx, &runner, &jobs::start::plan(&row), current, SandboxState::Starting, now).await?;
    sandboxes::set_state(&mut tx, &row.id, SandboxState::Starting, None, now).await?;
    sandboxes::count_host_restart(&mut tx, &row.id).await?;
    tx.commit().await?;
    tracing::info!(sandbox_id = %row.id, runner_id = %runner, attempt = row.host_restarts + 1, "restarting a sandbox the host stopped");
    app.wake_runner(&runner);
    app.wake_routes();
    Ok(true)
}

/// How many sandboxes one transaction of a runner's report handles ([`state_changes`], [`reconcile`], the usage
/// samples of a heartbeat).
pub const BATCH: usize = 64;

/// A runner's unrequested state changes (a process exited, an OOM kill), [`BATCH`] sandboxes a transaction.
pub async fn state_changes(app: &App, runner_id: &str, changes: Vec<StateChange>) -> ApiResult<()> {
    for batch in changes.chunks(BATCH) {
        let mut tx = app.db.pool.begin().await?;
        for c in batch {
            let mut reason = c.reason.clone();
            if c.oom_killed {
                reason = Some(format!("{} (out of memory)", reason.unwrap_or_else(|| "killed".into())));
            } else if let Some(code) = c.exit_code {
                reason = Some(format!("{} (exit code {code})", reason.unwrap_or_else(|| "exited".into())));
            }
            observe(app, &mut tx, runner_id, &c.sandbox_id, c.state, reason, None).await?;
        }
        tx.commit().await?;
    }
    app.wake_routes();
    app.wake_runner(runner_id);
    Ok(())
}

/// A runner's full picture (what it sends when it (re)starts): apply the states it knows, and mark the sandboxes
/// it no longer has. [`BATCH`] sandboxes a transaction: a sandbox missing from the picture is read again (locked)
/// in its batch, so one that moved meanwhile is judged as it is now.
pub async fn reconcile(app: &App, runner_id: &str, list: Vec<SandboxInfo>) -> ApiResult<()> {
    let now = app.now();
    // Jobs it had claimed and not finished are handed out again on its next poll instead of after the redelivery
    // delay (it ignores those it is still running).
    jobs::redeliver_now(&mut *app.db.pool.acquire().await?, runner_id).await?;
    for batch in list.chunks(BATCH) {
        let mut tx = app.db.pool.begin().await?;
        for info in batch {
            observe(app, &mut tx, runner_id, &info.id, info.state, info.error_reason.clone(), Some(info)).await?;
        }
        tx.commit().await?;
    }
    let seen: HashSet<&str> = list.iter().map(|i| i.id.as_str()).collect();
    let placed = sandboxes::on_runner(&mut *app.db.pool.acquire().await?, runner_id).await?;
    // A sandbox waiting for its image build has no container yet; an archived one has none by design (its
    // filesystem is in the archive store).
    let missing: Vec<String> = placed
        .into_iter()
        .filter(|(id, st)| !seen.contains(id.as_str()) && !super::builds::waits_for_build(st) && st != "archived")
        .map(|(id, _)| id)
        .collect();
    for batch in missing.chunks(BATCH) {
        let mut tx = app.db.pool.begin().await?;
        for id in batch {
            let Some(row) = sandboxes::load(app.db.kind, &mut tx, None, id, true).await? else { continue };
            let st = row.state.as_str();
            if row.runner_id.as_deref() != Some(runner_id)
                // Already failed, with the reason why (a create that timed out while the runner was cut off), which
                // says more than a missing container would.
                || matches!(st, "destroyed" | "archived" | "error")
                || super::builds::waits_for_build(st)
                || jobs::in_flight(&mut tx, id).await?
            {
                continue;
            }
            if st == "destroying" {
                sandboxes::set_state(&mut tx, id, SandboxState::Destroyed, None, now).await?;
            } else {
                let reason = format!("runner {runner_id} no longer has this sandbox's container");
                sandboxes::set_state(&mut tx, id, SandboxState::Error, Some(&reason), now).await?;
            }
        }
        tx.commit().await?;
    }
    app.wake_routes();
    app.wake_runner(runner_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ssh_addr_uses_the_daemon_ip() {
        assert_eq!(super::ssh_addr("172.17.0.2:2280").as_deref(), Some("172.17.0.2:22220"));
        assert_eq!(super::ssh_addr("[::1]:2280").as_deref(), Some("[::1]:22220"));
        assert_eq!(super::ssh_addr("nonsense"), None);
    }
}
