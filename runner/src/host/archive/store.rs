//! The archive store: a directory on this host or an S3-compatible bucket, and how the runner behaves when the
//! bucket misbehaves.
//!
//! ## An S3 store that answers 5xx, stalls or is down
//! Every request to an `s3://` store goes through object_store's retry loop ([`object_store::RetryConfig`]): a
//! 5xx, a 429 or 408, a connection refused or reset, and a request that ran out of its `timeout` are tried again
//! after a backoff, up to `max_retries` times and never once `retry_timeout` has passed since the request's first
//! attempt. A timed-out request is retried only when it is idempotent: reads by nature, and uploads, parts,
//! completes and aborts because object_store marks them so; a delete that timed out is not (object_store does not
//! mark deletes), so it fails after one `timeout`. The backoff is jittered: the first wait is `init_backoff`, each
//! later one is drawn uniformly between `init_backoff` and `backoff_base` times the previous wait ("decorrelated
//! jitter", object_store's `client/backoff.rs`), capped at `max_backoff`, so runners that saw the same outage do
//! not come back in step. Other 4xx answers (no such bucket, refused credentials) are not retried. Each request
//! also has a `connect_timeout` and a `timeout` for the whole exchange, from connect to the last byte of the
//! answer: a store that accepts a request and never answers costs that request one `timeout`, then it is retried
//! like any failure. So one request ends, answered or failed, within `retry_timeout + max_backoff + timeout`, and
//! no archive or restore waits on a failing store for more than a few of those in a row (the look for a stale
//! manifest, the parts in flight, then the abort of the upload, which gets one `timeout` ([`Upload`])).
//!
//! Reads are ranged: a restore reads the tarball in [`RANGE_SIZE`] pieces, two in flight, each a request with
//! its own retries, so `timeout` bounds a piece and not the whole archive, and a flaky store costs a piece, not
//! the restore. An upload's parts are [`PART_SIZE`], four in flight.
//!
//! Defaults ([`S3Tuning::default`]) and the URL options that change them (`s3://bucket/prefix?timeout=5s`):
//!
//! | option | default | |
//! |---|---|---|
//! | `connect_timeout` | 5 s | TCP (and TLS) connect |
//! | `timeout` | 60 s | one request: 4 parts of 16 MiB in flight need about 9 Mbit/s to fit |
//! | `max_retries` | 10 | retries of one request; 0: none |
//! | `retry_timeout` | 3 min | no retry starts later than this after the first attempt |
//! | `init_backoff` | 100 ms | the first wait |
//! | `max_backoff` | 15 s | the longest wait |
//! | `backoff_base` | 3 | growth of the waits' upper bound; more than 1 (object_store's default is 2) |
//!
//! Durations are `500ms`, `30s`, `2m` or a number of seconds, above zero. A bad value stops the runner at start,
//! with the option's name. The base is AWS's 3 rather than object_store's 2: with 2, the mean wait grows by only
//! `init_backoff / 2` a retry, and 10 retries span about 3 s, which a store's brief overload outlasts. With the
//! defaults, a store that keeps answering 500 fails a request after 10 retries whose waits add up to 10 s at the
//! median, 52 s at the 95th percentile and 87 s at most (simulated; measured: archives failed in 6 to 36 s, a
//! restore in 6 s); one that accepts requests and never answers fails one after 3 attempts of 60 s (the retry
//! timeout has passed when the 3rd ends), about 3 min, and an archive whose part it stalls then spends one more
//! `timeout` on the abort: 4 min (measured 242 s). Either is far inside the API's 60 min deadline for an archive
//! or a restore job, which fails with the store's own words (`tests/archive_faults.rs` has the figures test).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, GetResultPayload, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutPayload, PutPayloadMut, RetryConfig,
};
use tokio::task::JoinSet;

use sandbar_support::sync::lock;

use super::{ArchiveKind, ArchiveManifest, MANIFEST_VERSION};
use crate::config::RunnerConfig;
use crate::error::SandboxError;

/// Bytes of one ranged read of a restore, and how many are in flight (memory: 32 MiB).
pub(super) const RANGE_SIZE: u64 = 16 << 20;
const RANGES_IN_FLIGHT: usize = 2;
/// Parts of an upload (S3 needs at least 5 MiB but the last), and how many may be in flight.
const PART_SIZE: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// Where archives live: a directory on this host or an S3-compatible bucket.
pub(crate) struct ArchiveStore {
    pub(super) store: Arc<dyn ObjectStore>,
    /// For messages: the configured location, without credentials (there are none in it).
    location: String,
    /// The directory of a local store, whose uploads in progress are files beside their object (see
    /// [`ArchiveStore::clear_staged`]).
    local_dir: Option<std::path::PathBuf>,
    /// How long the abort of a failed upload may take: one request's `timeout` (see [`Upload`]).
    abort_within: Duration,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveStore").field("location", &self.location).finish_non_exhaustive()
    }
}

/// The store's error with its causes: reqwest says "error sending request" and keeps "operation timed out" or
/// "connection refused" in its sources.
pub(super) fn store_err(e: object_store::Error) -> SandboxError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    SandboxError::Archive(message)
}

/// The object of `id`'s archive of `kind`: `rootfs.tar` or `layer.tar.zst`.
pub(super) fn tar_path(id: &str, kind: ArchiveKind) -> ObjectPath {
    ObjectPath::from_iter([id, kind.object()])
}

pub(super) fn manifest_path(id: &str) -> ObjectPath {
    ObjectPath::from_iter([id, "manifest.json"])
}

/// A tarball being uploaded: parts of [`PART_SIZE`], [`PARTS_IN_FLIGHT`] at once (memory stays under 80 MiB
/// whatever the sandbox's size), completed by [`Upload::finish`], which is what makes `rootfs.tar` appear. Any
/// failure aborts it, within one request's `timeout`: a store that is down would otherwise spend a second retry
/// budget on the abort alone, and an upload that is never completed names no object (the bucket's
/// `AbortIncompleteMultipartUpload` rule removes its parts).
pub(super) struct Upload<'a> {
    store: &'a ArchiveStore,
    id: String,
    upload: Box<dyn MultipartUpload>,
    buffer: PutPayloadMut,
    parts: JoinSet<object_store::Result<()>>,
}

impl Upload<'_> {
    /// Adds `data`, sending each full part; waits while [`PARTS_IN_FLIGHT`] are on their way. After an error the
    /// upload is to be aborted.
    pub async fn write(&mut self, mut data: bytes::Bytes) -> Result<(), SandboxError> {
        while !data.is_empty() {
            let n = (PART_SIZE - self.buffer.content_length()).min(data.len());
            // No copy: a part is the export's own buffers.
            self.buffer.push(data.split_to(n));
            if self.buffer.content_length() == PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<(), SandboxError> {
        while self.parts.len() >= PARTS_IN_FLIGHT {
            self.join_part().await?;
        }
        let part = std::mem::take(&mut self.buffer).freeze();
        self.parts.spawn(self.upload.put_part(part));
        Ok(())
    }

    async fn join_part(&mut self) -> Result<(), SandboxError> {
        match self.parts.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(store_err(e)),
            Some(Err(e)) => Err(SandboxError::Internal(format!("an archive part's upload died: {e}"))),
        }
    }

    async fn complete(&mut self) -> Result<(), SandboxError> {
        if self.buffer.content_length() > 0 {
            self.send_part().await?;
        }
        while !self.parts.is_empty() {
            self.join_part().await?;
        }
        self.upload.complete().await.map_err(store_err)?;
        Ok(())
    }

    /// Sends what is left, waits for every part and completes the upload; aborts it on failure.
    pub async fn finish(mut self) -> Result<(), SandboxError> {
        let done = self.complete().await;
        if done.is_err() {
            self.abort().await;
        }
        done
    }

    /// Stops the parts in flight and aborts the upload (see [`Upload`]).
    pub async fn abort(mut self) {
        self.parts.shutdown().await;
        let (id, within) = (self.id.as_str(), self.store.abort_within);
        match tokio::time::timeout(within, self.upload.abort()).await {
            Ok(Ok(())) => tracing::info!(sandbox_id = %id, "archive upload aborted"),
            Ok(Err(e)) => tracing::warn!(sandbox_id = %id, error = %e, "cannot abort the archive upload"),
            Err(_) => tracing::warn!(sandbox_id = %id, secs = within.as_secs_f64(),
                "the abort of the archive upload did not end in time; the bucket's lifecycle rule expires it"),
        }
    }
}

/// Timeouts and retries of an S3 store (see the module doc); each field is the URL option of the same name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct S3Tuning {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_retries: usize,
    pub retry_timeout: Duration,
    pub init_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_base: f64,
}

impl Default for S3Tuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            backoff_base: 3.0,
        }
    }
}

/// `500ms`, `1.5s`, `2m` or a bare number of seconds; more than zero.
fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60.0)
    } else {
        (value, 1.0)
    };
    let n: f64 = number.trim().parse().ok()?;
    // At most a day: more is a typo, and Duration::from_secs_f64 panics past its range.
    let secs = n * scale;
    (secs.is_finite() && secs > 0.0 && secs <= 86_400.0).then(|| Duration::from_secs_f64(secs))
}

impl S3Tuning {
    /// Takes `key=value` when `key` is one of ours: `Ok(false)` when it is not (an object_store option).
    fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let duration = || {
            parse_duration(value)
                .ok_or_else(|| format!("option {key}={value:?} is not a duration above zero (write 500ms, 30s or 2m)"))
        };
        match key {
            "connect_timeout" => self.connect_timeout = duration()?,
            "timeout" => self.timeout = duration()?,
            "retry_timeout" => self.retry_timeout = duration()?,
            "init_backoff" => self.init_backoff = duration()?,
            "max_backoff" => self.max_backoff = duration()?,
            "max_retries" => {
                self.max_retries = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("option max_retries={value:?} is not a whole number (0: no retries)"))?;
            }
            "backoff_base" => {
                // object_store draws each wait from `init_backoff..base * previous`: a base of 1 or less makes
                // that range empty, which would panic in the retry loop.
                self.backoff_base = value
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|b| b.is_finite() && *b > 1.0 && *b <= 100.0)
                    .ok_or_else(|| format!("option backoff_base={value:?} is not a number above 1 (2 doubles)"))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self) -> Result<(), String> {
        if self.init_backoff > self.max_backoff {
            return Err(format!(
                "option init_backoff ({:?}) is longer than max_backoff ({:?})",
                self.init_backoff, self.max_backoff
            ));
        }
        Ok(())
    }

    fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.init_backoff,
                max_backoff: self.max_backoff,
                base: self.backoff_base,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// object_store's client options take durations as humantime strings.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl ArchiveStore {
    /// The store a runner with `config` uses: `archive_store` when set (`s3://bucket/prefix`, `file:///path` or a
    /// path), else `<state_dir>/archives`, else none.
    pub(crate) fn from_config(config: &RunnerConfig) -> Result<Option<Self>, String> {
        match (&config.archive_store, &config.state_dir) {
            (Some(spec), _) => Self::open(spec.trim()).map(Some),
            (None, Some(dir)) => Self::local(&dir.join("archives")).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// `s3://bucket/prefix[?option=value&...]`: options are the timeouts and retries of [`S3Tuning`] and
    /// object_store's S3 keys (`endpoint`, `region`, `allow_http`, ...), taken literally, over the `AWS_*`
    /// environment.
    pub(crate) fn open(spec: &str) -> Result<Self, String> {
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
            // Never logged with its options: they may hold credentials.
            let location = format!("s3://{rest}");
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("archive store {location:?}: no bucket"));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let mut tuning = S3Tuning::default();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if tuning.set(key, value).map_err(|e| format!("archive store {location:?}: {e}"))? {
                    continue;
                }
                let key = key
                    .parse::<AmazonS3ConfigKey>()
                    .map_err(|_| format!("archive store {location:?}: unknown S3 option {key:?}"))?;
                builder = builder.with_config(key, value);
            }
            tuning.validate().map_err(|e| format!("archive store {location:?}: {e}"))?;
            builder = builder
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), millis(tuning.connect_timeout))
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), millis(tuning.timeout))
                .with_retry(tuning.retry());
            let s3 = builder.build().map_err(|e| format!("archive store {location:?}: {e}"))?;
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> =
                if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) };
            return Ok(Self { store, location, local_dir: None, abort_within: tuning.timeout });
        }
        if let Some(path) = spec.strip_prefix("file://") {
            return Self::local(std::path::Path::new(path));
        }
        if spec.contains("://") {
            return Err(format!("archive store {spec:?}: use s3://bucket/prefix, file:///path or a path"));
        }
        Self::local(std::path::Path::new(spec))
    }

    fn local(dir: &std::path::Path) -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt;
        // Archives are whole sandbox filesystems: only the runner's user may read them.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("archive store {}: {e}", dir.display()))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| format!("archive store {}: {e}", dir.display()))?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(fs),
            location: dir.display().to_string(),
            local_dir: Some(dir.to_path_buf()),
            abort_within: Duration::from_secs(60),
        })
    }

    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    /// The manifest of a complete archive of `id`, if there is one.
    pub(super) async fn manifest(&self, id: &str) -> Result<Option<ArchiveManifest>, SandboxError> {
        let got = match self.store.get(&manifest_path(id)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        let bytes = got.bytes().await.map_err(store_err)?;
        let m: ArchiveManifest = serde_json::from_slice(&bytes)
            .map_err(|e| SandboxError::Archive(format!("manifest of sandbox {id} is unreadable: {e}")))?;
        // Version 1 is a full export, as version 2's `rootfs` kind.
        if !(1..=MANIFEST_VERSION).contains(&m.version) || m.sandbox_id != id {
            return Err(SandboxError::Archive(format!(
                "manifest of sandbox {id} is version {} for sandbox {:?}; this runner reads version \
                 {MANIFEST_VERSION}",
                m.version, m.sandbox_id
            )));
        }
        Ok(Some(m))
    }

    pub(super) async fn put_manifest(&self, m: &ArchiveManifest) -> Result<(), SandboxError> {
        let json = serde_json::to_vec_pretty(m).map_err(|e| SandboxError::Internal(e.to_string()))?;
        self.store.put(&manifest_path(&m.sandbox_id), PutPayload::from(json)).await.map_err(store_err)?;
        Ok(())
    }

    /// Removes the manifest of an archive of `id` that is out of date: one a restore could not delete (the store
    /// failed then) while the sandbox ran again. Done before a new upload replaces its tarball, so that an upload
    /// that fails half way never sits under an old manifest that calls it complete.
    /// Looked for first (a read, retried on a timeout too), so that the usual archive, which has none, makes no
    /// delete (not retried on a timeout, see the module doc).
    pub(super) async fn remove_stale_manifest(&self, id: &str) -> Result<(), SandboxError> {
        match self.store.get(&manifest_path(id)).await {
            Ok(got) => drop(got.bytes().await.map_err(store_err)?),
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(store_err(e)),
        }
        tracing::info!(sandbox_id = %id, "removing the manifest of an out-of-date archive before uploading anew");
        match self.store.delete(&manifest_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// A multipart upload of `id`'s tarball.
    pub(super) async fn upload(&self, id: &str, kind: ArchiveKind) -> Result<Upload<'_>, SandboxError> {
        let upload = self.store.put_multipart(&tar_path(id, kind)).await.map_err(store_err)?;
        Ok(Upload { store: self, id: id.to_owned(), upload, buffer: PutPayloadMut::new(), parts: JoinSet::new() })
    }

    /// The tarball of `id`'s archive as a stream of `size` bytes (the manifest's), and where the store's own error
    /// goes when the stream fails (a reader like Docker's import sees only that its body broke).
    pub(super) async fn read_tar(&self, id: &str, kind: ArchiveKind, size: u64) -> Result<TarBody, SandboxError> {
        let path = tar_path(id, kind);
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        if self.local_dir.is_some() {
            let got = self.store.get(&path).await.map_err(store_err)?;
            check_size(id, got.meta.size, size)?;
            let stream = match got.payload {
                // Read in large blocks (object_store's own stream reads 8 KiB at a time).
                GetResultPayload::File(file, _) => {
                    tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20).boxed()
                }
                GetResultPayload::Stream(s) => s.map_err(std::io::Error::other).boxed(),
            };
            return Ok(TarBody { stream, failure });
        }
        let store = self.store.clone();
        let id = id.to_owned();
        let noted = failure.clone();
        let stream = futures_util::stream::iter((0..size).step_by(RANGE_SIZE as usize))
            .map(move |start| {
                let (store, path, id) = (store.clone(), path.clone(), id.clone());
                async move {
                    let range = GetRange::Bounded(start..size.min(start + RANGE_SIZE));
                    let got = store
                        .get_opts(&path, GetOptions { range: Some(range), ..Default::default() })
                        .await
                        .map_err(store_err)?;
                    check_size(&id, got.meta.size, size)?;
                    got.bytes().await.map_err(store_err)
                }
            })
            .buffered(RANGES_IN_FLIGHT)
            .map_err(move |e: SandboxError| {
                lock(&noted).get_or_insert_with(|| e.to_string());
                std::io::Error::other(e.to_string())
            })
            .boxed();
        Ok(TarBody { stream, failure })
    }

    /// Removes what uploads of `id`'s archive left when the runner died during them (no abort ran). A local store
    /// stages an upload as `rootfs.tar#N` beside its object: each is a whole filesystem's worth of bytes, which
    /// nothing else would ever remove. On S3 an interrupted multipart upload is the bucket's to expire (an
    /// `AbortIncompleteMultipartUpload` lifecycle rule; object_store cannot list them). Called before an archive
    /// starts and when its objects are deleted; no upload of `id` runs then (the sandbox's operation lock).
    pub(super) async fn clear_staged(&self, id: &str) {
        let Some(dir) = &self.local_dir else { return };
        let dir = dir.join(id);
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().contains('#') {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => tracing::info!(sandbox_id = %id, file = ?name, "removed an interrupted archive upload"),
                    Err(err) => {
                        tracing::warn!(sandbox_id = %id, file = ?name, error = %err, "cannot remove an interrupted archive upload")
                    }
                }
            }
        }
    }

    /// Deletes every object of `id`'s archive, manifest first (so a half-deleted archive never looks complete).
    /// True when there was something to delete.
    pub(super) async fn remove(&self, id: &str) -> Result<bool, SandboxError> {
        let mut found = false;
        let mut paths = vec![manifest_path(id), tar_path(id, ArchiveKind::Rootfs), tar_path(id, ArchiveKind::Layer)];
        let prefix = ObjectPath::from(id);
        let listed: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(store_err)?;
        let listed = listed.into_iter().map(|m| m.location).filter(|p| !paths.contains(p)).collect::<Vec<_>>();
        paths.extend(listed);
        for path in paths {
            match self.store.delete(&path).await {
                Ok(()) => found = true,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        self.clear_staged(id).await;
        Ok(found)
    }
}

fn check_size(id: &str, actual: u64, manifest: u64) -> Result<(), SandboxError> {
    if actual == manifest {
        return Ok(());
    }
    Err(SandboxError::Archive(format!(
        "the archive of sandbox {id} is {actual} bytes but its manifest says {manifest}"
    )))
}

/// A tarball being read from the store.
pub(super) struct TarBody {
    pub stream: BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    /// The store's error when the stream failed.
    pub failure: Arc<Mutex<Option<String>>>,
}

impl TarBody {
    /// The store's error, if reading failed.
    pub fn failed(failure: &Mutex<Option<String>>) -> Option<SandboxError> {
        lock(failure).clone().map(SandboxError::Archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "0", "0s", "-1s", "abc", "5h", "NaNs", "inf", "1e30"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn s3_tuning_from_the_url() {
        let s3 = ArchiveStore::open(
            "s3://b/p?region=eu-west-1&timeout=2s&connect_timeout=500ms&max_retries=3&retry_timeout=9s\
             &init_backoff=50ms&max_backoff=1s&backoff_base=3",
        )
        .unwrap();
        assert_eq!(s3.location(), "s3://b/p");
        assert_eq!(s3.abort_within, Duration::from_secs(2));

        let mut t = S3Tuning::default();
        for (k, v) in [("timeout", "2s"), ("max_retries", "0"), ("backoff_base", "1.5")] {
            assert_eq!(t.set(k, v), Ok(true));
        }
        assert_eq!((t.timeout, t.max_retries, t.backoff_base), (Duration::from_secs(2), 0, 1.5));
        assert_eq!(t.set("region", "x"), Ok(false), "object_store's own keys pass through");

        // Each bad value is refused with the option's name, and never with the URL's secrets.
        for (query, option) in [
            ("timeout=abc", "timeout="),
            ("timeout=0", "timeout="),
            ("connect_timeout=-1s", "connect_timeout="),
            ("retry_timeout=", "retry_timeout="),
            ("max_retries=-1", "max_retries="),
            ("max_retries=lots", "max_retries="),
            ("backoff_base=1", "backoff_base="),
            ("backoff_base=0.5", "backoff_base="),
            ("init_backoff=0ms", "init_backoff="),
            ("init_backoff=2s&max_backoff=1s", "init_backoff (2s) is longer than max_backoff (1s)"),
        ] {
            let err = ArchiveStore::open(&format!("s3://b/p?secret_access_key=hidden&{query}")).unwrap_err();
            assert!(err.contains(option) && err.starts_with("archive store \"s3://b/p\""), "{query}: {err}");
            assert!(!err.contains("hidden"), "{err}");
        }
    }

    #[test]
    fn store_specs() {
        let dir = tempfile::tempdir().unwrap();
        let local = ArchiveStore::open(&dir.path().join("a").display().to_string()).unwrap();
        assert!(local.location().ends_with("/a"));
        assert!(dir.path().join("a").is_dir());
        let url = format!("file://{}", dir.path().join("b").display());
        assert!(ArchiveStore::open(&url).is_ok());
        assert!(ArchiveStore::open("ftp://x/y").is_err());
        assert!(ArchiveStore::open("s3:///prefix").is_err());
        let err = ArchiveStore::open("s3://b/p?nonsense=1&secret_access_key=hidden").unwrap_err();
        assert!(err.contains("nonsense") && !err.contains("hidden"), "{err}");
        let s3 = ArchiveStore::open("s3://b/p/?region=eu-west-1&secret_access_key=hidden&access_key_id=k").unwrap();
        assert_eq!(s3.location(), "s3://b/p/");
        assert_eq!(s3.abort_within, S3Tuning::default().timeout);
    }

    #[tokio::test]
    async fn local_store_round_trip_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::open(&dir.path().display().to_string()).unwrap();
        assert_eq!(store.manifest("s1").await.unwrap(), None);
        let m = ArchiveManifest {
            version: MANIFEST_VERSION,
            sandbox_id: "s1".into(),
            organization_id: "o".into(),
            runner_id: "r".into(),
            source_image: "img".into(),
            argv: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: None,
            user: Some("sandbar".into()),
            kind: ArchiveKind::Rootfs,
            base_image_id: None,
            size: 3,
            sha256: "x".into(),
            archived_at: 1,
        };
        store.store.put(&tar_path("s1", ArchiveKind::Rootfs), PutPayload::from_static(b"abc")).await.unwrap();
        store.put_manifest(&m).await.unwrap();
        assert_eq!(store.manifest("s1").await.unwrap(), Some(m));
        assert!(store.manifest("s2").await.unwrap().is_none());
        let body = store.read_tar("s1", ArchiveKind::Rootfs, 3).await.unwrap();
        let read: Vec<bytes::Bytes> = body.stream.try_collect().await.unwrap();
        assert_eq!(read.concat(), b"abc");
        let err = store.read_tar("s1", ArchiveKind::Rootfs, 4).await.err().unwrap();
        assert!(err.to_string().contains("is 3 bytes but its manifest says 4"), "{err}");

        // A stale manifest goes (and its absence is no error); the tarball stays for the upload to replace.
        store.remove_stale_manifest("s1").await.unwrap();
        store.remove_stale_manifest("s1").await.unwrap();
        assert!(store.manifest("s1").await.unwrap().is_none());
        assert!(store.remove("s1").await.unwrap());
        assert!(!store.remove("s1").await.unwrap());
        assert!(!dir.path().join("s1").exists(), "empty directories are cleaned up");
    }
}
