//! `BUILD_SNAPSHOT`: the registry images the Dockerfile names pulled (progress in the log), then a Dockerfile build through [`Runner::build_snapshot`] whose output goes to the control plane
//! line by line while it runs (`POST /runners/{id}/jobs/{jobId}/log`), so users can follow it. A job handed in
//! without a control plane logs the output through tracing only.
//!
//! Log lines are batched (whatever arrived while the previous batch was being sent, at most [`MAX_BATCH`] lines)
//! and sent one batch at a time, in order; a failed send is retried with the same batch, which the API recognises
//! by `(attempt, offset)`, so nothing is stored twice. The log is bounded: lines are cut at
//! [`MAX_BUILD_LOG_LINE`] bytes and the whole at [`MAX_BUILD_LOG_BYTES`]. The job's result is reported only after
//! every line was delivered (or delivery gave up), so a follower that sees the build end has seen all of it. A
//! successful result carries the image's id and size.

use std::time::Duration;

use sandbar_proto::api::{BuildLog, MAX_BUILD_LOG_BYTES, MAX_BUILD_LOG_LINE};
use sandbar_proto::runner::{BuildSnapshot, RegistryAuth, SnapshotImage};
use sandbar_support::backoff::Backoff;
use tokio::sync::mpsc;

use super::{Done, Failed, JobCtx};
use crate::control::{ControlPlane, ControlPlaneError};
use crate::error::SnapshotError;
use crate::host::Runner;
use crate::host::image::ImageInfo;

/// Lines per log request at most.
const MAX_BATCH: usize = 500;
/// A build that runs longer than this is abandoned (dropping the build stream makes Docker cancel it).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long the result waits for the last log lines to reach an unreachable control plane.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Between retries of a batch of log lines: 400 ms doubling to 3.2 s, with jitter.
const LOG_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_millis(3200));

/// Cuts build output to the log's bounds: long lines are shortened, and after [`MAX_BUILD_LOG_BYTES`] one note
/// replaces the rest.
struct LogBound {
    bytes: u64,
    truncated: bool,
}

impl LogBound {
    fn new() -> Self {
        Self { bytes: 0, truncated: false }
    }

    fn admit(&mut self, line: &str) -> Option<String> {
        if self.truncated {
            return None;
        }
        let mut cut = line.len().min(MAX_BUILD_LOG_LINE);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let line = line.get(..cut).unwrap_or_default();
        self.bytes += line.len() as u64 + 1;
        if self.bytes > MAX_BUILD_LOG_BYTES {
            self.truncated = true;
            return Some(format!(
                "[sandbar: the build log exceeded {MAX_BUILD_LOG_BYTES} bytes; the rest is not kept]"
            ));
        }
        Some(line.to_owned())
    }
}

pub(super) async fn run(ctx: &JobCtx<'_>, req: BuildSnapshot) -> Result<Done, Failed> {
    let auth = if req.pull.is_empty() { Vec::new() } else { ctx.registry_auth().await? };
    let built = match ctx.cp {
        Some(cp) => streamed(ctx.runner, cp, ctx.job_id, &req, &auth).await,
        None => logged(ctx.runner, &req).await,
    };
    // The image's size goes back with the result: the control plane counts it against the organization's quota.
    let img = built.map_err(Failed::from)?;
    // Pushed to the internal registry when there is one, so sandboxes of it may go to any runner.
    let (pushed, push_error) = super::snapshot::pushed(ctx, &img.reference, Some(&req.build_id)).await;
    let snapshot = SnapshotImage { image: img.reference, image_id: img.id, size: img.size, pushed, push_error };
    Ok(Done { sandbox: None, snapshot: Some(snapshot) })
}

/// The registry images' pulls (their progress in the log), then the build; abandoned after [`BUILD_TIMEOUT`].
async fn timed(
    runner: &Runner,
    req: &BuildSnapshot,
    auth: &[RegistryAuth],
    mut on_log: impl FnMut(&str) + Send,
) -> Result<ImageInfo, SnapshotError> {
    let work = async move {
        for image in &req.pull {
            runner.pull_image(image, auth, &mut on_log).await?;
        }
        let network = req.network.as_ref().map(|p| (req.build_id.as_str(), p));
        runner.build_snapshot(&req.image, &req.dockerfile, network, on_log).await
    };
    match tokio::time::timeout(BUILD_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(SnapshotError::BuildFailed(format!("the build ran longer than {} s", BUILD_TIMEOUT.as_secs()))),
    }
}

/// Builds with the output logged through tracing only.
async fn logged(runner: &Runner, req: &BuildSnapshot) -> Result<ImageInfo, SnapshotError> {
    let build_id = req.build_id.clone();
    timed(runner, req, &[], move |line| tracing::debug!(build_id = %build_id, line, "build output")).await
}

/// Builds with the output streamed to the control plane; returns once every line was delivered (or delivery gave
/// up).
async fn streamed(
    runner: &Runner,
    cp: &ControlPlane,
    job_id: &str,
    req: &BuildSnapshot,
    auth: &[RegistryAuth],
) -> Result<ImageInfo, SnapshotError> {
    let attempt = sandbar_support::token::hex(8).map_err(|e| SnapshotError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let shipper = tokio::spawn(ship(cp.clone(), runner.runner_id().to_owned(), job_id.to_owned(), attempt, rx));
    let mut bound = LogBound::new();
    let started = std::time::Instant::now();
    let built = {
        let tx = tx.clone();
        timed(runner, req, auth, move |line| {
            if let Some(line) = bound.admit(line) {
                let _ = tx.send(line);
            }
        })
        .await
    };
    // The reason ends the log too (a missing base image fails before Docker prints anything); its first line
    // only, the rest of a failed build's message is the log's own tail.
    if let Err(e) = &built {
        let _ = tx.send(format!("sandbar: {}", e.to_string().lines().next().unwrap_or_default()));
    }
    drop(tx);
    tracing::info!(job_id, build_id = %req.build_id, image = %req.image, ok = built.is_ok(),
        secs = started.elapsed().as_secs_f64(), "build finished");
    match tokio::time::timeout(LOG_DRAIN_TIMEOUT, shipper).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(job_id, error = %e, "build log shipper failed"),
        Err(_) => tracing::warn!(job_id, "build log lines not delivered in time; reporting the result anyway"),
    }
    built
}

/// Sends the lines of `rx` in order, batched, each batch retried until the API has it (or refuses it).
async fn ship(
    cp: ControlPlane,
    runner_id: String,
    job_id: String,
    attempt: String,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let mut offset = 0u64;
    while let Some(first) = rx.recv().await {
        let mut lines = vec![first];
        while lines.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        let batch = BuildLog { attempt: attempt.clone(), offset, lines };
        let mut tries = 0u32;
        loop {
            match cp.build_log(&runner_id, &job_id, &batch).await {
                Ok(()) => break,
                Err(ControlPlaneError::Status { status, message }) if (400..500).contains(&status) => {
                    tracing::warn!(job_id = %job_id, status, %message, "control plane refused build log lines");
                    break;
                }
                Err(e) => {
                    tries += 1;
                    tracing::warn!(job_id = %job_id, error = %e, "sending build log lines failed; retrying");
                    tokio::time::sleep(LOG_BACKOFF.delay(tries)).await;
                }
            }
        }
        offset += batch.lines.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbar_proto::runner::JobErrorCode;

    #[test]
    fn log_bound_cuts_lines_and_the_whole() {
        let mut b = LogBound::new();
        let long = "é".repeat(MAX_BUILD_LOG_LINE);
        let cut = b.admit(&long).unwrap();
        assert!(cut.len() <= MAX_BUILD_LOG_LINE && cut.chars().all(|c| c == 'é'));
        let line = "x".repeat(MAX_BUILD_LOG_LINE);
        let mut n = 0;
        while let Some(l) = b.admit(&line) {
            n += 1;
            if l.starts_with("[sandbar") {
                break;
            }
        }
        assert!(n as u64 * MAX_BUILD_LOG_LINE as u64 <= MAX_BUILD_LOG_BYTES + MAX_BUILD_LOG_LINE as u64 * 2);
        assert_eq!(b.admit("more"), None);
    }

    #[test]
    fn failed_builds_map_to_codes() {
        let r = Failed::from(SnapshotError::BaseImageNotFound("x:1".into()));
        assert!(matches!(r, Failed { code: JobErrorCode::ImageNotFound, ref message }
            if message.contains("x:1") && message.contains("registry")));
        let r = Failed::from(SnapshotError::BuildFailed("exit 3".into()));
        assert!(matches!(r, Failed { code: JobErrorCode::BuildFailed, .. }));
    }
}
