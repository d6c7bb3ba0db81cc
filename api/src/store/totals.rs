//! Totals: what each organization's and each runner's live sandboxes use (how many, the CPU and memory of those
//! that hold them, the disk of all: the rule of `used!`), kept in `organization_totals` and `runner_totals` so a
//! create reads one row for its quota and one per runner for placement instead of summing sandboxes.
//!
//! Every write that adds a sandbox, changes its state or its resources moves the totals in the same transaction:
//! `sandboxes::set_state` and `set_resources` do it themselves, a new sandbox's are added by
//! `crate::domain::sandboxes` ([`add_within_quota`], [`add_within_capacity`], [`shift`]) where the quota and the
//! runner's room are checked in the same statement, so two concurrent creates cannot both slip under a limit.
//! Destroyed rows count nothing, so dropping them changes nothing. [`reconcile`] recomputes every total at the API's
//! start, and [`drift`] lists the totals that disagree with the sandboxes.
//!
//! Lock order: a transaction moves totals only after it took the sequence row (`super::next_seq`, held until it
//! commits). Only that one transaction holds totals rows, so a batch that moves the totals of many organizations
//! never deadlocks with a create.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, AnyPool};

use super::{IDLE_STATES, next_seq};

/// A change of totals (or totals themselves): sandboxes, CPU, memory, disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub sandboxes: i64,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
}

impl Delta {
    /// What one sandbox in stored state `state` with these resources counts in its totals.
    pub fn of(state: &str, cpu: i64, memory: i64, disk: i64) -> Self {
        if state == "destroyed" {
            return Self::default();
        }
        let holds = !IDLE_STATES.contains(&state);
        Self { sandboxes: 1, cpu: if holds { cpu } else { 0 }, memory: if holds { memory } else { 0 }, disk }
    }

    /// `self - before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            sandboxes: self.sandboxes - before.sandboxes,
            cpu: self.cpu - before.cpu,
            memory: self.memory - before.memory,
            disk: self.disk - before.disk,
        }
    }

    pub fn is_zero(self) -> bool {
        self == Self::default()
    }
}

/// Moves organization `org`'s totals, and runner `runner`'s when there is one, by `d` (a missing row is made).
pub async fn shift(conn: &mut AnyConnection, org: &str, runner: Option<&str>, d: Delta) -> Result<(), sqlx::Error> {
    if d.is_zero() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO organization_totals (organization_id, sandboxes, cpu, memory, disk) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (organization_id) DO UPDATE SET sandboxes = organization_totals.sandboxes + excluded.sandboxes, \
         cpu = organization_totals.cpu + excluded.cpu, memory = organization_totals.memory + excluded.memory, \
         disk = organization_totals.disk + excluded.disk",
    )
    .bind(org)
    .bind(d.sandboxes)
    .bind(d.cpu)
    .bind(d.memory)
    .bind(d.disk)
    .execute(&mut *conn)
    .await?;
    if let Some(runner) = runner {
        shift_runner(conn, runner, d).await?;
    }
    Ok(())
}

/// Moves runner `runner`'s totals by `d` (a missing row is made).
pub async fn shift_runner(conn: &mut AnyConnection, runner: &str, d: Delta) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO runner_totals (runner_id, sandboxes, cpu, memory, disk) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (runner_id) DO UPDATE SET sandboxes = runner_totals.sandboxes + excluded.sandboxes, \
         cpu = runner_totals.cpu + excluded.cpu, memory = runner_totals.memory + excluded.memory, \
         disk = runner_totals.disk + excluded.disk",
    )
    .bind(runner)
    .bind(d.sandboxes)
    .bind(d.cpu)
    .bind(d.memory)
    .bind(d.disk)
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes organization `org`'s totals row (zeros) when it has none; [`reconcile`] fills it.
pub async fn ensure_org(conn: &mut AnyConnection, org: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO organization_totals (organization_id) VALUES ($1) ON CONFLICT (organization_id) DO NOTHING",
    )
    .bind(org)
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes runner `runner`'s totals row (zeros) when it has none.
pub async fn ensure_runner(conn: &mut AnyConnection, runner: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO runner_totals (runner_id) VALUES ($1) ON CONFLICT (runner_id) DO NOTHING")
        .bind(runner)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds `d` to organization `org`'s totals when each total `d` adds to stays within the organization's quota for
/// it; false (nothing changed) when one would not, or when the organization has no totals row yet. One statement,
/// which on PostgreSQL waits for a concurrent change of the row and re-checks the new totals: exact under
/// concurrency.
pub async fn add_within_quota(conn: &mut AnyConnection, org: &str, d: Delta) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE organization_totals SET sandboxes = sandboxes + $2, cpu = cpu + $3, memory = memory + $4, \
         disk = disk + $5 WHERE organization_id = $1 AND EXISTS (SELECT 1 FROM organizations o WHERE o.id = $1 \
         AND ($2 <= 0 OR organization_totals.sandboxes + $2 <= o.quota_sandboxes) \
         AND ($3 <= 0 OR organization_totals.cpu + $3 <= o.quota_cpu) \
         AND ($4 <= 0 OR organization_totals.memory + $4 <= o.quota_memory) \
         AND ($5 <= 0 OR organization_totals.disk + $5 <= o.quota_disk))",
    )
    .bind(org)
    .bind(d.sandboxes)
    .bind(d.cpu)
    .bind(d.memory)
    .bind(d.disk)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Adds `d` to runner `runner`'s totals when its CPU and memory stay within its capacity times the overcommit
/// factors and its disk within its capacity; false (nothing changed) otherwise, or when the runner has no totals
/// row yet. Exact under concurrency like [`add_within_quota`].
pub async fn add_within_capacity(
    conn: &mut AnyConnection,
    runner: &str,
    d: Delta,
    cpu_overcommit: i64,
    memory_overcommit: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE runner_totals SET sandboxes = sandboxes + $2, cpu = cpu + $3, memory = memory + $4, \
         disk = disk + $5 WHERE runner_id = $1 AND EXISTS (SELECT 1 FROM runners r WHERE r.id = $1 \
         AND ($3 <= 0 OR runner_totals.cpu + $3 <= r.cpu * $6) \
         AND ($4 <= 0 OR runner_totals.memory + $4 <= r.memory * $7) \
         AND ($5 <= 0 OR runner_totals.disk + $5 <= r.disk))",
    )
    .bind(runner)
    .bind(d.sandboxes)
    .bind(d.cpu)
    .bind(d.memory)
    .bind(d.disk)
    .bind(cpu_overcommit)
    .bind(memory_overcommit)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Which totals a [`Drift`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Of {
    Organization,
    Runner,
}

/// A total that disagrees with the sandboxes: `(what, id)`, what is stored and what the sandboxes add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub of: Of,
    pub id: String,
    pub stored: Delta,
    pub actual: Delta,
}

type TotalsRow = (String, i64, i64, i64, i64);

fn by_id(rows: Vec<TotalsRow>) -> BTreeMap<String, Delta> {
    rows.into_iter().map(|(id, sandboxes, cpu, memory, disk)| (id, Delta { sandboxes, cpu, memory, disk })).collect()
}

/// Every total that disagrees with what the sandboxes add up to (a missing row counts as zeros).
pub async fn drift(conn: &mut AnyConnection) -> Result<Vec<Drift>, sqlx::Error> {
    let orgs_actual: Vec<TotalsRow> = sqlx::query_as(concat!(
        "SELECT s.organization_id, COUNT(*), ",
        used!(),
        " FROM sandboxes s WHERE s.state <> 'destroyed' GROUP BY s.organization_id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let orgs_stored: Vec<TotalsRow> =
        sqlx::query_as("SELECT organization_id, sandboxes, cpu, memory, disk FROM organization_totals")
            .fetch_all(&mut *conn)
            .await?;
    let runners_actual: Vec<TotalsRow> = sqlx::query_as(concat!(
        "SELECT s.runner_id, COUNT(*), ",
        used!(),
        " FROM sandboxes s WHERE s.state <> 'destroyed' AND s.runner_id IS NOT NULL GROUP BY s.runner_id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let runners_stored: Vec<TotalsRow> =
        sqlx::query_as("SELECT runner_id, sandboxes, cpu, memory, disk FROM runner_totals")
            .fetch_all(&mut *conn)
            .await?;
    let mut out = Vec::new();
    for (of, actual, stored) in [
        (Of::Organization, by_id(orgs_actual), by_id(orgs_stored)),
        (Of::Runner, by_id(runners_actual), by_id(runners_stored)),
    ] {
        let ids: std::collections::BTreeSet<&String> = actual.keys().chain(stored.keys()).collect();
        for id in ids {
            let a = actual.get(id).copied().unwrap_or_default();
            let s = stored.get(id).copied().unwrap_or_default();
            if a != s {
                out.push(Drift { of, id: id.clone(), stored: s, actual: a });
            }
        }
    }
    Ok(out)
}

/// Recomputes every organization's and runner's totals from the sandboxes (making missing rows); returns the totals
/// that had drifted. Runs under the sequence row, so no transaction is moving totals meanwhile; one that inserted a
/// sandbox but has not added it yet adds it after this commits, on top of totals that do not count it.
pub async fn reconcile(pool: &AnyPool) -> Result<Vec<Drift>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    next_seq(&mut tx).await?;
    let drifted = drift(&mut tx).await?;
    sqlx::query(
        "INSERT INTO organization_totals (organization_id) SELECT id FROM organizations WHERE true \
         ON CONFLICT (organization_id) DO NOTHING",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO runner_totals (runner_id) SELECT id FROM runners WHERE true ON CONFLICT (runner_id) DO NOTHING",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(concat!(
        "UPDATE organization_totals SET (sandboxes, cpu, memory, disk) = (SELECT COUNT(*), ",
        used!(),
        " FROM sandboxes s WHERE s.organization_id = organization_totals.organization_id AND s.state <> 'destroyed')"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(concat!(
        "UPDATE runner_totals SET (sandboxes, cpu, memory, disk) = (SELECT COUNT(*), ",
        used!(),
        " FROM sandboxes s WHERE s.runner_id = runner_totals.runner_id AND s.state <> 'destroyed')"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(drifted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_sandbox_counts() {
        assert_eq!(Delta::of("started", 2, 4, 10), Delta { sandboxes: 1, cpu: 2, memory: 4, disk: 10 });
        assert_eq!(Delta::of("stopped", 2, 4, 10), Delta { sandboxes: 1, cpu: 0, memory: 0, disk: 10 });
        assert_eq!(Delta::of("destroyed", 2, 4, 10), Delta::default());
        let d = Delta::of("stopped", 2, 4, 10).since(Delta::of("started", 2, 4, 10));
        assert_eq!(d, Delta { sandboxes: 0, cpu: -2, memory: -4, disk: 0 });
        assert!(Delta::of("creating", 1, 1, 1).since(Delta::of("started", 1, 1, 1)).is_zero());
    }
}
