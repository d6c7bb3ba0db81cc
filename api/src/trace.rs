//! The trace a request belongs to, for the code it runs: the access layer ([`crate::http::access_log`]) opens the
//! request's server span and runs the handler inside [`scope`] with that span as the current parent, so the
//! `authorize` span of the API-key check and the jobs the request queues (`crate::store::jobs`, which stores the
//! `traceparent` with each job for the runner to continue) join the caller's trace without every function passing
//! it along. Spans are exported only with `otlp_endpoint` set (`sandbar_support::otlp`).

use sandbar_support::otlp::{Kind, Span};
use sandbar_support::trace::TraceParent;

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// Runs `f` with `parent` as the current trace context.
pub async fn scope<F: Future>(parent: TraceParent, f: F) -> F::Output {
    CURRENT.scope(parent, f).await
}

/// The current trace context, if the code runs for a request.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A child span of the current context named `name`; `None` outside a request.
pub fn child(name: &str) -> Option<Span> {
    Span::start(name, Kind::Internal, Some(&current()?))
}
