//! Placement: which runner a new sandbox (or build) goes to (runners' use is their totals, `crate::store::totals`;
//! [`reserve`] adds a new sandbox to them). [`place`] picks the reachable runner with the most
//! free room that fits; [`place_on`] checks the one runner an image lives on (built images, forks and snapshots
//! taken from a sandbox are local to the runner that made them). CPU and memory are overcommitted by the
//! configured factors, disk is not. Neither puts anything on a cordoned or draining runner (`super::drain`).
//!
//! **Images that travel.** A runner given an internal registry (`image_registry`, `runner/src/host/registry.rs`)
//! pushes the snapshots and builds it makes and reports the pushed reference; the API keeps it with the snapshot
//! or build (`pushed_image`, or `push_error` when the push failed) and a sandbox of a pushed image is placed by
//! [`place`] like one of the default image, its create job carrying the reference (`pull_from`) for a runner that
//! lacks the image. The sandbox keeps it (`image_source`), so a restore elsewhere (and a fork's, whose image is its
//! source's base) can pull its base too. Without a registry, or when the push failed, nothing changes: the image is
//! pinned to its runner and [`place_on`] decides. A fork itself stays on its source's runner: its files are the
//! source's container layer, copied there.

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
    let scored: Vec<(Room, &String)> = rows
        .iter()
        .filter(|r| fits(app, r, cpu, memory, disk))
        .map(|r| {
            let (c, m, d) = capacity(app, r);
            // Room left after placing this sandbox, as fractions of each resource, then in vCPU and GiB.
            let frac = |used: i64, cap: i64| if cap > 0 { (cap - used) as f64 / cap as f64 } else { 0.0 };
            let share = frac(r.used.cpu + cpu, c) + frac(r.used.memory + memory, m) + frac(r.used.disk + disk, d);
            ((share, (c - r.used.cpu - cpu).saturating_add(m - r.used.memory - memory)), &r.id)
        })
        .collect();
    match most_room(&scored, random_index) {
        Some(id) => Ok(id.clone()),
        None => Err(ApiError::unavailable(format!(
            "no runner has room for {cpu} vCPU, {memory} GiB memory and {disk} GiB disk ({} reachable runner(s)); \
             stop or delete sandboxes, or add a runner",
            rows.len()
        ))),
    }
}

/// A runner's room after placing a sandbox: the fractions of each resource left, summed, then vCPU plus GiB of
/// memory left (which decides between runners left equally full, a bigger one taking more).
type Room = (f64, i64);

/// The runner with the most room; among runners with exactly as much, a random one (`pick(n)` picks among `n`).
///
/// Why random: a plain create places before its transaction (`super::sandboxes::create`), so a burst of creates
/// reads the same totals. With a fixed tie-break every one of them would pick the same runner (until it refused
/// for room) instead of spreading over runners that are equally free.
fn most_room<'a>(scored: &[(Room, &'a String)], pick: impl FnOnce(usize) -> usize) -> Option<&'a String> {
    let cmp = |a: &Room, b: &Room| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    let best = scored.iter().map(|s| s.0).max_by(cmp)?;
    let tied: Vec<&'a String> = scored.iter().filter(|s| cmp(&s.0, &best).is_eq()).map(|s| s.1).collect();
    tied.get(pick(tied.len()) % tied.len().max(1)).copied()
}

/// A random index below `n` (0 when `n` is 0 or 1, or when the system has no randomness to give).
fn random_index(n: usize) -> usize {
    if n < 2 {
        return 0;
    }
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) % n as u64) as usize,
        Err(_) => 0,
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

#[cfg(test)]
mod tests {
    use super::most_room;

    #[test]
    fn the_most_room_wins_and_ties_are_spread() {
        let (a, b, c) = ("a".to_owned(), "b".to_owned(), "c".to_owned());
        assert_eq!(most_room(&[], |_| 0), None);
        assert_eq!(most_room(&[((1.0, 9), &a), ((2.5, 1), &b), ((2.0, 5), &c)], |_| 0), Some(&b));
        // Equally full: the bigger one.
        assert_eq!(most_room(&[((3.0, 120), &a), ((3.0, 14), &b)], |_| 1), Some(&a));
        // A tie: the pick decides, among the tied runners only.
        let tied = [((2.0, 8), &a), ((1.0, 8), &b), ((2.0, 8), &c)];
        assert_eq!(
            most_room(&tied, |n| {
                assert_eq!(n, 2);
                0
            }),
            Some(&a)
        );
        assert_eq!(most_room(&tied, |_| 1), Some(&c));
    }
}
