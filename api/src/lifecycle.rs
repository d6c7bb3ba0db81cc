//! Lifecycle timers: auto-stop after inactivity, auto-delete and auto-archive after being stopped. They act
//! through the same state machine as users ([`crate::sandbox::act`]) and read time from the app's [`crate::Clock`],
//! so tests move time instead of sleeping.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::App;
use crate::sandbox::act;
use crate::state::Action;

/// What one pass of the timers did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub stopped: Vec<String>,
    pub deleted: Vec<String>,
    pub archived: Vec<String>,
}

/// Route changes older than this are dropped (a proxy away longer than that must rebuild its cache).
pub const KEEP_ROUTE_CHANGES_MS: i64 = 24 * 3600 * 1000;
/// Completed, failed and cancelled jobs are kept this long for inspection.
pub const KEEP_JOBS_MS: i64 = 7 * 24 * 3600 * 1000;

/// Runs the timers once a second and pruning once a minute until `shutdown`.
pub async fn run(app: App, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = tick(&app).await {
            tracing::warn!(error = %e, "lifecycle timers");
        }
        if n.is_multiple_of(60)
            && let Err(e) = prune(&app).await
        {
            tracing::warn!(error = %e, "pruning");
        }
        n += 1;
    }
}

/// Drops old route changes and old finished jobs; returns how many rows went.
pub async fn prune(app: &App) -> Result<u64, sqlx::Error> {
    let now = app.now();
    let routes = sqlx::query("DELETE FROM route_changes WHERE at < $1")
        .bind(now - KEEP_ROUTE_CHANGES_MS)
        .execute(&app.db.pool)
        .await?;
    let jobs = sqlx::query("DELETE FROM jobs WHERE completed_at IS NOT NULL AND completed_at < $1")
        .bind(now - KEEP_JOBS_MS)
        .execute(&app.db.pool)
        .await?;
    Ok(routes.rows_affected() + jobs.rows_affected())
}

async fn due(app: &App, sql: &'static str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(sql).bind(app.now()).fetch_all(&app.db.pool).await
}

/// One pass: every sandbox whose timer is due gets its action (refusals, e.g. a runner that became unreachable,
/// are logged and retried on the next pass).
pub async fn tick(app: &App) -> Result<TickReport, sqlx::Error> {
    let mut report = TickReport::default();
    let stop = due(
        app,
        "SELECT id FROM sandboxes WHERE state = 'started' AND auto_stop > 0 AND last_activity_at + auto_stop * 60000 <= $1",
    )
    .await?;
    for id in stop {
        match act(app, None, &id, Action::Stop { force: false }, None).await {
            Ok(_) => report.stopped.push(id),
            Err(e) => tracing::debug!(sandbox_id = %id, error = %e.message, "auto-stop deferred"),
        }
    }
    let delete = due(
        app,
        "SELECT id FROM sandboxes WHERE state IN ('stopped', 'archived') AND auto_delete >= 0 \
         AND state_at + auto_delete * 60000 <= $1",
    )
    .await?;
    for id in delete {
        match act(app, None, &id, Action::Delete, None).await {
            Ok(_) => report.deleted.push(id),
            Err(e) => tracing::debug!(sandbox_id = %id, error = %e.message, "auto-delete deferred"),
        }
    }
    let archive = due(
        app,
        "SELECT id FROM sandboxes WHERE state = 'stopped' AND auto_archive > 0 AND state_at + auto_archive * 60000 <= $1",
    )
    .await?;
    for id in archive {
        match act(app, None, &id, Action::Archive, None).await {
            Ok(_) => report.archived.push(id),
            Err(e) => tracing::debug!(sandbox_id = %id, error = %e.message, "auto-archive deferred"),
        }
    }
    if !(report.stopped.is_empty() && report.deleted.is_empty() && report.archived.is_empty()) {
        tracing::info!(
            stopped = report.stopped.len(),
            deleted = report.deleted.len(),
            archived = report.archived.len(),
            "lifecycle timers"
        );
    }
    Ok(report)
}
