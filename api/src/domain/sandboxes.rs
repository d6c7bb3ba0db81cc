//! Making and changing sandboxes: create (image resolution, quotas, names, links, builds, placement), fork, and
//! settings (labels, public, timer intervals). Lifecycle actions go through [`super::apply::act`].

use std::collections::BTreeMap;

use sandbar_proto::runner::{JobKind, SandboxState, fork_image, reserved_env};
use sqlx::AnyConnection;

use super::{builds, group_commit, image_quota, images, network, placement, quota, state, volumes};
use crate::App;
use crate::error::{ApiError, ApiResult, new_token};
use crate::jobs;
use crate::store::sandboxes::{self, NewRow, Row, Setting, Text};
use crate::store::snapshots;
use crate::store::totals::{self, Delta};
use crate::store::{self, DbKind, orgs};

/// Daytona's defaults: stop after 15 idle minutes, archive after 7 stopped days, never delete.
pub const DEFAULT_AUTO_STOP: i64 = 15;
pub const DEFAULT_AUTO_ARCHIVE: i64 = 7 * 24 * 60;
pub const DEFAULT_AUTO_DELETE: i64 = -1;

/// The longest timer interval accepted, in minutes (ten years): beyond it a deadline means nothing, and a huge one
/// once overflowed the timers' arithmetic for every tenant.
pub const MAX_INTERVAL_MINUTES: i64 = 10 * 366 * 24 * 60;

/// Refuses with 400 a timer interval (`name`, in minutes) below `min` or above [`MAX_INTERVAL_MINUTES`].
pub fn check_interval(name: &str, value: i64, min: i64) -> ApiResult<()> {
    if (min..=MAX_INTERVAL_MINUTES).contains(&value) {
        return Ok(());
    }
    let floor = match min {
        -1 => "-1 (never)",
        0 => "0 (never)",
        _ => "1",
    };
    Err(ApiError::bad_request(format!(
        "{name} must be between {floor} and {MAX_INTERVAL_MINUTES} minutes (ten years), got {value}"
    )))
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Refuses an invalid sandbox or snapshot name (`what`).
pub(crate) fn check_name(name: &str, what: &str) -> ApiResult<()> {
    if valid_name(name) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "invalid {what} name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
    )))
}

pub(crate) fn check_range(name: &str, v: Option<i64>, max: i64, unit: &str) -> ApiResult<()> {
    match v {
        Some(v) if v < 1 || v > max => {
            Err(ApiError::bad_request(format!("{name} must be between 1 and {max} {unit}, got {v}")))
        }
        _ => Ok(()),
    }
}

/// Checks requested resources against the configured maxima (GPUs: none).
pub(crate) fn check_resources(
    app: &App,
    cpu: Option<i64>,
    memory: Option<i64>,
    disk: Option<i64>,
    gpu: Option<i64>,
) -> ApiResult<()> {
    let l = &app.config.limits;
    check_range("cpu", cpu, l.max_cpu, "vCPU")?;
    check_range("memory", memory, l.max_memory, "GiB")?;
    check_range("disk", disk, l.max_disk, "GiB")?;
    if gpu.unwrap_or(0) != 0 {
        return Err(ApiError::bad_request("GPUs are not available on sandbar; omit gpu or set it to 0"));
    }
    Ok(())
}

/// The sandbox `id` (or name) of `org`, or 404.
pub async fn find(app: &App, conn: &mut AnyConnection, org: &str, id: &str, lock: bool) -> ApiResult<Row> {
    sandboxes::load(app.db.kind, conn, Some(org), id, lock).await?.ok_or_else(|| ApiError::sandbox_not_found(id))
}

/// The runner a sandbox was placed on; 409 for one that never was.
pub fn placed_runner(row: &Row) -> ApiResult<String> {
    row.runner_id.clone().ok_or_else(|| ApiError::conflict("the sandbox was never placed on a runner"))
}

/// Refuses with 409 when a live sandbox of the organization already has `name`.
async fn ensure_name_free(conn: &mut AnyConnection, org: &str, name: &str) -> ApiResult<()> {
    match sandboxes::live_named(conn, org, name).await? {
        Some(_) => Err(ApiError::conflict(format!("Sandbox with name {name} already exists"))),
        None => Ok(()),
    }
}

/// What a new sandbox runs.
#[derive(Debug, Clone)]
pub enum ImageAsk {
    /// A snapshot of the organization, or else the name of a local image.
    Snapshot(String),
    Image(String),
    /// A `buildInfo`: a Dockerfile, maybe nothing but `FROM image`.
    Build {
        dockerfile: Option<String>,
        context_hashes: Vec<String>,
    },
    /// The configured default snapshot.
    Default,
}

/// A create request whose types and ranges the HTTP layer checked.
#[derive(Debug, Clone)]
pub struct NewSandbox {
    pub name: Option<String>,
    pub image: ImageAsk,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub target: Option<String>,
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub disk: Option<i64>,
    pub auto_stop: i64,
    pub auto_archive: i64,
    pub auto_delete: i64,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub linked_sandbox: Option<String>,
    /// Volumes to mount (checked and resolved in the create's transaction).
    pub volumes: Vec<volumes::MountAsk>,
}

/// Where a new sandbox's image comes from.
#[derive(Debug, Default)]
struct Resolved {
    image: String,
    /// A snapshot's default `(cpu, memory, disk)`.
    defaults: Option<(i64, i64, i64)>,
    /// A Dockerfile to build first.
    dockerfile: Option<String>,
    /// The one runner the image lives on (a built snapshot, or a snapshot taken from a sandbox, not pushed).
    pinned: Option<String>,
    /// The image's copy in the internal registry (a pushed snapshot or build), pulled by a runner without it.
    source: Option<String>,
}

async fn resolve(app: &App, org: &str, ask: &ImageAsk) -> ApiResult<Resolved> {
    Ok(match ask {
        ImageAsk::Snapshot(s) => {
            let mut conn = app.db.pool.acquire().await?;
            match snapshots::find(&mut conn, org, s).await? {
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
                    let home = builds::snapshot_home(app, &mut conn, &snap).await?;
                    Resolved {
                        defaults: Some((snap.cpu, snap.memory, snap.disk)),
                        pinned: home.pinned,
                        source: home.source,
                        image: snap.image_name,
                        dockerfile: None,
                    }
                }
                // Otherwise an image the organization may name (never another organization's).
                None => {
                    images::check(app, &mut conn, org, s, "snapshot").await?;
                    Resolved { image: s.clone(), ..Resolved::default() }
                }
            }
        }
        ImageAsk::Image(i) => {
            let mut conn = app.db.pool.acquire().await?;
            images::check(app, &mut conn, org, i, "image").await?;
            Resolved { image: i.clone(), ..Resolved::default() }
        }
        ImageAsk::Build { dockerfile, context_hashes } => {
            let source = builds::source(dockerfile.as_deref(), context_hashes)?;
            let mut conn = app.db.pool.acquire().await?;
            builds::check_source(app, &mut conn, org, &source).await?;
            match source {
                builds::Source::Image(image) => Resolved { image, ..Resolved::default() },
                builds::Source::Dockerfile(d) => {
                    Resolved { image: builds::image_for(&d), dockerfile: Some(d), ..Resolved::default() }
                }
            }
        }
        ImageAsk::Default => Resolved { image: app.config.default_snapshot.clone(), ..Resolved::default() },
    })
}

/// Creates a sandbox: `creating` with its create job queued (or waiting for its image build), placed on a runner.
/// The caller may wait for it to leave `creating` ([`wait_while_creating`]).
pub async fn create(app: &App, org: &str, new: NewSandbox) -> ApiResult<Row> {
    let resolved = resolve(app, org, &new.image).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let name = match new.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => {
            check_name(n, "sandbox")?;
            n.to_owned()
        }
        _ => id.clone(),
    };
    if let Some(k) = new.env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err(ApiError::bad_request(format!("invalid environment variable name {k:?}")));
    }
    if let Some(k) = new.env.keys().find(|k| reserved_env(k)) {
        return Err(ApiError::bad_request(format!(
            "environment variable {k} is reserved (SANDBAR_* and RUST_LOG configure sandbar's daemon); use another name"
        )));
    }
    let l = app.config.limits;
    let (dcpu, dmem, ddisk) = resolved.defaults.unwrap_or((l.default_cpu, l.default_memory, l.default_disk));
    let (cpu, memory, disk) = (new.cpu.unwrap_or(dcpu), new.memory.unwrap_or(dmem), new.disk.unwrap_or(ddisk));
    let now = app.now();

    let linked = new.linked_sandbox.as_deref().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned);
    // A plain create (no build, volumes or link) only reads before it writes: its quota, its name and its runner are
    // read first, on a read connection, and each is checked again, exactly, where it is written (the totals in
    // `finish_new`, the unique index on live names in `name_taken`), so the transaction holds the database (on
    // SQLite its one writer) only for the writes.
    let plain = resolved.dockerfile.is_none() && new.volumes.is_empty() && linked.is_none();
    let placed = if plain {
        let mut conn = app.db.read.acquire().await?;
        quota::check(&mut conn, org, cpu, memory, disk, 1).await?;
        if name != id {
            ensure_name_free(&mut conn, org, &name).await?;
        }
        Some(match &resolved.pinned {
            Some(image_runner) => placement::place_on(app, &mut conn, image_runner, cpu, memory, disk).await?,
            None => placement::place(app, &mut conn, cpu, memory, disk).await?,
        })
    } else {
        None
    };
    let ask = std::sync::Arc::new(Creating {
        org: org.to_owned(),
        id,
        name,
        new,
        resolved,
        size: (cpu, memory, disk),
        linked,
        plain,
        placed,
        now,
    });
    // A plain create's rows are only its sandbox and labels, which a group can take back (see `group_commit`).
    let grouped = ask.plain;
    let row = group_commit::write(
        app,
        grouped,
        group_commit::rows(move |app, conn| {
            let ask = ask.clone();
            Box::pin(async move { write_create(app, conn, &ask).await })
        }),
    )
    .await?;
    tracing::info!(sandbox_id = %row.id, runner_id = row.runner_id.as_deref().unwrap_or_default(), "sandbox created");
    Ok(row)
}

/// A create whose reads are done, ready for its writes ([`write_create`]).
#[derive(Debug)]
struct Creating {
    org: String,
    id: String,
    name: String,
    new: NewSandbox,
    resolved: Resolved,
    /// `(cpu, memory, disk)`.
    size: (i64, i64, i64),
    linked: Option<String>,
    plain: bool,
    /// The runner a plain create was placed on by its reads.
    placed: Option<String>,
    now: i64,
}

/// The rows of a create, in the transaction (or the group's savepoint, [`group_commit`]) `tx`; [`finish_new`]
/// finishes it.
async fn write_create(app: &App, tx: &mut AnyConnection, c: &Creating) -> ApiResult<New> {
    let (org, id, name, new, now) = (c.org.as_str(), c.id.as_str(), c.name.as_str(), &c.new, c.now);
    let (cpu, memory, disk) = c.size;
    // Builds, volumes and links check more of the organization (image bytes, volume mounts): those creates take
    // its row lock as before. A plain one does not: its quota is checked again, exactly, where it is added to the
    // organization's totals (`finish_new`); the first read only answers early, in the usual order of errors.
    if !c.plain {
        orgs::lock_org(app.db.kind, tx, org).await?;
        quota::check(tx, org, cpu, memory, disk, 1).await?;
        // A name the caller chose may be taken (under concurrency the unique index on live names decides, see
        // `name_taken`); the default name is the new id.
        if name != id {
            ensure_name_free(tx, org, name).await?;
        }
    }
    let link = match &c.linked {
        // A linked sandbox goes where its parent is, so the two share a network.
        Some(l) => Some(network::resolve_link(app, tx, org, l, new.auto_delete).await?),
        None => None,
    };
    let build = match &c.resolved.dockerfile {
        Some(d) => Some(builds::attach(app, tx, org, d, (cpu, memory, disk)).await?),
        None => None,
    };
    let mounts = volumes::resolve(app, tx, org, &new.volumes).await?;
    // A done build pushed to the internal registry goes anywhere, like a pushed snapshot.
    let source = match &build {
        Some(b) => b.pinned().is_none().then(|| b.pushed.clone()).flatten(),
        None => c.resolved.source.clone(),
    };
    let image_pin = match &build {
        Some(b) => b.pinned(),
        None => c.resolved.pinned.clone(),
    };
    let pinned = volumes::same_runner(image_pin, mounts.runner.clone())?;
    let runner = match (&c.placed, &link, pinned) {
        (Some(runner), _, _) => runner.clone(),
        (None, Some((_, parent_runner)), Some(image_runner)) if *parent_runner != image_runner => {
            return Err(ApiError::bad_request(format!(
                "the linked sandbox runs on runner {parent_runner}, but this sandbox's image or volumes exist only on \
                 runner {image_runner}: create it without linkedSandbox, or from an image and volumes both runners have"
            )));
        }
        (None, Some((_, parent_runner)), _) => parent_runner.clone(),
        // An image on one runner only (built there, or a snapshot taken from a sandbox there).
        (None, None, Some(image_runner)) => placement::place_on(app, tx, &image_runner, cpu, memory, disk).await?,
        (None, None, None) => placement::place(app, tx, cpu, memory, disk).await?,
    };
    let row = NewRow {
        id,
        org,
        name,
        runner: &runner,
        image: &c.resolved.image,
        user: new.user.as_deref().unwrap_or_default(),
        env_json: serde_json::to_string(&new.env).map_err(|e| ApiError::internal("env", e))?,
        labels_json: serde_json::to_string(&new.labels).map_err(|e| ApiError::internal("labels", e))?,
        public: new.public,
        network_block_all: new.network_block_all,
        network_allow_list: new.network_allow_list.clone(),
        target: new.target.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| app.config.target.clone()),
        cpu,
        memory,
        disk,
        auto_stop: new.auto_stop,
        auto_archive: new.auto_archive,
        auto_delete: new.auto_delete,
        preview_token: new_token(24)?,
        now,
    };
    sandboxes::insert(tx, row).await.map_err(|e| name_taken(e, name))?;
    sandboxes::insert_labels(tx, id, &new.labels).await?;
    volumes::attach(tx, id, &mounts.mounts, &runner, now).await?;
    if let Some((parent, _)) = &link {
        sandboxes::set_text(tx, id, Text::Linked, parent).await?;
    }
    if let Some(source) = &source {
        sandboxes::set_text(tx, id, Text::ImageSource, source).await?;
    }
    let waits_for_build = match &build {
        Some(b) => builds::link_sandbox(tx, id, b, now).await?,
        None => false,
    };
    let row = sandboxes::load(app.db.kind, tx, None, id, false)
        .await?
        .ok_or_else(|| ApiError::internal("create", "row vanished"))?;
    let pull = images::pulled(&app.config, &row.snapshot);
    let job = (!waits_for_build).then(|| jobs::create::plan(&row, pull));
    // A linked sandbox goes where its parent is, room or not (as it always did); others only where room is left.
    Ok(New { row, runner, job, fit: link.is_none(), now })
}

/// Forks sandbox `id`: a new sandbox (`creating`) from a copy of its filesystem, on its runner, with the source's
/// spec and its own id, name and tokens. Memory and running processes are not copied; the source keeps its state.
pub async fn fork(app: &App, org: &str, id: &str, name: Option<&str>) -> ApiResult<Row> {
    let fork_id = uuid::Uuid::new_v4().to_string();
    let name = match name.map(str::trim) {
        Some(n) if !n.is_empty() => {
            check_name(n, "sandbox")?;
            n.to_owned()
        }
        _ => fork_id.clone(),
    };
    let now = app.now();
    let ask = std::sync::Arc::new((org.to_owned(), id.to_owned(), fork_id, name));
    let row = group_commit::write(
        app,
        true,
        group_commit::rows(move |app, conn| {
            let ask = ask.clone();
            Box::pin(async move {
                let (org, id, fork_id, name) = &*ask;
                write_fork(app, conn, org, id, fork_id, name, now).await
            })
        }),
    )
    .await?;
    tracing::info!(sandbox_id = %row.id, runner_id = row.runner_id.as_deref().unwrap_or_default(),
        "sandbox fork requested");
    Ok(row)
}

/// The writes of a fork of `id` as `fork_id` named `name`, in the transaction (or the group's savepoint) `tx`.
async fn write_fork(
    app: &App,
    tx: &mut AnyConnection,
    org: &str,
    id: &str,
    fork_id: &str,
    name: &str,
    now: i64,
) -> ApiResult<New> {
    orgs::lock_org(app.db.kind, tx, org).await?;
    let src = find(app, tx, org, id, true).await?;
    state::plan_copy(src.effective_state(app, now), state::CopyKind::Fork).map_err(|r| ApiError::bad_request(r.0))?;
    let runner = src
        .runner_id
        .clone()
        .ok_or_else(|| ApiError::conflict("the sandbox was never placed on a runner, so there is nothing to fork"))?;
    ensure_name_free(tx, org, name).await?;
    // A fork is a new started sandbox of the source's size: quotas as for a create.
    quota::check(tx, org, src.cpu, src.memory, src.disk, 1).await?;
    image_quota::check(app, tx, org, "fork").await?;
    placement::place_on(app, tx, &runner, src.cpu, src.memory, src.disk).await?;
    sandboxes::insert_fork(tx, &src.id, fork_id, name, &fork_image(fork_id), &new_token(24)?, now).await?;
    // The fork mounts the source's volumes (on the same runner, which holds them): shared, not copied.
    crate::store::volumes::copy_mounts(tx, &src.id, fork_id).await?;
    let row = sandboxes::load(app.db.kind, tx, None, fork_id, false)
        .await?
        .ok_or_else(|| ApiError::internal("fork", "row vanished"))?;
    let job = jobs::fork::plan(&src, &row);
    tracing::debug!(sandbox_id = %fork_id, source = %src.id, "fork written");
    Ok(New { row, runner, job: Some(job), fit: true, now })
}

/// A new sandbox's rows, written in a transaction, and what [`finish_new`] needs to finish it.
#[derive(Debug)]
pub(crate) struct New {
    pub row: Row,
    pub runner: String,
    /// Its job; none while it waits for its image build.
    pub job: Option<JobKind>,
    /// Whether it must fit in its runner's room (a linked sandbox goes where its parent is, room or not).
    pub fit: bool,
    pub now: i64,
}

impl New {
    /// What the new sandbox adds to its organization's and runner's totals: every state a new sandbox starts in
    /// holds its CPU and memory.
    fn adds(&self) -> Delta {
        Delta { sandboxes: 1, cpu: self.row.cpu, memory: self.row.memory, disk: self.row.disk }
    }

    /// The state the new sandbox shows until its runner answers: a create that pulls its image shows
    /// `pulling_snapshot`.
    fn via(&self) -> SandboxState {
        match &self.job {
            Some(JobKind::CreateSandbox(c)) => jobs::create::creating_state(c.pull),
            _ => SandboxState::Creating,
        }
    }

    /// The one-statement end on PostgreSQL (`crate::store::creates`), when it applies: a job to queue, room to
    /// fit, and the sandbox staying `creating`.
    pub(crate) fn one_statement<'a>(&'a self, app: &App) -> Option<store::creates::NewSandbox<'a>> {
        let via = self.via();
        let job = self.job.as_ref().filter(|_| app.db.kind == DbKind::Postgres && self.fit)?;
        (via == SandboxState::Creating).then(|| store::creates::NewSandbox {
            org: &self.row.organization_id,
            runner: &self.runner,
            sandbox_id: &self.row.id,
            add: self.adds(),
            cpu_overcommit: app.config.limits.cpu_overcommit,
            memory_overcommit: app.config.limits.memory_overcommit,
            job,
            prev: SandboxState::Creating,
            via,
            now: self.now,
        })
    }

    /// Takes back what [`Self::one_statement`] refused and the new sandbox's rows (only its sandbox, labels and
    /// volume mounts: a plain create's or a fork's), in the group's transaction (`group_commit`).
    pub(crate) async fn take_back(&self, tx: &mut AnyConnection, org_added: bool) -> Result<(), sqlx::Error> {
        if org_added {
            let add = self.adds();
            let back = Delta { sandboxes: -add.sandboxes, cpu: -add.cpu, memory: -add.memory, disk: -add.disk };
            totals::shift(&mut *tx, &self.row.organization_id, None, back).await?;
        }
        sandboxes::forget_new(tx, &self.row.id).await
    }
}

/// The end of a create or a fork, in its transaction: adds the new sandbox to its organization's totals within its
/// quotas and to its runner's (within its room when `fit`), queues `job` on `runner` (none while the new sandbox
/// waits for its image build) and bumps the sandbox's route. The caller commits and then wakes the runner and the
/// proxies ([`group_commit`]).
///
/// From the sequence number to the commit this transaction holds the sequence row, which every create, fork and
/// state change takes: that is where concurrent creates queue, so it is kept to a few statements (on PostgreSQL one,
/// `crate::store::creates`, then the commit, shared by a group of creates: [`group_commit`]), and the quota is exact
/// there (`crate::store::totals`).
pub(crate) async fn finish_new(app: &App, tx: &mut AnyConnection, new: New) -> ApiResult<Row> {
    let add = new.adds();
    let via = new.via();
    let mut taken = None;
    if let Some(one) = new.one_statement(app) {
        match store::creates::finish(tx, &one).await? {
            store::creates::Finished::Done { seq } => {
                let mut row = new.row;
                (row.version, row.updated_at) = (seq, new.now);
                return Ok(row);
            }
            // The statement-by-statement path below says which limit refused, or makes a missing totals row.
            store::creates::Finished::Refused { seq, org_added } => {
                if org_added {
                    let back = Delta { sandboxes: -add.sandboxes, cpu: -add.cpu, memory: -add.memory, disk: -add.disk };
                    totals::shift(&mut *tx, &new.row.organization_id, None, back).await?;
                }
                taken = Some(seq);
            }
        }
    }
    let New { mut row, runner, job, fit, now } = new;
    let runner = runner.as_str();
    let seq = match taken {
        Some(seq) => seq,
        None => store::next_seq(&mut *tx).await?,
    };
    quota::reserve(&mut *tx, &row.organization_id, add).await?;
    placement::reserve(app, &mut *tx, runner, add, fit).await?;
    let mut reload = false;
    if let Some(job) = job {
        if via != SandboxState::Creating {
            sandboxes::set_state(&mut *tx, &row.id, via, None, now).await?;
            reload = true;
        }
        store::jobs::enqueue_at(&mut *tx, seq, runner, &job, SandboxState::Creating, via, now).await?;
    }
    sandboxes::bump_at(&mut *tx, &row.id, seq, now).await?;
    if reload {
        row = sandboxes::load(app.db.kind, &mut *tx, None, &row.id, false).await?.unwrap_or(row);
    } else {
        // What `bump_at` changed; the rest of the row is as loaded.
        (row.version, row.updated_at) = (seq, now);
    }
    Ok(row)
}

/// A unique-index violation on insert is a live sandbox of the organization that took `name` meanwhile: 409.
fn name_taken(e: sqlx::Error, name: &str) -> ApiError {
    match &e {
        sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
            ApiError::conflict(format!("Sandbox with name {name} already exists"))
        }
        _ => e.into(),
    }
}

/// Waits up to `create_wait` for a new sandbox to leave `creating` (every job result wakes the route watchers;
/// a result posted to another API instance wakes them through `crate::feed`), and returns the row as it then is.
///
/// A sandbox that waits for its image build is answered as it was written (`pending_build`), not read again: the
/// SDK follows the build's log only when the create answers `pending_build`, and a runner's claim of the build
/// (`building_snapshot`) can land between the commit and a second read.
pub async fn wait_while_creating(app: &App, row: Row) -> ApiResult<Row> {
    let creating = [SandboxState::Creating.as_str(), SandboxState::PullingSnapshot.as_str()];
    if app.config.create_wait.is_zero() || !creating.contains(&row.state.as_str()) {
        return Ok(row);
    }
    let deadline = tokio::time::Instant::now() + app.config.create_wait;
    let mut row = row;
    loop {
        let notified = app.route_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut conn = app.db.read.acquire().await?;
        match sandboxes::load(app.db.kind, &mut conn, None, &row.id, false).await? {
            Some(r) => row = r,
            None => return Ok(row),
        }
        drop(conn);
        if !creating.contains(&row.state.as_str()) || tokio::time::Instant::now() >= deadline {
            return Ok(row);
        }
        let nap = (tokio::time::Instant::now() + app.poll_interval()).min(deadline);
        let _ = tokio::time::timeout_at(nap, notified).await;
    }
}

/// A change of a sandbox's settings.
#[derive(Debug, Clone)]
pub enum Change {
    Labels(BTreeMap<String, String>),
    Set(Setting, i64),
}

/// Applies `change` to a sandbox that is not destroyed, bumps its route and returns the row after it.
pub async fn change(app: &App, org: &str, id: &str, change: Change) -> ApiResult<Row> {
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = find(app, &mut tx, org, id, true).await?;
    if row.stored_state() == SandboxState::Destroyed {
        return Err(ApiError::bad_request("Sandbox is destroyed and cannot be changed"));
    }
    match change {
        Change::Labels(labels) => sandboxes::set_labels(&mut tx, &row.id, &labels).await?,
        Change::Set(setting, value) => sandboxes::set(&mut tx, &row.id, setting, value).await?,
    }
    sandboxes::bump(&mut tx, &row.id, now).await?;
    let after = sandboxes::load(app.db.kind, &mut tx, None, &row.id, false).await?.unwrap_or(row);
    tx.commit().await?;
    app.wake_routes();
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("my-box_1.x"));
        assert!(!valid_name("-x") && !valid_name("") && !valid_name("a b") && !valid_name(&"a".repeat(64)));
        assert!(check_name("-x", "snapshot").unwrap_err().message.starts_with("invalid snapshot name"));
    }
}
