//! The layer paths of archive, restore and fork: where a container's layer is, and the streams that carry it
//! (zstd to and from the store; straight from one upper dir into another for a fork). The file-system work is
//! blocking and runs on blocking threads; the store and Docker stay on the runtime, joined by bounded channels
//! of 1 MiB chunks, so memory stays flat whatever the layer's size.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::TagImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::layer::{IdMap, LayerStats, apply_layer, write_layer};
use super::store::{ArchiveStore, TarBody};
use super::{ArchiveKind, ArchiveManifest};
use crate::error::{SandboxError, docker_status};
use crate::host::Inner;

const CHUNK: usize = 1 << 20;
/// Chunks in flight between a blocking thread and the runtime.
const CHUNKS_IN_FLIGHT: usize = 4;
/// zstd's level: its default, about 300 MB/s on one core with a good ratio on text and binaries.
const ZSTD_LEVEL: i32 = 3;

/// A container's writable layer, readable from this host.
#[derive(Debug, Clone)]
pub(crate) struct LayerSource {
    pub container: String,
    pub upper: PathBuf,
    /// The mounted view of a running container, flushed before a copy.
    pub merged: Option<PathBuf>,
    pub ids: IdMap,
    /// The image the container runs (an ID): the layer's base.
    pub image_id: String,
    /// Running and not paused: frozen while its layer is copied.
    pub running: bool,
}

/// Bytes written on a blocking thread, sent to the runtime in [`CHUNK`]s.
struct ChunkWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes the runtime sends, read on a blocking thread.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => self.current = chunk,
            }
        }
        let n = out.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        if let Some(into) = out.get_mut(..n) {
            into.copy_from_slice(&chunk);
        }
        Ok(n)
    }
}

fn joined<T>(r: Result<io::Result<T>, tokio::task::JoinError>, what: &str) -> Result<T, SandboxError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SandboxError::Archive(format!("{what}: {e}"))),
        Err(e) => Err(SandboxError::Internal(format!("{what} died: {e}"))),
    }
}

impl Inner {
    /// How a container's ids map to the host's: a container in the host's user namespace (gVisor) has no shift.
    fn ids_of(&self, inspect: &ContainerInspectResponse) -> IdMap {
        let host_ns = inspect.host_config.as_ref().and_then(|h| h.userns_mode.as_deref()) == Some("host");
        if host_ns { IdMap::default() } else { self.ids }
    }

    /// The container's layer, when Docker keeps it in an upper directory this runner can read (a local Docker
    /// with an overlay-type driver); `None` sends the caller to the full export or the commit.
    pub(crate) fn layer_source(&self, inspect: &ContainerInspectResponse) -> Option<LayerSource> {
        let data = &inspect.graph_driver.as_ref()?.data;
        let upper = PathBuf::from(data.get("UpperDir")?);
        std::fs::read_dir(&upper).ok()?;
        let state = inspect.state.as_ref();
        let running = state.and_then(|s| s.running) == Some(true) && state.and_then(|s| s.paused) != Some(true);
        Some(LayerSource {
            container: inspect.id.clone()?,
            upper,
            merged: data.get("MergedDir").map(PathBuf::from),
            ids: self.ids_of(inspect),
            image_id: inspect.image.clone()?,
            running,
        })
    }

    /// Tags the layer's base image as `repo:tag`, so it stays while the layer needs it. A base that is gone is
    /// `None`.
    pub(crate) async fn pin_base(&self, image_id: &str, repo: &str, tag: &str) -> Result<bool, SandboxError> {
        let opts = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
        match self.docker.tag_image(image_id, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if docker_status(&e) == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams the layer, zstd-compressed, into the store as `{id}/layer.tar.zst`: its size and SHA-256.
    pub(crate) async fn export_layer(
        &self,
        store: &ArchiveStore,
        id: &str,
        src: &LayerSource,
    ) -> Result<(u64, String, LayerStats), SandboxError> {
        let (tx, mut rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (upper, ids) = (src.upper.clone(), src.ids);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<LayerStats> {
            let out = ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) };
            let zstd = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
            let (zstd, stats) = write_layer(&upper, ids, zstd)?;
            zstd.finish()?.send()?;
            Ok(stats)
        });
        let mut upload = store.upload(id, ArchiveKind::Layer).await?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut failure = None;
        while let Some(chunk) = rx.recv().await {
            hash.update(&chunk);
            size += chunk.len() as u64;
            if let Err(e) = upload.write(chunk).await {
                failure = Some(e);
                break;
            }
        }
        drop(rx);
        let written = joined(writer.await, &format!("reading the layer of sandbox {id}"));
        let stats = match (failure, written) {
            (None, Ok(stats)) => stats,
            (Some(e), _) | (None, Err(e)) => {
                upload.abort().await;
                return Err(e);
            }
        };
        upload.finish().await?;
        Ok((size, format!("{:x}", hash.finalize()), stats))
    }

    /// Writes the archived layer of `m` into the upper dir of `container` (created, never started), checking it
    /// against the manifest's size and digest as it streams.
    pub(crate) async fn import_layer(
        &self,
        store: &ArchiveStore,
        m: &ArchiveManifest,
        container: &str,
    ) -> Result<LayerStats, SandboxError> {
        let id = m.sandbox_id.as_str();
        let inspect = self.docker.inspect_container(container, None).await?;
        let target = self.layer_source(&inspect).ok_or_else(|| {
            SandboxError::Archive(format!("the container of sandbox {id} has no upper directory this runner can write"))
        })?;
        let TarBody { mut stream, failure } = store.read_tar(id, ArchiveKind::Layer, m.size).await?;
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (upper, ids) = (target.upper.clone(), target.ids);
        let applier = tokio::task::spawn_blocking(move || -> io::Result<LayerStats> {
            let input = ChunkReader { rx, current: Bytes::new() };
            let stats = apply_layer(zstd::stream::read::Decoder::new(input)?, &upper, ids)?;
            Ok(stats)
        });
        let mut hash = Sha256::new();
        let mut applying = true;
        while let Some(chunk) = stream.next().await {
            let Ok(bytes) = &chunk else {
                // The store's error reaches the applier, which stops on it.
                let _ = tx.send(chunk).await;
                break;
            };
            hash.update(bytes);
            // An applier that stopped (a damaged stream, most likely) leaves the rest to be hashed, so the
            // failure says whether the archive is corrupt.
            if applying && tx.send(chunk).await.is_err() {
                applying = false;
            }
        }
        drop(tx);
        let applied = joined(applier.await, &format!("applying the layer of sandbox {id}"));
        if let Some(e) = TarBody::failed(&failure) {
            return Err(e);
        }
        let digest = format!("{:x}", hash.finalize());
        if digest != m.sha256 {
            return Err(SandboxError::Archive(format!(
                "the archive of sandbox {id} is corrupt: SHA-256 {digest}, its manifest says {}",
                m.sha256
            )));
        }
        applied
    }

    /// Copies `src`'s layer into the upper dir of `container` (created, never started): a fork. A running source
    /// is frozen (docker pause) and its file system flushed for the copy, so the fork sees one moment of it.
    pub(crate) async fn copy_layer(self: &Arc<Self>, src: &LayerSource, container: &str) -> Result<(), SandboxError> {
        let inspect = self.docker.inspect_container(container, None).await?;
        let target = self.layer_source(&inspect).ok_or_else(|| {
            SandboxError::Internal(format!("container {container} has no upper directory this runner can write"))
        })?;
        // Marked before the pause so that a runner killed during the copy thaws the source when it starts again
        // ([`Inner::thaw_fork_sources`]); a user's pause carries no mark.
        let mark = self.fork_pause_mark(&src.container);
        if src.running {
            if let Some(mark) = &mark {
                write_mark(mark).map_err(|e| {
                    SandboxError::Internal(format!("cannot mark {} paused for a fork: {e}", mark.display()))
                })?;
            }
            if let Err(e) = self.docker.pause_container(&src.container).await {
                remove_mark(mark.as_deref());
                return Err(e.into());
            }
        }
        let (from, to) = (src.clone(), target.clone());
        let copied = tokio::task::spawn_blocking(move || -> io::Result<LayerStats> {
            if let Some(merged) = &from.merged
                && from.running
            {
                // Pages written through the mount but still in the kernel's cache reach the upper dir.
                rustix::fs::syncfs(std::fs::File::open(merged)?)?;
            }
            let (reader, writer) = io::pipe()?;
            let from = &from;
            std::thread::scope(|s| {
                let written = s.spawn(move || write_layer(&from.upper, from.ids, writer).map(|(_, stats)| stats));
                let applied = apply_layer(reader, &to.upper, to.ids);
                let written = written.join().map_err(|_| io::Error::other("the layer reader panicked"))?;
                // Both must succeed: a reader that failed ends the stream early, which a tar reader may take for
                // its end.
                let (written, applied) = (written?, applied?);
                if written.entries != applied.entries {
                    return Err(io::Error::other(format!(
                        "{} entries read but {} written",
                        written.entries, applied.entries
                    )));
                }
                Ok(applied)
            })
        })
        .await;
        if src.running {
            match self.docker.unpause_container(&src.container).await {
                Ok(()) => remove_mark(mark.as_deref()),
                Err(e) => tracing::warn!(container = %src.container, error = %e, "cannot unpause a fork's source"),
            }
        }
        let stats = joined(copied, &format!("copying the layer of container {}", src.container))?;
        tracing::debug!(container, entries = stats.entries, bytes = stats.file_bytes, "layer copied");
        Ok(())
    }
}

impl Inner {
    /// Where a fork's pause of `container` is marked: `<state dir>/fork-pauses/<container>` (`None` without a state
    /// dir: then a runner killed during a fork's copy leaves the source paused until a resume).
    fn fork_pause_mark(&self, container: &str) -> Option<PathBuf> {
        let dir = self.config.state_dir.as_ref()?.join(FORK_PAUSES);
        (!container.is_empty() && container.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| dir.join(container))
    }

    /// Thaws the sources of forks a killed runner left frozen (their marks), at start, before the table is read
    /// back from Docker: they are the started sandboxes they were.
    pub(crate) async fn thaw_fork_sources(&self) {
        let Some(dir) = self.config.state_dir.as_ref().map(|d| d.join(FORK_PAUSES)) else { return };
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for entry in entries.flatten() {
            let container = entry.file_name().to_string_lossy().into_owned();
            match self.docker.unpause_container(&container).await {
                Ok(()) => {
                    tracing::info!(container, "thawed the source of a fork the runner was copying when it stopped")
                }
                // Not paused any more (a stop, a destroy) or gone: nothing left to thaw.
                Err(e) => tracing::debug!(container, error = %e, "fork source not thawed"),
            }
            remove_mark(Some(&entry.path()));
        }
    }
}

const FORK_PAUSES: &str = "fork-pauses";

fn write_mark(mark: &std::path::Path) -> io::Result<()> {
    if let Some(dir) = mark.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(mark, b"")
}

fn remove_mark(mark: Option<&std::path::Path>) {
    if let Some(mark) = mark
        && let Err(e) = std::fs::remove_file(mark)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(mark = %mark.display(), error = %e, "cannot remove a fork's pause mark");
    }
}
