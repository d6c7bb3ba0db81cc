//! `POST /trace/spans`: the spans this daemon kept (`--trace-spans`, set by a runner that exports spans), encoded
//! as an OTLP `ExportTraceServiceRequest` (`application/x-protobuf`, `sandbar_support::otlp`), and the buffer
//! emptied; 204 when there are none. A sandbox reaches no collector, so its runner collects these after a create
//! or a warm-pool claim and forwards them. Who may reach it: like every toolbox route but `GET /version`, only a
//! caller holding the daemon credential (the runner, or the proxy); anyone else gets 401.
//!
//! The spans: `daemon start` (process start to listeners bound) and `entrypoint` (the runner's release to the
//! spawn), both children of `SANDBAR_TRACEPARENT` (the create job's span), and one server span per request that
//! carries a `traceparent` (`super::authenticate`). A collection made right after the runner released the
//! entrypoint waits (up to 2 s) for the spawn, so the create's trace has it.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::AppState;

/// Set while the entrypoint is held for the runner's release: `true` once it is spawned (or failed to).
static SPAWNED: OnceLock<tokio::sync::watch::Sender<bool>> = OnceLock::new();

pub fn routes() -> Router<AppState> {
    Router::new().route("/trace/spans", post(spans))
}

/// Called by `main` before serving when the entrypoint waits for the runner's release.
pub fn entrypoint_held() {
    let _ = SPAWNED.set(tokio::sync::watch::channel(false).0);
}

/// Called once the released entrypoint was spawned (or could not be).
pub fn entrypoint_spawned() {
    if let Some(tx) = SPAWNED.get() {
        tx.send_replace(true);
    }
}

async fn spans() -> Response {
    if let Some(tx) = SPAWNED.get() {
        let mut rx = tx.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|spawned| *spawned)).await;
    }
    match sandbar_support::otlp::take_buffered() {
        Some(encoded) => ([(header::CONTENT_TYPE, "application/x-protobuf")], encoded).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}
