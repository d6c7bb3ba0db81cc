//! The end of a create or a fork on PostgreSQL in one statement: the sequence number, the organization's totals
//! within its quotas, the runner's within its room, the create job, the sandbox's route version and its route
//! change, and the notifications (`super::notify`), where the same steps one statement each
//! (`crate::domain::sandboxes`) cost eight round trips.
//!
//! Why it matters: every create, fork and state change takes the sequence row (`super::next_seq`) and holds it
//! until it commits, so on PostgreSQL creates follow each other at the pace of what happens between taking it and
//! committing. Here that is this one statement and the commit, which concurrent creates share
//! (`crate::domain::group_commit`).
//!
//! The sub-statements run in the order they depend on each other: the sequence row first (`s`; every other part
//! reads it), then the organization's totals (`q`, only once `s` holds the row: the lock order of `super::totals`),
//! the runner's only where the organization's moved (`c`), and the rest only where both did. Each totals update
//! checks and adds in one row update, which PostgreSQL re-checks on the newest version of the row when another
//! transaction changed it meanwhile, so quotas stay exact as with the separate statements. When a total refuses,
//! nothing but the sequence (and the organization's totals, when only the runner's refused: [`Finished::Refused`]
//! says so) has changed, and the caller takes the statement-by-statement path, which names the refusal or makes a
//! missing totals row.

use sandbar_proto::runner::{JobKind, SandboxState};
use sqlx::AnyConnection;

use super::notify::CHANNEL;
use super::totals::Delta;

/// A new sandbox to finish: its organization, runner, id, what it adds to the totals, and its job.
#[derive(Debug)]
pub struct NewSandbox<'a> {
    pub org: &'a str,
    pub runner: &'a str,
    pub sandbox_id: &'a str,
    pub add: Delta,
    pub cpu_overcommit: i64,
    pub memory_overcommit: i64,
    pub job: &'a JobKind,
    pub prev: SandboxState,
    pub via: SandboxState,
    pub now: i64,
}

/// What [`finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Everything, with this sequence number.
    Done { seq: i64 },
    /// Only the sequence number (this one, still held) and, when `org_added`, the organization's totals.
    Refused { seq: i64, org_added: bool },
}

/// Finishes a new sandbox on PostgreSQL (see the module doc); its row must be inserted in this transaction.
pub async fn finish(conn: &mut AnyConnection, n: &NewSandbox<'_>) -> Result<Finished, sqlx::Error> {
    let job_id = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::to_string(n.job).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let (seq, org_added, runner_added, _notified): (i64, i64, i64, i64) = sqlx::query_as(
        "WITH s AS (UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value), \
         q AS (UPDATE organization_totals SET sandboxes = sandboxes + $2, cpu = cpu + $3, memory = memory + $4, \
           disk = disk + $5 WHERE organization_id = $1 AND EXISTS (SELECT 1 FROM s) \
           AND EXISTS (SELECT 1 FROM organizations o WHERE o.id = $1 \
             AND ($2 <= 0 OR organization_totals.sandboxes + $2 <= o.quota_sandboxes) \
             AND ($3 <= 0 OR organization_totals.cpu + $3 <= o.quota_cpu) \
             AND ($4 <= 0 OR organization_totals.memory + $4 <= o.quota_memory) \
             AND ($5 <= 0 OR organization_totals.disk + $5 <= o.quota_disk)) RETURNING 1), \
         c AS (UPDATE runner_totals SET sandboxes = sandboxes + $2, cpu = cpu + $3, memory = memory + $4, \
           disk = disk + $5 WHERE runner_id = $6 AND EXISTS (SELECT 1 FROM q) \
           AND EXISTS (SELECT 1 FROM runners r WHERE r.id = $6 \
             AND ($3 <= 0 OR runner_totals.cpu + $3 <= r.cpu * $7) \
             AND ($4 <= 0 OR runner_totals.memory + $4 <= r.memory * $8) \
             AND ($5 <= 0 OR runner_totals.disk + $5 <= r.disk)) RETURNING 1), \
         j AS (INSERT INTO jobs (id, seq, runner_id, sandbox_id, kind, payload, prev_state, via_state, state, \
           created_at, traceparent) SELECT $9, s.value, $6, $10, $11, $12, $13, $14, 'pending', $15, $18 FROM s \
           WHERE EXISTS (SELECT 1 FROM c) RETURNING 1), \
         v AS (UPDATE sandboxes SET version = (SELECT value FROM s), updated_at = $15 WHERE id = $10 \
           AND EXISTS (SELECT 1 FROM c) RETURNING 1), \
         r AS (INSERT INTO route_changes (seq, sandbox_id, at) SELECT s.value, $10, $15 FROM s \
           WHERE EXISTS (SELECT 1 FROM c) RETURNING 1), \
         n AS (SELECT pg_notify($16, $17), pg_notify($16, 'routes')) \
         SELECT s.value, (SELECT COUNT(*) FROM q), (SELECT COUNT(*) FROM c), \
           (SELECT COUNT(*) FROM n) + (SELECT COUNT(*) FROM j) + (SELECT COUNT(*) FROM v) + (SELECT COUNT(*) FROM r) \
         FROM s",
    )
    .bind(n.org)
    .bind(n.add.sandboxes)
    .bind(n.add.cpu)
    .bind(n.add.memory)
    .bind(n.add.disk)
    .bind(n.runner)
    .bind(n.cpu_overcommit)
    .bind(n.memory_overcommit)
    .bind(&job_id)
    .bind(n.sandbox_id)
    .bind(n.job.tag())
    .bind(payload)
    .bind(n.prev.as_str())
    .bind(n.via.as_str())
    .bind(n.now)
    .bind(CHANNEL)
    .bind(format!("jobs:{}", n.runner))
    // The request's trace, for the runner to continue (as `super::jobs::insert` stores it).
    .bind(crate::trace::current().map(|t| t.header()))
    .fetch_one(conn)
    .await?;
    Ok(if org_added == 1 && runner_added == 1 {
        Finished::Done { seq }
    } else {
        Finished::Refused { seq, org_added: org_added == 1 }
    })
}
