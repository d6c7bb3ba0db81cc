//! Draining a host: a runner's schedule, set by the operator (`/api/admin/runners/{id}/...`, `sandbar runner`).
//!
//! - `active`: placement may put new sandboxes (creates, forks, builds, snapshot pulls, restores) on it.
//! - `cordoned`: it takes no new sandbox; what runs there is left alone and keeps every action (stop, start,
//!   archive, delete) but a restore, which goes to another runner ([`restore_target`]).
//! - `draining`: cordoned, and meant to be emptied. Without `move`, its sandboxes are left alone (the operator
//!   stops or deletes them, or waits for their timers). With `move`, the lifecycle ([`move_out`]) empties it by
//!   archive and restore: a started sandbox is stopped, archived (to the archive store) and restored on another
//!   runner, so it ends started there with its files; a stopped one is archived (it restores elsewhere at its next
//!   start); an archived one stays archived. A sandbox that mounts a volume stays (its data lives on that host,
//!   see `crate::domain::volumes`), and so does a paused one or one in `error`.
//!
//! A restore onto another runner needs the archive store to be shared between the runners (an `s3://` store, or
//! one directory both reach); a runner without the archive fails the restore with its reason and the sandbox stays
//! `archived`, so nothing is lost and a later start tries again.

use serde::Serialize;
use sqlx::AnyConnection;

use super::apply::act;
use super::placement;
use super::state::Action;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::drain::{self as store, RunnerRow};
use crate::store::sandboxes::Row;

/// What a runner takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Active,
    Cordoned,
    Draining,
}

impl Schedule {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Cordoned => "cordoned",
            Self::Draining => "draining",
        }
    }
}

/// A runner as `GET /api/admin/runners` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerView {
    pub id: String,
    pub version: String,
    /// `active`, `cordoned` or `draining`.
    pub schedule: String,
    /// A draining runner whose sandboxes are being moved to others.
    pub moving: bool,
    /// Heartbeating within `--runner-unreachable`.
    pub reachable: bool,
    pub cpu: i64,
    /// GiB.
    pub memory: i64,
    /// GiB.
    pub disk: i64,
    /// Sandboxes placed on it that are not destroyed.
    pub sandboxes: i64,
    /// Milliseconds since the epoch.
    pub registered_at: i64,
    pub last_heartbeat: i64,
}

fn view(app: &App, r: RunnerRow) -> RunnerView {
    RunnerView {
        reachable: r.last_heartbeat >= placement::reachable_since(app, app.now()),
        moving: r.schedule == Schedule::Draining.as_str() && r.move_out != 0,
        id: r.id,
        version: r.version,
        schedule: r.schedule,
        cpu: r.cpu,
        memory: r.memory,
        disk: r.disk,
        sandboxes: r.sandboxes,
        registered_at: r.registered_at,
        last_heartbeat: r.last_heartbeat,
    }
}

/// Every registered runner.
pub async fn list(app: &App) -> ApiResult<Vec<RunnerView>> {
    Ok(store::list(&app.db.pool, None).await?.into_iter().map(|r| view(app, r)).collect())
}

/// Sets `runner`'s schedule (`move_out` only with [`Schedule::Draining`]); the runner as it is now.
pub async fn set(app: &App, runner: &str, schedule: Schedule, move_out: bool) -> ApiResult<RunnerView> {
    let move_out = move_out && schedule == Schedule::Draining;
    if !store::set_schedule(&app.db.pool, runner, schedule.as_str(), move_out).await? {
        return Err(ApiError::not_found(format!(
            "runner {runner} is not registered (GET /api/admin/runners lists them)"
        )));
    }
    if !move_out {
        // Sandboxes half-way out stay where the last step left them (stopped or archived, never lost).
        store::cancel_moves(&app.db.pool, runner).await?;
    }
    tracing::info!(runner_id = %runner, schedule = schedule.as_str(), move_out, "runner schedule set");
    let row = store::list(&app.db.pool, Some(runner)).await?.into_iter().next();
    row.map(|r| view(app, r)).ok_or_else(|| ApiError::not_found(format!("runner {runner} is not registered")))
}

/// Where an archived sandbox's restore goes: its runner while that one is active and reachable (and always when
/// it mounts a volume, whose data is there), otherwise the runner [`placement::place`] picks. `None`: it has no
/// runner at all.
pub async fn restore_target(app: &App, conn: &mut AnyConnection, row: &Row) -> ApiResult<Option<String>> {
    let Some(home) = row.runner_id.clone() else { return Ok(None) };
    if !row.volume_mounts().is_empty() {
        return Ok(Some(home));
    }
    let active = store::schedule_of(conn, &home).await?.as_deref() == Some(Schedule::Active.as_str());
    let reachable = row.runner_seen.is_some_and(|seen| seen >= placement::reachable_since(app, app.now()));
    if active && reachable {
        return Ok(Some(home));
    }
    let target = placement::place(app, conn, row.cpu, row.memory, row.disk).await?;
    if target != home {
        store::rehome(conn, &row.id, &target).await?;
        tracing::info!(sandbox_id = %row.id, from = %home, to = %target, "archived sandbox restores on another runner");
    }
    Ok(Some(target))
}

/// One lifecycle pass over the runners being emptied: each sandbox takes its next step (stop, archive, restore
/// elsewhere). Returns the sandboxes that took one; refusals (no room elsewhere, a runner away) wait for the
/// next pass.
pub async fn move_out(app: &App) -> Result<Vec<String>, sqlx::Error> {
    let mut stepped = Vec::new();
    for s in store::to_move(&app.db.pool).await? {
        let mounts: Vec<sandbar_proto::runner::VolumeMount> = serde_json::from_str(&s.volumes).unwrap_or_default();
        if !mounts.is_empty() {
            continue;
        }
        let from = s.runner_id.as_str();
        let action = match (s.state.as_str(), s.restart) {
            ("started", _) => {
                store::start_move(&app.db.pool, &s.id, from, true, app.now()).await?;
                Action::Stop { force: false }
            }
            ("stopped", _) => {
                store::start_move(&app.db.pool, &s.id, from, false, app.now()).await?;
                Action::Archive
            }
            ("archived", Some(1)) => Action::Start,
            ("archived", Some(_)) => {
                store::end_move(&app.db.pool, &s.id).await?;
                continue;
            }
            _ => continue,
        };
        match act(app, None, &s.id, action, None).await {
            Ok(_) => {
                if action == Action::Start {
                    store::end_move(&app.db.pool, &s.id).await?;
                }
                stepped.push(s.id);
            }
            Err(e) => tracing::info!(sandbox_id = %s.id, error = %e.message, "moving off a draining runner deferred"),
        }
    }
    Ok(stepped)
}
