//! The `sandboxes` table (with `sandbox_labels`): rows, the changes that bump a sandbox's route version, and the
//! queries the list endpoint and the timers need.

use std::collections::BTreeMap;

use sandbar_proto::runner::{SandboxInfo, SandboxState};
use sqlx::{AnyConnection, AnyPool};

use super::totals::{self, Delta};
use super::{DbKind, next_seq};

pub(crate) const COLUMNS: &str = "s.id, s.organization_id, s.name, s.runner_id, s.state, s.desired_state, \
    s.error_reason, s.snapshot, s.os_user, s.env, s.labels, s.public, s.network_block_all, s.network_allow_list, \
    s.target, s.cpu, s.memory, s.disk, s.auto_stop, s.auto_archive, s.auto_delete, s.daemon_addr, s.ssh_addr, \
    s.daemon_token, s.preview_token, s.provisioned, s.created_at, s.updated_at, s.last_activity_at, s.state_at, \
    s.version, r.last_heartbeat AS runner_seen, s.linked_sandbox_id, s.daemon_host_key, s.volumes, s.stop_cause, \
    s.host_restarts, s.image_source";
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
    /// The daemon's SSH host key as its runner reported it (OpenSSH public key line).
    pub daemon_host_key: Option<String>,
    /// The volume mounts (JSON of `[VolumeMount]`, volume ids resolved).
    pub volumes: String,
    /// `host` when its runner reported it stopped without being asked (`crate::domain::state::STOP_CAUSE_HOST`).
    pub stop_cause: Option<String>,
    /// How many times in a row the lifecycle started it again after the host stopped it.
    pub host_restarts: i64,
    /// The copy of its image in the internal registry (a snapshot or build pushed there), which a runner without
    /// the image pulls (`CreateSandbox::pull_from`).
    pub image_source: Option<String>,
}

/// A stored state column; `unknown` for anything else.
pub fn parse_state(s: &str) -> SandboxState {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or(SandboxState::Unknown)
}

impl Row {
    /// The state as stored (without the runner's reachability: see `crate::domain::state`).
    pub fn stored_state(&self) -> SandboxState {
        parse_state(&self.state)
    }

    pub fn env_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.env).unwrap_or_default()
    }

    pub fn labels_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.labels).unwrap_or_default()
    }

    pub fn volume_mounts(&self) -> Vec<sandbar_proto::runner::VolumeMount> {
        serde_json::from_str(&self.volumes).unwrap_or_default()
    }
}

/// Loads a sandbox by id or name within `org` (any organization when `None`, by id only). `lock` takes a row lock
/// on PostgreSQL so two instances never act on one sandbox at once (SQLite transactions are serial already).
pub async fn load(
    kind: DbKind,
    conn: &mut AnyConnection,
    org: Option<&str>,
    id_or_name: &str,
    lock: bool,
) -> Result<Option<Row>, sqlx::Error> {
    let lock = if lock && kind == DbKind::Postgres { " FOR UPDATE OF s" } else { "" };
    let order = "ORDER BY CASE WHEN s.state = 'destroyed' THEN 1 ELSE 0 END, s.created_at DESC LIMIT 1";
    match org {
        Some(org) => {
            // Most callers name a sandbox by its id: a primary-key read. A live row found so is the answer the
            // query below would give too (live rows first; a live sandbox's name is unique, and no other row
            // is both live and named this id unless its user chose another sandbox's id as its name).
            let by_id: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} {FROM} WHERE s.id = $1 AND s.organization_id = $2{lock}"
            )))
            .bind(id_or_name)
            .bind(org)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = by_id.filter(|r| r.state != "destroyed") {
                return Ok(Some(row));
            }
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

/// Gives `sandbox_id` a new route version and records the change for the proxy's long-poll.
pub async fn bump(conn: &mut AnyConnection, sandbox_id: &str, now: i64) -> Result<i64, sqlx::Error> {
    let seq = next_seq(&mut *conn).await?;
    bump_at(conn, sandbox_id, seq, now).await
}

/// [`bump`] with a sequence number the caller took (`super::next_seq`) in this transaction.
pub async fn bump_at(conn: &mut AnyConnection, sandbox_id: &str, seq: i64, now: i64) -> Result<i64, sqlx::Error> {
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
    super::notify::routes(conn).await?;
    Ok(seq)
}

/// What the totals need of a sandbox: `(state, organization, runner, cpu, memory, disk)`.
type Counted = (String, String, Option<String>, i64, i64, i64);

async fn counted(conn: &mut AnyConnection, sandbox_id: &str) -> Result<Option<Counted>, sqlx::Error> {
    sqlx::query_as("SELECT state, organization_id, runner_id, cpu, memory, disk FROM sandboxes WHERE id = $1")
        .bind(sandbox_id)
        .fetch_optional(conn)
        .await
}

/// Moves a sandbox to `next` (recording why, for `error`), then bumps its route and moves its organization's and
/// runner's totals. A destroyed sandbox loses its addresses and labels.
pub async fn set_state(
    conn: &mut AnyConnection,
    sandbox_id: &str,
    next: SandboxState,
    error_reason: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let q = if next == SandboxState::Started {
        "UPDATE sandboxes SET state = $1, error_reason = $2, state_at = $3, last_activity_at = $3 WHERE id = $4 \
         AND state = $5"
    } else {
        "UPDATE sandboxes SET state = $1, error_reason = $2, state_at = $3 WHERE id = $4 AND state = $5"
    };
    // Conditional on the state read, so the totals move by exactly what changed even if another transaction
    // moved the sandbox in between (read again, then).
    let mut before = None;
    for _ in 0..8 {
        let Some(c) = counted(&mut *conn, sandbox_id).await? else { break };
        let done = sqlx::query(q)
            .bind(next.as_str())
            .bind(error_reason)
            .bind(now)
            .bind(sandbox_id)
            .bind(&c.0)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 1 {
            before = Some(c);
            break;
        }
    }
    if next == SandboxState::Destroyed {
        sqlx::query("UPDATE sandboxes SET daemon_addr = NULL, ssh_addr = NULL WHERE id = $1")
            .bind(sandbox_id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM sandbox_labels WHERE sandbox_id = $1").bind(sandbox_id).execute(&mut *conn).await?;
    }
    bump(&mut *conn, sandbox_id, now).await?;
    if let Some((state, org, runner, cpu, memory, disk)) = before {
        let d = Delta::of(next.as_str(), cpu, memory, disk).since(Delta::of(&state, cpu, memory, disk));
        totals::shift(conn, &org, runner.as_deref(), d).await?;
    }
    Ok(())
}

/// Records that the host stopped a sandbox its user wants started; `fresh` (it had run long enough) starts a new
/// series of restarts.
pub async fn mark_host_stop(conn: &mut AnyConnection, sandbox_id: &str, fresh: bool) -> Result<(), sqlx::Error> {
    let q = if fresh {
        "UPDATE sandboxes SET stop_cause = 'host', host_restarts = 0 WHERE id = $1"
    } else {
        "UPDATE sandboxes SET stop_cause = 'host' WHERE id = $1"
    };
    sqlx::query(q).bind(sandbox_id).execute(conn).await?;
    Ok(())
}

/// Counts one restart of a host-stopped sandbox.
pub async fn count_host_restart(conn: &mut AnyConnection, sandbox_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sandboxes SET host_restarts = host_restarts + 1 WHERE id = $1")
        .bind(sandbox_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sandboxes the host stopped whose user still wants them started, with restarts left (the lifecycle decides
/// which are due: `crate::domain::state::host_restart_due`).
pub async fn host_stopped(pool: &AnyPool, max_restarts: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM sandboxes WHERE stop_cause = 'host' AND desired_state = 'started' \
         AND state IN ('stopped', 'error') AND host_restarts < $1",
    )
    .bind(max_restarts)
    .fetch_all(pool)
    .await
}

/// The id of a live sandbox of `org` named `name`.
pub async fn live_named(conn: &mut AnyConnection, org: &str, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM sandboxes WHERE organization_id = $1 AND name = $2 AND state <> 'destroyed'")
        .bind(org)
        .bind(name)
        .fetch_optional(conn)
        .await
}

/// The columns of a new sandbox.
#[derive(Debug)]
pub struct NewRow<'a> {
    pub id: &'a str,
    pub org: &'a str,
    pub name: &'a str,
    pub runner: &'a str,
    pub image: &'a str,
    pub user: &'a str,
    pub env_json: String,
    pub labels_json: String,
    pub public: bool,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub target: String,
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub auto_stop: i64,
    pub auto_archive: i64,
    pub auto_delete: i64,
    pub preview_token: String,
    pub now: i64,
}

/// Inserts a new sandbox in `creating` (desired `started`).
pub async fn insert(conn: &mut AnyConnection, r: NewRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sandboxes (id, organization_id, name, runner_id, state, desired_state, snapshot, os_user, env, \
         labels, public, network_block_all, network_allow_list, target, cpu, memory, disk, auto_stop, auto_archive, \
         auto_delete, daemon_token, preview_token, provisioned, created_at, updated_at, last_activity_at, state_at, \
         version) VALUES ($1, $2, $3, $4, 'creating', 'started', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, '', $19, 0, $20, $20, $20, $20, 0)",
    )
    .bind(r.id)
    .bind(r.org)
    .bind(r.name)
    .bind(r.runner)
    .bind(r.image)
    .bind(r.user)
    .bind(r.env_json)
    .bind(r.labels_json)
    .bind(super::b(r.public))
    .bind(super::b(r.network_block_all))
    .bind(r.network_allow_list)
    .bind(r.target)
    .bind(r.cpu)
    .bind(r.memory)
    .bind(r.disk)
    .bind(r.auto_stop)
    .bind(r.auto_archive)
    .bind(r.auto_delete)
    .bind(r.preview_token)
    .bind(r.now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a fork of `source`: every column of the source, but a new identity (id, name, tokens, times) and the
/// fork's own image; its labels are copied. Columns this statement does not name take their defaults.
pub async fn insert_fork(
    conn: &mut AnyConnection,
    source: &str,
    fork_id: &str,
    name: &str,
    image: &str,
    preview_token: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sandboxes (id, organization_id, name, runner_id, state, desired_state, snapshot, os_user, env, \
         labels, public, network_block_all, network_allow_list, target, cpu, memory, disk, auto_stop, auto_archive, \
         auto_delete, daemon_token, preview_token, provisioned, created_at, updated_at, last_activity_at, state_at, \
         version, volumes, image_source) \
         SELECT $1, organization_id, $2, runner_id, 'creating', 'started', $3, os_user, env, labels, public, \
         network_block_all, network_allow_list, target, cpu, memory, disk, auto_stop, auto_archive, auto_delete, '', \
         $4, 0, $5, $5, $5, $5, 0, volumes, image_source FROM sandboxes WHERE id = $6",
    )
    .bind(fork_id)
    .bind(name)
    .bind(image)
    .bind(preview_token)
    .bind(now)
    .bind(source)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO sandbox_labels (sandbox_id, key, value) SELECT $1, key, value FROM sandbox_labels \
         WHERE sandbox_id = $2",
    )
    .bind(fork_id)
    .bind(source)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Replaces a sandbox's labels (the JSON column and the rows the list filter reads).
pub async fn set_labels(
    conn: &mut AnyConnection,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(labels).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("UPDATE sandboxes SET labels = $1 WHERE id = $2").bind(json).bind(id).execute(&mut *conn).await?;
    write_labels(conn, id, labels).await
}

/// Writes the label rows of a sandbox (the list filter reads them).
pub async fn write_labels(
    conn: &mut AnyConnection,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sandbox_labels WHERE sandbox_id = $1").bind(id).execute(&mut *conn).await?;
    insert_labels(conn, id, labels).await
}

/// Deletes new sandbox `id` written in this transaction, with its labels and volume mounts (nothing else refers to
/// a sandbox before its end is written: `crate::domain::group_commit` takes back a create a limit refused).
pub async fn forget_new(conn: &mut AnyConnection, id: &str) -> Result<(), sqlx::Error> {
    for sql in [
        "DELETE FROM sandbox_volumes WHERE sandbox_id = $1",
        "DELETE FROM sandbox_labels WHERE sandbox_id = $1",
        "DELETE FROM sandboxes WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds the label rows of a new sandbox (which has none yet).
pub async fn insert_labels(
    conn: &mut AnyConnection,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), sqlx::Error> {
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

/// A text column of a sandbox that changes on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// The state the user asked for last (`desired_state`).
    Desired,
    /// The reason shown with the sandbox (its state unchanged).
    ErrorReason,
    /// The token of its preview URLs (it rotates on every start).
    PreviewToken,
    /// The build of its image.
    Build,
    /// The sandbox a new one is linked to.
    Linked,
    /// The copy of its image in the internal registry.
    ImageSource,
}

/// Sets one text column.
pub async fn set_text(conn: &mut AnyConnection, id: &str, column: Text, value: &str) -> Result<(), sqlx::Error> {
    let q = match column {
        // A user's or a timer's decision: whatever the host did before no longer matters.
        Text::Desired => "UPDATE sandboxes SET desired_state = $1, stop_cause = NULL, host_restarts = 0 WHERE id = $2",
        Text::ErrorReason => "UPDATE sandboxes SET error_reason = $1 WHERE id = $2",
        Text::PreviewToken => "UPDATE sandboxes SET preview_token = $1 WHERE id = $2",
        Text::Build => "UPDATE sandboxes SET build_id = $1 WHERE id = $2",
        Text::ImageSource => "UPDATE sandboxes SET image_source = $1 WHERE id = $2",
        Text::Linked => "UPDATE sandboxes SET linked_sandbox_id = $1 WHERE id = $2",
    };
    sqlx::query(q).bind(value).bind(id).execute(conn).await?;
    Ok(())
}

/// An integer setting of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Public,
    AutoStop,
    AutoArchive,
    AutoDelete,
}

/// Sets one integer setting.
pub async fn set(conn: &mut AnyConnection, id: &str, setting: Setting, value: i64) -> Result<(), sqlx::Error> {
    let q = match setting {
        Setting::Public => "UPDATE sandboxes SET public = $1 WHERE id = $2",
        Setting::AutoStop => "UPDATE sandboxes SET auto_stop = $1 WHERE id = $2",
        Setting::AutoArchive => "UPDATE sandboxes SET auto_archive = $1 WHERE id = $2",
        Setting::AutoDelete => "UPDATE sandboxes SET auto_delete = $1 WHERE id = $2",
    };
    sqlx::query(q).bind(value).bind(id).execute(conn).await?;
    Ok(())
}

/// Sets the network settings columns.
pub async fn set_network(
    conn: &mut AnyConnection,
    id: &str,
    block_all: bool,
    allow_list: Option<String>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sandboxes SET network_block_all = $1, network_allow_list = $2 WHERE id = $3")
        .bind(super::b(block_all))
        .bind(allow_list)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records new resources after a resize (`None` keeps the value), bumps the sandbox's route and moves its
/// organization's and runner's totals.
pub async fn set_resources(
    conn: &mut AnyConnection,
    id: &str,
    cpu: Option<u32>,
    memory: Option<u32>,
    disk: Option<u32>,
    now: i64,
) -> Result<(), sqlx::Error> {
    // Conditional on what was read, like `set_state`.
    let mut moved = None;
    for _ in 0..8 {
        let Some((state, org, runner, old_cpu, old_memory, old_disk)) = counted(&mut *conn, id).await? else { break };
        let new =
            (cpu.map_or(old_cpu, i64::from), memory.map_or(old_memory, i64::from), disk.map_or(old_disk, i64::from));
        let done = sqlx::query(
            "UPDATE sandboxes SET cpu = $1, memory = $2, disk = $3 WHERE id = $4 AND state = $5 AND cpu = $6 \
             AND memory = $7 AND disk = $8",
        )
        .bind(new.0)
        .bind(new.1)
        .bind(new.2)
        .bind(id)
        .bind(&state)
        .bind(old_cpu)
        .bind(old_memory)
        .bind(old_disk)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            let d = Delta::of(&state, new.0, new.1, new.2).since(Delta::of(&state, old_cpu, old_memory, old_disk));
            moved = Some((org, runner, d));
            break;
        }
    }
    // The route's version orders the totals after the sequence row (see `totals`' lock order).
    bump(&mut *conn, id, now).await?;
    if let Some((org, runner, d)) = moved {
        totals::shift(conn, &org, runner.as_deref(), d).await?;
    }
    Ok(())
}

/// Records what a runner says about a sandbox's daemon; `ssh_addr` is derived from it by the caller.
pub async fn record_info(
    conn: &mut AnyConnection,
    info: &SandboxInfo,
    ssh_addr: Option<String>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sandboxes SET daemon_addr = $1, ssh_addr = $2, daemon_token = $3, daemon_host_key = $4, \
         provisioned = 1 WHERE id = $5",
    )
    .bind(info.daemon_addr.clone())
    .bind(ssh_addr)
    .bind(&info.daemon_token)
    .bind(info.daemon_host_key.clone())
    .bind(&info.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The build a sandbox was made from, if any.
pub async fn build_of(conn: &mut AnyConnection, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT build_id FROM sandboxes WHERE id = $1").bind(id).fetch_one(conn).await
}

/// The sandboxes of `build_id` in one of `states` (an SQL list).
pub async fn of_build(
    conn: &mut AnyConnection,
    build_id: &str,
    states: &'static str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM sandboxes WHERE build_id = $1 AND state IN {states}"
    )))
    .bind(build_id)
    .fetch_all(conn)
    .await
}

/// `(id, state)` of the live sandboxes placed on `runner`.
pub async fn on_runner(conn: &mut AnyConnection, runner: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, state FROM sandboxes WHERE runner_id = $1 AND state <> 'destroyed'")
        .bind(runner)
        .fetch_all(conn)
        .await
}

/// `(name, organization)` of (at most five) live sandboxes running `image`.
pub async fn users_of_image(conn: &mut AnyConnection, image: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, organization_id FROM sandboxes WHERE snapshot = $1 AND state <> 'destroyed' \
         ORDER BY created_at LIMIT 5",
    )
    .bind(image)
    .fetch_all(conn)
    .await
}

/// Records activity on a live sandbox of `org` (by id or name); false when there is none.
pub async fn touch_in_org(pool: &AnyPool, org: &str, id_or_name: &str, now: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE sandboxes SET last_activity_at = $1 WHERE organization_id = $2 AND (id = $3 OR name = $3) \
         AND state <> 'destroyed'",
    )
    .bind(now)
    .bind(org)
    .bind(id_or_name)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Records activity on live sandboxes (reported by the proxy, or an SSH session starting).
pub async fn touch(conn: &mut AnyConnection, ids: &[String], now: i64) -> Result<(), sqlx::Error> {
    for id in ids {
        sqlx::query("UPDATE sandboxes SET last_activity_at = $1 WHERE id = $2 AND state <> 'destroyed'")
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// What the list endpoint sorts by (Daytona's `SandboxListSortField`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Cpu,
    Memory,
    Disk,
    LastActivity,
    #[default]
    Created,
}

impl SortKey {
    fn column(self) -> &'static str {
        match self {
            Self::Name => "s.name",
            Self::Cpu => "s.cpu",
            Self::Memory => "s.memory",
            Self::Disk => "s.disk",
            Self::LastActivity => "s.last_activity_at",
            Self::Created => "s.created_at",
        }
    }

    /// The row's value of this key, for the cursor of the page after it.
    pub fn value(self, r: &Row) -> SortValue {
        match self {
            Self::Name => SortValue::Text(r.name.clone()),
            Self::Cpu => SortValue::Int(r.cpu),
            Self::Memory => SortValue::Int(r.memory),
            Self::Disk => SortValue::Int(r.disk),
            Self::LastActivity => SortValue::Int(r.last_activity_at),
            Self::Created => SortValue::Int(r.created_at),
        }
    }
}

/// A sort key's value in a cursor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Int(i64),
    Text(String),
}

/// Bounds on an integer column: `(min, max)`, either open.
pub type Range = (Option<i64>, Option<i64>);

/// What the list endpoint filters on.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub org: String,
    /// Stored state names; empty: every state but `destroyed`.
    pub states: Vec<String>,
    /// Prefixes of the id and the name, any case.
    pub id_prefix: Option<String>,
    pub name_prefix: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Snapshot names (or image names) the sandboxes run.
    pub snapshots: Vec<String>,
    /// Targets (Daytona's region ids).
    pub targets: Vec<String>,
    /// Inclusive bounds.
    pub cpu: Range,
    pub memory: Range,
    pub disk: Range,
    pub public: Option<bool>,
    pub recoverable: Option<bool>,
    /// Exclusive bounds, in ms.
    pub created: Range,
    pub last_activity: Range,
    /// Filters that nothing can match (a GPU minimum, a class other than `container`, an auto-destroy time).
    pub nothing: bool,
    /// Also sandboxes in `error` whose desired state is `destroyed` (a delete that failed).
    pub include_errored_deleted: bool,
    pub sort: SortKey,
    pub ascending: bool,
    /// Sort value and id of the last row of the previous page.
    pub after: Option<(SortValue, String)>,
    pub limit: i64,
}

enum BindVal {
    S(String),
    I(i64),
}

/// `LIKE` pattern for values starting with `prefix`, any case (`\` escapes).
fn prefix_pattern(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A page of sandboxes in the filter's order (then by id), `limit` rows at most.
pub async fn list(pool: &AnyPool, f: ListFilter) -> Result<Vec<Row>, sqlx::Error> {
    let mut sql = format!("SELECT {COLUMNS} {FROM} WHERE s.organization_id = $1");
    let mut binds: Vec<BindVal> = vec![BindVal::S(f.org.clone())];
    let next = |binds: &mut Vec<BindVal>, v: BindVal| {
        binds.push(v);
        format!("${}", binds.len())
    };
    let list = |binds: &mut Vec<BindVal>, vals: Vec<String>| {
        vals.into_iter().map(|v| next(binds, BindVal::S(v))).collect::<Vec<_>>().join(", ")
    };
    if f.nothing {
        sql.push_str(" AND 1 = 0");
    }
    if f.states.is_empty() {
        sql.push_str(" AND s.state <> 'destroyed'");
    } else {
        let ps = list(&mut binds, f.states);
        sql.push_str(&format!(" AND s.state IN ({ps})"));
    }
    if !f.include_errored_deleted {
        sql.push_str(" AND NOT (s.state = 'error' AND s.desired_state = 'destroyed')");
    }
    for (col, prefix) in [("s.id", f.id_prefix), ("s.name", f.name_prefix)] {
        if let Some(prefix) = prefix {
            let p = next(&mut binds, BindVal::S(prefix_pattern(&prefix)));
            sql.push_str(&format!(" AND LOWER({col}) LIKE {p} ESCAPE '\\'"));
        }
    }
    for (k, v) in f.labels {
        let pk = next(&mut binds, BindVal::S(k));
        let pv = next(&mut binds, BindVal::S(v));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM sandbox_labels l WHERE l.sandbox_id = s.id AND l.key = {pk} AND l.value = {pv})"
        ));
    }
    if !f.snapshots.is_empty() {
        // The column holds the image a snapshot named; match either.
        let names = list(&mut binds, f.snapshots.clone());
        let names2 = list(&mut binds, f.snapshots);
        sql.push_str(&format!(
            " AND (s.snapshot IN ({names}) OR s.snapshot IN (SELECT n.image_name FROM snapshots n \
             WHERE n.organization_id = $1 AND n.name IN ({names2})))"
        ));
    }
    if !f.targets.is_empty() {
        let ps = list(&mut binds, f.targets);
        sql.push_str(&format!(" AND s.target IN ({ps})"));
    }
    for (col, (lo, hi), inclusive) in [
        ("s.cpu", f.cpu, true),
        ("s.memory", f.memory, true),
        ("s.disk", f.disk, true),
        ("s.created_at", f.created, false),
        ("s.last_activity_at", f.last_activity, false),
    ] {
        let (ge, le) = if inclusive { (">=", "<=") } else { (">", "<") };
        if let Some(lo) = lo {
            let p = next(&mut binds, BindVal::I(lo));
            sql.push_str(&format!(" AND {col} {ge} {p}"));
        }
        if let Some(hi) = hi {
            let p = next(&mut binds, BindVal::I(hi));
            sql.push_str(&format!(" AND {col} {le} {p}"));
        }
    }
    if let Some(public) = f.public {
        let p = next(&mut binds, BindVal::I(super::b(public)));
        sql.push_str(&format!(" AND s.public = {p}"));
    }
    match f.recoverable {
        Some(true) => sql.push_str(" AND s.state IN ('error', 'build_failed')"),
        Some(false) => sql.push_str(" AND s.state NOT IN ('error', 'build_failed')"),
        None => {}
    }
    let col = f.sort.column();
    let (cmp, dir) = if f.ascending { (">", "ASC") } else { ("<", "DESC") };
    if let Some((v, id)) = f.after {
        let bind = |v: SortValue| match v {
            SortValue::Int(i) => BindVal::I(i),
            SortValue::Text(t) => BindVal::S(t),
        };
        let pv = next(&mut binds, bind(v.clone()));
        let pv2 = next(&mut binds, bind(v));
        let pid = next(&mut binds, BindVal::S(id));
        sql.push_str(&format!(" AND ({col} {cmp} {pv} OR ({col} = {pv2} AND s.id {cmp} {pid}))"));
    }
    let pl = next(&mut binds, BindVal::I(f.limit));
    sql.push_str(&format!(" ORDER BY {col} {dir}, s.id {dir} LIMIT {pl}"));
    let mut query = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
    for v in binds {
        query = match v {
            BindVal::S(s) => query.bind(s),
            BindVal::I(i) => query.bind(i),
        };
    }
    query.fetch_all(pool).await
}

/// Which lifecycle timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    AutoStop,
    AutoDelete,
    AutoArchive,
}

/// Ids of the sandboxes whose `timer` is due at `now`. `since + interval * 60000 <= now` is written as
/// `interval <= (now - since) / 60000` (with `since <= now`), which cannot overflow whatever an interval holds: one
/// row's huge value must not fail the query, and with it every tenant's timers (PostgreSQL raises on overflow).
/// Auto-delete and auto-archive leave out a sandbox the host stopped while it has restarts left (fewer than
/// `max_host_restarts`): it is about to run again.
pub async fn due(pool: &AnyPool, timer: Timer, now: i64, max_host_restarts: i64) -> Result<Vec<String>, sqlx::Error> {
    let sql = match timer {
        Timer::AutoStop => {
            "SELECT id FROM sandboxes WHERE state = 'started' AND auto_stop > 0 AND last_activity_at <= $1 \
             AND auto_stop <= ($1 - last_activity_at) / 60000"
        }
        // A sandbox the host stopped waits for its restarts (`host_stopped`) before these timers count.
        Timer::AutoDelete => {
            "SELECT id FROM sandboxes WHERE state IN ('stopped', 'archived') AND auto_delete >= 0 \
             AND state_at <= $1 AND auto_delete <= ($1 - state_at) / 60000 \
             AND NOT (COALESCE(stop_cause, '') = 'host' AND desired_state = 'started' AND host_restarts < $2)"
        }
        Timer::AutoArchive => {
            "SELECT id FROM sandboxes WHERE state = 'stopped' AND auto_archive > 0 AND state_at <= $1 \
             AND auto_archive <= ($1 - state_at) / 60000 \
             AND NOT (COALESCE(stop_cause, '') = 'host' AND desired_state = 'started' AND host_restarts < $2)"
        }
    };
    let q = sqlx::query_scalar(sql).bind(now);
    let q = if matches!(timer, Timer::AutoStop) { q } else { q.bind(max_host_restarts) };
    q.fetch_all(pool).await
}

/// Ids of at most `limit` sandboxes destroyed before `before` with no unfinished job left: what
/// [`remove_destroyed`] may drop.
pub async fn destroyed_before(pool: &AnyPool, before: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT s.id FROM sandboxes s WHERE s.state = 'destroyed' AND s.state_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.sandbox_id = s.id AND j.state IN ('pending', 'claimed')) \
         ORDER BY s.state_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Drops a destroyed sandbox's row with every row that names it (labels, access tokens, usage, volume mounts).
/// Jobs and route changes stay until their own retention ends; nothing else refers to a sandbox by key.
pub async fn remove_destroyed(conn: &mut AnyConnection, id: &str) -> Result<bool, sqlx::Error> {
    for q in [
        "DELETE FROM sandbox_labels WHERE sandbox_id = $1",
        "DELETE FROM ssh_access WHERE sandbox_id = $1",
        "DELETE FROM preview_tokens WHERE sandbox_id = $1",
        "DELETE FROM sandbox_usage WHERE sandbox_id = $1",
        "DELETE FROM sandbox_usage_history WHERE sandbox_id = $1",
        "DELETE FROM sandbox_volumes WHERE sandbox_id = $1",
    ] {
        sqlx::query(q).bind(id).execute(&mut *conn).await?;
    }
    let r = sqlx::query("DELETE FROM sandboxes WHERE id = $1 AND state = 'destroyed'").bind(id).execute(conn).await?;
    Ok(r.rows_affected() == 1)
}

/// Sandboxes that are not destroyed, counted by stored state (the metrics scrape's one query of this table).
pub async fn count_by_state(pool: &AnyPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT state, COUNT(*) FROM sandboxes WHERE state <> 'destroyed' GROUP BY state")
        .fetch_all(pool)
        .await
}
