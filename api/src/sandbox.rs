//! The Daytona sandbox endpoints (`/api/sandbox...`), exactly as the Daytona Python SDK 0.226.1 calls them: status
//! codes, camelCase names and strict JSON types of `/work/shared/daytona-compat.md` §2-3. Every lifecycle request
//! goes through [`state::plan`]; runner work becomes a job row ([`enqueue`]).

use std::collections::BTreeMap;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use sandbar_proto::runner::{
    AutoIntervals, CreateSandbox, JobKind, ResizeSandbox, Resources, SandboxState, StopSandbox,
};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::auth::Caller;
use crate::clock::iso;
use crate::db::{DbKind, b, next_seq, random_token, sha256_hex};
use crate::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::state::{self, Action, JobTag, Plan};
use crate::{App, runners};

/// Daytona's defaults: stop after 15 idle minutes, archive after 7 stopped days, never delete.
pub const DEFAULT_AUTO_STOP: i64 = 15;
pub const DEFAULT_AUTO_ARCHIVE: i64 = 7 * 24 * 60;
pub const DEFAULT_AUTO_DELETE: i64 = -1;
/// Default lifetime of SSH access tokens.
pub const DEFAULT_SSH_MINUTES: i64 = 60;
pub const MAX_LIST_LIMIT: i64 = 1000;

pub(crate) const COLUMNS: &str = "s.id, s.organization_id, s.name, s.runner_id, s.state, s.desired_state, \
    s.error_reason, s.snapshot, s.os_user, s.env, s.labels, s.public, s.network_block_all, s.network_allow_list, \
    s.target, s.cpu, s.memory, s.disk, s.auto_stop, s.auto_archive, s.auto_delete, s.daemon_addr, s.ssh_addr, \
    s.daemon_token, s.preview_token, s.provisioned, s.created_at, s.updated_at, s.last_activity_at, s.state_at, \
    s.version, r.last_heartbeat AS runner_seen, s.linked_sandbox_id";
pub(crate) const FROM: &str = "FROM sandboxes s LEFT JOIN runners r ON r.id = s.runner_id";

/// A sandbox row, with its runner's last heartbeat.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub runner_id: Option<String>,
    pub state: String,
    pub desired_state: String,
    pub error_reason: Option<String>,
    pub snapshot: String,
    pub os_user: String,
    pub env: String,
    pub labels: String,
    pub public: i64,
    pub network_block_all: i64,
    pub network_allow_list: Option<String>,
    pub target: String,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub auto_stop: i64,
    pub auto_archive: i64,
    pub auto_delete: i64,
    pub daemon_addr: Option<String>,
    pub ssh_addr: Option<String>,
    pub daemon_token: String,
    pub preview_token: String,
    pub provisioned: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_activity_at: i64,
    pub state_at: i64,
    pub version: i64,
    pub runner_seen: Option<i64>,
    pub linked_sandbox_id: Option<String>,
}

impl Row {
    pub fn stored_state(&self) -> SandboxState {
        state::parse(&self.state)
    }

    /// True when the sandbox sits on a runner that stopped heartbeating.
    pub fn runner_unreachable(&self, app: &App, now_ms: i64) -> bool {
        self.runner_id.is_some()
            && self.stored_state() != SandboxState::Destroyed
            && self.runner_seen.is_none_or(|seen| seen < now_ms - runners::unreachable_after_ms(&app.config))
    }

    /// The state users and the proxy see: `unknown` while the runner is unreachable.
    pub fn effective_state(&self, app: &App, now_ms: i64) -> SandboxState {
        if self.runner_unreachable(app, now_ms) { SandboxState::Unknown } else { self.stored_state() }
    }

    pub fn env_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.env).unwrap_or_default()
    }

    pub fn labels_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }

    pub fn to_dto(&self, app: &App) -> SandboxDto {
        let now = app.now();
        let state = self.effective_state(app, now);
        let error_reason = if state == SandboxState::Unknown {
            Some(format!("runner {} is unreachable", self.runner_id.as_deref().unwrap_or_default()))
        } else {
            self.error_reason.clone()
        };
        SandboxDto {
            id: self.id.clone(),
            organization_id: self.organization_id.clone(),
            name: self.name.clone(),
            user: self.os_user.clone(),
            env: self.env_map(),
            labels: self.labels_map(),
            public: self.public != 0,
            network_block_all: self.network_block_all != 0,
            network_allow_list: self.network_allow_list.clone(),
            kvm: false,
            target: self.target.clone(),
            cpu: self.cpu,
            gpu: 0,
            memory: self.memory,
            disk: self.disk,
            toolbox_proxy_url: app.config.toolbox_proxy_url(),
            state: state.as_str().to_owned(),
            desired_state: self.desired_state.clone(),
            snapshot: Some(self.snapshot.clone()),
            recoverable: matches!(state, SandboxState::Error | SandboxState::BuildFailed),
            error_reason,
            backup_state: "None".into(),
            created_at: iso(self.created_at),
            updated_at: iso(self.updated_at),
            last_activity_at: iso(self.last_activity_at),
            auto_stop_interval: self.auto_stop,
            auto_archive_interval: self.auto_archive,
            auto_delete_interval: self.auto_delete,
            runner_id: self.runner_id.clone(),
            volumes: Vec::new(),
            linked_sandbox_id: self.linked_sandbox_id.clone(),
        }
    }
}

/// Daytona's `Sandbox` (every required field, strict types).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDto {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub user: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub kvm: bool,
    pub target: String,
    pub cpu: i64,
    pub gpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub toolbox_proxy_url: String,
    pub state: String,
    pub desired_state: String,
    pub snapshot: Option<String>,
    pub recoverable: bool,
    pub error_reason: Option<String>,
    pub backup_state: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: String,
    pub auto_stop_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub runner_id: Option<String>,
    pub volumes: Vec<serde_json::Value>,
    pub linked_sandbox_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListSandboxesResponse {
    pub items: Vec<SandboxDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub dockerfile_content: Option<String>,
    pub context_hashes: Option<Vec<String>>,
}

/// Daytona's `CreateSandbox`. Unknown fields are accepted (the SDK sends many optional ones); fields sandbar
/// cannot honour are refused with a 400 instead of being ignored silently.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxBody {
    pub name: Option<String>,
    pub snapshot: Option<String>,
    pub image: Option<String>,
    pub user: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub public: Option<bool>,
    pub target: Option<String>,
    pub cpu: Option<i64>,
    pub gpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
    pub auto_stop_interval: Option<i64>,
    pub auto_archive_interval: Option<i64>,
    pub auto_delete_interval: Option<i64>,
    pub ephemeral: Option<bool>,
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
    pub linked_sandbox: Option<String>,
    pub kvm: Option<bool>,
    pub build_info: Option<BuildInfo>,
    pub volumes: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResizeBody {
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct LabelsBody {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortPreviewUrl {
    pub sandbox_id: String,
    pub url: String,
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedPortPreviewUrl {
    pub sandbox_id: String,
    pub port: i64,
    pub token: String,
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshAccessDto {
    pub id: String,
    pub sandbox_id: String,
    pub token: String,
    pub expires_at: String,
    pub created_at: String,
    pub updated_at: String,
    pub ssh_command: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshAccessValidationDto {
    pub valid: bool,
    pub sandbox_id: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolboxProxyUrl {
    pub url: String,
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/sandbox", post(create).get(list))
        .route("/sandbox/ssh-access/validate", get(validate_ssh_access))
        .route("/sandbox/{id}", get(get_one).delete(delete))
        .route("/sandbox/{id}/start", post(start))
        .route("/sandbox/{id}/stop", post(stop))
        .route("/sandbox/{id}/archive", post(archive))
        .route("/sandbox/{id}/recover", post(recover))
        .route("/sandbox/{id}/resize", post(resize))
        .route("/sandbox/{id}/labels", put(set_labels))
        .route("/sandbox/{id}/public/{public}", post(set_public))
        .route("/sandbox/{id}/autostop/{n}", post(set_autostop))
        .route("/sandbox/{id}/autoarchive/{n}", post(set_autoarchive))
        .route("/sandbox/{id}/autodelete/{n}", post(set_autodelete))
        .route("/sandbox/{id}/last-activity", post(last_activity))
        .route("/sandbox/{id}/ports/{port}/preview-url", get(preview_url))
        .route("/sandbox/{id}/ports/{port}/signed-preview-url", get(signed_preview_url))
        .route("/sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire", post(expire_signed_preview_url))
        .route("/sandbox/{id}/ssh-access", post(create_ssh_access).delete(revoke_ssh_access))
        .route("/sandbox/{id}/toolbox-proxy-url", get(toolbox_proxy_url))
        .route("/sandbox/{id}/network-settings", post(crate::network::update))
}

// ---------------------------------------------------------------------------------------------------------------
// Shared helpers (also used by runners, internal and lifecycle).

/// Loads a sandbox by id or name within `org` (any organization when `None`). `lock` takes a row lock on
/// PostgreSQL so two instances never act on one sandbox at once (SQLite transactions are serial already).
pub(crate) async fn load(
    app: &App,
    conn: &mut AnyConnection,
    org: Option<&str>,
    id_or_name: &str,
    lock: bool,
) -> Result<Option<Row>, sqlx::Error> {
    let lock = if lock && app.db.kind == DbKind::Postgres { " FOR UPDATE OF s" } else { "" };
    let order = "ORDER BY CASE WHEN s.state = 'destroyed' THEN 1 ELSE 0 END, s.created_at DESC LIMIT 1";
    match org {
        Some(org) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} {FROM} WHERE s.organization_id = $1 AND (s.id = $2 OR s.name = $2) {order}{lock}"
            )))
            .bind(org)
            .bind(id_or_name)
            .fetch_optional(conn)
            .await
        }
        None => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} {FROM} WHERE s.id = $1{lock}")))
                .bind(id_or_name)
                .fetch_optional(conn)
                .await
        }
    }
}

async fn load_or_404(app: &App, conn: &mut AnyConnection, org: &str, id: &str, lock: bool) -> ApiResult<Row> {
    load(app, conn, Some(org), id, lock).await?.ok_or_else(|| ApiError::sandbox_not_found(id))
}

/// Gives `sandbox_id` a new route version and records the change for the proxy's long-poll.
pub(crate) async fn bump(conn: &mut AnyConnection, sandbox_id: &str, now: i64) -> Result<i64, sqlx::Error> {
    let seq = next_seq(&mut *conn).await?;
    sqlx::query("UPDATE sandboxes SET version = $1, updated_at = $2 WHERE id = $3")
        .bind(seq)
        .bind(now)
        .bind(sandbox_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO route_changes (seq, sandbox_id, at) VALUES ($1, $2, $3)")
        .bind(seq)
        .bind(sandbox_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(seq)
}

/// Moves a sandbox to `next` (recording why, for `error`), then bumps its route.
pub(crate) async fn set_state(
    conn: &mut AnyConnection,
    sandbox_id: &str,
    next: SandboxState,
    error_reason: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let q = if next == SandboxState::Started {
        "UPDATE sandboxes SET state = $1, error_reason = $2, state_at = $3, last_activity_at = $3 WHERE id = $4"
    } else {
        "UPDATE sandboxes SET state = $1, error_reason = $2, state_at = $3 WHERE id = $4"
    };
    sqlx::query(q).bind(next.as_str()).bind(error_reason).bind(now).bind(sandbox_id).execute(&mut *conn).await?;
    if next == SandboxState::Destroyed {
        sqlx::query("UPDATE sandboxes SET daemon_addr = NULL, ssh_addr = NULL WHERE id = $1")
            .bind(sandbox_id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM sandbox_labels WHERE sandbox_id = $1").bind(sandbox_id).execute(&mut *conn).await?;
    }
    bump(conn, sandbox_id, now).await?;
    Ok(())
}

/// Queues `kind` for `runner_id`. `via` is the transitional state the sandbox is put in for it (a result only
/// moves the sandbox on while it is still there); `prev` the state to return to if a resize fails.
pub(crate) async fn enqueue(
    conn: &mut AnyConnection,
    runner_id: &str,
    kind: &JobKind,
    prev: SandboxState,
    via: SandboxState,
    now: i64,
) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let seq = next_seq(&mut *conn).await?;
    let payload = serde_json::to_string(kind).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let tag = match kind {
        JobKind::CreateSandbox(_) => "CREATE_SANDBOX",
        JobKind::StartSandbox { .. } => "START_SANDBOX",
        JobKind::StopSandbox(_) => "STOP_SANDBOX",
        JobKind::DestroySandbox { .. } => "DESTROY_SANDBOX",
        JobKind::ResizeSandbox(_) => "RESIZE_SANDBOX",
        JobKind::UpdateSandboxNetwork(_) => "UPDATE_SANDBOX_NETWORK",
        JobKind::ArchiveSandbox { .. } => "ARCHIVE_SANDBOX",
        JobKind::RestoreSandbox(_) => "RESTORE_SANDBOX",
        JobKind::BuildSnapshot(_) => "BUILD_SNAPSHOT",
        JobKind::ForkSandbox(_) => "FORK_SANDBOX",
        JobKind::SnapshotSandbox(_) => "SNAPSHOT_SANDBOX",
        JobKind::RemoveSnapshot(_) => "REMOVE_SNAPSHOT",
        JobKind::PauseSandbox { .. } => "PAUSE_SANDBOX",
        JobKind::ResumeSandbox { .. } => "RESUME_SANDBOX",
    };
    sqlx::query(
        "INSERT INTO jobs (id, seq, runner_id, sandbox_id, kind, payload, prev_state, via_state, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)",
    )
    .bind(&id)
    .bind(seq)
    .bind(runner_id)
    .bind(kind.sandbox_id())
    .bind(tag)
    .bind(payload)
    .bind(prev.as_str())
    .bind(via.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(id)
}

pub(crate) fn create_job(row: &Row) -> JobKind {
    JobKind::CreateSandbox(sandbox_spec(row))
}

/// The sandbox as the runner must build it (a create, or a restore from an archive).
pub(crate) fn sandbox_spec(row: &Row) -> CreateSandbox {
    CreateSandbox {
        id: row.id.clone(),
        name: Some(row.name.clone()),
        organization_id: row.organization_id.clone(),
        image: row.snapshot.clone(),
        user: Some(row.os_user.clone()).filter(|u| !u.is_empty()),
        env: row.env_map(),
        labels: row.labels_map(),
        resources: Resources { cpu: to_u32(row.cpu), memory: to_u32(row.memory), disk: to_u32(row.disk) },
        entrypoint: None,
        auto: AutoIntervals {
            auto_stop_interval: u32::try_from(row.auto_stop).ok(),
            auto_archive_interval: u32::try_from(row.auto_archive).ok(),
            auto_delete_interval: u32::try_from(row.auto_delete).ok(),
        },
        network: crate::network::policy_of(row),
        linked_sandbox: row.linked_sandbox_id.clone(),
    }
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Locks the organization's row on PostgreSQL, so concurrent requests of one organization cannot both slip under a
/// quota or take one name (SQLite transactions are serial already).
pub(crate) async fn lock_org(app: &App, conn: &mut AnyConnection, org: &str) -> ApiResult<()> {
    if app.db.kind == DbKind::Postgres {
        sqlx::query("SELECT id FROM organizations WHERE id = $1 FOR UPDATE").bind(org).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Refuses with 409 when a live sandbox of the organization already has `name`.
pub(crate) async fn ensure_name_free(conn: &mut AnyConnection, org: &str, name: &str) -> ApiResult<()> {
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT id FROM sandboxes WHERE organization_id = $1 AND name = $2 AND state <> 'destroyed'",
    )
    .bind(org)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    match taken {
        Some(_) => Err(ApiError::conflict(format!("Sandbox with name {name} already exists"))),
        None => Ok(()),
    }
}

/// Refuses with 403 when adding the given resources would exceed the organization's quotas.
pub(crate) async fn check_quota(
    conn: &mut AnyConnection,
    org: &str,
    add_cpu: i64,
    add_memory: i64,
    add_disk: i64,
    add_count: i64,
) -> ApiResult<()> {
    let (qcpu, qmem, qdisk, qcount): (i64, i64, i64, i64) =
        sqlx::query_as("SELECT quota_cpu, quota_memory, quota_disk, quota_sandboxes FROM organizations WHERE id = $1")
            .bind(org)
            .fetch_one(&mut *conn)
            .await?;
    let idle = state::IDLE_STATES_SQL;
    let (count, cpu, mem, disk): (i64, i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*), \
         CAST(COALESCE(SUM(CASE WHEN state NOT IN {idle} THEN cpu ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN state NOT IN {idle} THEN memory ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(disk), 0) AS BIGINT) \
         FROM sandboxes WHERE organization_id = $1 AND state <> 'destroyed'"
    )))
    .bind(org)
    .fetch_one(&mut *conn)
    .await?;
    let over = |what: &str, unit: &str, limit: i64, used: i64, add: i64| {
        ApiError::forbidden(format!(
            "Quota exceeded: the organization's {what} limit is {limit}{unit}, {used}{unit} in use, this request needs \
             {add}{unit} more. Stop or delete sandboxes, or ask for a higher quota."
        ))
    };
    if add_count > 0 && count + add_count > qcount {
        return Err(over("sandbox count", "", qcount, count, add_count));
    }
    if add_cpu > 0 && cpu + add_cpu > qcpu {
        return Err(over("CPU", " vCPU", qcpu, cpu, add_cpu));
    }
    if add_memory > 0 && mem + add_memory > qmem {
        return Err(over("memory", " GiB", qmem, mem, add_memory));
    }
    if add_disk > 0 && disk + add_disk > qdisk {
        return Err(over("disk", " GiB", qdisk, disk, add_disk));
    }
    Ok(())
}

/// Carries out a lifecycle action through the state machine. `org: None` is the lifecycle timers.
pub(crate) async fn act(
    app: &App,
    org: Option<&str>,
    id: &str,
    action: Action,
    resize: Option<&ResizeBody>,
) -> ApiResult<Row> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = load(app, &mut tx, org, id, true).await?.ok_or_else(|| ApiError::sandbox_not_found(id))?;
    let current = row.effective_state(app, now);
    let plan = state::plan(current, action, row.provisioned != 0).map_err(|r| ApiError::bad_request(r.0))?;
    let desired = match action {
        Action::Start | Action::Recover => "started",
        Action::Stop { .. } => "stopped",
        Action::Delete => "destroyed",
        Action::Archive => "archived",
        Action::Resize { .. } => "resized",
    };
    let mut wake = None;
    match plan {
        Plan::Noop => {}
        Plan::Set(next) => set_state(&mut tx, &row.id, next, None, now).await?,
        Plan::Job(next, tag) => {
            let runner = row.runner_id.clone();
            let job = match tag {
                JobTag::Destroy => {
                    sqlx::query(
                        "UPDATE jobs SET state = 'cancelled', completed_at = $1 WHERE sandbox_id = $2 AND state = 'pending'",
                    )
                    .bind(now)
                    .bind(&row.id)
                    .execute(&mut *tx)
                    .await?;
                    let claimed: i64 =
                        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE sandbox_id = $1 AND state = 'claimed'")
                            .bind(&row.id)
                            .fetch_one(&mut *tx)
                            .await?;
                    if row.provisioned == 0 && claimed == 0 {
                        // Nothing exists on any runner yet: gone at once.
                        None
                    } else {
                        Some(JobKind::DestroySandbox { sandbox_id: row.id.clone() })
                    }
                }
                JobTag::Start | JobTag::Create | JobTag::Restore => {
                    if !state::holds_compute(current) {
                        check_quota(&mut tx, &row.organization_id, row.cpu, row.memory, 0, 0).await?;
                    }
                    Some(match tag {
                        JobTag::Start => JobKind::StartSandbox { sandbox_id: row.id.clone() },
                        // The runner's archive keeps no spec: the row is its source of truth.
                        JobTag::Restore => JobKind::RestoreSandbox(sandbox_spec(&row)),
                        _ => create_job(&row),
                    })
                }
                JobTag::Archive => Some(JobKind::ArchiveSandbox { sandbox_id: row.id.clone() }),
                JobTag::Stop { force } => {
                    Some(JobKind::StopSandbox(StopSandbox { sandbox_id: row.id.clone(), force, timeout_secs: None }))
                }
                JobTag::Resize => {
                    let r = resize.ok_or_else(|| ApiError::bad_request("resize needs a body"))?;
                    let (cpu, memory, disk) = validate_resize(app, &row, r)?;
                    let running = state::holds_compute(current);
                    check_quota(
                        &mut tx,
                        &row.organization_id,
                        if running { cpu.unwrap_or(row.cpu) - row.cpu } else { 0 },
                        if running { memory.unwrap_or(row.memory) - row.memory } else { 0 },
                        disk.unwrap_or(row.disk) - row.disk,
                        0,
                    )
                    .await?;
                    Some(JobKind::ResizeSandbox(ResizeSandbox {
                        sandbox_id: row.id.clone(),
                        cpu: cpu.map(to_u32),
                        memory: memory.map(to_u32),
                        disk: disk.map(to_u32),
                    }))
                }
            };
            match (job, runner) {
                (None, _) => set_state(&mut tx, &row.id, SandboxState::Destroyed, None, now).await?,
                (Some(job), Some(runner)) => {
                    enqueue(&mut tx, &runner, &job, row.stored_state(), next, now).await?;
                    set_state(&mut tx, &row.id, next, None, now).await?;
                    wake = Some(runner);
                }
                (Some(_), None) => {
                    return Err(ApiError::conflict(
                        "the sandbox was never placed on a runner; delete it and create it again",
                    ));
                }
            }
        }
    }
    if plan != Plan::Noop {
        sqlx::query("UPDATE sandboxes SET desired_state = $1 WHERE id = $2")
            .bind(desired)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
    }
    let after = load(app, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    if let Some(r) = wake {
        app.wake_runner(&r);
    }
    if plan != Plan::Noop {
        app.wake_routes();
    }
    Ok(after)
}

fn validate_resize(app: &App, row: &Row, r: &ResizeBody) -> ApiResult<(Option<i64>, Option<i64>, Option<i64>)> {
    let l = &app.config.limits;
    if r.cpu.is_none() && r.memory.is_none() && r.disk.is_none() {
        return Err(ApiError::bad_request("resize needs at least one of cpu, memory, disk"));
    }
    check_range("cpu", r.cpu, l.max_cpu, "vCPU")?;
    check_range("memory", r.memory, l.max_memory, "GiB")?;
    check_range("disk", r.disk, l.max_disk, "GiB")?;
    if let Some(d) = r.disk
        && d < row.disk
    {
        return Err(ApiError::bad_request(format!("disk can only grow: it is {} GiB, asked for {d} GiB", row.disk)));
    }
    Ok((r.cpu, r.memory, r.disk))
}

pub(crate) fn check_range(name: &str, v: Option<i64>, max: i64, unit: &str) -> ApiResult<()> {
    match v {
        Some(v) if v < 1 || v > max => {
            Err(ApiError::bad_request(format!("{name} must be between 1 and {max} {unit}, got {v}")))
        }
        _ => Ok(()),
    }
}

fn ok(app: &App, row: &Row) -> Response {
    Json(row.to_dto(app)).into_response()
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers.

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

async fn create(
    app: axum::extract::State<App>,
    caller: Caller,
    Json(body): Json<CreateSandboxBody>,
) -> ApiResult<Response> {
    let app = app.0;
    let l = app.config.limits;
    check_range("cpu", body.cpu, l.max_cpu, "vCPU")?;
    check_range("memory", body.memory, l.max_memory, "GiB")?;
    check_range("disk", body.disk, l.max_disk, "GiB")?;
    if body.gpu.unwrap_or(0) != 0 {
        return Err(ApiError::bad_request("GPUs are not available on sandbar; omit gpu or set it to 0"));
    }
    if body.kvm.unwrap_or(false) {
        return Err(ApiError::bad_request("KVM is not available on sandbar; omit kvm or set it to false"));
    }
    if body.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "volumes are not supported by sandbar yet; create the sandbox without volumes",
        ));
    }
    if let Some(n) = body.auto_stop_interval.filter(|n| *n < 0) {
        return Err(ApiError::bad_request(format!("autoStopInterval must be 0 (never) or more minutes, got {n}")));
    }
    if let Some(n) = body.auto_archive_interval.filter(|n| *n < 0) {
        return Err(ApiError::bad_request(format!("autoArchiveInterval must be 0 or more minutes, got {n}")));
    }
    crate::network::refuse_domains(body.domain_allow_list.as_deref())?;
    let allow_list =
        body.network_allow_list.as_deref().map(crate::network::normalise_allow_list).transpose()?.flatten();
    let mut snapshot_defaults = None;
    // A Dockerfile to build first; or the runner a built snapshot's image lives on.
    let mut dockerfile = None;
    let mut built_on = None;
    // A snapshot taken from a sandbox is an image on one runner only.
    let mut snapshot_runner = None;
    let image = match (&body.snapshot, &body.image, &body.build_info) {
        (Some(s), _, _) if !s.trim().is_empty() => {
            let mut conn = app.db.pool.acquire().await?;
            match crate::snapshots::find(&mut conn, &caller.organization_id, s.trim()).await? {
                // A registered snapshot: its image and default resources.
                Some(snap) => {
                    if snap.state != "active" {
                        return Err(ApiError::bad_request(format!(
                            "Snapshot {} is {} and cannot be used yet{}",
                            snap.name,
                            snap.state,
                            snap.error_reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                        )));
                    }
                    built_on = crate::builds::snapshot_runner(&app, &mut conn, &snap).await?;
                    snapshot_defaults = Some((snap.cpu, snap.memory, snap.disk));
                    snapshot_runner = snap.runner_id.clone();
                    snap.image_name
                }
                // Otherwise the name of a local image.
                None => s.trim().to_owned(),
            }
        }
        (_, Some(i), _) if !i.trim().is_empty() => i.trim().to_owned(),
        (_, _, Some(bi)) => match crate::builds::source(bi)? {
            crate::builds::Source::Image(i) => i,
            crate::builds::Source::Dockerfile(d) => {
                let image = crate::builds::image_for(&d);
                dockerfile = Some(d);
                image
            }
        },
        _ => app.config.default_snapshot.clone(),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let name = match body.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => {
            if !valid_name(n) {
                return Err(ApiError::bad_request(format!(
                    "invalid sandbox name {n:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
                )));
            }
            n.to_owned()
        }
        _ => id.clone(),
    };
    let env = body.env.unwrap_or_default();
    if let Some(k) = env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err(ApiError::bad_request(format!("invalid environment variable name {k:?}")));
    }
    let labels = body.labels.unwrap_or_default();
    let (dcpu, dmem, ddisk) = snapshot_defaults.unwrap_or((l.default_cpu, l.default_memory, l.default_disk));
    let (cpu, memory, disk) = (body.cpu.unwrap_or(dcpu), body.memory.unwrap_or(dmem), body.disk.unwrap_or(ddisk));
    let auto_delete =
        if body.ephemeral.unwrap_or(false) { 0 } else { body.auto_delete_interval.unwrap_or(DEFAULT_AUTO_DELETE) };
    let now = app.now();
    let org = caller.organization_id;

    let mut tx = app.db.pool.begin().await?;
    lock_org(&app, &mut tx, &org).await?;
    check_quota(&mut tx, &org, cpu, memory, disk, 1).await?;
    ensure_name_free(&mut tx, &org, &name).await?;
    let link = match body.linked_sandbox.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        // A linked sandbox goes where its parent is, so the two share a network.
        Some(l) => Some(crate::network::resolve_link(&app, &mut tx, &org, l, auto_delete).await?),
        None => None,
    };
    let build = match &dockerfile {
        Some(d) => Some(crate::builds::attach(&app, &mut tx, &org, d, (cpu, memory, disk)).await?),
        None => None,
    };
    let pinned = build.as_ref().map(|b| b.runner_id.clone()).or(built_on).or(snapshot_runner);
    let runner = match (&link, pinned) {
        (Some((_, parent_runner)), Some(image_runner)) if *parent_runner != image_runner => {
            return Err(ApiError::bad_request(format!(
                "the linked sandbox runs on runner {parent_runner}, but this sandbox's image exists only on runner \
                 {image_runner}: create it without linkedSandbox, or from an image both runners have"
            )));
        }
        (Some((_, parent_runner)), _) => parent_runner.clone(),
        // An image on one runner only (built there, or a snapshot taken from a sandbox there).
        (None, Some(image_runner)) => crate::fork::place_on(&app, &mut tx, &image_runner, cpu, memory, disk).await?,
        (None, None) => runners::place(&app, &mut tx, cpu, memory, disk).await?,
    };
    let linked = link.map(|(parent, _)| parent);
    let labels_json = serde_json::to_string(&labels).map_err(|e| ApiError::internal("labels", e))?;
    let env_json = serde_json::to_string(&env).map_err(|e| ApiError::internal("env", e))?;
    sqlx::query(
        "INSERT INTO sandboxes (id, organization_id, name, runner_id, state, desired_state, snapshot, os_user, env, \
         labels, public, network_block_all, network_allow_list, target, cpu, memory, disk, auto_stop, auto_archive, \
         auto_delete, daemon_token, preview_token, provisioned, created_at, updated_at, last_activity_at, state_at, \
         version) VALUES ($1, $2, $3, $4, 'creating', 'started', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, '', $19, 0, $20, $20, $20, $20, 0)",
    )
    .bind(&id)
    .bind(&org)
    .bind(&name)
    .bind(&runner)
    .bind(&image)
    .bind(body.user.clone().unwrap_or_default())
    .bind(env_json)
    .bind(labels_json)
    .bind(b(body.public.unwrap_or(false)))
    .bind(b(body.network_block_all.unwrap_or(false)))
    .bind(allow_list)
    .bind(body.target.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| app.config.target.clone()))
    .bind(cpu)
    .bind(memory)
    .bind(disk)
    .bind(body.auto_stop_interval.unwrap_or(DEFAULT_AUTO_STOP))
    .bind(body.auto_archive_interval.unwrap_or(DEFAULT_AUTO_ARCHIVE))
    .bind(auto_delete)
    .bind(random_token(24))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    write_labels(&mut tx, &id, &labels).await?;
    if let Some(parent) = &linked {
        sqlx::query("UPDATE sandboxes SET linked_sandbox_id = $1 WHERE id = $2")
            .bind(parent)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    let waits_for_build = match &build {
        Some(b) => crate::builds::link_sandbox(&mut tx, &id, b, now).await?,
        None => false,
    };
    let row =
        load(&app, &mut tx, None, &id, false).await?.ok_or_else(|| ApiError::internal("create", "row vanished"))?;
    if !waits_for_build {
        enqueue(&mut tx, &runner, &create_job(&row), SandboxState::Creating, SandboxState::Creating, now).await?;
    }
    bump(&mut tx, &id, now).await?;
    let row = load(&app, &mut tx, None, &id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_runner(&runner);
    app.wake_routes();
    tracing::info!(sandbox_id = %id, runner_id = %runner, "sandbox created");
    let row = wait_while_creating(&app, row).await?;
    Ok(ok(&app, &row))
}

/// Waits up to `create_wait_ms` for a new sandbox to leave `creating` (every job result wakes the route watchers;
/// a result posted to another API instance is seen by rereading every poll interval), and returns the row as it
/// then is.
pub(crate) async fn wait_while_creating(app: &App, row: Row) -> ApiResult<Row> {
    if app.config.create_wait_ms == 0 {
        return Ok(row);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(app.config.create_wait_ms);
    let mut row = row;
    loop {
        let notified = app.route_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut conn = app.db.pool.acquire().await?;
        match load(app, &mut conn, None, &row.id, false).await? {
            Some(r) => row = r,
            None => return Ok(row),
        }
        drop(conn);
        if row.state != SandboxState::Creating.as_str() || tokio::time::Instant::now() >= deadline {
            return Ok(row);
        }
        let nap = (tokio::time::Instant::now() + app.poll_interval()).min(deadline);
        let _ = tokio::time::timeout_at(nap, notified).await;
    }
}

async fn write_labels(
    conn: &mut AnyConnection,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sandbox_labels WHERE sandbox_id = $1").bind(id).execute(&mut *conn).await?;
    for (k, v) in labels {
        sqlx::query("INSERT INTO sandbox_labels (sandbox_id, key, value) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(k)
            .bind(v)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn get_one(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let mut conn = app.db.pool.acquire().await?;
    let row = load_or_404(&app, &mut conn, &caller.organization_id, &id, false).await?;
    Ok(ok(&app, &row))
}

fn encode_cursor(created_at: i64, id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(c: &str) -> ApiResult<(i64, String)> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("invalid cursor: pass the nextCursor of the previous page unchanged");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (t, id) = s.split_once(':').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, id.to_owned()))
}

/// `GET /sandbox`: newest first; `labels` (a JSON object), `states`, `id`, `name`, `cursor`, `limit`.
async fn list(app: axum::extract::State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    let limit = q.int("limit")?.unwrap_or(100);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")));
    }
    let labels: BTreeMap<String, String> = match q.get("labels").filter(|l| !l.is_empty()) {
        Some(l) => serde_json::from_str(l).map_err(|e| {
            ApiError::bad_request(format!("labels must be a JSON object of strings, like {{\"k\":\"v\"}}: {e}"))
        })?,
        None => BTreeMap::new(),
    };
    let mut states = Vec::new();
    for s in q.all("states").flat_map(|s| s.split(',')).filter(|s| !s.is_empty()) {
        let st = state::parse(s);
        if st == SandboxState::Unknown && s != "unknown" {
            return Err(ApiError::bad_request(format!("unknown sandbox state {s:?} in states")));
        }
        states.push(st.as_str().to_owned());
    }
    let mut sql = format!("SELECT {COLUMNS} {FROM} WHERE s.organization_id = $1");
    let mut binds: Vec<BindVal> = vec![BindVal::S(caller.organization_id.clone())];
    let mut n = 1;
    let mut next = |binds: &mut Vec<BindVal>, v: BindVal| {
        binds.push(v);
        n += 1;
        format!("${n}")
    };
    if states.is_empty() {
        sql.push_str(" AND s.state <> 'destroyed'");
    } else {
        let ps: Vec<String> = states.iter().map(|s| next(&mut binds, BindVal::S(s.clone()))).collect();
        sql.push_str(&format!(" AND s.state IN ({})", ps.join(", ")));
    }
    if let Some(id) = q.get("id").filter(|v| !v.is_empty()) {
        let p = next(&mut binds, BindVal::S(id.to_owned()));
        sql.push_str(&format!(" AND s.id = {p}"));
    }
    if let Some(name) = q.get("name").filter(|v| !v.is_empty()) {
        let p = next(&mut binds, BindVal::S(name.to_owned()));
        sql.push_str(&format!(" AND s.name = {p}"));
    }
    for (k, v) in &labels {
        let pk = next(&mut binds, BindVal::S(k.clone()));
        let pv = next(&mut binds, BindVal::S(v.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM sandbox_labels l WHERE l.sandbox_id = s.id AND l.key = {pk} AND l.value = {pv})"
        ));
    }
    if let Some(c) = q.get("cursor").filter(|c| !c.is_empty()) {
        let (t, id) = decode_cursor(c)?;
        let pt = next(&mut binds, BindVal::I(t));
        let pt2 = next(&mut binds, BindVal::I(t));
        let pid = next(&mut binds, BindVal::S(id));
        sql.push_str(&format!(" AND (s.created_at < {pt} OR (s.created_at = {pt2} AND s.id < {pid}))"));
    }
    let pl = next(&mut binds, BindVal::I(limit + 1));
    sql.push_str(&format!(" ORDER BY s.created_at DESC, s.id DESC LIMIT {pl}"));
    let mut query = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
    for v in binds {
        query = match v {
            BindVal::S(s) => query.bind(s),
            BindVal::I(i) => query.bind(i),
        };
    }
    let mut rows = query.fetch_all(&app.db.pool).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.created_at, &r.id))
    } else {
        None
    };
    let items = rows.iter().map(|r| r.to_dto(&app)).collect();
    Ok(Json(ListSandboxesResponse { items, next_cursor }).into_response())
}

enum BindVal {
    S(String),
    I(i64),
}

async fn start(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    // A paused sandbox is resumed, not started (crate::fork).
    if let Some(row) = crate::fork::resume_if_paused(&app, &caller.organization_id, &id).await? {
        return Ok(ok(&app, &row));
    }
    let row = act(&app, Some(&caller.organization_id), &id, Action::Start, None).await?;
    Ok(ok(&app, &row))
}

async fn stop(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let force = q.bool("force")?.unwrap_or(false);
    let row = act(&app, Some(&caller.organization_id), &id, Action::Stop { force }, None).await?;
    Ok(ok(&app, &row))
}

async fn delete(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = act(&app, Some(&caller.organization_id), &id, Action::Delete, None).await?;
    Ok(ok(&app, &row))
}

async fn archive(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = act(&app, Some(&caller.organization_id), &id, Action::Archive, None).await?;
    Ok(ok(&app, &row))
}

async fn recover(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let row = act(&app, Some(&caller.organization_id), &id, Action::Recover, None).await?;
    Ok(ok(&app, &row))
}

async fn resize(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ResizeBody>,
) -> ApiResult<Response> {
    let disk = body.disk.is_some();
    let row = act(&app, Some(&caller.organization_id), &id, Action::Resize { disk }, Some(&body)).await?;
    Ok(ok(&app, &row))
}

/// Runs `f` on the locked row of a sandbox that is not destroyed, bumps its route and answers the sandbox.
async fn update<F>(app: &App, org: &str, id: &str, f: F) -> ApiResult<Row>
where
    F: for<'c> FnOnce(&'c mut AnyConnection, &'c Row) -> futures_util::future::BoxFuture<'c, ApiResult<()>>,
{
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = load_or_404(app, &mut tx, org, id, true).await?;
    if row.stored_state() == SandboxState::Destroyed {
        return Err(ApiError::bad_request("Sandbox is destroyed and cannot be changed"));
    }
    f(&mut tx, &row).await?;
    bump(&mut tx, &row.id, now).await?;
    let after = load(app, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_routes();
    Ok(after)
}

async fn set_labels(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<LabelsBody>,
) -> ApiResult<Response> {
    let json = serde_json::to_string(&body.labels).map_err(|e| ApiError::internal("labels", e))?;
    let labels = body.labels;
    let row = update(&app, &caller.organization_id, &id, move |conn, row| {
        Box::pin(async move {
            sqlx::query("UPDATE sandboxes SET labels = $1 WHERE id = $2")
                .bind(json)
                .bind(&row.id)
                .execute(&mut *conn)
                .await?;
            write_labels(conn, &row.id, &labels).await?;
            Ok(())
        })
    })
    .await?;
    Ok(Json(LabelsBody { labels: row.labels_map() }).into_response())
}

async fn set_column(app: &App, org: &str, id: &str, column: &'static str, value: i64) -> ApiResult<Row> {
    update(app, org, id, move |conn, row| {
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE sandboxes SET {column} = $1 WHERE id = $2")))
                .bind(value)
                .bind(&row.id)
                .execute(conn)
                .await?;
            Ok(())
        })
    })
    .await
}

async fn set_public(
    app: axum::extract::State<App>,
    caller: Caller,
    Path((id, public)): Path<(String, String)>,
) -> ApiResult<Response> {
    let public = match public.as_str() {
        "true" => true,
        "false" => false,
        other => return Err(ApiError::bad_request(format!("public must be true or false, got {other:?}"))),
    };
    let row = set_column(&app, &caller.organization_id, &id, "public", b(public)).await?;
    Ok(ok(&app, &row))
}

async fn set_autostop(
    app: axum::extract::State<App>,
    caller: Caller,
    Path((id, n)): Path<(String, i64)>,
) -> ApiResult<Response> {
    if n < 0 {
        return Err(ApiError::bad_request(format!("auto-stop interval must be 0 (never) or more minutes, got {n}")));
    }
    let row = set_column(&app, &caller.organization_id, &id, "auto_stop", n).await?;
    Ok(ok(&app, &row))
}

async fn set_autoarchive(
    app: axum::extract::State<App>,
    caller: Caller,
    Path((id, n)): Path<(String, i64)>,
) -> ApiResult<Response> {
    if n < 0 {
        return Err(ApiError::bad_request(format!("auto-archive interval must be 0 or more minutes, got {n}")));
    }
    let n = if n == 0 { DEFAULT_AUTO_ARCHIVE } else { n };
    let row = set_column(&app, &caller.organization_id, &id, "auto_archive", n).await?;
    Ok(ok(&app, &row))
}

async fn set_autodelete(
    app: axum::extract::State<App>,
    caller: Caller,
    Path((id, n)): Path<(String, i64)>,
) -> ApiResult<Response> {
    let row = set_column(&app, &caller.organization_id, &id, "auto_delete", n.max(-1)).await?;
    Ok(ok(&app, &row))
}

async fn last_activity(app: axum::extract::State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let now = app.now();
    let r = sqlx::query("UPDATE sandboxes SET last_activity_at = $1 WHERE organization_id = $2 AND (id = $3 OR name = $3) AND state <> 'destroyed'")
        .bind(now)
        .bind(&caller.organization_id)
        .bind(&id)
        .execute(&app.db.pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::sandbox_not_found(&id));
    }
    Ok(StatusCode::CREATED.into_response())
}

fn port_of(port: i64) -> ApiResult<u16> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("port must be 1-65535, got {port}")))
}

async fn preview_url(
    app: axum::extract::State<App>,
    caller: Caller,
    Path((id, port)): Path<(String, i64)>,
) -> ApiResult<Response> {
    let port = port_of(port)?;
    let mut conn = app.db.pool.acquire().await?;
    let row = load_or_404(&app, &mut conn, &caller.organization_id, &id, false).await?;
    Ok(Json(PortPreviewUrl {
        url: app.config.preview_url(&row.id, port),
        token: row.preview_token,
        sandbox_id: row.id,
    })
    .into_response())
}

async fn signed_preview_url(
    app: axum::extract::State<App>,
    caller: Caller,
    Path((id, port)): Path<(String, i64)>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let port = port_of(port)?;
    let secs = q.int("expiresInSeconds")?.unwrap_or(60);
    if !(1..=24 * 3600).contains(&secs) {
        return Err(ApiError::bad_request(format!("expiresInSeconds must be between 1 and 86400, got {secs}")));
    }
    let now = app.now();
    let mut conn = app.db.pool.acquire().await?;
    let row = load_or_404(&app, &mut conn, &caller.organization_id, &id, false).await?;
    // Daytona's form: the token takes the sandbox id's place in the host, `{port}-{token}.{domain}`.
    let token = crate::internal::new_signed_preview_token();
    sqlx::query("INSERT INTO preview_tokens (token_hash, sandbox_id, port, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(sha256_hex(&token))
        .bind(&row.id)
        .bind(i64::from(port))
        .bind(now + secs * 1000)
        .execute(&mut *conn)
        .await?;
    let url = app.config.preview_url(&token, port);
    Ok(Json(SignedPortPreviewUrl { sandbox_id: row.id, port: i64::from(port), token, url }).into_response())
}

async fn expire_signed_preview_url(
    app: axum::extract::State<App>,
    caller: Caller,
    Path((id, port, token)): Path<(String, i64, String)>,
) -> ApiResult<Response> {
    let port = port_of(port)?;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = load_or_404(&app, &mut tx, &caller.organization_id, &id, false).await?;
    let r = sqlx::query(
        "UPDATE preview_tokens SET revoked_at = $1 WHERE token_hash = $2 AND sandbox_id = $3 AND port = $4",
    )
    .bind(now)
    .bind(sha256_hex(&token))
    .bind(&row.id)
    .bind(i64::from(port))
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::not_found("no such signed preview URL token for this sandbox and port"));
    }
    // A new route version makes proxies drop what they cached for this sandbox's credentials: the URL stops now.
    bump(&mut tx, &row.id, now).await?;
    tx.commit().await?;
    app.wake_routes();
    Ok(Json(serde_json::json!({})).into_response())
}

async fn create_ssh_access(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let minutes = q.int("expiresInMinutes")?.unwrap_or(DEFAULT_SSH_MINUTES);
    if !(1..=7 * 24 * 60).contains(&minutes) {
        return Err(ApiError::bad_request(format!("expiresInMinutes must be between 1 and 10080, got {minutes}")));
    }
    let now = app.now();
    let mut conn = app.db.pool.acquire().await?;
    let row = load_or_404(&app, &mut conn, &caller.organization_id, &id, false).await?;
    if row.stored_state() == SandboxState::Destroyed {
        return Err(ApiError::bad_request("Sandbox is destroyed: no SSH access can be created"));
    }
    let token = random_token(24);
    let access_id = uuid::Uuid::new_v4().to_string();
    let expires = now + minutes * 60_000;
    sqlx::query(
        "INSERT INTO ssh_access (id, sandbox_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&access_id)
    .bind(&row.id)
    .bind(sha256_hex(&token))
    .bind(now)
    .bind(expires)
    .execute(&mut *conn)
    .await?;
    let (host, port) = app.config.ssh_gateway_parts().map_err(|e| ApiError::internal("ssh gateway", e))?;
    Ok(Json(SshAccessDto {
        id: access_id,
        sandbox_id: row.id,
        ssh_command: format!("ssh -p {port} {token}@{host}"),
        token,
        expires_at: iso(expires),
        created_at: iso(now),
        updated_at: iso(now),
    })
    .into_response())
}

async fn revoke_ssh_access(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let now = app.now();
    let mut conn = app.db.pool.acquire().await?;
    let row = load_or_404(&app, &mut conn, &caller.organization_id, &id, false).await?;
    match q.get("token").filter(|t| !t.is_empty()) {
        Some(token) => {
            sqlx::query("UPDATE ssh_access SET revoked_at = $1 WHERE sandbox_id = $2 AND token_hash = $3 AND revoked_at IS NULL")
                .bind(now)
                .bind(&row.id)
                .bind(sha256_hex(token))
                .execute(&mut *conn)
                .await?;
        }
        None => {
            sqlx::query("UPDATE ssh_access SET revoked_at = $1 WHERE sandbox_id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(&row.id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(ok(&app, &row))
}

async fn validate_ssh_access(app: axum::extract::State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    let token = q.get("token").filter(|t| !t.is_empty()).ok_or_else(|| ApiError::bad_request("token is required"))?;
    let found: Option<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT a.sandbox_id, a.expires_at, a.revoked_at FROM ssh_access a JOIN sandboxes s ON s.id = a.sandbox_id \
         WHERE a.token_hash = $1 AND s.organization_id = $2",
    )
    .bind(sha256_hex(token))
    .bind(&caller.organization_id)
    .fetch_optional(&app.db.pool)
    .await?;
    let dto = match found {
        Some((sandbox_id, expires, revoked)) => {
            SshAccessValidationDto { valid: revoked.is_none() && expires > app.now(), sandbox_id }
        }
        None => SshAccessValidationDto { valid: false, sandbox_id: String::new() },
    };
    Ok(Json(dto).into_response())
}

async fn toolbox_proxy_url(
    app: axum::extract::State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut conn = app.db.pool.acquire().await?;
    load_or_404(&app, &mut conn, &caller.organization_id, &id, false).await?;
    Ok(Json(ToolboxProxyUrl { url: app.config.toolbox_proxy_url() }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_cursors() {
        assert!(valid_name("my-box_1.x"));
        assert!(!valid_name("-x") && !valid_name("") && !valid_name("a b") && !valid_name(&"a".repeat(64)));
        let c = encode_cursor(12, "abc");
        assert_eq!(decode_cursor(&c).unwrap(), (12, "abc".into()));
        assert!(decode_cursor("!!").is_err());
    }
}
