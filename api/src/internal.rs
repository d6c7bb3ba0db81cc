//! The proxy's and SSH gateway's view (`sandbar_proto::api`): route lookups with a version, a long-poll of route
//! changes, credential checks for toolbox and preview traffic, SSH token resolution and activity reports.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{
    ActivityReport, AuthorizeRequest, AuthorizeResponse, MAX_POLL_WAIT_SECS, Route, RouteChanges, SshResolveRequest,
    SshResolveResponse,
};
use sandbar_proto::ports;
use sandbar_proto::runner::SandboxState;

use crate::App;
use crate::auth::{ProxyAuth, organization_of_key};
use crate::db::sha256_hex;
use crate::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::sandbox::{self, Row};

/// How long the proxy may cache an authorization answer.
pub const AUTHORIZE_TTL_SECS: u64 = 30;
/// At most this many sandbox ids per route-change answer (the proxy asks again from the returned seq).
const MAX_CHANGES: i64 = 1000;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/internal/routes/changes", get(changes))
        .route("/internal/routes/{sandbox_id}", get(route))
        .route("/internal/authorize", post(authorize))
        .route("/internal/ssh/resolve", post(ssh_resolve))
        .route("/internal/activity", post(activity))
}

fn to_route(app: &App, row: &Row) -> Route {
    let state = row.effective_state(app, app.now());
    let started = state == SandboxState::Started;
    let daemon_addr = row.daemon_addr.clone().filter(|_| started);
    Route {
        sandbox_id: row.id.clone(),
        organization_id: row.organization_id.clone(),
        state,
        sandbox_ip: daemon_addr
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip().to_string()),
        ssh_addr: row.ssh_addr.clone().filter(|_| started),
        daemon_addr,
        daemon_token: row.daemon_token.clone(),
        public: row.public != 0,
        auto_stop_interval: row.auto_stop,
        version: row.version,
    }
}

async fn load(app: &App, id: &str) -> ApiResult<Row> {
    let mut conn = app.db.pool.acquire().await?;
    sandbox::load(app, &mut conn, None, id, false)
        .await?
        .filter(|r| r.stored_state() != SandboxState::Destroyed)
        .ok_or_else(|| ApiError::sandbox_not_found(id))
}

async fn route(app: axum::extract::State<App>, _: ProxyAuth, Path(id): Path<String>) -> ApiResult<Response> {
    let row = load(&app, &id).await?;
    Ok(Json(to_route(&app, &row)).into_response())
}

async fn changes(app: axum::extract::State<App>, _: ProxyAuth, q: QueryPairs) -> ApiResult<Response> {
    let since = q.int("since")?.unwrap_or(0);
    let wait = q.int("wait")?.unwrap_or(0).clamp(0, MAX_POLL_WAIT_SECS as i64) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let notified = app.route_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, sandbox_id FROM route_changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(since)
                .bind(MAX_CHANGES)
                .fetch_all(&app.db.pool)
                .await?;
        let now = tokio::time::Instant::now();
        if !rows.is_empty() || now >= deadline {
            let seq = match rows.last() {
                Some((s, _)) => *s,
                None => {
                    // Nothing new: answer the current head (lower than `since` only if the database was replaced).
                    let head: Option<i64> =
                        sqlx::query_scalar("SELECT MAX(seq) FROM route_changes").fetch_one(&app.db.pool).await?;
                    head.unwrap_or(0).min(since.max(0))
                }
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

/// The daemon's own ports need a credential even on a public sandbox.
fn daemon_port(port: u16) -> bool {
    matches!(port, ports::TOOLBOX | ports::SSH | ports::TERMINAL)
}

async fn authorize(
    app: axum::extract::State<App>,
    _: ProxyAuth,
    Json(req): Json<AuthorizeRequest>,
) -> ApiResult<Response> {
    let now = app.now();
    let row = load(&app, &req.sandbox_id).await?;
    let granted = |ttl: u64| {
        Json(AuthorizeResponse { organization_id: row.organization_id.clone(), ttl_secs: ttl }).into_response()
    };
    if let Some(key) = req.api_key.as_deref().filter(|k| !k.is_empty()) {
        return match organization_of_key(&app.db, key, now).await? {
            Some(org) if org == row.organization_id => Ok(granted(AUTHORIZE_TTL_SECS)),
            // Another organization's key: the sandbox does not exist for it.
            Some(_) => Err(ApiError::sandbox_not_found(&req.sandbox_id)),
            None => Err(ApiError::unauthorized("invalid API key (unknown, expired or revoked)")),
        };
    }
    if let Some(token) = req.preview_token.as_deref().filter(|t| !t.is_empty()) {
        if !row.preview_token.is_empty() && sandbar_proto_eq(token, &row.preview_token) {
            return Ok(granted(AUTHORIZE_TTL_SECS));
        }
        let signed: Option<i64> = sqlx::query_scalar(
            "SELECT expires_at FROM preview_tokens WHERE token_hash = $1 AND sandbox_id = $2 AND port = $3 \
             AND revoked_at IS NULL AND expires_at > $4",
        )
        .bind(sha256_hex(token))
        .bind(&row.id)
        .bind(i64::from(req.port))
        .bind(now)
        .fetch_optional(&app.db.pool)
        .await?;
        return match signed {
            Some(exp) => Ok(granted((((exp - now) / 1000).max(1) as u64).min(AUTHORIZE_TTL_SECS))),
            None => Err(ApiError::unauthorized("invalid preview token (unknown, expired or for another port)")),
        };
    }
    if row.public != 0 && !daemon_port(req.port) {
        return Ok(granted(AUTHORIZE_TTL_SECS));
    }
    Err(ApiError::unauthorized("missing credential: send an API key or a preview token"))
}

fn sandbar_proto_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

async fn ssh_resolve(
    app: axum::extract::State<App>,
    _: ProxyAuth,
    Json(req): Json<SshResolveRequest>,
) -> ApiResult<Response> {
    let now = app.now();
    let found: Option<(String, i64, Option<i64>)> =
        sqlx::query_as("SELECT sandbox_id, expires_at, revoked_at FROM ssh_access WHERE token_hash = $1")
            .bind(sha256_hex(&req.token))
            .fetch_optional(&app.db.pool)
            .await?;
    let sandbox_id = match found {
        None => {
            return Err(ApiError::unauthorized(
                "unknown SSH access token; create one with the SDK's create_ssh_access",
            ));
        }
        Some((_, _, Some(_))) => return Err(ApiError::unauthorized("this SSH access token was revoked")),
        Some((_, exp, None)) if exp <= now => return Err(ApiError::unauthorized("this SSH access token has expired")),
        Some((id, _, None)) => id,
    };
    let row = load(&app, &sandbox_id).await?;
    let r = to_route(&app, &row);
    let Some(ssh_addr) = r.ssh_addr.filter(|_| r.state == SandboxState::Started) else {
        return Err(ApiError::conflict(format!("sandbox {sandbox_id} is {}, not started; start it first", r.state)));
    };
    sqlx::query("UPDATE sandboxes SET last_activity_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&sandbox_id)
        .execute(&app.db.pool)
        .await?;
    Ok(Json(SshResolveResponse { sandbox_id, ssh_addr, daemon_token: row.daemon_token }).into_response())
}

async fn activity(
    app: axum::extract::State<App>,
    _: ProxyAuth,
    Json(report): Json<ActivityReport>,
) -> ApiResult<Response> {
    if report.sandbox_ids.len() > 10_000 {
        return Err(ApiError::bad_request("at most 10000 sandbox ids per activity report"));
    }
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    for id in &report.sandbox_ids {
        sqlx::query("UPDATE sandboxes SET last_activity_at = $1 WHERE id = $2 AND state <> 'destroyed'")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
