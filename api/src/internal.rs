//! The proxy's and SSH gateway's view (`sandbar_proto::api`): route lookups with a version, a long-poll of route
//! changes, credential checks for toolbox and preview traffic, SSH token resolution, activity reports, waking an
//! auto-stopped sandbox on request, and resolving the tokens of signed preview URLs.
//!
//! Waking: a sandbox the auto-stop timer stopped is started again by an authorized request through the proxy (like
//! scale-to-zero). One the user stopped stays stopped: they meant it. The two are told apart without new state:
//! the timer stops a sandbox only once it has been idle for its whole interval, so a sandbox is auto-stopped
//! exactly when its last activity is at least `autoStopInterval` minutes before the moment it became stopped (a
//! user's stop of an active sandbox comes sooner, and traffic after the stop makes it look user-stopped, which
//! errs on the side of not starting anything).

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::api::{
    ActivityReport, AuthorizeRequest, AuthorizeResponse, MAX_POLL_WAIT_SECS, Route, RouteChanges,
    SIGNED_PREVIEW_TOKEN_LEN, SignedPreviewResolveRequest, SignedPreviewResolveResponse, SshResolveRequest,
    SshResolveResponse, is_signed_preview_token,
};
use sandbar_proto::ports;
use sandbar_proto::runner::SandboxState;

use crate::App;
use crate::auth::{ProxyAuth, organization_of_key};
use crate::db::sha256_hex;
use crate::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use crate::sandbox::{self, Row};
use crate::state::Action;

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
        .route("/internal/sandboxes/{sandbox_id}/wake", post(wake))
        .route("/internal/preview/resolve", post(resolve_signed_preview))
}

/// A new token for a signed preview URL: [`SIGNED_PREVIEW_TOKEN_LEN`] lowercase hex digits (128 random bits).
pub(crate) fn new_signed_preview_token() -> String {
    use std::fmt::Write as _;
    let mut buf = [0u8; SIGNED_PREVIEW_TOKEN_LEN / 2];
    if getrandom::fill(&mut buf).is_err() {
        // No entropy source at all (never seen on Linux): fall back to v4 UUID bytes (also getrandom, via uuid).
        buf.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    buf.iter().fold(String::with_capacity(SIGNED_PREVIEW_TOKEN_LEN), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether an authorized request may start this sandbox again (see the module doc).
fn wakes_on_request(row: &Row, state: SandboxState) -> bool {
    state == SandboxState::Stopped
        && row.auto_stop > 0
        && row.last_activity_at.saturating_add(row.auto_stop.saturating_mul(60_000)) <= row.state_at
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
        wake_on_request: wakes_on_request(row, state),
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

/// Starts an auto-stopped sandbox for a request the proxy holds, through the state machine (quotas included).
async fn wake(app: axum::extract::State<App>, _: ProxyAuth, Path(id): Path<String>) -> ApiResult<Response> {
    let row = load(&app, &id).await?;
    let state = row.effective_state(&app, app.now());
    match state {
        // Another request (or proxy) woke it already.
        SandboxState::Started | SandboxState::Starting | SandboxState::Restoring => {
            return Ok(Json(to_route(&app, &row)).into_response());
        }
        SandboxState::Stopped if wakes_on_request(&row, state) => {}
        SandboxState::Stopped if row.auto_stop <= 0 => {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is stopped and has auto-stop off, so requests do not start it: start it with the API"
            )));
        }
        SandboxState::Stopped => {
            return Err(ApiError::conflict(format!(
                "sandbox {id} was stopped by a user, so requests do not start it: start it with the API"
            )));
        }
        other => {
            return Err(ApiError::conflict(format!("sandbox {id} is {other}: only an auto-stopped sandbox is woken")));
        }
    }
    match sandbox::act(&app, None, &id, Action::Start, None).await {
        Ok(after) => {
            tracing::info!(sandbox_id = %id, "woken by a request through the proxy");
            Ok(Json(to_route(&app, &after)).into_response())
        }
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(e),
        // Refusals (quota, a runner that went away) are the proxy's "cannot start it" answer.
        Err(e) if e.status.is_client_error() => {
            Err(ApiError::conflict(format!("sandbox {id} is stopped and could not be started: {}", e.message)))
        }
        Err(e) => Err(e),
    }
}

/// Which sandbox the token of a signed preview URL opens, for its port.
async fn resolve_signed_preview(
    app: axum::extract::State<App>,
    _: ProxyAuth,
    Json(req): Json<SignedPreviewResolveRequest>,
) -> ApiResult<Response> {
    let invalid =
        || ApiError::unauthorized("this signed preview URL is invalid, expired or revoked: ask for a new one");
    if !is_signed_preview_token(&req.token) {
        return Err(invalid());
    }
    let now = app.now();
    let found: Option<(String, i64)> = sqlx::query_as(
        "SELECT sandbox_id, expires_at FROM preview_tokens WHERE token_hash = $1 AND port = $2 \
         AND revoked_at IS NULL AND expires_at > $3",
    )
    .bind(sha256_hex(&req.token))
    .bind(i64::from(req.port))
    .bind(now)
    .fetch_optional(&app.db.pool)
    .await?;
    let Some((sandbox_id, expires_at)) = found else { return Err(invalid()) };
    let row = load(&app, &sandbox_id).await.map_err(|_| invalid())?;
    // Whole seconds left, rounded down, so a cached answer never outlives the token.
    let ttl = (u64::try_from((expires_at - now) / 1000).unwrap_or(0)).min(AUTHORIZE_TTL_SECS);
    Ok(Json(SignedPreviewResolveResponse {
        sandbox_id: row.id,
        organization_id: row.organization_id,
        ttl_secs: ttl,
        version: row.version,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_preview_tokens_have_the_advertised_shape() {
        let a = new_signed_preview_token();
        assert!(is_signed_preview_token(&a), "{a}");
        assert_ne!(a, new_signed_preview_token());
    }
}
