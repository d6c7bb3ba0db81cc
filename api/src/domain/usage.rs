//! Per-sandbox usage: what each runner's heartbeat sampled for its started sandboxes (CPU, memory, OOM kills,
//! processes, network, disk; `sandbar_proto::runner::SandboxUsage`) is kept as the sandbox's latest sample, and
//! every [`HISTORY_STEP_MS`] in its history, which keeps [`KEEP_HISTORY_MS`]. `GET /sandbox/{id}/usage` reads both
//! for the sandbox's organization.

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

/// Stores a heartbeat's samples of `runner`'s sandboxes, [`super::apply::BATCH`] a transaction (a runner with
/// thousands of sandboxes must not hold the database for all of them). A sample of a sandbox that is not on
/// `runner` is ignored: a runner speaks only for its own.
pub async fn record(app: &App, runner: &str, samples: &[SandboxUsage]) -> ApiResult<()> {
    let now = app.now();
    for batch in samples.chunks(super::apply::BATCH) {
        let mut tx = app.db.pool.begin().await?;
        for u in batch {
            if !usage::record(&mut tx, runner, now, now - HISTORY_STEP_MS, u).await? {
                tracing::debug!(runner_id = %runner, sandbox_id = %u.sandbox_id, "usage of a sandbox not on this runner");
            }
        }
        tx.commit().await?;
    }
    Ok(())
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
