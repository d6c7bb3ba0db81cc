//! Forks and snapshots of sandboxes, as runner jobs.
//!
//! A fork is a filesystem copy: the fork's container is created (not started) from the source's base image, tagged
//! [`fork_image`] for the new sandbox, and the source's writable layer is copied into its upper directory (the
//! source paused for the moment of the copy when it runs; see the archive module doc for the layer and why the
//! upper directory is written directly); then it starts with the source's spec but its own ID, name and daemon
//! token. Where the layer is out of reach (a remote Docker, a driver without an upper directory) the source is
//! committed to [`fork_image`] instead (`docker commit`, which compares every file of the image). Memory and running
//! processes are not copied: the fork boots its entrypoint afresh on the copied files. From then on the two
//! diverge. The image stays on this host (nothing is pushed to a registry), which is why the control plane places a
//! fork on its source's runner; its tag is removed when the fork is destroyed or archived and no container uses it
//! any more.
//!
//! A snapshot from a sandbox is the same commit to an image the control plane names; the sandbox keeps its state.
//!
//! Pause and resume are `docker pause`/`unpause`: the processes are frozen with their memory and go on where they
//! were. A paused sandbox can be stopped (it is thawed first so its daemon drains) or destroyed.

use bollard::Docker;
use bollard::query_parameters::RemoveImageOptionsBuilder;
use sandbar_proto::runner::{
    FORK_IMAGE_REPO, ForkSandbox, RemoveSnapshot, SandboxInfo, SandboxState, SnapshotSandbox, fork_image,
};
use tokio::sync::OwnedMutexGuard;

use super::image::{self, ImageInfo};
use super::snapshot::{SNAPSHOT_SOURCE_LABEL, valid_reference};
use super::{Runner, events::daemon_addrs, run_detached};
use crate::error::{SandboxError, SnapshotError, docker_status};

/// Label on a fork's image naming the fork it was made for.
pub const FORK_LABEL: &str = "sandbar.fork";
/// Label on a fork's image naming the sandbox it was copied from.
pub const FORK_SOURCE_LABEL: &str = "sandbar.fork.source";

/// Turns a snapshot-image failure into a sandbox error (fork reports through [`SandboxError`] like a create).
fn commit_failed(e: SnapshotError) -> SandboxError {
    match e {
        SnapshotError::Sandbox(e) => e,
        SnapshotError::Docker(e) => SandboxError::Docker(e),
        SnapshotError::InvalidName(n) => SandboxError::InvalidRequest(format!("invalid image name {n:?}")),
        other => SandboxError::Internal(other.to_string()),
    }
}

impl Runner {
    /// Forks sandbox `req.source_sandbox_id` into the new sandbox `req.fork` (see the module doc): commit, then
    /// create and start. Returns once the fork's daemon answers. A failure leaves neither the fork nor its image
    /// behind; a repeat of a fork that already exists (a job re-delivered after a runner restart) answers with it.
    pub async fn fork(&self, req: ForkSandbox) -> Result<SandboxInfo, SandboxError> {
        let runner = self.clone();
        // Its own task, so a caller that gives up cannot leave a commit without its create or cleanup.
        run_detached("fork", async move { runner.fork_now(req).await }).await
    }

    async fn fork_now(&self, req: ForkSandbox) -> Result<SandboxInfo, SandboxError> {
        let fork_id = req.fork.id.clone();
        let image = fork_image(&fork_id);
        if req.fork.image != image {
            return Err(SandboxError::InvalidRequest(format!(
                "a fork's image must be {image}, the image the runner commits the source to, not {:?}",
                req.fork.image
            )));
        }
        if !valid_reference(&image) {
            return Err(SandboxError::InvalidRequest(format!("sandbox ID {fork_id:?} cannot name an image tag")));
        }
        if fork_id == req.source_sandbox_id {
            return Err(SandboxError::InvalidRequest("a sandbox cannot be forked into itself".into()));
        }
        if let Some(existing) = self.get(&fork_id) {
            if existing.image == image && existing.state == SandboxState::Started {
                tracing::info!(sandbox_id = %fork_id, "fork repeated: it exists already");
                return Ok(existing);
            }
            return Err(SandboxError::Conflict(format!("sandbox {fork_id} already exists")));
        }
        let started = std::time::Instant::now();
        // The source's operation lock: no stop, start or destroy of the source runs during the copy.
        let op = self.op_lock(&req.source_sandbox_id)?;
        let _op = op.lock().await;
        // A leftover of an interrupted attempt at this very fork: the source may have changed since.
        release_fork_image(self.docker(), &image).await;
        let source =
            self.get(&req.source_sandbox_id).ok_or_else(|| SandboxError::NotFound(req.source_sandbox_id.clone()))?;
        // The API refuses it too: a paused source's daemon cannot drain, and the commit never could.
        if source.state == SandboxState::Paused {
            return Err(SandboxError::InvalidState { id: source.id, state: source.state, action: "fork" });
        }
        let inspect = self.docker().inspect_container(&source.container_id, None).await?;
        let layer = match self.inner.layer_source(&inspect) {
            Some(src) if self.inner.pin_base(&src.image_id, FORK_IMAGE_REPO, &fork_id).await? => Some(src),
            _ => None,
        };
        let copied = layer.is_some();
        let mut fork = req.fork;
        if copied && fork.entrypoint.is_none() {
            // What a commit would have carried: the source's own argv (the API sends none).
            let argv = super::strip_daemon(inspect.config.and_then(|c| c.entrypoint).unwrap_or_default());
            fork.entrypoint = (!argv.is_empty()).then_some(argv);
        }
        if !copied {
            let comment = format!("sandbar fork of sandbox {} into {fork_id}", req.source_sandbox_id);
            let labels = [(FORK_LABEL, fork_id.as_str()), (FORK_SOURCE_LABEL, req.source_sandbox_id.as_str())];
            self.commit_image(&req.source_sandbox_id, &image, &comment, &labels).await.map_err(commit_failed)?;
        }
        let committed_ms = started.elapsed().as_millis();
        match self.detached(|inner| async move { inner.create(fork, layer).await }).await {
            Ok(info) => {
                tracing::info!(sandbox_id = %fork_id, source = %req.source_sandbox_id, copied, committed_ms,
                    total_ms = started.elapsed().as_millis(), "sandbox forked");
                Ok(info)
            }
            Err(e) => {
                release_fork_image(self.docker(), &image).await;
                Err(e)
            }
        }
    }

    /// The image fork `fork_id` was made from ([`fork_image`]), if it is on this host.
    pub async fn fork_image_info(&self, fork_id: &str) -> Result<Option<ImageInfo>, SandboxError> {
        Ok(image::inspect(self.docker(), &fork_image(fork_id)).await?)
    }

    /// Commits sandbox `req.sandbox_id` as the image `req.image` for a snapshot, under the sandbox's operation lock.
    /// An image of that name made from this sandbox already (a re-delivered job) is success; any other is a conflict.
    pub async fn snapshot_sandbox(&self, req: SnapshotSandbox) -> Result<(SandboxInfo, ImageInfo), SnapshotError> {
        let runner = self.clone();
        run_detached("snapshot", async move { runner.snapshot_now(req).await }).await
    }

    async fn snapshot_now(&self, req: SnapshotSandbox) -> Result<(SandboxInfo, ImageInfo), SnapshotError> {
        if !valid_reference(&req.image) || req.image.starts_with(&format!("{FORK_IMAGE_REPO}:")) {
            return Err(SnapshotError::InvalidName(req.image));
        }
        let op = self.op_lock(&req.sandbox_id)?;
        let _op = op.lock().await;
        let made = match self.docker().inspect_image(&req.image).await {
            Ok(img) => {
                let source = img.config.and_then(|c| c.labels).and_then(|mut l| l.remove(SNAPSHOT_SOURCE_LABEL));
                if source.as_deref() != Some(req.sandbox_id.as_str()) {
                    return Err(SandboxError::Conflict(format!(
                        "an image named {} already exists on this runner",
                        req.image
                    ))
                    .into());
                }
                tracing::info!(sandbox_id = %req.sandbox_id, image = %req.image, "snapshot repeated: it exists already");
                image::inspect(self.docker(), &req.image)
                    .await?
                    .ok_or_else(|| SnapshotError::NotFound(req.image.clone()))?
            }
            Err(e) if docker_status(&e) == Some(404) => self.commit_snapshot(&req.sandbox_id, &req.image).await?,
            Err(e) => return Err(e.into()),
        };
        let info = self.get(&req.sandbox_id).ok_or_else(|| SandboxError::NotFound(req.sandbox_id.clone()))?;
        Ok((info, made))
    }

    /// Removes the image of a deleted snapshot taken from a sandbox. Gone already is success; an image that is not a
    /// snapshot is not touched.
    pub async fn remove_snapshot_image(&self, req: RemoveSnapshot) -> Result<(), SandboxError> {
        match self.remove_snapshot(&req.image).await {
            Ok(()) | Err(SnapshotError::NotFound(_)) => Ok(()),
            Err(SnapshotError::InUse(i)) => {
                Err(SandboxError::Conflict(format!("snapshot image {i} is still used by a container")))
            }
            Err(e) => Err(commit_failed(e)),
        }
    }
}

impl Runner {
    /// Pauses a started sandbox (docker pause: every process frozen, memory kept). Pausing a paused one is a no-op.
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let (runner, id) = (self.clone(), id.to_owned());
        run_detached("pause", async move { runner.pause_now(&id).await }).await
    }

    /// Takes sandbox `id`'s operation lock and reads the sandbox under it.
    async fn lock_and_get(&self, id: &str) -> Result<(OwnedMutexGuard<()>, SandboxInfo), SandboxError> {
        let op = self.op_lock(id)?.lock_owned().await;
        let info = self.get(id).ok_or_else(|| SandboxError::NotFound(id.into()))?;
        Ok((op, info))
    }

    async fn pause_now(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let (_op, info) = self.lock_and_get(id).await?;
        if !needed(&info, SandboxState::Started, SandboxState::Paused, "pause")? {
            return Ok(info);
        }
        self.report_state(id, SandboxState::Pausing, None, None)?;
        match self.docker().pause_container(&info.container_id).await {
            Ok(()) => self.report_state(id, SandboxState::Paused, None, None),
            Err(e) => {
                // Not paused after all: it is still the started sandbox it was.
                let addrs = info.daemon_addr.clone().map(|a| (a, info.ssh_addr.clone()));
                self.report_state(id, SandboxState::Started, addrs, None)?;
                Err(e.into())
            }
        }
    }

    /// Resumes a paused sandbox (docker unpause); its processes go on where they were. Resuming a started one is a
    /// no-op.
    pub async fn resume(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let (runner, id) = (self.clone(), id.to_owned());
        run_detached("resume", async move { runner.resume_now(&id).await }).await
    }

    async fn resume_now(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let (_op, info) = self.lock_and_get(id).await?;
        if !needed(&info, SandboxState::Paused, SandboxState::Started, "resume")? {
            return Ok(info);
        }
        self.report_state(id, SandboxState::Resuming, None, None)?;
        let resumed = async {
            match self.docker().unpause_container(&info.container_id).await {
                // 409: not paused (thawed from outside): fine as long as it runs.
                Err(e) if docker_status(&e) != Some(409) => return Err(SandboxError::from(e)),
                _ => {}
            }
            let inspect = self.docker().inspect_container(&info.container_id, None).await?;
            let running = inspect.state.as_ref().and_then(|s| s.running) == Some(true);
            let advertise = self.inner.config.advertise_addr;
            daemon_addrs(&inspect, advertise).filter(|_| running).ok_or_else(|| SandboxError::DaemonNotReady {
                id: id.into(),
                reason: "the container is not running after unpause".into(),
            })
        };
        match resumed.await {
            Ok(addr) => self.report_state(id, SandboxState::Started, Some(addr), None),
            Err(e) => {
                self.report_state(id, SandboxState::Error, None, Some(format!("resume failed: {e}")))?;
                Err(e)
            }
        }
    }
}

/// Whether `action` has work to do: true from `from`, false when the sandbox is in `to` already (answered as it
/// is), an invalid-state error from anywhere else.
fn needed(
    info: &SandboxInfo,
    from: SandboxState,
    to: SandboxState,
    action: &'static str,
) -> Result<bool, SandboxError> {
    match info.state {
        s if s == to => Ok(false),
        s if s == from => Ok(true),
        state => Err(SandboxError::InvalidState { id: info.id.clone(), state, action }),
    }
}

/// Thaws a container before an operation that needs its processes to run (a graceful stop). Errors (it was not
/// paused, it is gone) are the operation's to find.
pub(crate) async fn unpause_quietly(docker: &Docker, container: &str) {
    if let Err(e) = docker.unpause_container(container).await {
        tracing::debug!(container, error = %e, "unpause before stop");
    }
}

/// Removes a fork's image (after its sandbox was destroyed, or when the fork failed), unless a container still uses
/// it. Other images are left alone. Removing by tag also works while images committed from the fork (a fork of the
/// fork, a snapshot) still build on its layers: the tag goes, the layers stay until the last child goes.
pub(crate) async fn release_fork_image(docker: &Docker, image: &str) {
    if !image.starts_with(&format!("{FORK_IMAGE_REPO}:")) {
        return;
    }
    // Docker refuses (409) to drop the last tag of an image a container (even a stopped one) uses.
    let opts = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
    match docker.remove_image(image, Some(opts), None).await {
        Ok(_) => tracing::info!(image, "fork image removed"),
        Err(e) if docker_status(&e) == Some(404) => {}
        Err(e) if docker_status(&e) == Some(409) => tracing::info!(image, error = %e, "fork image still in use; kept"),
        Err(e) => tracing::warn!(image, error = %e, "cannot remove fork image"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_images_are_valid_references() {
        assert!(valid_reference(&fork_image("3f2b9c1e-0a4d-4c55-9a3e-1f2d3c4b5a69")));
        assert!(valid_reference(&fork_image("Fork_1.a")));
    }

    #[test]
    fn commit_errors_keep_their_codes() {
        use sandbar_proto::runner::JobErrorCode;
        let e = SnapshotError::Sandbox(SandboxError::NotFound("s".into()));
        assert_eq!(e.code(), JobErrorCode::SandboxNotFound);
        assert_eq!(commit_failed(e).code(), JobErrorCode::SandboxNotFound);
        assert_eq!(SnapshotError::InvalidName("X".into()).code(), JobErrorCode::InvalidRequest);
    }
}
