//! How users reach a sandbox besides the API: preview URLs (the sandbox's preview token, or signed per-port
//! tokens that expire), SSH access tokens, and the toolbox proxy URL. The proxy asks `super::internal` whether a
//! credential opens a port; the rule is `crate::domain::access`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandbar_proto::runner::SandboxState;

use super::auth::Caller;
use super::dto::{PortPreviewUrl, SignedPortPreviewUrl, SshAccessDto, SshAccessValidationDto, ToolboxProxyUrl};
use super::error::{ApiError, ApiResult, Json, Path, QueryPairs};
use super::sandbox::ok;
use crate::App;
use crate::clock::iso;
use crate::domain::access::new_signed_preview_token;
use crate::domain::sandboxes::find;
use crate::error::new_token;
use crate::store::{sandboxes, tokens};

/// Default lifetime of SSH access tokens.
pub const DEFAULT_SSH_MINUTES: i64 = 60;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/sandbox/ssh-access/validate", get(validate_ssh_access))
        .route("/sandbox/{id}/ports/{port}/preview-url", get(preview_url))
        .route("/sandbox/{id}/ports/{port}/signed-preview-url", get(signed_preview_url))
        .route("/sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire", post(expire_signed_preview_url))
        .route("/sandbox/{id}/ssh-access", post(create_ssh_access).delete(revoke_ssh_access))
        .route("/sandbox/{id}/toolbox-proxy-url", get(toolbox_proxy_url))
}

fn port_of(port: i64) -> ApiResult<u16> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("port must be 1-65535, got {port}")))
}

async fn preview_url(
    State(app): State<App>,
    caller: Caller,
    Path((id, port)): Path<(String, i64)>,
) -> ApiResult<Response> {
    let port = port_of(port)?;
    let mut conn = app.db.pool.acquire().await?;
    let row = find(&app, &mut conn, &caller.organization_id, &id, false).await?;
    Ok(Json(PortPreviewUrl {
        url: app.config.preview_url(&row.id, port),
        token: row.preview_token,
        sandbox_id: row.id,
    })
    .into_response())
}

async fn signed_preview_url(
    State(app): State<App>,
    caller: Caller,
    Path((id, port)): Path<(String, i64)>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let port = port_of(port)?;
    let secs = q.int("expiresInSeconds")?.unwrap_or(60);
    if !(1..=24 * 3600).contains(&secs) {
        return Err(ApiError::bad_request(format!("expiresInSeconds must be between 1 and 86400, got {secs}")));
    }
    let now = app.now();
    let mut conn = app.db.pool.acquire().await?;
    let row = find(&app, &mut conn, &caller.organization_id, &id, false).await?;
    // Daytona's form: the token takes the sandbox id's place in the host, `{port}-{token}.{domain}`.
    let token = new_signed_preview_token()?;
    tokens::insert_preview(&mut conn, &token, &row.id, port, now + secs * 1000).await?;
    let url = app.config.preview_url(&token, port);
    Ok(Json(SignedPortPreviewUrl { sandbox_id: row.id, port: i64::from(port), token, url }).into_response())
}

async fn expire_signed_preview_url(
    State(app): State<App>,
    caller: Caller,
    Path((id, port, token)): Path<(String, i64, String)>,
) -> ApiResult<Response> {
    let port = port_of(port)?;
    let now = app.now();
    let mut tx = app.db.pool.begin().await?;
    let row = find(&app, &mut tx, &caller.organization_id, &id, false).await?;
    if !tokens::revoke_preview(&mut tx, &token, &row.id, port, now).await? {
        return Err(ApiError::not_found("no such signed preview URL token for this sandbox and port"));
    }
    // A new route version makes proxies drop what they cached for this sandbox's credentials: the URL stops now.
    sandboxes::bump(&mut tx, &row.id, now).await?;
    tx.commit().await?;
    app.wake_routes();
    Ok(Json(serde_json::json!({})).into_response())
}

async fn create_ssh_access(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let minutes = q.int("expiresInMinutes")?.unwrap_or(DEFAULT_SSH_MINUTES);
    if !(1..=7 * 24 * 60).contains(&minutes) {
        return Err(ApiError::bad_request(format!("expiresInMinutes must be between 1 and 10080, got {minutes}")));
    }
    let now = app.now();
    let mut conn = app.db.pool.acquire().await?;
    let row = find(&app, &mut conn, &caller.organization_id, &id, false).await?;
    if row.stored_state() == SandboxState::Destroyed {
        return Err(ApiError::bad_request("Sandbox is destroyed: no SSH access can be created"));
    }
    // The token is the SSH user name (`ssh TOKEN@host`): one starting with `-` would be read as an option.
    let token = loop {
        let t = new_token(24)?;
        if !t.starts_with('-') {
            break t;
        }
    };
    let access_id = uuid::Uuid::new_v4().to_string();
    let expires = now + minutes * 60_000;
    tokens::insert_ssh(&mut conn, &access_id, &row.id, &token, now, expires).await?;
    let (host, port) = app.config.ssh_gateway_parts().map_err(|e| ApiError::internal("ssh gateway", e))?;
    Ok(Json(SshAccessDto {
        id: access_id,
        sandbox_id: row.id,
        ssh_command: format!("ssh -p {port} {token}@{host}"),
        ssh_host: host,
        ssh_port: port,
        token,
        expires_at: iso(expires),
        created_at: iso(now),
        updated_at: iso(now),
    })
    .into_response())
}

async fn revoke_ssh_access(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    q: QueryPairs,
) -> ApiResult<Response> {
    let mut conn = app.db.pool.acquire().await?;
    let row = find(&app, &mut conn, &caller.organization_id, &id, false).await?;
    tokens::revoke_ssh(&mut conn, &row.id, q.get("token").filter(|t| !t.is_empty()), app.now()).await?;
    Ok(ok(&app, &row))
}

async fn validate_ssh_access(State(app): State<App>, caller: Caller, q: QueryPairs) -> ApiResult<Response> {
    let token = q.get("token").filter(|t| !t.is_empty()).ok_or_else(|| ApiError::bad_request("token is required"))?;
    let dto = match tokens::find_ssh(&app.db.pool, token, Some(&caller.organization_id)).await? {
        Some((sandbox_id, expires, revoked)) => {
            SshAccessValidationDto { valid: revoked.is_none() && expires > app.now(), sandbox_id }
        }
        None => SshAccessValidationDto { valid: false, sandbox_id: String::new() },
    };
    Ok(Json(dto).into_response())
}

async fn toolbox_proxy_url(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> ApiResult<Response> {
    let mut conn = app.db.pool.acquire().await?;
    find(&app, &mut conn, &caller.organization_id, &id, false).await?;
    Ok(Json(ToolboxProxyUrl { url: app.config.toolbox_proxy_url() }).into_response())
}
