//! The sandbox state machine's rules, in one place: which user actions each Daytona state allows, what state and
//! runner job they lead to ([`plan`], [`plan_copy`], [`plan_pause`], [`plan_resume`]), how unrequested runner
//! reports move a sandbox ([`observe`]), and the state users see ([`Row::effective_state`]). A refusal is a 400
//! whose message says why and what would work. Pure functions: `super::apply` carries the decisions out, and each
//! job kind's result is applied by `crate::jobs`.

use SandboxState as S;
use sandbar_proto::runner::SandboxState;

use crate::App;
pub use crate::store::IDLE_STATES_SQL;
use crate::store::sandboxes::Row;
pub use crate::store::sandboxes::parse_state as parse;

impl Row {
    /// True when the sandbox sits on a runner that stopped heartbeating.
    pub fn runner_unreachable(&self, app: &App, now_ms: i64) -> bool {
        self.runner_id.is_some()
            && self.stored_state() != SandboxState::Destroyed
            && self.runner_seen.is_none_or(|seen| seen < now_ms - super::placement::unreachable_after_ms(&app.config))
    }

    /// The state users and the proxy see: `unknown` while the runner is unreachable.
    pub fn effective_state(&self, app: &App, now_ms: i64) -> SandboxState {
        if self.runner_unreachable(app, now_ms) { SandboxState::Unknown } else { self.stored_state() }
    }
}

/// What a user (or a lifecycle timer) asks of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop {
        force: bool,
    },
    Delete,
    Archive,
    Recover,
    /// `disk` is true when the disk size changes.
    Resize {
        disk: bool,
    },
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Stop { .. } => "stopped",
            Self::Delete => "deleted",
            Self::Archive => "archived",
            Self::Recover => "recovered",
            Self::Resize { .. } => "resized",
        }
    }
}

/// The runner job an action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobTag {
    /// Recreate a sandbox whose creation failed (recover of a never-provisioned sandbox).
    Create,
    Start,
    Stop {
        force: bool,
    },
    Destroy,
    Resize,
    /// Export a stopped sandbox's filesystem to the runner's archive store and remove its container.
    Archive,
    /// Bring an archived sandbox back from the store and start it.
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Already there (or on the way): answer 200 with the sandbox as it is.
    Noop,
    /// Move to `next` with no runner work.
    Set(SandboxState),
    /// Move to `next` and hand the runner `job`.
    Job(SandboxState, JobTag),
}

/// Why an action is refused: the 400's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse(state: SandboxState, action: Action, hint: &str) -> Result<Plan, Refusal> {
    Err(Refusal(format!("Sandbox is {state} and cannot be {}: {hint}", action.verb())))
}

/// `provisioned`: a container was created at least once (recover then starts it instead of creating it).
pub fn plan(state: SandboxState, action: Action, provisioned: bool) -> Result<Plan, Refusal> {
    use Action as A;
    if state == S::Unknown && action != A::Delete {
        return refuse(state, action, "its runner is unreachable; retry when the runner is back, or delete it");
    }
    match action {
        A::Start => match state {
            S::Stopped => Ok(Plan::Job(S::Starting, JobTag::Start)),
            S::Archived => Ok(Plan::Job(S::Restoring, JobTag::Restore)),
            S::Started | S::Starting | S::Restoring => Ok(Plan::Noop),
            S::Error | S::BuildFailed => refuse(state, action, "recover it instead"),
            S::Destroyed | S::Destroying => refuse(state, action, "it is deleted"),
            S::Archiving => refuse(state, action, "wait until it is archived, then start it"),
            _ => refuse(state, action, "wait until it is stopped"),
        },
        A::Stop { force } => match state {
            // A paused sandbox is thawed by the runner first, so it still drains.
            S::Started | S::Paused => Ok(Plan::Job(S::Stopping, JobTag::Stop { force })),
            S::Stopped => Ok(Plan::Noop),
            S::Stopping if force => Ok(Plan::Job(S::Stopping, JobTag::Stop { force })),
            S::Stopping => Ok(Plan::Noop),
            S::Starting | S::Restoring | S::Resizing | S::Error if force => {
                Ok(Plan::Job(S::Stopping, JobTag::Stop { force }))
            }
            S::Error => refuse(state, action, "use force=true to stop it anyway, or recover it"),
            S::Archived | S::Archiving => refuse(state, action, "an archived sandbox is not running"),
            S::Destroyed | S::Destroying => refuse(state, action, "it is deleted"),
            _ => refuse(state, action, "wait until it is started (or use force=true)"),
        },
        A::Delete => match state {
            S::Destroyed | S::Destroying => Ok(Plan::Noop),
            _ => Ok(Plan::Job(S::Destroying, JobTag::Destroy)),
        },
        A::Archive => match state {
            S::Stopped => Ok(Plan::Job(S::Archiving, JobTag::Archive)),
            S::Archived | S::Archiving => Ok(Plan::Noop),
            S::Destroyed | S::Destroying => refuse(state, action, "it is deleted"),
            _ => refuse(state, action, "only a stopped sandbox can be archived; stop it first"),
        },
        A::Recover => match state {
            S::Error | S::BuildFailed if provisioned => Ok(Plan::Job(S::Starting, JobTag::Start)),
            S::Error | S::BuildFailed => Ok(Plan::Job(S::Creating, JobTag::Create)),
            _ => refuse(state, action, "only a sandbox in error can be recovered"),
        },
        A::Resize { disk } => match state {
            S::Stopped => Ok(Plan::Job(S::Resizing, JobTag::Resize)),
            S::Started if disk => refuse(state, action, "disk can only be resized while the sandbox is stopped"),
            S::Started => Ok(Plan::Job(S::Resizing, JobTag::Resize)),
            S::Destroyed | S::Destroying => refuse(state, action, "it is deleted"),
            _ => refuse(state, action, "resize a started or stopped sandbox"),
        },
    }
}

/// The state a runner's unrequested report moves a sandbox to, or `None` to ignore it. A deleted sandbox stays
/// deleted; while a job is in flight the job's result decides (the report may predate the job).
pub fn observe(current: SandboxState, reported: SandboxState, job_in_flight: bool) -> Option<SandboxState> {
    if matches!(current, S::Destroyed) || job_in_flight || current == reported {
        return None;
    }
    if current == S::Archived && reported == S::Stopped {
        // A stale report from before the archive removed the container.
        return None;
    }
    Some(reported)
}

/// Whether a change of network settings goes to the runner (`true`: it applies it now or keeps it for the next
/// start; a runner that no longer has the sandbox ignores it, and a re-created sandbox gets the stored settings).
/// A deleted sandbox's settings cannot change.
pub fn network_update(state: SandboxState) -> Result<bool, Refusal> {
    match state {
        S::Destroyed | S::Destroying => {
            Err(Refusal(format!("Sandbox is {state} and its network settings cannot be changed: it is deleted")))
        }
        _ => Ok(true),
    }
}

/// What copies a sandbox's filesystem: a fork (a new sandbox) or a snapshot (an image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Fork,
    Snapshot,
}

/// Whether a sandbox in `state` can be forked or snapshotted: its container must exist, be started or stopped, and
/// not be in the middle of another operation. A fork leaves its source's state alone; a snapshot moves it to
/// [`SNAPSHOT_VIA`] and back to where it was.
pub fn plan_copy(state: SandboxState, what: CopyKind) -> Result<(), Refusal> {
    let verb = match what {
        CopyKind::Fork => "forked",
        CopyKind::Snapshot => "snapshotted",
    };
    let hint = match state {
        S::Started | S::Stopped => return Ok(()),
        S::Unknown => "its runner is unreachable; retry when the runner is back",
        S::Destroyed | S::Destroying => "it is deleted",
        S::Archived | S::Archiving => "its filesystem is archived; start it first",
        S::Error | S::BuildFailed => "recover it first",
        S::Paused | S::Pausing => "resume it first",
        S::Snapshotting => "a snapshot of it is being taken; wait until that finishes",
        _ => "wait until it is started or stopped",
    };
    Err(Refusal(format!("Sandbox is {state} and cannot be {verb}: {hint}")))
}

/// The state a sandbox shows while a snapshot of it is taken; the job's result returns it to its previous state.
pub const SNAPSHOT_VIA: SandboxState = S::Snapshotting;

/// Pause (`POST /sandbox/{id}/pause`): a started sandbox moves to `pausing` (the job's result: `paused`); a paused
/// or pausing one is left alone (`None`).
pub fn plan_pause(state: SandboxState) -> Result<Option<SandboxState>, Refusal> {
    match state {
        S::Started => Ok(Some(S::Pausing)),
        S::Paused | S::Pausing => Ok(None),
        S::Unknown => Err(Refusal(format!("Sandbox is {state} and cannot be paused: its runner is unreachable"))),
        S::Destroyed | S::Destroying => Err(Refusal(format!("Sandbox is {state} and cannot be paused: it is deleted"))),
        _ => Err(Refusal(format!("Sandbox is {state} and cannot be paused: only a started sandbox can be paused"))),
    }
}

/// Start of a paused sandbox resumes it: `resuming` and a resume job (`JobTag::Start` stands for it; the job's
/// result: `started`). `None`: not paused, so an ordinary start ([`plan`]) applies; a resuming sandbox answers as
/// it is.
pub fn plan_resume(state: SandboxState) -> Option<Plan> {
    match state {
        S::Paused => Some(Plan::Job(S::Resuming, JobTag::Start)),
        S::Resuming => Some(Plan::Noop),
        _ => None,
    }
}

/// Why a sandbox left `started` without being asked ([`observe`] of a stop or error): the host stopped it. Docker
/// restarting without live-restore, the daemon dying, an operator's `docker stop`: the API, which holds the desired
/// state, brings it back ([`host_restart_due`]). A user's or a timer's action clears it.
pub const STOP_CAUSE_HOST: &str = "host";

/// A sandbox the host stopped is started again at most this many times in a row...
pub const MAX_HOST_RESTARTS: i64 = 10;
/// ...the first after this long, each next one after twice the last, up to [`HOST_RESTART_MAX_DELAY_MS`] (about 18
/// minutes in all: long enough for a Docker engine to come back from an upgrade).
pub const HOST_RESTART_FIRST_DELAY_MS: i64 = 2_000;
pub const HOST_RESTART_MAX_DELAY_MS: i64 = 300_000;
/// A sandbox that ran this long before the host stopped it again starts a fresh series of restarts (a crash loop
/// does not: its series runs out and it stays stopped, with its reason).
pub const HOST_RESTART_RESET_AFTER_MS: i64 = 600_000;

/// The wait before restart number `done + 1` of a host-stopped sandbox.
pub fn host_restart_delay_ms(done: i64) -> i64 {
    let shift = u32::try_from(done.clamp(0, 20)).unwrap_or(20);
    HOST_RESTART_FIRST_DELAY_MS.saturating_mul(1 << shift).min(HOST_RESTART_MAX_DELAY_MS)
}

/// Whether the lifecycle starts this sandbox again now: the host stopped it (`stop_cause`), its user still wants it
/// started, it is `stopped` or `error` (not unknown: its runner answers), restarts are left and the backoff since it
/// stopped (`state_at`) has passed.
pub fn host_restart_due(row: &Row, state: SandboxState, now_ms: i64) -> bool {
    row.stop_cause.as_deref() == Some(STOP_CAUSE_HOST)
        && row.desired_state == "started"
        && matches!(state, S::Stopped | S::Error)
        && row.host_restarts < MAX_HOST_RESTARTS
        && now_ms.saturating_sub(row.state_at) >= host_restart_delay_ms(row.host_restarts)
}

/// Whether an unrequested report moving a sandbox from `current` to `next` is the host stopping it while its user
/// wants it started (see [`STOP_CAUSE_HOST`]).
pub fn host_stopped(current: SandboxState, next: SandboxState, desired: &str) -> bool {
    matches!(current, S::Started | S::Paused) && matches!(next, S::Stopped | S::Error) && desired == "started"
}

/// States whose sandboxes hold CPU and memory (for quotas and placement).
pub fn holds_compute(state: SandboxState) -> bool {
    !matches!(state, S::Stopped | S::Archiving | S::Archived | S::Destroyed | S::Error | S::BuildFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_restarts_back_off_and_run_out() {
        assert_eq!(host_restart_delay_ms(0), 2_000);
        assert_eq!(host_restart_delay_ms(1), 4_000);
        assert_eq!(host_restart_delay_ms(7), 256_000);
        assert_eq!(host_restart_delay_ms(8), HOST_RESTART_MAX_DELAY_MS);
        assert_eq!(host_restart_delay_ms(i64::MAX), HOST_RESTART_MAX_DELAY_MS);
        let total: i64 = (0..MAX_HOST_RESTARTS).map(host_restart_delay_ms).sum();
        assert!((15 * 60_000..25 * 60_000).contains(&total), "{total}");
    }

    #[test]
    fn only_what_the_host_stopped_is_restarted() {
        assert!(host_stopped(S::Started, S::Stopped, "started"));
        assert!(host_stopped(S::Started, S::Error, "started"));
        assert!(!host_stopped(S::Started, S::Stopped, "stopped"), "the user asked");
        assert!(!host_stopped(S::Creating, S::Error, "started"), "a failed create is not restarted");
        assert!(!host_stopped(S::Stopped, S::Error, "started"));
    }

    #[test]
    fn unknown_state_refuses_everything_but_delete() {
        assert!(plan(S::Unknown, Action::Start, true).is_err());
        assert_eq!(plan(S::Unknown, Action::Delete, true), Ok(Plan::Job(S::Destroying, JobTag::Destroy)));
    }

    #[test]
    fn archive_refusal_names_the_state() {
        let e = plan(S::Started, Action::Archive, true).unwrap_err();
        assert!(e.0.contains("started") && e.0.contains("stop it first"), "{e}");
    }

    #[test]
    fn archive_and_restore_are_runner_jobs() {
        assert_eq!(plan(S::Stopped, Action::Archive, true), Ok(Plan::Job(S::Archiving, JobTag::Archive)));
        assert_eq!(plan(S::Archiving, Action::Archive, true), Ok(Plan::Noop));
        assert_eq!(plan(S::Archived, Action::Archive, true), Ok(Plan::Noop));
        assert_eq!(plan(S::Archived, Action::Start, true), Ok(Plan::Job(S::Restoring, JobTag::Restore)));
        assert_eq!(plan(S::Restoring, Action::Start, true), Ok(Plan::Noop));
        assert_eq!(plan(S::Archived, Action::Delete, true), Ok(Plan::Job(S::Destroying, JobTag::Destroy)));
        assert_eq!(plan(S::Archiving, Action::Delete, true), Ok(Plan::Job(S::Destroying, JobTag::Destroy)));
        for action in [Action::Start, Action::Stop { force: false }, Action::Recover, Action::Resize { disk: false }] {
            let e = plan(S::Archiving, action, true).unwrap_err();
            assert!(e.0.contains("archiving"), "{e}");
        }
        assert!(!holds_compute(S::Archiving));
        assert!(holds_compute(S::Restoring), "a restore starts the sandbox: it needs its CPU and memory");
        assert_eq!(observe(S::Archived, S::Stopped, false), None);
        assert_eq!(observe(S::Archiving, S::Archived, true), None, "the job's result decides");
    }

    #[test]
    fn idle_list_matches_holds_compute() {
        for s in ["stopped", "archiving", "archived", "destroyed", "error", "build_failed"] {
            assert!(IDLE_STATES_SQL.contains(&format!("'{s}'")));
            assert!(!holds_compute(parse(s)));
        }
        assert!(holds_compute(S::Started));
    }

    #[test]
    fn network_settings_change_until_deleted() {
        assert_eq!(network_update(S::Started), Ok(true));
        assert_eq!(network_update(S::Stopped), Ok(true));
        assert!(network_update(S::Destroyed).unwrap_err().0.contains("deleted"));
    }

    #[test]
    fn only_started_or_stopped_sandboxes_are_copied() {
        for s in [S::Started, S::Stopped] {
            assert_eq!(plan_copy(s, CopyKind::Fork), Ok(()));
            assert_eq!(plan_copy(s, CopyKind::Snapshot), Ok(()));
        }
        let refused = [
            (S::Creating, "wait until"),
            (S::Starting, "wait until"),
            (S::Stopping, "wait until"),
            (S::Resizing, "wait until"),
            (S::Snapshotting, "being taken"),
            (S::Error, "recover it"),
            (S::BuildFailed, "recover it"),
            (S::Archived, "start it first"),
            (S::Destroying, "deleted"),
            (S::Destroyed, "deleted"),
            (S::Unknown, "unreachable"),
            (S::Paused, "resume it"),
        ];
        for (s, hint) in refused {
            let e = plan_copy(s, CopyKind::Fork).unwrap_err();
            assert!(e.0.contains(s.as_str()) && e.0.contains("forked") && e.0.contains(hint), "{e}");
            let e = plan_copy(s, CopyKind::Snapshot).unwrap_err();
            assert!(e.0.contains("snapshotted") && e.0.contains(hint), "{e}");
        }
        assert!(holds_compute(SNAPSHOT_VIA));
    }

    #[test]
    fn pause_and_resume() {
        assert_eq!(plan_pause(S::Started), Ok(Some(S::Pausing)));
        assert_eq!(plan_pause(S::Paused), Ok(None));
        assert_eq!(plan_pause(S::Pausing), Ok(None));
        for s in [S::Stopped, S::Creating, S::Error, S::Archived, S::Snapshotting, S::Resuming] {
            let e = plan_pause(s).unwrap_err();
            assert!(e.0.contains("only a started sandbox"), "{e}");
        }
        assert!(plan_pause(S::Unknown).unwrap_err().0.contains("unreachable"));
        assert!(plan_pause(S::Destroyed).unwrap_err().0.contains("deleted"));
        assert_eq!(plan_resume(S::Paused), Some(Plan::Job(S::Resuming, JobTag::Start)));
        assert_eq!(plan_resume(S::Resuming), Some(Plan::Noop));
        assert_eq!(plan_resume(S::Stopped), None);
        assert_eq!(plan_resume(S::Started), None);
        // A paused sandbox can be stopped and deleted, not forked; an ordinary start does not apply to it.
        assert_eq!(
            plan(S::Paused, Action::Stop { force: false }, true),
            Ok(Plan::Job(S::Stopping, JobTag::Stop { force: false }))
        );
        assert_eq!(plan(S::Paused, Action::Delete, true), Ok(Plan::Job(S::Destroying, JobTag::Destroy)));
        assert!(plan_copy(S::Paused, CopyKind::Fork).is_err());
        assert!(holds_compute(S::Paused), "a paused sandbox keeps its memory");
    }

    #[test]
    fn parse_round_trips() {
        assert_eq!(parse("pending_build"), S::PendingBuild);
        assert_eq!(parse("nonsense"), S::Unknown);
    }
}
