//! Jobs: what the runner does for each [`JobKind`] the control plane sends. [`run`] holds the one dispatch over
//! the kinds (exhaustive: a new kind does not compile until it has its file here); each kind's file says what it
//! does and calls the host layer ([`crate::host`]), which does the Docker work.
//!
//! A job's result is what its kind answers on success (the sandbox's new picture, a snapshot's image) or its error
//! code and message. Jobs the control plane delivers again after a runner restart are idempotent: a create of a
//! sandbox that runs answers with it, a destroy of one that is gone succeeds, and archive, restore, fork and snapshot
//! recognise their own earlier work (see the host layer).
//!
//! Adding a job kind: a variant in `sandbar_proto::runner::JobKind`, the API's side in `api/src/jobs/`, and a file
//! here with its `run`; the compiler lists the rest.

mod archive;
mod build;
mod create;
mod destroy;
mod fork;
mod network;
mod pause;
mod ping;
mod pull;
mod remove_snapshot;
mod remove_volume;
mod resize;
mod restore;
mod resume;
mod snapshot;
mod start;
mod stop;

use sandbar_proto::runner::{
    Job, JobErrorCode, JobKind, JobOutcome, JobResult, RegistryAuth, SandboxInfo, SnapshotImage,
};

use sandbar_support::otlp::{Kind, Span};

use crate::control::ControlPlane;
use crate::error::{SandboxError, SnapshotError};
use crate::host::Runner;

/// What a job runs with.
pub(crate) struct JobCtx<'a> {
    runner: &'a Runner,
    /// The control plane the job came from: build output streams to it, and a job it delivers again (a create that
    /// is done, a destroy of a sandbox that is gone) succeeds. `None`: a job handed in directly (tests, tools), whose
    /// build output goes to the log only.
    cp: Option<&'a ControlPlane>,
    job_id: &'a str,
}

impl JobCtx<'_> {
    /// The organization's credentials for the registries this job pulls from, asked for now (not carried in the
    /// job). A job handed in directly pulls anonymously.
    async fn registry_auth(&self) -> Result<Vec<RegistryAuth>, Failed> {
        let Some(cp) = self.cp else { return Ok(Vec::new()) };
        cp.registry_auth(self.runner.runner_id(), self.job_id).await.map_err(|e| Failed {
            code: JobErrorCode::PullFailed,
            message: format!("the control plane did not hand out the registry credentials for this pull: {e}"),
        })
    }
}

/// What a job that succeeded answers with.
#[derive(Debug, Default)]
pub(crate) struct Done {
    sandbox: Option<SandboxInfo>,
    snapshot: Option<SnapshotImage>,
}

impl Done {
    fn sandbox(info: SandboxInfo) -> Self {
        Self { sandbox: Some(info), snapshot: None }
    }
}

/// Why a job failed, as the control plane is told.
#[derive(Debug)]
pub(crate) struct Failed {
    code: JobErrorCode,
    message: String,
}

impl From<SandboxError> for Failed {
    fn from(e: SandboxError) -> Self {
        Self { code: e.code(), message: e.to_string() }
    }
}

impl From<crate::error::PullError> for Failed {
    fn from(e: crate::error::PullError) -> Self {
        Self { code: e.code(), message: e.to_string() }
    }
}

impl From<SnapshotError> for Failed {
    fn from(e: SnapshotError) -> Self {
        Self { code: e.code(), message: e.to_string() }
    }
}

/// Carries out one job. `cp` is the control plane it came from, if any (see `JobCtx`).
pub async fn run(runner: &Runner, cp: Option<&ControlPlane>, job: Job) -> JobResult {
    let Job { id, kind, traceparent } = job;
    let tag = kind.tag();
    // The job's span continues the trace of the request that queued it (a new trace without one).
    let parent = traceparent.as_deref().and_then(sandbar_support::trace::TraceParent::parse);
    tracing::debug!(job_id = %id, kind = tag, traceparent = traceparent.as_deref().unwrap_or(""), "job");
    let mut span = Span::start(format!("job {tag}"), Kind::Consumer, parent.as_ref());
    if let Some(span) = &mut span {
        span.attr("sandbar.job_id", &id);
        span.attr("sandbar.sandbox_id", kind.sandbox_id());
    }
    let context = span.as_ref().map(|s| s.context().clone());
    let done = crate::trace::scope(context, dispatch(runner, cp, &id, kind)).await;
    let outcome = match done {
        Ok(Done { sandbox, snapshot }) => JobOutcome::Succeeded { sandbox: sandbox.map(Box::new), snapshot },
        Err(Failed { code, message }) => {
            tracing::warn!(job_id = %id, kind = tag, error = %message, "job failed");
            if let Some(span) = &mut span {
                span.fail(&message);
            }
            JobOutcome::Failed { code, message }
        }
    };
    JobResult { job_id: id, outcome }
}

/// The one dispatch over the kinds.
async fn dispatch(runner: &Runner, cp: Option<&ControlPlane>, id: &str, kind: JobKind) -> Result<Done, Failed> {
    let ctx = JobCtx { runner, cp, job_id: id };
    match kind {
        JobKind::CreateSandbox(req) => create::run(&ctx, req).await,
        JobKind::StartSandbox { sandbox_id } => start::run(&ctx, &sandbox_id).await,
        JobKind::StopSandbox(req) => stop::run(&ctx, req).await,
        JobKind::DestroySandbox { sandbox_id } => destroy::run(&ctx, &sandbox_id).await,
        JobKind::ResizeSandbox(req) => resize::run(&ctx, req).await,
        JobKind::UpdateSandboxNetwork(req) => network::run(&ctx, req).await,
        JobKind::ArchiveSandbox { sandbox_id } => archive::run(&ctx, &sandbox_id).await,
        JobKind::RestoreSandbox(spec) => restore::run(&ctx, spec).await,
        JobKind::BuildSnapshot(req) => build::run(&ctx, req).await,
        JobKind::ForkSandbox(req) => fork::run(&ctx, req).await,
        JobKind::SnapshotSandbox(req) => snapshot::run(&ctx, req).await,
        JobKind::RemoveSnapshot(req) => remove_snapshot::run(&ctx, req).await,
        JobKind::PauseSandbox { sandbox_id } => pause::run(&ctx, &sandbox_id).await,
        JobKind::ResumeSandbox { sandbox_id } => resume::run(&ctx, &sandbox_id).await,
        JobKind::PingSandbox { sandbox_id } => ping::run(&ctx, &sandbox_id).await,
        JobKind::RemoveVolume(req) => remove_volume::run(&ctx, req).await,
        JobKind::PullImage(req) => pull::run(&ctx, req).await,
    }
}
