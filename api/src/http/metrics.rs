//! `GET /metrics` (Prometheus text, `crate::metrics`) beside `/api`, and [`track`], the layer that counts and times
//! every request by its matched route template.
//!
//! Who may read it: only a caller presenting `Authorization: Bearer <--metrics-token>` (the operator's scraper).
//! Without a configured token the endpoint is off (403 with the reason); an organization's API key, a runner's or
//! the proxy's service token are refused (401). The proxy never forwards it (only `/api/...` and the dashboard
//! reach the API through the edge).

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::App;
use crate::store;

use super::error::{ApiError, ApiResult};

pub fn routes() -> Router<App> {
    Router::new().route("/metrics", get(metrics))
}

/// Counts and times a request under its matched route template (`unmatched` when no route took it), so ids and
/// probes of random paths never make new series.
pub async fn track(State(app): State<App>, path: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // A client may send any token as a method: only the standard ones become label values, so series stay bounded.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    let resp = next.run(req).await;
    let route = path.as_ref().map_or("unmatched", MatchedPath::as_str);
    app.metrics.request(method, route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> ApiResult<Response> {
    let Some(expected) = app.config.metrics_token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(ApiError::forbidden("metrics are off: start the API with --metrics-token to serve them"));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, t)| t.trim());
    if !sandbar_support::ct_eq(presented.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::unauthorized("metrics need the metrics token (Authorization: Bearer ...)"));
    }
    let sandboxes = store::sandboxes::count_by_state(&app.db.pool).await?;
    let queued = store::jobs::count_pending_by_kind(&app.db.pool).await?;
    app.metrics.set_counts(&sandboxes, &queued);
    let text = app.metrics.encode().map_err(|e| ApiError::internal("encoding metrics", e))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}
