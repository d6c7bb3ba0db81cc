//! The trace a job belongs to: [`crate::jobs::run`] opens the job's span as a child of the `traceparent` the API
//! stored with the job, and runs the job inside [`scope`], so the Docker calls below it (`crate::host`) record
//! child spans and the daemon calls carry `traceparent` without every function passing it along. The runner's
//! detached operations (`host::run_detached`) carry the context into their task.
//!
//! The daemon cannot reach a collector (a sandbox reaches no host address), so when spans are exported the runner
//! starts each daemon with `SANDBAR_TRACE_SPANS=1` and the job's context in `SANDBAR_TRACEPARENT`, and after a
//! create (or a warm-pool claim) collects the daemon's finished spans (`POST /trace/spans`, signed like every
//! daemon call) and forwards them, encoded as the daemon sent them, to the collector ([`forward_daemon_spans`]).

use sandbar_support::otlp::{self, Kind, Span};
use sandbar_support::trace::TraceParent;

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// Runs `f` with `parent` (if any) as the current trace context.
pub async fn scope<F: Future>(parent: Option<TraceParent>, f: F) -> F::Output {
    match parent {
        Some(p) => CURRENT.scope(p, f).await,
        None => f.await,
    }
}

/// The current trace context, inside a job.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A child span of the current context (a Docker call is a client span); `None` outside a job.
pub fn child(name: &str, kind: Kind) -> Option<Span> {
    Span::start(name, kind, Some(&current()?))
}

/// Whether daemons should keep spans for the runner to collect (this runner exports spans).
pub fn daemons_record() -> bool {
    otlp::enabled()
}

/// Passes a daemon's encoded spans on to the collector; logs what could not go.
pub fn forward_daemon_spans(sandbox_id: &str, encoded: Vec<u8>) {
    let bytes = encoded.len();
    if otlp::forward(encoded) {
        tracing::debug!(sandbox_id, bytes, "forwarded the daemon's spans");
    } else {
        tracing::debug!(sandbox_id, bytes, "the daemon's spans were not forwarded (too large or queue full)");
    }
}
