//! Network settings of sandboxes: Daytona's `networkBlockAll` / `networkAllowList` (comma-separated IPv4 CIDRs)
//! checked at create and on change, `linkedSandbox` at create, and the runner jobs that carry them. The runner
//! enforces them (its firewall); the rows here are what a re-created sandbox (recover, restore) gets, and every
//! change is also sent to the sandbox's runner, which keeps it for the next start when the sandbox is not running.

use std::time::Duration;

use ::http::StatusCode;
use sandbar_proto::network::{NetworkPolicy, parse_allow_list};
use sandbar_proto::runner::SandboxState;
use sqlx::AnyConnection;

use super::state;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::sandboxes::{self, Row};
use crate::store::{self, b};

/// How long a change waits for a running sandbox's runner to apply it before answering.
const APPLY_WAIT: Duration = Duration::from_secs(15);

/// Refuses a domain allow list: sandbar filters by address only, and a list it ignored would be a false promise.
pub(crate) fn refuse_domains(domains: Option<&str>) -> ApiResult<()> {
    match domains.map(str::trim) {
        Some(d) if !d.is_empty() => Err(ApiError::bad_request(
            "domainAllowList is not supported by sandbar (egress is filtered by address): use networkAllowList \
             with IPv4 CIDRs, or networkBlockAll",
        )),
        _ => Ok(()),
    }
}

/// Checks a comma-separated allow list and returns it normalised (`None` for an empty one).
pub(crate) fn normalise_allow_list(list: &str) -> ApiResult<Option<String>> {
    let cidrs = parse_allow_list(list).map_err(|e| ApiError::bad_request(format!("invalid networkAllowList: {e}")))?;
    Ok((!cidrs.is_empty()).then(|| cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")))
}

/// The policy a row stands for, as the runner takes it. A stored list is passed through as it is (the runner
/// refuses what does not parse, naming it).
pub(crate) fn policy_of(row: &Row) -> NetworkPolicy {
    NetworkPolicy {
        network_block_all: row.network_block_all != 0,
        network_allow_list: row
            .network_allow_list
            .as_deref()
            .map(|l| l.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect()),
    }
}

/// Checks `linkedSandbox` at create: an existing sandbox of the organization that is not itself linked, and the
/// new sandbox must be ephemeral (Daytona's rules). Returns the parent's id and runner (where the child goes).
pub(crate) async fn resolve_link(
    app: &App,
    conn: &mut AnyConnection,
    org: &str,
    linked: &str,
    auto_delete: i64,
) -> ApiResult<(String, String)> {
    let parent = sandboxes::load(app.db.kind, conn, Some(org), linked, false)
        .await?
        .filter(|p| !matches!(p.stored_state(), SandboxState::Destroyed | SandboxState::Destroying))
        .ok_or_else(|| ApiError::bad_request(format!("linkedSandbox {linked} not found")))?;
    if auto_delete != 0 {
        return Err(ApiError::bad_request(
            "a linked sandbox must be ephemeral: set ephemeral=true (autoDeleteInterval 0)",
        ));
    }
    if parent.linked_sandbox_id.is_some() {
        return Err(ApiError::bad_request(format!(
            "sandbox {linked} is itself linked to another sandbox and cannot be linked to"
        )));
    }
    let runner = parent
        .runner_id
        .clone()
        .ok_or_else(|| ApiError::bad_request(format!("linkedSandbox {linked} was never placed on a runner")))?;
    Ok((parent.id, runner))
}

/// A change of network settings, checked already (`allow_list`: `Some(None)` clears the list).
#[derive(Debug, Default)]
pub struct Change {
    pub block_all: Option<bool>,
    pub allow_list: Option<Option<String>>,
}

/// Records new settings, hands them to the runner and, for a started sandbox, returns once they are in effect
/// (or after [`APPLY_WAIT`], when the runner is slow).
pub async fn update(app: &App, org: &str, id: &str, change: Change) -> ApiResult<Row> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = super::sandboxes::find(app, &mut tx, org, id, true).await?;
    let current = row.stored_state();
    let send = state::network_update(current).map_err(|r| ApiError::bad_request(r.0))?;
    let allow = change.allow_list;
    // Daytona's semantics: an allow list implies not blocking everything; unblocking clears a stored list.
    let block_all = change.block_all.unwrap_or(if allow.is_some() { false } else { row.network_block_all != 0 });
    let list = match allow {
        Some(list) => list,
        None if change.block_all == Some(false) => None,
        None => row.network_allow_list.clone(),
    };
    sandboxes::set_network(&mut tx, &row.id, block_all, list.clone()).await?;
    let mut job = None;
    if let (true, Some(runner)) = (send, row.runner_id.as_deref()) {
        let updated = Row { network_block_all: b(block_all), network_allow_list: list, ..row.clone() };
        let kind = jobs::network::plan(&row.id, policy_of(&updated));
        // The sandbox stays in its state: the job's `via` is that state, so the result moves nothing.
        let job_id = jobs::enqueue(&mut tx, runner, &kind, current, current, now).await?;
        job = Some((job_id, runner.to_owned()));
    }
    sandboxes::bump(&mut tx, &row.id, now).await?;
    tx.commit().await?;
    if let Some((_, runner)) = &job {
        app.wake_runner(runner);
    }
    app.wake_routes();
    tracing::info!(sandbox_id = %row.id, block_all, "network settings changed");
    if let Some((job_id, _)) = job
        && current == SandboxState::Started
        && let Some(error) = wait_job(app, &job_id).await?
    {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runner could not apply the network settings: {error}"),
        ));
    }
    let mut conn = app.db.pool.acquire().await?;
    Ok(sandboxes::load(app.db.kind, &mut conn, None, &row.id, false).await?.unwrap_or(row))
}

/// Waits (woken by job results) until the job is finished; `Some(error)` when it failed. Gives up quietly after
/// [`APPLY_WAIT`]: the runner applies it when it gets to it.
async fn wait_job(app: &App, job_id: &str) -> ApiResult<Option<String>> {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    loop {
        let notified = app.route_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (state, error) = store::jobs::status(&app.db.pool, job_id).await?;
        match state.as_str() {
            "done" | "cancelled" => return Ok(None),
            "failed" => return Ok(Some(error.unwrap_or_else(|| "no reason given".into()))),
            _ => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            tracing::warn!(job_id, "network settings not yet applied by the runner; answering anyway");
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_are_checked_and_normalised() {
        assert_eq!(
            normalise_allow_list(" 10.1.0.0/16 ,1.2.3.4/32").unwrap().as_deref(),
            Some("10.1.0.0/16,1.2.3.4/32")
        );
        assert_eq!(normalise_allow_list("").unwrap(), None);
        let e = normalise_allow_list("10.0.0.0/8,300.1.1.1/32").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("300.1.1.1/32"), "{}", e.message);
        assert!(refuse_domains(Some("example.com")).is_err() && refuse_domains(Some(" ")).is_ok());
    }
}
