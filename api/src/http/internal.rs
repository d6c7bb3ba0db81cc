//! The proxy's and SSH gateway's view (`sandbar_proto::api`, proxy token): route lookups with a version, a
//! long-poll of route changes, credential checks for toolbox and preview traffic, SSH token resolution, activity
//! reports, waking an auto-stopped sandbox on request, and resolving the tokens of signed preview URLs. Every
//! decision is `crate::domain::access`'s: the proxy asks, it never re-decides.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{
    ActivityReport, AuthorizeRequest, MAX_POLL_WAIT_SECS, RouteChanges, SignedPreviewResolveRequest, SshResolveRequest,
};

use super::auth::ProxyAuth;
use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::App;
use crate::domain::access;
use crate::store::{routes as changes_table, sandboxes};

/// At most this many sandbox ids per route-change answer (the proxy asks again from the returned seq).
const MAX_CHANGES: i64 = 1000;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/internal/routes/changes", get(changes))
        .route("/internal/routes/{sandbox_id}", get(route))
        .route("/internal/authorize", post(authorize))
        .route("/internal/ssh/resolve", post(ssh_resolve))
        .route("/internal/activity", post(activity))
        .route("/internal/sandboxes/{sandbox_id}/wake", post(wake))
        .route("/internal/preview/resolve", post(resolve_signed_preview))
}

async fn route(State(app): State<App>, _: ProxyAuth, Path(id): Path<String>) -> ApiResult<Response> {
    let row = access::live(&app, &id).await?;
    Ok(Json(access::route(&app, &row)).into_response())
}

/// `GET /internal/routes/changes?since=S&wait=N`: the sandboxes whose routes changed after `S`, waiting up to `N`
/// seconds for one.
async fn changes(State(app): State<App>, _: ProxyAuth, q: QueryPairs) -> ApiResult<Response> {
    let since = q.int("since")?.unwrap_or(0);
    let wait = q.int("wait")?.unwrap_or(0).clamp(0, MAX_POLL_WAIT_SECS as i64) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let notified = app.route_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let rows = changes_table::changes(&app.db.read, since, MAX_CHANGES).await?;
        let now = tokio::time::Instant::now();
        if !rows.is_empty() || now >= deadline {
            let seq = match rows.last() {
                Some((s, _)) => *s,
                // Nothing new: answer the current head (lower than `since` only if the database was replaced).
                None => changes_table::head(&app.db.read).await?.unwrap_or(0).min(since.max(0)),
            };
            let mut ids: Vec<String> = Vec::with_capacity(rows.len());
            for (_, id) in rows {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            return Ok(Json(RouteChanges { seq, sandbox_ids: ids }).into_response());
        }
        // Runner heartbeats (a runner coming back) wake us too, with nothing in the table: poll on.
        let nap = (deadline - now).min(app.poll_interval());
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

async fn authorize(State(app): State<App>, _: ProxyAuth, Json(req): Json<AuthorizeRequest>) -> ApiResult<Response> {
    Ok(Json(access::authorize(&app, &req).await?).into_response())
}

/// `?recheck=true`: the gateway asking again about an open session (not counted as activity).
async fn ssh_resolve(
    State(app): State<App>,
    _: ProxyAuth,
    q: QueryPairs,
    Json(req): Json<SshResolveRequest>,
) -> ApiResult<Response> {
    let recheck = q.bool("recheck")?.unwrap_or(false);
    Ok(Json(access::resolve_ssh(&app, &req.token, recheck).await?).into_response())
}

async fn activity(State(app): State<App>, _: ProxyAuth, Json(report): Json<ActivityReport>) -> ApiResult<Response> {
    if report.sandbox_ids.len() > 10_000 {
        return Err(ApiError::bad_request("at most 10000 sandbox ids per activity report"));
    }
    let mut tx = app.db.pool.begin().await?;
    sandboxes::touch(&mut tx, &report.sandbox_ids, app.now()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Starts an auto-stopped sandbox for a request the proxy holds.
async fn wake(State(app): State<App>, _: ProxyAuth, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(access::wake(&app, &id).await?).into_response())
}

/// Which sandbox the token of a signed preview URL opens, for its port.
async fn resolve_signed_preview(
    State(app): State<App>,
    _: ProxyAuth,
    Json(req): Json<SignedPreviewResolveRequest>,
) -> ApiResult<Response> {
    Ok(Json(access::resolve_signed_preview(&app, &req).await?).into_response())
}
