//! The HTTP transport: the router under `/api`, one module per resource (Daytona's sandbox, preview/SSH access,
//! fork/snapshot/pause, snapshots, builds, volumes and registry credentials, a sandbox's usage, API keys; the runners'
//! and the proxy's internal surfaces), the extractors that authenticate ([`auth`]), how errors answer ([`error`]) and
//! the OpenAPI document ([`openapi`]); beside it, `/healthz` and `/readyz` ([`health`]), `/metrics` and the layer
//! that counts every request ([`metrics`]), and the web dashboard at `/dashboard/` ([`dashboard`]). Handlers are
//! thin: they parse and check a request, call `crate::domain` or `crate::jobs`, and shape the answer. No SQL here.
//! Every request gets an id and one access line ([`access_log`]).

pub mod access_log;
pub mod admin;
pub mod api_keys;
pub mod auth;
pub mod builds;
pub mod dashboard;
pub mod dto;
pub mod error;
pub mod fork;
pub mod health;
pub mod internal;
pub mod metrics;
pub mod network;
pub mod openapi;
pub mod organizations;
pub mod preview;
pub mod registries;
pub mod runners;
pub mod sandbox;
pub mod sandbox_list;
pub mod snapshots;
pub mod usage;
pub mod volumes;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

use crate::App;
use error::ApiError;

/// Every endpoint, under `/api`; unknown paths and methods answer Daytona's error body too.
pub fn router(app: &App) -> Router {
    let api = Router::new()
        .merge(sandbox::routes())
        .merge(preview::routes())
        .route("/sandbox/{id}/network-settings", post(network::update))
        .merge(fork::routes())
        .merge(snapshots::routes())
        .merge(builds::routes())
        .merge(volumes::routes())
        .merge(registries::routes())
        .merge(usage::routes())
        .merge(runners::routes())
        .merge(internal::routes())
        .merge(openapi::routes())
        .merge(api_keys::routes())
        .merge(organizations::routes())
        .merge(admin::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        });
    Router::new()
        .nest("/api", api)
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint (the API lives under /api)") })
        .layer(axum::middleware::from_fn_with_state(app.clone(), metrics::track))
        .layer(axum::middleware::from_fn(access_log::layer))
        .with_state(app.clone())
}
