//! Who may reach which sandbox port, decided here once: the proxy and the SSH gateway ask
//! (`/api/internal/...`) and cache the answer, they never re-decide. Also what a route says (where a sandbox's
//! daemon is, whether a request may wake it) and how the tokens of signed preview URLs and SSH access resolve.
//!
//! The rule ([`authorize`]): an API key of the sandbox's organization opens every port; the sandbox's preview token
//! or a valid signed preview token for that port opens it, unless it is one of the daemon's own ([`daemon_port`]:
//! toolbox, SSH, web terminal), which only an API key opens; a dashboard session of the organization opens the
//! toolbox (the dashboard's terminal and file browser; the proxy takes the cookie only from the dashboard's own
//! page); a public sandbox opens every port but the daemon's own without a credential. Preview tokens travel in URLs and 24-hour cookies and every `{port}-{id}.{domain}`
//! host is same-site, so a preview token that opened the toolbox would let any page a victim visits run commands
//! in their sandbox.
//!
//! Waking: a sandbox the auto-stop timer stopped is started again by an authorized request through the proxy (like
//! scale-to-zero). One the user stopped stays stopped: they meant it. The two are told apart without new state:
//! the timer stops a sandbox only once it has been idle for its whole interval, so a sandbox is auto-stopped
//! exactly when its last activity is at least `autoStopInterval` minutes before the moment it became stopped (a
//! user's stop of an active sandbox comes sooner, and traffic after the stop makes it look user-stopped, which
//! errs on the side of not starting anything). A sandbox the host stopped (`stop_cause` `host`: Docker restarted,
//! its daemon died) while its user wanted it started is woken too; the lifecycle restarts it anyway.

use ::http::StatusCode;
use sandbar_proto::api::{
    AuthorizeRequest, AuthorizeResponse, Route, SIGNED_PREVIEW_TOKEN_LEN, SignedPreviewResolveRequest,
    SignedPreviewResolveResponse, SshResolveResponse, is_signed_preview_token,
};
use sandbar_proto::ports;
use sandbar_proto::runner::SandboxState;

use super::apply::act;
use super::state::Action;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::sandboxes::{self, Row};
use crate::store::{orgs, tokens};

/// How long the proxy may cache an authorization answer.
pub const AUTHORIZE_TTL_SECS: u64 = 30;

/// A new token for a signed preview URL: [`SIGNED_PREVIEW_TOKEN_LEN`] lowercase hex digits (128 random bits).
pub fn new_signed_preview_token() -> ApiResult<String> {
    Ok(sandbar_support::token::hex(SIGNED_PREVIEW_TOKEN_LEN / 2)?)
}

/// The daemon's own ports need a credential even on a public sandbox.
pub fn daemon_port(port: u16) -> bool {
    matches!(port, ports::TOOLBOX | ports::SSH | ports::TERMINAL)
}

/// Whether an authorized request may start this sandbox again (see the module doc).
fn wakes_on_request(row: &Row, state: SandboxState) -> bool {
    let timer_stopped =
        row.auto_stop > 0 && row.last_activity_at.saturating_add(row.auto_stop.saturating_mul(60_000)) <= row.state_at;
    // The host stopped it and its user never asked: a request may bring it back before the lifecycle does.
    let host_stopped =
        row.stop_cause.as_deref() == Some(super::state::STOP_CAUSE_HOST) && row.desired_state == "started";
    state == SandboxState::Stopped && (timer_stopped || host_stopped)
}

/// What the proxy needs to reach a sandbox; addresses only while it is started, or was started when its runner
/// fell silent (`unknown`): the runner is not in the data path, so a cut between it and the API leaves the daemon
/// reachable, and the daemon checks every request's signature with its own token, so an address that went stale
/// meanwhile can never open another sandbox.
pub fn route(app: &App, row: &Row) -> Route {
    let state = row.effective_state(app, app.now());
    let started = state == SandboxState::Started
        || (state == SandboxState::Unknown && row.stored_state() == SandboxState::Started);
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

/// A sandbox that is not destroyed, by id.
pub async fn live(app: &App, id: &str) -> ApiResult<Row> {
    let mut conn = app.db.read.acquire().await?;
    sandboxes::load(app.db.kind, &mut conn, None, id, false)
        .await?
        .filter(|r| r.stored_state() != SandboxState::Destroyed)
        .ok_or_else(|| ApiError::sandbox_not_found(id))
}

/// Whether the request's credential opens the sandbox's port (see the module doc), and for how long the answer
/// may be cached.
pub async fn authorize(app: &App, req: &AuthorizeRequest) -> ApiResult<AuthorizeResponse> {
    let now = app.now();
    let row = live(app, &req.sandbox_id).await?;
    let granted = |ttl_secs: u64| Ok(AuthorizeResponse { organization_id: row.organization_id.clone(), ttl_secs });
    if let Some(key) = req.api_key.as_deref().filter(|k| !k.is_empty()) {
        return match orgs::organization_of_key(&app.db, key, now).await? {
            Some(org) if org == row.organization_id => granted(AUTHORIZE_TTL_SECS),
            // Another organization's key: the sandbox does not exist for it.
            Some(_) => Err(ApiError::sandbox_not_found(&req.sandbox_id)),
            None => Err(ApiError::unauthorized("invalid API key (unknown, expired or revoked)")),
        };
    }
    if let Some(token) = req.preview_token.as_deref().filter(|t| !t.is_empty()) {
        if daemon_port(req.port) {
            return Err(ApiError::unauthorized(
                "preview tokens do not open the daemon's ports (toolbox, SSH, terminal): send an API key",
            ));
        }
        if !row.preview_token.is_empty() && sandbar_support::ct_eq(token.as_bytes(), row.preview_token.as_bytes()) {
            return granted(AUTHORIZE_TTL_SECS);
        }
        return match tokens::preview_expiry(&app.db.pool, token, &row.id, req.port, now).await? {
            Some(exp) => granted((((exp - now) / 1000).max(1) as u64).min(AUTHORIZE_TTL_SECS)),
            None => Err(ApiError::unauthorized("invalid preview token (unknown, expired or for another port)")),
        };
    }
    if let Some(token) = req.session.as_deref().filter(|t| !t.is_empty()) {
        // The dashboard's terminal and file browser: the toolbox only (its web terminal and SSH ports are reached
        // other ways), for the session's own organization, while the session lives.
        if req.port != ports::TOOLBOX {
            return Err(ApiError::unauthorized("a dashboard session opens only the sandbox's toolbox"));
        }
        return match super::sessions::resolve(app, token).await? {
            Some(s) if s.organization_id == row.organization_id => {
                granted((((s.expires_at - now) / 1000).max(1) as u64).min(AUTHORIZE_TTL_SECS))
            }
            Some(_) => Err(ApiError::sandbox_not_found(&req.sandbox_id)),
            None => Err(ApiError::unauthorized("the dashboard session has ended: sign in again")),
        };
    }
    if row.public != 0 && !daemon_port(req.port) {
        return granted(AUTHORIZE_TTL_SECS);
    }
    Err(ApiError::unauthorized("missing credential: send an API key or a preview token"))
}

/// The started sandbox an SSH access token opens; counts as activity, unless it is the gateway's `recheck` of an
/// open session (which must end when the token is revoked, but is not by itself activity).
pub async fn resolve_ssh(app: &App, token: &str, recheck: bool) -> ApiResult<SshResolveResponse> {
    let now = app.now();
    let sandbox_id = match tokens::find_ssh(&app.db.pool, token, None).await? {
        None => {
            return Err(ApiError::unauthorized(
                "unknown SSH access token; create one with the SDK's create_ssh_access",
            ));
        }
        Some((_, _, Some(_))) => return Err(ApiError::unauthorized("this SSH access token was revoked")),
        Some((_, exp, None)) if exp <= now => return Err(ApiError::unauthorized("this SSH access token has expired")),
        Some((id, _, None)) => id,
    };
    let row = live(app, &sandbox_id).await?;
    let r = route(app, &row);
    // `unknown` with an address: its runner fell silent while it was started, and SSH does not go through it.
    let serves = r.serves().is_some();
    let Some(ssh_addr) = r.ssh_addr.filter(|_| serves) else {
        return Err(ApiError::conflict(format!("sandbox {sandbox_id} is {}, not started; start it first", r.state)));
    };
    if !recheck {
        let mut conn = app.db.pool.acquire().await?;
        sandboxes::touch(&mut conn, std::slice::from_ref(&sandbox_id), now).await?;
    }
    Ok(SshResolveResponse {
        sandbox_id,
        ssh_addr,
        daemon_token: row.daemon_token,
        daemon_host_key: row.daemon_host_key,
    })
}

/// Starts an auto-stopped sandbox for a request the proxy holds, through the state machine (quotas included).
pub async fn wake(app: &App, id: &str) -> ApiResult<Route> {
    let row = live(app, id).await?;
    let state = row.effective_state(app, app.now());
    match state {
        // Another request (or proxy) woke it already.
        SandboxState::Started | SandboxState::Starting | SandboxState::Restoring => return Ok(route(app, &row)),
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
    match act(app, None, id, Action::Start, None).await {
        Ok(after) => {
            tracing::info!(sandbox_id = %id, "woken by a request through the proxy");
            Ok(route(app, &after))
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
pub async fn resolve_signed_preview(
    app: &App,
    req: &SignedPreviewResolveRequest,
) -> ApiResult<SignedPreviewResolveResponse> {
    let invalid =
        || ApiError::unauthorized("this signed preview URL is invalid, expired or revoked: ask for a new one");
    if !is_signed_preview_token(&req.token) || daemon_port(req.port) {
        return Err(invalid());
    }
    let now = app.now();
    let Some((sandbox_id, expires_at)) = tokens::resolve_preview(&app.db.pool, &req.token, req.port, now).await? else {
        return Err(invalid());
    };
    let row = live(app, &sandbox_id).await.map_err(|_| invalid())?;
    // Whole seconds left, rounded down, so a cached answer never outlives the token.
    let ttl = (u64::try_from((expires_at - now) / 1000).unwrap_or(0)).min(AUTHORIZE_TTL_SECS);
    Ok(SignedPreviewResolveResponse {
        sandbox_id: row.id,
        organization_id: row.organization_id,
        ttl_secs: ttl,
        version: row.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_preview_tokens_have_the_advertised_shape() {
        let a = new_signed_preview_token().unwrap();
        assert!(is_signed_preview_token(&a), "{a}");
        assert_ne!(a, new_signed_preview_token().unwrap());
    }

    #[test]
    fn daemon_ports_need_a_credential() {
        assert!(daemon_port(ports::TOOLBOX) && daemon_port(ports::SSH) && daemon_port(ports::TERMINAL));
        assert!(!daemon_port(3000));
    }
}
