//! Placement: which runner a new sandbox (or build) goes to (runners' use is their totals, `crate::store::totals`;
//! [`reserve`] adds a new sandbox to them). [`place`] picks the reachable runner with the most
//! free room that fits; [`place_on`] checks the one runner an image lives on (built images, forks and snapshots
//! taken from a sandbox are local to a runner: nothing is pushed to a registry). CPU and memory are overcommitted by the
//! configured factors, disk is not. Neither puts anything on a cordoned or draining runner (`super::drain`).

use sqlx::AnyConnection;

use crate::error::{ApiError, ApiResult};
use crate::store::runners::{self, Load, Which};
use crate::store::totals::{self, Delta};
use crate::{App, Config};

/// How long a runner may stay silent before it is unreachable (`--runner-unreachable`).
pub fn unreachable_after_ms(config: &Config) -> i64 {
    i64::try_from(config.runner_unreachable.as_millis()).unwrap_or(i64::MAX)
}

/// The oldest heartbeat of a reachable runner, at `now`.
pub fn reachable_since(app: &App, now: i64) -> i64 {
    now - unreachable_after_ms(&app.config)
}

/// `(cpu, memory, disk)` a runner can take with the configured overcommit.
fn capacity(app: &App, r: &Load) -> (i64, i64, i64) {
    let l = &app.config.limits;
    (r.cpu * l.cpu_overcommit, r.memory * l.memory_overcommit, r.disk)
}

fn fits(app: &App, r: &Load, cpu: i64, memory: i64, disk: i64) -> bool {
    let (c, m, d) = capacity(app, r);
    r.used.cpu + cpu <= c && r.used.memory + memory <= m && r.used.disk + disk <= d
}

/// Picks the reachable runner with the most free room that fits the request.
pub async fn place(app: &App, conn: &mut AnyConnection, cpu: i64, memory: i64, disk: i64) -> ApiResult<String> {
    let mut rows = runners::loads(conn, Which::SeenSince(reachable_since(app, app.now()))).await?;
    // Cordoned and draining runners take nothing new (`super::drain`).
    let closed = crate::store::drain::unschedulable(conn).await?;
    let reachable = rows.len();
    rows.retain(|r| !closed.contains(&r.id));
    if rows.is_empty() && reachable > 0 {
        return Err(ApiError::unavailable(format!(
            "no runner takes new sandboxes: the {reachable} reachable runner(s) are cordoned or draining; \
             uncordon one or add a runner"
        )));
    }
    if rows.is_empty() {
        return Err(ApiError::unavailable("no runner is available: start a runner (sandbar-runner) and retry"));
    }
    let best = rows
        .iter()
        .filter(|r| fits(app, r, cpu, memory, disk))
        .map(|r| {
            let (c, m, d) = capacity(app, r);
            // Room left after placing this sandbox, as fractions of each resource.
            let frac = |used: i64, cap: i64| if cap > 0 { (cap - used) as f64 / cap as f64 } else { 0.0 };
            (frac(r.used.cpu + cpu, c) + frac(r.used.memory + memory, m) + frac(r.used.disk + disk, d), &r.id)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)));
    match best {
        Some((_, id)) => Ok(id.clone()),
        None => Err(ApiError::unavailable(format!(
            "no runner has room for {cpu} vCPU, {memory} GiB memory and {disk} GiB disk ({} reachable runner(s)); \
             stop or delete sandboxes, or add a runner",
            rows.len()
        ))),
    }
}

/// Adds a new sandbox to runner `runner`'s totals; with `fit`, only when it still has room (the same overcommit
/// as [`place`], checked and added in one statement: two concurrent creates cannot both take the last room), else
/// 503. Call it after the sequence row is taken (`crate::store::totals`).
pub async fn reserve(app: &App, conn: &mut AnyConnection, runner: &str, add: Delta, fit: bool) -> ApiResult<()> {
    if !fit {
        return Ok(totals::shift_runner(conn, runner, add).await?);
    }
    let l = &app.config.limits;
    for _ in 0..2 {
        if totals::add_within_capacity(conn, runner, add, l.cpu_overcommit, l.memory_overcommit).await? {
            return Ok(());
        }
        totals::ensure_runner(conn, runner).await?;
    }
    Err(ApiError::unavailable(format!(
        "runner {runner} has no room left for {} vCPU, {} GiB memory and {} GiB disk (taken meanwhile); retry, or \
         stop or delete sandboxes",
        add.cpu, add.memory, add.disk
    )))
}

/// Refuses unless `runner` heartbeats and has room for the request (the same overcommit as [`place`]): copies
/// live on one runner, so there is no other choice.
pub async fn place_on(
    app: &App,
    conn: &mut AnyConnection,
    runner: &str,
    cpu: i64,
    memory: i64,
    disk: i64,
) -> ApiResult<String> {
    let Some(r) = runners::loads(conn, Which::Id(runner)).await?.into_iter().next() else {
        return Err(ApiError::unavailable(format!("runner {runner}, which holds the image, is not registered")));
    };
    if r.last_heartbeat < reachable_since(app, app.now()) {
        return Err(ApiError::unavailable(format!(
            "runner {runner}, which holds the image (images are local to a runner), is unreachable; retry when it is back"
        )));
    }
    if let Some(schedule) = crate::store::drain::schedule_of(conn, runner).await?.filter(|s| s != "active") {
        return Err(ApiError::unavailable(format!(
            "runner {runner}, which holds the image (images are local to a runner), is {schedule} and takes no new \
             sandboxes; uncordon it, or create from another image"
        )));
    }
    if !fits(app, &r, cpu, memory, disk) {
        return Err(ApiError::unavailable(format!(
            "runner {runner}, which holds the image (images are local to a runner), has no room for {cpu} vCPU, \
             {memory} GiB memory and {disk} GiB disk; stop or delete sandboxes there and retry"
        )));
    }
    Ok(runner.to_owned())
}
