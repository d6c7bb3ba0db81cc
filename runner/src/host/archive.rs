//! Archive and restore: a stopped sandbox's filesystem goes to an object store and its container goes away;
//! starting it again brings the filesystem back and creates the container exactly as a create would.
//!
//! ## What is archived: the sandbox's own layer
//! A sandbox's image is shared and stays on the runner; what is the sandbox's own is its container's writable
//! layer, the upper directory of the storage driver (`GraphDriver.Data.UpperDir`). An archive is that layer
//! ([`layer`]: a tar stream with deletions as `.wh.` entries, opaque directories, owners as the container sees
//! them, extended attributes, symlinks, hard links and devices), zstd-compressed as it streams
//! (`{id}/layer.tar.zst`), plus the base: the image's ID in the manifest, and a tag `sandbar-archive:{id}` on it so
//! that removing the image the sandbox was made from (a deleted snapshot) cannot take the base away while the
//! archive needs it. A default-image sandbox with 10 MB of changes archives about 10 MB instead of Docker's export
//! of its whole file system (271 MiB), and neither side walks the image. Measured on this repository's CI machine
//! (`tests/archive.rs`, `default_image_archive_figures`: 5 MB random and 5 MB text written, `/usr/share/doc` deleted,
//! under other builds' load): archive 0.16-0.26 s (5.0 MiB) against 38-56 s (278.5 MiB) for the export; restore to
//! daemon ready 0.55-0.75 s against 13-16.5 s; fork of the running sandbox 0.54-0.75 s against 12.4-15.4 s.
//!
//! Restore creates the container from the pinned base, **created but not started**, writes the layer into its
//! upper directory, then starts it. Writing the upper directory rather than `PUT /containers/{id}/archive`,
//! because only the driver's own form can say what the layer says: Docker's archive upload extracts a tar into the
//! merged view, where a `.wh.` entry would become a file named `.wh.x` instead of deleting `x`, an opaque
//! directory cannot be expressed at all, and ownership is whatever the tar says without the user-namespace shift;
//! it also mounts the fuse-overlayfs view and pushes every byte through FUSE. The upper directory of a container
//! that never ran is empty and used by nobody, so writing it needs no lock and no mount; the runner, which is
//! root on the Docker host, writes host ids (container id + the `userns-remap` base, [`IdMap`]) and the
//! driver's whiteout form (a 0/0 character device; fuse-overlayfs reads that and `.wh.` files both).
//!
//! A fork is the same copy from one upper directory into another ([`Inner::copy_layer`]), the source frozen
//! (docker pause, its mount flushed) for the moment of the copy when it runs; the fork's image is a tag of the
//! source's base (`sandbar-fork:{fork}`), not a commit, so nothing compares the image's files.
//!
//! The full export stays as the fallback: when the upper directory is out of reach (a remote Docker, a driver
//! without one) or the base image is gone, the archive is Docker's export (`{id}/rootfs.tar`), and its restore
//! imports it as an image as before; a fork falls back to the commit. Manifests of version 1 (always a full
//! export) still restore. A layer archive whose base has gone from the runner (both the tag and the image removed
//! by hand) cannot be restored, and says so.
//!
//! ## The store
//! Per sandbox: the tarball (streamed straight into a multipart upload, never held in memory) and
//! `{id}/manifest.json`, written last, so an archive is complete exactly when its manifest exists. The manifest
//! keeps what the export loses and the restore needs: what the image gave the container (entrypoint, environment,
//! work dir, user), the tarball's kind, size and SHA-256. It keeps no secret: the caller's environment, labels,
//! resources and intervals come back with the restore job (the control plane is their source of truth), and a
//! restored sandbox gets a fresh daemon token, as a create does. Nothing about an archived sandbox lives only in
//! the runner: it forgets the sandbox once the container is gone, and a restarted runner needs nothing but the
//! store and the pinned base.
//!
//! Restore of a full export: the tarball is imported as an image (checked against the manifest's size and digest
//! while it streams), a container that never runs carries the manifest's image config and is committed as
//! `sandbar-archive:{id}` (commit takes the config as JSON, so no environment value has to survive Dockerfile
//! quoting), and `create_container` makes the sandbox from that image. A layer is checked the same way while it
//! is applied; a mismatch removes the container it was written into. The objects are deleted once the sandbox
//! runs again; a failed restore leaves them, so a later start retries.
//!
//! Both jobs are idempotent, as the API re-delivers a job whose result it did not get: an archive whose container
//! is already gone succeeds when its manifest is there; a restore of a sandbox that already runs answers with it;
//! leftovers of an interrupted restore (images, the never-started container) are removed before it starts over.
//!
//! A store that fails (5xx, stalls, down): each request is retried with jittered backoff within its timeouts
//! ([`store`] has the rules, the defaults and the `s3://` URL options that change them), and when its retries are
//! spent the job fails with the store's own words, never a hang. A failed archive leaves the container as it was,
//! stopped, so it can be archived again once the store is back: an archive first deletes an out-of-date manifest
//! of the sandbox (one a restore could not delete), so a half-written upload never sits under a manifest, and an
//! upload that failed is aborted (never completed, so no `rootfs.tar` of it appears). A failed restore removes
//! what it made (the import, the restore image, the container) and leaves the archive untouched.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::body_try_stream;
use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures_util::{StreamExt, TryStreamExt};
use sandbar_proto::runner::{CreateSandbox, SandboxInfo, SandboxSpecLabel, SandboxState, labels};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use sandbar_support::sync::lock;

use super::daemon::new_token;
use super::{Entry, Inner, RESERVED_ENV, Runner, container_name, strip_daemon, unix_now};
use crate::config::DAEMON_MOUNT_PATH;
use crate::error::{SandboxError, docker_status};

mod layer;
mod store;
mod stream;
pub(crate) use layer::IdMap;
pub(crate) use store::ArchiveStore;
use store::TarBody;
pub(crate) use stream::LayerSource;

/// Repository of the images restores make: `sandbar-archive:{id}` (and `{id}.rootfs`, the bare import, while a
/// restore runs).
pub const ARCHIVE_REPO: &str = "sandbar-archive";
/// Label on restore images and their helper container; its value is the sandbox ID.
pub const ARCHIVE_LABEL: &str = "sandbar.archive";
/// 2 added `kind` and `baseImageId`; a version 1 manifest is a full export and still restores.
const MANIFEST_VERSION: u32 = 2;
/// Export and import stream for as long as the filesystem takes; Docker's per-request timeout is for answers.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// A tar stream ends with two zero blocks: an export without them was cut short.
const TAR_END: usize = 1024;

/// What an archive's tarball holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ArchiveKind {
    /// `rootfs.tar`: Docker's export of the whole file system.
    #[default]
    Rootfs,
    /// `layer.tar.zst`: the container's own layer, applied over its base image (see the module doc).
    Layer,
}

impl ArchiveKind {
    /// The tarball's object name in the sandbox's folder.
    pub fn object(self) -> &'static str {
        match self {
            Self::Rootfs => "rootfs.tar",
            Self::Layer => "layer.tar.zst",
        }
    }
}

/// What an archive keeps beside the filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveManifest {
    pub version: u32,
    pub sandbox_id: String,
    pub organization_id: String,
    pub runner_id: String,
    /// The image the container ran when it was archived.
    pub source_image: String,
    /// What the daemon ran as the sandbox's entrypoint.
    pub argv: Vec<String>,
    /// The environment the image gave the container (`K=V`), without the caller's and the runner's own.
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The container's user (the create's, else the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the tarball holds (version 1: always `rootfs`).
    #[serde(default)]
    pub kind: ArchiveKind,
    /// A layer's base: the ID of the image the container ran, kept on this runner as `sandbar-archive:{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_id: Option<String>,
    /// Bytes of the tarball (`kind.object()`).
    pub size: u64,
    /// Hex SHA-256 of the tarball.
    pub sha256: String,
    /// Unix seconds.
    pub archived_at: i64,
}

pub(crate) fn image_ref(id: &str) -> String {
    format!("{ARCHIVE_REPO}:{id}")
}

fn rootfs_ref(id: &str) -> String {
    format!("{ARCHIVE_REPO}:{id}.rootfs")
}

fn helper_name(id: &str) -> String {
    format!("sandbar-{id}-restore")
}

/// The environment the image gave a container: its env without the runner's variables and the caller's.
fn image_env(all: &[String], caller_keys: &HashSet<&str>) -> Vec<String> {
    all.iter()
        .filter(|kv| {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !RESERVED_ENV.contains(&key) && !caller_keys.contains(key)
        })
        .cloned()
        .collect()
}

/// The entrypoint of a restore image: the daemon in front, as in a snapshot, so `strip_daemon` recovers `argv`
/// (an empty one included, which a bare `[]` entrypoint could not say through Docker's config merge).
fn daemon_entrypoint(argv: &[String]) -> Vec<String> {
    let mut ep = vec![DAEMON_MOUNT_PATH.to_owned(), "--".to_owned()];
    ep.extend(argv.iter().cloned());
    ep
}

/// Keeps the last [`TAR_END`] bytes of a stream.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    if chunk.len() >= TAR_END {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - TAR_END..]);
    } else {
        tail.extend_from_slice(chunk);
        let excess = tail.len().saturating_sub(TAR_END);
        tail.drain(..excess);
    }
}

impl Runner {
    /// Archives a stopped sandbox: its filesystem to the archive store, then its container (and a restore image
    /// it ran from) removed. The runner forgets the sandbox; the answer is its last picture, `archived`.
    pub async fn archive(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let id = id.to_owned();
        self.detached(|inner| async move { inner.archive(&id).await }).await
    }

    /// Restores an archived sandbox from the store and starts it, with `spec` as a create would use it (its
    /// `image` is informative: the filesystem comes from the archive).
    pub async fn restore(&self, spec: CreateSandbox) -> Result<SandboxInfo, SandboxError> {
        self.detached(|inner| async move { inner.restore(spec).await }).await
    }

    /// The manifest of `id`'s archive, if the store holds a complete one.
    pub async fn archive_manifest(&self, id: &str) -> Result<Option<ArchiveManifest>, SandboxError> {
        self.inner.archive_store()?.manifest(id).await
    }

    /// Where archives go (a directory or an `s3://` URL), if archiving is configured.
    pub fn archive_location(&self) -> Option<&str> {
        self.inner.archive.as_ref().map(ArchiveStore::location)
    }
}

impl Inner {
    fn archive_store(&self) -> Result<&ArchiveStore, SandboxError> {
        self.archive.as_ref().ok_or_else(|| {
            SandboxError::InvalidRequest(
                "this runner has no archive store: start it with --archive-store or --runner-state-dir".into(),
            )
        })
    }

    async fn archive(self: &Arc<Self>, id: &str) -> Result<SandboxInfo, SandboxError> {
        let store = self.archive_store()?;
        let entry = match self.entry(id) {
            Ok(e) => e,
            // A repeat of a job whose container is already gone (the runner restarted before reporting).
            Err(not_found) => {
                return match store.manifest(id).await? {
                    Some(m) => Ok(self.archived_info(&m, None)),
                    None => Err(not_found),
                };
            }
        };
        let _op = entry.op.lock().await;
        let info = lock(&entry.info).clone();
        if info.state != SandboxState::Stopped {
            return Err(SandboxError::InvalidState { id: id.into(), state: info.state, action: "archive" });
        }
        self.set_state(&entry, SandboxState::Archiving, None, None);
        let started = Instant::now();
        let m = match self.export(store, &info).await {
            Ok(m) => m,
            Err(e) => {
                // The export only read the container: it is intact and stopped, and can be archived again (unless
                // Docker says it runs, which nothing here explains).
                let next = match e {
                    SandboxError::InvalidState { .. } => SandboxState::Error,
                    _ => SandboxState::Stopped,
                };
                tracing::warn!(sandbox_id = %id, error = %e, ms = started.elapsed().as_millis() as u64,
                    store = %store.location(), state = %next, "archive failed");
                self.set_state(&entry, next, Some(format!("archive failed: {e}")), None);
                return Err(e);
            }
        };
        match self.remove_archived_container(&entry, &info, m.kind).await {
            Ok(()) => {
                tracing::info!(sandbox_id = %id, bytes = m.size, ms = started.elapsed().as_millis() as u64,
                    store = %store.location(), "sandbox archived");
                self.set_state(&entry, SandboxState::Archived, None, None);
                Ok(self.archived_info(&m, Some(info)))
            }
            Err(e) => {
                // The archive is complete but Docker kept the container in some state: an error until looked at.
                self.set_state(&entry, SandboxState::Error, Some(format!("archive failed: {e}")), None);
                Err(e)
            }
        }
    }

    /// The picture of an archived sandbox: no container, no daemon. `last` is what the runner knew before.
    fn archived_info(&self, m: &ArchiveManifest, last: Option<SandboxInfo>) -> SandboxInfo {
        let mut info = match last {
            Some(info) => info,
            None => SandboxInfo {
                id: m.sandbox_id.clone(),
                name: None,
                organization_id: m.organization_id.clone(),
                runner_id: self.config.runner_id.clone(),
                container_id: String::new(),
                image: m.source_image.clone(),
                state: SandboxState::Archived,
                error_reason: None,
                resources: Default::default(),
                disk_enforced: self.host.disk_enforced,
                daemon_addr: None,
                ssh_addr: None,
                daemon_token: String::new(),
                daemon_host_key: None,
                user: m.user.clone(),
                env: Default::default(),
                labels: Default::default(),
                auto: Default::default(),
            },
        };
        info.state = SandboxState::Archived;
        info.container_id.clear();
        info.daemon_addr = None;
        info.ssh_addr = None;
        info.daemon_host_key = None;
        info.error_reason = None;
        info
    }

    /// Streams the container's export into the store, then writes the manifest.
    async fn export(&self, store: &ArchiveStore, info: &SandboxInfo) -> Result<ArchiveManifest, SandboxError> {
        let id = info.id.as_str();
        let inspect = self.docker.inspect_container(&info.container_id, None).await?;
        if inspect.state.as_ref().and_then(|s| s.running) == Some(true) {
            return Err(SandboxError::InvalidState { id: id.into(), state: SandboxState::Started, action: "archive" });
        }
        let config = inspect.config.clone().unwrap_or_default();
        let spec: SandboxSpecLabel = config
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::SPEC))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let caller_keys: HashSet<&str> = spec.env_keys.iter().map(String::as_str).collect();
        let env = image_env(config.env.as_deref().unwrap_or_default(), &caller_keys);

        store.clear_staged(id).await;
        store.remove_stale_manifest(id).await?;
        let started = Instant::now();
        // The layer when it can be read and its base pinned; else (a remote Docker, another driver, a base image
        // gone) the full export.
        let layer = match self.layer_source(&inspect) {
            Some(src) if self.pin_base(&src.image_id, ARCHIVE_REPO, id).await? => Some(src),
            _ => None,
        };
        let (kind, base_image_id, size, sha256) = match layer {
            Some(src) => {
                let (size, sha256, stats) = self.export_layer(store, id, &src).await?;
                tracing::info!(sandbox_id = %id, entries = stats.entries, file_bytes = stats.file_bytes,
                    whiteouts = stats.whiteouts, bytes = size, ms = started.elapsed().as_millis() as u64,
                    "layer archived");
                (ArchiveKind::Layer, Some(src.image_id), size, sha256)
            }
            None => {
                let (size, sha256) = self.export_rootfs(store, info).await?;
                (ArchiveKind::Rootfs, None, size, sha256)
            }
        };
        let manifest = ArchiveManifest {
            version: MANIFEST_VERSION,
            sandbox_id: id.to_owned(),
            organization_id: info.organization_id.clone(),
            runner_id: self.config.runner_id.clone(),
            source_image: config.image.clone().unwrap_or_else(|| info.image.clone()),
            argv: strip_daemon(config.entrypoint.clone().unwrap_or_default()),
            env,
            working_dir: config.working_dir.clone().filter(|w| !w.is_empty()),
            user: config.user.clone().filter(|u| !u.is_empty()),
            kind,
            base_image_id,
            size,
            sha256,
            archived_at: unix_now(),
        };
        store.put_manifest(&manifest).await?;
        Ok(manifest)
    }

    /// Streams Docker's export of the whole file system into the store: its size and SHA-256.
    async fn export_rootfs(&self, store: &ArchiveStore, info: &SandboxInfo) -> Result<(u64, String), SandboxError> {
        let id = info.id.as_str();
        let docker = self.docker.clone().with_timeout(TRANSFER_TIMEOUT);
        let mut export = Box::pin(docker.export_container(&info.container_id));
        let mut upload = store.upload(id, ArchiveKind::Rootfs).await?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut tail = Vec::with_capacity(TAR_END);
        let failure = loop {
            let chunk = match export.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => break Some(SandboxError::from(e)),
            };
            hash.update(&chunk);
            keep_tail(&mut tail, &chunk);
            size += chunk.len() as u64;
            if let Err(e) = upload.write(chunk).await {
                break Some(e);
            }
        };
        let failure = failure.or_else(|| {
            (tail.len() < TAR_END || tail.iter().any(|b| *b != 0))
                .then(|| SandboxError::Archive(format!("Docker's export of sandbox {id} ended early ({size} bytes)")))
        });
        if let Some(e) = failure {
            upload.abort().await;
            return Err(e);
        }
        upload.finish().await?;
        Ok((size, format!("{:x}", hash.finalize())))
    }

    /// After a complete export: the container goes, with a fork's own image (the archive holds its files now; a
    /// restore never uses that image), and, after a full export, the restore image it may have run from. After a
    /// layer, `sandbar-archive:{id}` is the pinned base the restore needs, and stays.
    async fn remove_archived_container(
        &self,
        entry: &Entry,
        info: &SandboxInfo,
        kind: ArchiveKind,
    ) -> Result<(), SandboxError> {
        self.remove_container(&info.container_id).await?;
        lock(&self.sandboxes).remove(&info.id);
        if entry.is_claimed() {
            self.save_claims()?;
        }
        if kind == ArchiveKind::Rootfs {
            self.remove_image_quietly(&image_ref(&info.id)).await;
        }
        super::fork::release_fork_image(&self.docker, &info.image).await;
        Ok(())
    }

    async fn remove_image_quietly(&self, reference: &str) {
        let opts = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
        match self.docker.remove_image(reference, Some(opts), None).await {
            Ok(_) => {}
            Err(e) if docker_status(&e) == Some(404) => {}
            Err(e) => tracing::warn!(image = reference, error = %e, "cannot remove image"),
        }
    }

    async fn restore(self: &Arc<Self>, req: CreateSandbox) -> Result<SandboxInfo, SandboxError> {
        let store = self.archive_store()?;
        self.validate_create(&req)?;
        let id = req.id.clone();
        if let Ok(entry) = self.entry(&id) {
            let _op = entry.op.lock().await;
            let info = lock(&entry.info).clone();
            if info.state == SandboxState::Started {
                // A repeat of a restore that finished (the runner restarted before reporting).
                self.remove_archive_quietly(store, &id).await;
                return Ok(info);
            }
            return Err(SandboxError::Conflict(format!(
                "sandbox {id} has a container on this runner ({}), so it is not archived",
                info.state
            )));
        }
        let manifest = store
            .manifest(&id)
            .await?
            .ok_or_else(|| SandboxError::Archive(format!("no archive of sandbox {id} in {}", store.location())))?;
        let mut info = self.new_info(&req, SandboxState::Restoring, new_token()?);
        info.image = image_ref(&id);
        let entry = Entry::new(info, false);
        {
            let mut map = lock(&self.sandboxes);
            if map.contains_key(&id) {
                return Err(SandboxError::Conflict(format!("sandbox {id} already exists")));
            }
            map.insert(id.clone(), entry.clone());
        }
        let _op = entry.op.lock().await;
        self.set_state(&entry, SandboxState::Restoring, None, None);
        let started = Instant::now();
        let req = CreateSandbox { image: image_ref(&id), ..req };
        let result = match manifest.kind {
            ArchiveKind::Rootfs => match self.import(store, &manifest).await {
                Ok(()) => self.create_container(&entry, &req, false).await,
                Err(e) => Err(e),
            },
            ArchiveKind::Layer => self.restore_layer(store, &manifest, &entry, &req).await,
        };
        match result {
            Ok(()) => {
                tracing::info!(sandbox_id = %id, bytes = manifest.size, ms = started.elapsed().as_millis() as u64,
                    "sandbox restored");
                self.set_state(&entry, SandboxState::Started, None, None);
                self.remove_archive_quietly(store, &id).await;
                Ok(lock(&entry.info).clone())
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, error = %e, "restore failed; the archive stays");
                self.remove_container_quietly(&container_name(&id)).await;
                self.remove_container_quietly(&helper_name(&id)).await;
                // A layer's pinned base stays for the next attempt; a full export's restore image is remade.
                if manifest.kind == ArchiveKind::Rootfs {
                    self.remove_image_quietly(&image_ref(&id)).await;
                }
                self.remove_image_quietly(&rootfs_ref(&id)).await;
                lock(&self.sandboxes).remove(&id);
                self.set_state(&entry, SandboxState::Archived, Some(format!("restore failed: {e}")), None);
                Err(e)
            }
        }
    }

    /// A layer's restore: a container of the pinned base, created but not started, gets the layer in its upper
    /// directory, then starts as a create's would.
    async fn restore_layer(
        &self,
        store: &ArchiveStore,
        m: &ArchiveManifest,
        entry: &Entry,
        req: &CreateSandbox,
    ) -> Result<(), SandboxError> {
        let id = m.sandbox_id.as_str();
        // What an interrupted attempt may have left.
        self.remove_container_quietly(&container_name(id)).await;
        if super::image::inspect(&self.docker, &req.image).await?.is_none() {
            // The pin went (removed by hand): the base itself may still be here.
            let base = m.base_image_id.as_deref().unwrap_or_default();
            if base.is_empty() || !self.pin_base(base, ARCHIVE_REPO, id).await? {
                return Err(SandboxError::Archive(format!(
                    "the archive of sandbox {id} is its layer over image {} ({base}), which is gone from this                      runner",
                    m.source_image
                )));
            }
        }
        // What the container ran (a fork's argv is its source's, which the base image does not say).
        let mut req = req.clone();
        if req.entrypoint.is_none() && !m.argv.is_empty() {
            req.entrypoint = Some(m.argv.clone());
        }
        let container = self.make_container(entry, &req, false).await?;
        let stats = self.import_layer(store, m, &container).await?;
        tracing::debug!(sandbox_id = %id, entries = stats.entries, file_bytes = stats.file_bytes,
            whiteouts = stats.whiteouts, "layer applied");
        self.run_container(entry, id, &container).await
    }

    /// Makes `sandbar-archive:{id}` from the archive: the filesystem imported (and checked against the manifest
    /// while it streams), then the image config of the manifest put on it through a commit.
    async fn import(&self, store: &ArchiveStore, m: &ArchiveManifest) -> Result<(), SandboxError> {
        let id = m.sandbox_id.as_str();
        // What an interrupted attempt may have left.
        self.remove_container_quietly(&helper_name(id)).await;
        self.remove_image_quietly(&image_ref(id)).await;
        self.remove_image_quietly(&rootfs_ref(id)).await;

        let TarBody { stream: body, failure } = store.read_tar(id, ArchiveKind::Rootfs, m.size).await?;
        let hash = Arc::new(Mutex::new(Sha256::new()));
        let hashing = hash.clone();
        let body = body.inspect_ok(move |chunk| lock(&hashing).update(chunk));
        let docker = self.docker.clone().with_timeout(TRANSFER_TIMEOUT);
        let tag = format!("{id}.rootfs");
        let opts = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(ARCHIVE_REPO)
            .tag(&tag)
            .message(&format!("sandbar archive of sandbox {id}"))
            .build();
        let mut progress = Box::pin(docker.create_image(Some(opts), Some(body_try_stream(body)), None));
        let mut imported = Ok(());
        while let Some(p) = progress.next().await {
            match p {
                Ok(p) => {
                    if let Some(detail) = p.error_detail {
                        imported = Err(SandboxError::Archive(format!(
                            "Docker cannot import the archive of sandbox {id}: {}",
                            detail.message.unwrap_or_default()
                        )));
                        break;
                    }
                }
                Err(e) => {
                    imported = Err(e.into());
                    break;
                }
            }
        }
        drop(progress);
        // Docker sees only that its body broke: the reason is the store's.
        if let Some(e) = TarBody::failed(&failure) {
            self.remove_image_quietly(&rootfs_ref(id)).await;
            return Err(e);
        }
        imported?;
        let digest = format!("{:x}", std::mem::take(&mut *lock(&hash)).finalize());
        if digest != m.sha256 {
            self.remove_image_quietly(&rootfs_ref(id)).await;
            return Err(SandboxError::Archive(format!(
                "the archive of sandbox {id} is corrupt: SHA-256 {digest}, its manifest says {}",
                m.sha256
            )));
        }

        // A container that never runs, with the image config of the manifest, committed as the restore image.
        let mut helper_labels: HashMap<String, String> =
            self.config.extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // The runner label: a restarted runner removes it like any never-started container of its own.
        helper_labels.insert(labels::RUNNER.into(), self.config.runner_id.clone());
        helper_labels.insert(ARCHIVE_LABEL.into(), id.to_owned());
        let entrypoint = daemon_entrypoint(&m.argv);
        let body = ContainerCreateBody {
            image: Some(rootfs_ref(id)),
            entrypoint: Some(entrypoint.clone()),
            cmd: Some(Vec::new()),
            env: Some(m.env.clone()),
            working_dir: m.working_dir.clone(),
            user: m.user.clone(),
            labels: Some(helper_labels.clone()),
            network_disabled: Some(true),
            ..Default::default()
        };
        let name = helper_name(id);
        let helper = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
            .await?;
        let opts = CommitContainerOptionsBuilder::default()
            .container(&helper.id)
            .repo(ARCHIVE_REPO)
            .tag(id)
            .comment(&format!("sandbar restore of sandbox {id}"))
            .pause(false)
            .build();
        let config = ContainerConfig {
            entrypoint: Some(entrypoint),
            cmd: Some(Vec::new()),
            env: Some(m.env.clone()),
            working_dir: m.working_dir.clone(),
            user: m.user.clone(),
            labels: Some(helper_labels),
            ..Default::default()
        };
        let committed = self.docker.commit_container(opts, config).await;
        self.remove_container_quietly(&helper.id).await;
        committed?;
        // Only the tag goes: the restore image is built on it.
        self.remove_image_quietly(&rootfs_ref(id)).await;
        Ok(())
    }

    async fn remove_archive_quietly(&self, store: &ArchiveStore, id: &str) {
        if let Err(e) = store.remove(id).await {
            tracing::warn!(sandbox_id = %id, error = %e, "cannot delete archive objects");
        }
    }

    /// After a sandbox's container is destroyed: its restore image and any archive objects go too.
    pub(super) async fn forget_archive(&self, id: &str) {
        self.remove_image_quietly(&image_ref(id)).await;
        if let Some(store) = &self.archive {
            self.remove_archive_quietly(store, id).await;
        }
    }

    /// Destroy of a sandbox the runner does not hold: an archived one, whose archive is deleted. `not_found`
    /// when there is no archive either.
    pub(super) async fn destroy_archived(&self, id: &str, not_found: SandboxError) -> Result<(), SandboxError> {
        let Some(store) = &self.archive else { return Err(not_found) };
        self.remove_image_quietly(&image_ref(id)).await;
        if store.remove(id).await? {
            tracing::info!(sandbox_id = %id, "archived sandbox destroyed: archive deleted");
            Ok(())
        } else {
            Err(not_found)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_env_leaves_out_the_callers_and_ours() {
        let all: Vec<String> =
            ["PATH=/bin", "FOO=x", "SANDBAR_DAEMON_TOKEN=t", "SANDBAR_SANDBOX_ID=s", "LANG=C.UTF-8", "ODD"]
                .map(String::from)
                .to_vec();
        let caller = HashSet::from(["FOO"]);
        assert_eq!(image_env(&all, &caller), ["PATH=/bin", "LANG=C.UTF-8", "ODD"]);
    }

    #[test]
    fn restore_entrypoint_round_trips_through_strip_daemon() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for argv in [v(&[]), v(&["sleep", "infinity"]), v(&["--", "x"])] {
            assert_eq!(strip_daemon(daemon_entrypoint(&argv)), argv);
        }
    }

    #[test]
    fn tail_keeps_the_last_kilobyte() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, &[1; 600]);
        keep_tail(&mut tail, &[0; 600]);
        assert_eq!(tail.len(), TAR_END);
        assert_eq!(tail.iter().filter(|b| **b == 1).count(), 424);
        keep_tail(&mut tail, &[0; 2000]);
        assert!(tail.iter().all(|b| *b == 0));
    }
}
