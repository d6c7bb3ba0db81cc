//! Dockerfile builds: what `POST /snapshots` and `POST /sandbox` do with a `buildInfo` beyond `FROM image`. A build
//! has no network unless its organization has a build network (`organizations.build_network`, set by the operator
//! with `sandbar-api org-build-network`): then its `RUN` steps get that egress policy, enforced by the runner as
//! for a sandbox. The
//! build job itself is `crate::jobs::build`; the log endpoints are `crate::http::builds`.
//!
//! A build is a row (`builds`) and a `BUILD_SNAPSHOT` job for one runner, which builds the image
//! `sandbar-build:<sha256 of the Dockerfile>` through Docker's build API, after pulling the registry images the
//! Dockerfile names (with the organization's credentials; see `super::images`). The image then exists on that runner only, so a sandbox or snapshot made from it is pinned there. An
//! identical Dockerfile of the same organization reuses the earlier build (queued, running or done) instead of
//! building again; a failed build is retried by the next request.
//!
//! States: a snapshot is `building` until the build ends (`active`, or `build_failed` with the reason); a sandbox is
//! `pending_build` until a runner claims the build, `building_snapshot` while it runs, then `creating` with its
//! create job queued (or `build_failed`). The runner streams the output (`POST /runners/{id}/jobs/{jobId}/log`),
//! stored as rows, so a follower (`GET .../build-logs?follow=true`, plain chunked text) reads everything from the
//! start on any API instance and its stream ends when the build ends. Followers are woken by a notify on every
//! append and result; other API instances' writes (PostgreSQL) are seen at the next poll interval.
//!
//! Built images are collected ([`collect`], once a minute beside the lifecycle timers): an image of a runner that
//! no snapshot names and no sandbox there uses (or has used within the grace period, `--build-gc-grace-secs`) is
//! removed by a `REMOVE_SNAPSHOT` job for that runner, its builds `removing` meanwhile. When the runner answers,
//! the build rows and logs go (so the next identical Dockerfile builds again) and the image's bytes no longer count
//! against the organization ([`super::image_quota`]); a refusal (a container still uses it) puts them back `done`
//! for another grace period. Identical Dockerfiles of different organizations build the same image name, so an image
//! goes only when the builds of every organization on that runner are unused. A build of the same Dockerfile queued
//! while its old image is being removed may find its image gone: its sandboxes then fail with the image missing,
//! and the next request builds again.

use std::sync::LazyLock;

use sqlx::AnyConnection;
use tokio::sync::Notify;

use super::{dockerfile, image_quota, images, placement};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::store::sandboxes::Text;
use crate::store::snapshots::SnapshotRow;
use crate::store::{self, sandboxes, sha256_hex};
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::SandboxState;

/// Dockerfiles larger than this are refused.
pub const MAX_DOCKERFILE_BYTES: usize = 256 << 10;
/// Repository of built images; the tag is the Dockerfile's SHA-256.
pub const BUILD_IMAGE_REPO: &str = "sandbar-build";

/// Woken on every log append and build end, in this process.
static LOG_APPENDED: LazyLock<Notify> = LazyLock::new(Notify::new);

pub(crate) fn wake_followers() {
    LOG_APPENDED.notify_waiters();
}

/// Waits for the next log append or build end in this process (register before reading, then await).
pub fn followers() -> &'static Notify {
    &LOG_APPENDED
}

/// What a `buildInfo` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Nothing but `FROM image` (what `Image.base("x")` sends): that image as it is, no build.
    Image(String),
    /// A Dockerfile to build.
    Dockerfile(String),
}

/// The image a Dockerfile names when it is nothing but `FROM image`.
fn from_only(content: &str) -> Option<String> {
    let lines: Vec<&str> = content.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let [from] = lines.as_slice() else { return None };
    let mut words = from.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(kw), Some(image), None) if kw.eq_ignore_ascii_case("FROM") && !image.starts_with("--") => {
            Some(image.to_owned())
        }
        _ => None,
    }
}

/// Checks a `buildInfo` (400s a person can act on) and says what it asks for.
pub(crate) fn source(dockerfile: Option<&str>, context_hashes: &[String]) -> ApiResult<Source> {
    if !context_hashes.is_empty() {
        return Err(context_unsupported());
    }
    let dockerfile = dockerfile.unwrap_or_default();
    if dockerfile.trim().is_empty() {
        return Err(ApiError::bad_request("buildInfo.dockerfileContent is required (the Dockerfile to build)"));
    }
    if dockerfile.len() > MAX_DOCKERFILE_BYTES {
        return Err(ApiError::bad_request(format!(
            "buildInfo.dockerfileContent is {} bytes; at most {MAX_DOCKERFILE_BYTES} are accepted",
            dockerfile.len()
        )));
    }
    if let Some(image) = from_only(dockerfile) {
        return Ok(Source::Image(image));
    }
    let has_from = dockerfile.lines().any(|l| {
        let l = l.trim_start();
        l.len() > 4 && l.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("FROM "))
    });
    if !has_from {
        return Err(ApiError::bad_request("the Dockerfile has no FROM line: start it with FROM <local image>"));
    }
    Ok(Source::Dockerfile(dockerfile.to_owned()))
}

/// Refuses with 400 a source that names an image `org` may not use: the image of a bare `FROM`, or every `FROM` and
/// `COPY --from` image of a Dockerfile, whose other rules are checked too ([`dockerfile::check`]).
pub(crate) async fn check_source(app: &App, conn: &mut AnyConnection, org: &str, source: &Source) -> ApiResult<()> {
    match source {
        Source::Image(image) => images::check(app, conn, org, image, "FROM").await,
        Source::Dockerfile(d) => {
            for named in dockerfile::check(d)? {
                images::check(app, conn, org, &named.image, named.instruction).await?;
            }
            Ok(())
        }
    }
}

pub(crate) fn context_unsupported() -> ApiError {
    ApiError::bad_request(
        "build contexts (contextHashes: local files the SDK uploads to object storage for COPY/ADD) are not \
         supported by sandbar, which has no object storage; build from a Dockerfile without local files (run_commands, \
         env, workdir) or build the image locally (docker build -t NAME .) and use snapshot=NAME",
    )
}

/// The image a Dockerfile builds into.
pub(crate) fn image_for(dockerfile: &str) -> String {
    format!("{BUILD_IMAGE_REPO}:{}", sha256_hex(dockerfile))
}

/// Parses an organization's build network setting (see migration 0027): `None` is no network.
pub fn parse_network(value: Option<&str>) -> Result<Option<NetworkPolicy>, String> {
    let Some(v) = value.map(str::trim) else { return Ok(None) };
    let policy = match v {
        "" | "none" => return Ok(None),
        "open" => NetworkPolicy::default(),
        list => NetworkPolicy {
            network_block_all: false,
            network_allow_list: Some(list.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()),
        },
    };
    policy.allowed().map_err(|e| format!("build network {v:?}: {e} (use none, open or IPv4 CIDRs)"))?;
    Ok(Some(policy))
}

/// The egress policy of organization `org`'s builds; a stored value that no longer parses means no network.
async fn network_of(conn: &mut AnyConnection, org: &str) -> ApiResult<Option<NetworkPolicy>> {
    let stored = store::orgs::build_network(conn, org).await?;
    Ok(parse_network(stored.as_deref()).unwrap_or_else(|e| {
        tracing::warn!(org, error = %e, "unusable build network setting; building without network");
        None
    }))
}

/// The registry images a (checked) Dockerfile names, each once: the runner pulls them before the build.
fn registry_images(app: &App, dockerfile: &str) -> ApiResult<Vec<String>> {
    let mut pull: Vec<String> = Vec::new();
    for named in dockerfile::check(dockerfile)? {
        if images::pulled(&app.config, &named.image) && !pull.contains(&named.image) {
            pull.push(named.image);
        }
    }
    Ok(pull)
}

/// A build something waits for.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub build_id: String,
    pub runner_id: String,
    /// `pending`, `building` or `done`.
    pub state: String,
    /// A done build's image copy in the internal registry: sandboxes of it may go to any runner.
    pub pushed: Option<String>,
}

impl Attached {
    /// The one runner a sandbox of this build must go to: none once its image is done and pushed.
    pub fn pinned(&self) -> Option<String> {
        match (&self.pushed, self.state.as_str()) {
            (Some(_), "done") => None,
            _ => Some(self.runner_id.clone()),
        }
    }
}

/// The organization's build of `dockerfile` to use: an earlier identical one (not failed, on a reachable runner),
/// or a new one queued on a runner with room for `(cpu, memory, disk)`. The caller commits, then wakes the runner.
pub(crate) async fn attach(
    app: &App,
    conn: &mut AnyConnection,
    org: &str,
    dockerfile: &str,
    (cpu, memory, disk): (i64, i64, i64),
) -> ApiResult<Attached> {
    let now = app.now();
    let hash = sha256_hex(dockerfile);
    let image = image_for(dockerfile);
    if let Some((build_id, runner_id, state, pushed)) =
        store::builds::reusable(conn, org, &hash, placement::reachable_since(app, now)).await?
    {
        tracing::info!(build_id = %build_id, state = %state, "reusing an identical build");
        return Ok(Attached { build_id, runner_id, state, pushed });
    }
    image_quota::check(app, conn, org, "build").await?;
    let runner_id = placement::place(app, conn, cpu, memory, disk).await?;
    let build_id = uuid::Uuid::new_v4().to_string();
    let new =
        store::builds::NewBuild { id: &build_id, org, hash: &hash, dockerfile, image: &image, runner: &runner_id, now };
    store::builds::insert(conn, new).await?;
    let network = network_of(conn, org).await?;
    let job = jobs::build::plan(&build_id, &image, dockerfile, registry_images(app, dockerfile)?, network);
    jobs::enqueue(conn, &runner_id, &job, SandboxState::PendingBuild, SandboxState::BuildingSnapshot, now).await?;
    tracing::info!(build_id = %build_id, runner_id = %runner_id, image = %image, "build queued");
    Ok(Attached { build_id, runner_id, state: "pending".into(), pushed: None })
}

/// Ties a new sandbox to its build; true when it must wait for it (then it is `pending_build` or
/// `building_snapshot` and its create job is queued when the build succeeds).
pub(crate) async fn link_sandbox(
    conn: &mut AnyConnection,
    sandbox_id: &str,
    build: &Attached,
    now: i64,
) -> Result<bool, sqlx::Error> {
    sandboxes::set_text(conn, sandbox_id, Text::Build, &build.build_id).await?;
    let waiting = match build.state.as_str() {
        "pending" => SandboxState::PendingBuild,
        "building" => SandboxState::BuildingSnapshot,
        _ => return Ok(false),
    };
    sandboxes::set_state(conn, sandbox_id, waiting, None, now).await?;
    Ok(true)
}

/// Where a snapshot's image is: the one runner it lives on, or its copy in the internal registry that any runner
/// pulls, or neither (an image every runner has, or pulls from a registry).
#[derive(Debug, Default)]
pub(crate) struct ImageHome {
    pub pinned: Option<String>,
    pub source: Option<String>,
}

/// Where an active snapshot's image is ([`ImageHome`]): a pushed copy (of a snapshot taken from a sandbox or of a
/// build) frees it from its runner. Refuses a snapshot that is not active, or whose runner is unreachable when
/// nothing was pushed.
pub(crate) async fn snapshot_home(app: &App, conn: &mut AnyConnection, snap: &SnapshotRow) -> ApiResult<ImageHome> {
    if let Some(pushed) = &snap.pushed_image {
        snapshot_runner(app, conn, snap, true).await?;
        return Ok(ImageHome { pinned: None, source: Some(pushed.clone()) });
    }
    if let Some(build_id) = snap.build_id.as_deref()
        && let Some(pushed) = store::builds::pushed(conn, build_id).await?
    {
        snapshot_runner(app, conn, snap, true).await?;
        return Ok(ImageHome { pinned: None, source: Some(pushed) });
    }
    let built_on = snapshot_runner(app, conn, snap, false).await?;
    Ok(ImageHome { pinned: built_on.or(snap.runner_id.clone()), source: None })
}

/// The runner a built snapshot's image lives on (`None` for a snapshot of an image every runner has). Refuses a
/// snapshot that is not active, or (unless `pushed`, when only the state is checked) whose runner is unreachable.
pub(crate) async fn snapshot_runner(
    app: &App,
    conn: &mut AnyConnection,
    snap: &SnapshotRow,
    pushed: bool,
) -> ApiResult<Option<String>> {
    match snap.state.as_str() {
        "active" => {}
        "build_failed" | "error" => {
            return Err(ApiError::bad_request(format!(
                "Snapshot {} failed to build and cannot be used: {}",
                snap.name,
                snap.error_reason.as_deref().unwrap_or("no reason recorded")
            )));
        }
        other => {
            return Err(ApiError::bad_request(format!("Snapshot {} is {other}; wait until it is active", snap.name)));
        }
    }
    let Some(build_id) = snap.build_id.as_deref().filter(|_| !pushed) else { return Ok(None) };
    match store::runners::of_build(conn, build_id).await? {
        Some((runner, seen)) if seen >= placement::reachable_since(app, app.now()) => Ok(Some(runner)),
        Some((runner, _)) => Err(ApiError::unavailable(format!(
            "snapshot {} was built on runner {runner}, which is unreachable (its image exists only there)",
            snap.name
        ))),
        None => Ok(None),
    }
}

/// A create found a built image gone from its runner (removed by hand): the build no longer counts as done, so the
/// next identical Dockerfile builds again instead of reusing it.
pub(crate) async fn image_missing(
    conn: &mut AnyConnection,
    runner_id: &str,
    image: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    if !image.starts_with(&format!("{BUILD_IMAGE_REPO}:")) {
        return Ok(());
    }
    for id in store::builds::image_gone(conn, runner_id, image, now).await? {
        image_quota::released(conn, &id).await?;
    }
    Ok(())
}

/// Queues the removal of every built image nothing needs any more (see the module doc); returns how many.
pub async fn collect(app: &App) -> Result<usize, sqlx::Error> {
    let now = app.now();
    let grace_ms = i64::try_from(app.config.build_gc_grace.as_millis()).unwrap_or(i64::MAX);
    let mut conn = app.db.pool.acquire().await?;
    let unused = store::builds::unused_images(&mut conn, now.saturating_sub(grace_ms)).await?;
    drop(conn);
    let mut queued = 0;
    for (runner_id, image) in unused {
        let mut tx = app.db.pool.begin().await?;
        // Another API instance may have taken it already: then nothing moves here.
        if store::builds::move_image(&mut tx, &runner_id, &image, ("done", "removing"), false, now).await? == 0 {
            continue;
        }
        let ids = store::builds::of_image(&mut tx, &runner_id, &image, "removing").await?;
        let Some(first) = ids.first() else { continue };
        let job = jobs::remove_snapshot::image(first, &image);
        jobs::enqueue(&mut tx, &runner_id, &job, SandboxState::Destroying, SandboxState::Destroying, now).await?;
        tx.commit().await?;
        tracing::info!(runner_id = %runner_id, image = %image, builds = ids.len(), "unused build image: removal queued");
        app.wake_runner(&runner_id);
        queued += 1;
    }
    Ok(queued)
}

/// States of sandboxes that wait for a build (no container on any runner yet).
pub(crate) fn waits_for_build(state: &str) -> bool {
    matches!(state, "pending_build" | "building_snapshot")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dockerfile: &str) -> ApiResult<Source> {
        source(Some(dockerfile), &[])
    }

    #[test]
    fn sources() {
        assert_eq!(info("FROM python:3.12\n").unwrap(), Source::Image("python:3.12".into()));
        assert_eq!(info("# c\n\nfrom busybox\n").unwrap(), Source::Image("busybox".into()));
        let df = "FROM x\nRUN y\n";
        assert_eq!(info(df).unwrap(), Source::Dockerfile(df.into()));
        assert!(matches!(info("FROM x AS y").unwrap(), Source::Dockerfile(_)));
        assert!(info("RUN y\n").is_err());
        assert!(info("  ").is_err());
        assert!(source(None, &[]).is_err());
        assert!(source(Some(df), &["h".to_owned()]).is_err());
        assert!(info(&format!("FROM x\nRUN {}\n", "a".repeat(MAX_DOCKERFILE_BYTES))).is_err());
        assert_eq!(image_for(df), format!("sandbar-build:{}", sha256_hex(df)));
    }
}
