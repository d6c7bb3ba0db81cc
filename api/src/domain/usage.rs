//! Per-sandbox usage: what each runner's heartbeat sampled for its started sandboxes (CPU, memory, OOM kills,
//! processes, network, disk; `sandbar_proto::runner::SandboxUsage`) is kept as the sandbox's latest sample, and
//! every [`HISTORY_STEP_MS`] in its history, which keeps [`KEEP_HISTORY_MS`]. `GET /sandbox/{id}/usage` reads both
//! for the sandbox's organization.

use std::collections::HashSet;

use sandbar_proto::runner::SandboxUsage;

use super::sandboxes::find;
use crate::App;
use crate::error::ApiResult;
use crate::store::usage::{self, UsageRow};

/// At most one history sample per sandbox this often (heartbeats come every 5 s).
pub const HISTORY_STEP_MS: i64 = 30_000;
/// How much history a sandbox keeps.
pub const KEEP_HISTORY_MS: i64 = 3600 * 1000;
/// A latest sample older than this goes (the sandbox stopped long ago, or was deleted).
pub const KEEP_LATEST_MS: i64 = 24 * 3600 * 1000;

/// Stores a heartbeat's samples of `runner`'s sandboxes, [`super::apply::BATCH`] a transaction and two statements a
/// transaction (a runner with thousands of sandboxes must not hold the database for all of them, nor spend a round
/// trip on each). A sample of a sandbox that is not on `runner` is ignored: a runner speaks only for its own. A
/// report naming a sandbox twice is stored in order, as one sample after the other: a batch ends before a repeat.
pub async fn record(app: &App, runner: &str, samples: &[SandboxUsage]) -> ApiResult<()> {
    let now = app.now();
    for batch in batches(samples, super::apply::BATCH) {
        let mut tx = app.db.pool.begin().await?;
        let recorded = usage::record(&mut tx, runner, now, now - HISTORY_STEP_MS, &batch).await?;
        tx.commit().await?;
        if recorded.len() < batch.len() {
            let recorded: HashSet<&str> = recorded.iter().map(String::as_str).collect();
            for u in batch.iter().filter(|u| !recorded.contains(u.sandbox_id.as_str())) {
                tracing::debug!(runner_id = %runner, sandbox_id = %u.sandbox_id, "usage of a sandbox not on this runner");
            }
        }
    }
    Ok(())
}

/// `samples` in order, in batches of at most `max` that name each sandbox at most once.
fn batches(samples: &[SandboxUsage], max: usize) -> Vec<Vec<&SandboxUsage>> {
    let mut out = Vec::new();
    let mut batch: Vec<&SandboxUsage> = Vec::new();
    let mut ids = HashSet::new();
    for u in samples {
        if batch.len() == max || ids.contains(u.sandbox_id.as_str()) {
            out.push(std::mem::take(&mut batch));
            ids.clear();
        }
        ids.insert(u.sandbox_id.as_str());
        batch.push(u);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// A sandbox's usage: its id, the latest sample (none before the first heartbeat that saw it started) and the
/// last hour of history, oldest first.
#[derive(Debug, Clone)]
pub struct SandboxUsageView {
    pub sandbox_id: String,
    pub latest: Option<UsageRow>,
    pub history: Vec<UsageRow>,
}

/// The usage of `id_or_name` in `org`; 404 for an unknown sandbox or another organization's.
pub async fn get(app: &App, org: &str, id_or_name: &str) -> ApiResult<SandboxUsageView> {
    let mut conn = app.db.pool.acquire().await?;
    let row = find(app, &mut conn, org, id_or_name, false).await?;
    let latest = usage::latest(&mut conn, &row.id).await?;
    let history = usage::history(&mut conn, &row.id, app.now() - KEEP_HISTORY_MS).await?;
    Ok(SandboxUsageView { sandbox_id: row.id, latest, history })
}

/// Drops history older than [`KEEP_HISTORY_MS`] and latest samples older than [`KEEP_LATEST_MS`].
pub async fn prune(app: &App) -> Result<u64, sqlx::Error> {
    let now = app.now();
    usage::prune(&app.db.pool, now - KEEP_HISTORY_MS, now - KEEP_LATEST_MS).await
}

#[cfg(test)]
mod tests {
    use sandbar_proto::runner::SandboxUsage;

    fn ids(batches: &[Vec<&SandboxUsage>]) -> Vec<Vec<String>> {
        batches.iter().map(|b| b.iter().map(|u| u.sandbox_id.clone()).collect()).collect()
    }

    #[test]
    fn batches_are_bounded_in_order_and_never_name_a_sandbox_twice() {
        let s = |id: &str| SandboxUsage { sandbox_id: id.into(), ..Default::default() };
        let samples = [s("a"), s("b"), s("c"), s("a"), s("d"), s("e"), s("e")];
        let want: Vec<Vec<String>> = vec![
            vec!["a".into(), "b".into()],
            vec!["c".into(), "a".into()],
            vec!["d".into(), "e".into()],
            vec!["e".into()],
        ];
        assert_eq!(ids(&super::batches(&samples, 2)), want);
        let want: Vec<Vec<String>> =
            vec![vec!["a".into(), "b".into(), "c".into()], vec!["a".into(), "d".into(), "e".into()], vec!["e".into()]];
        assert_eq!(ids(&super::batches(&samples, 64)), want);
        assert!(super::batches(&[], 64).is_empty());
    }
}
