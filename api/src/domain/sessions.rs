//! Dashboard sessions: an API key exchanged for a session (the cookie's value is a fresh random token; the key is
//! never stored nor sent back), how long one lives, and the CSRF rule for requests that change state.
//!
//! A session lasts [`SESSION_TTL_MS`] at most and never past its key's expiry; revoking the key ends it. A request
//! made with a session cookie that changes state must carry the session's CSRF token in [`CSRF_HEADER`] and, when
//! the browser sends an `Origin`, come from the dashboard's own origin: a form on another site can send neither.

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::{orgs, sessions};

/// The session cookie (HttpOnly, SameSite=Strict, Path=/, Secure over HTTPS).
pub use sandbar_proto::api::DASHBOARD_SESSION_COOKIE as SESSION_COOKIE;
/// The header that carries a session's CSRF token on every state-changing request.
pub const CSRF_HEADER: &str = "x-sandbar-csrf";
/// Longest life of a session.
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub organization_id: String,
    pub api_key_id: String,
    pub csrf_token: String,
    pub expires_at: i64,
}

/// A new session for a valid key: `(cookie value, session)`. A wrong, expired or revoked key is a 401.
pub async fn sign_in(app: &App, key: &str) -> ApiResult<(String, Session)> {
    let now = app.now();
    let (key_id, org) = orgs::key_of(&app.db, key.trim(), now)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid API key (unknown, expired or revoked)"))?;
    let key_expiry = orgs::key_by_id(&app.db, &key_id).await?.and_then(|k| k.expires_at);
    let expires_at = key_expiry.map_or(now + SESSION_TTL_MS, |k| k.min(now + SESSION_TTL_MS));
    let token = crate::error::new_token(32)?;
    let csrf = crate::error::new_token(24)?;
    sessions::insert(&app.db, &token, &org, &key_id, &csrf, now, expires_at).await?;
    Ok((token, Session { organization_id: org, api_key_id: key_id, csrf_token: csrf, expires_at }))
}

/// The live session of a cookie value, if any.
pub async fn resolve(app: &App, token: &str) -> ApiResult<Option<Session>> {
    Ok(sessions::live(&app.db, token, app.now()).await?.map(|r| Session {
        organization_id: r.organization_id,
        api_key_id: r.api_key_id,
        csrf_token: r.csrf_token,
        expires_at: r.expires_at,
    }))
}

pub async fn sign_out(app: &App, token: &str) -> ApiResult<()> {
    Ok(sessions::end(&app.db, token, app.now()).await?)
}

/// Whether a cookie-authenticated request may change state: the session's CSRF token in [`CSRF_HEADER`], and an
/// `Origin` (when sent) naming the host the request was sent to.
pub fn check_csrf(
    session: &Session,
    csrf_header: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> ApiResult<()> {
    let token_ok = csrf_header.is_some_and(|t| sandbar_support::ct_eq(t.as_bytes(), session.csrf_token.as_bytes()));
    if !token_ok {
        return Err(ApiError::forbidden(
            "missing or wrong CSRF token: a request signed in by the dashboard's cookie must send X-Sandbar-CSRF",
        ));
    }
    if let Some(origin) = origin
        && !same_origin(origin, host)
    {
        return Err(ApiError::forbidden("cross-origin request refused: its Origin is not this host"));
    }
    Ok(())
}

/// Whether `origin` (`scheme://host[:port]`) names `host` (the Host header).
pub fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session { organization_id: "o".into(), api_key_id: "k".into(), csrf_token: "tok".into(), expires_at: 0 }
    }

    #[test]
    fn csrf_needs_the_token_and_a_same_origin() {
        let s = session();
        assert!(check_csrf(&s, Some("tok"), None, Some("h:1")).is_ok());
        assert!(check_csrf(&s, Some("tok"), Some("http://h:1"), Some("h:1")).is_ok());
        assert!(check_csrf(&s, None, Some("http://h:1"), Some("h:1")).is_err());
        assert!(check_csrf(&s, Some("tok2"), None, Some("h:1")).is_err());
        assert!(check_csrf(&s, Some("tok"), Some("http://evil:1"), Some("h:1")).is_err());
        assert!(check_csrf(&s, Some("tok"), Some("null"), Some("h:1")).is_err());
    }
}
