//! The extractors that authenticate a request: users by API key or by the dashboard's session cookie with its
//! CSRF token on anything that changes state ([`Caller`], rules in `crate::domain::sessions`), the proxy by its service token
//! ([`ProxyAuth`], compared in constant time), runners by the shared join token on registration only
//! ([`RunnerJoin`]) and by their own credential, bound to their id, everywhere else ([`RunnerAuth`]). Keys
//! themselves live in `crate::store::orgs`, runner credentials (hashed) in `crate::store::runners`.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::access_log::OrgSlot;
use crate::App;
use crate::domain::sessions::{self, CSRF_HEADER, SESSION_COOKIE};
use crate::error::ApiError;
use crate::store::orgs::key_of;

/// The organization an API key belongs to (sent as a bearer token, or signed in as a dashboard session).
#[derive(Debug, Clone)]
pub struct Caller {
    pub organization_id: String,
    /// The key that made the call, or that signed the session in.
    pub key_id: String,
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';').filter_map(|p| p.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.trim())
    })
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A caller signed in by the dashboard's cookie; `None` without one. State-changing methods need the CSRF token.
async fn session_caller(parts: &Parts, app: &App) -> Result<Option<Caller>, ApiError> {
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE).filter(|t| !t.is_empty()) else { return Ok(None) };
    let Some(session) = sessions::resolve(app, token).await? else {
        return Err(ApiError::unauthorized("session expired or signed out: sign in to the dashboard again"));
    };
    let safe = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
    if !safe {
        sessions::check_csrf(&session, header(parts, CSRF_HEADER), header(parts, "origin"), header(parts, "host"))?;
    }
    Ok(Some(Caller { organization_id: session.organization_id, key_id: session.api_key_id }))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let mut span = crate::trace::child("authorize");
        let caller = Self::authorize(parts, app).await;
        if let Some(span) = &mut span {
            match &caller {
                Ok(c) => span.attr("sandbar.organization_id", &c.organization_id),
                Err(e) => span.fail(&e.message),
            }
        }
        caller
    }
}

impl Caller {
    /// The key (or session) check itself, in the `authorize` span.
    async fn authorize(parts: &Parts, app: &App) -> Result<Self, ApiError> {
        let Some(key) = bearer(parts) else {
            let caller = session_caller(parts, app)
                .await?
                .ok_or_else(|| ApiError::unauthorized("missing API key: send Authorization: Bearer <key>"))?;
            OrgSlot::note(&parts.extensions, &caller.organization_id);
            return Ok(caller);
        };
        match key_of(&app.db, key, app.now()).await? {
            Some((key_id, organization_id)) => {
                OrgSlot::note(&parts.extensions, &organization_id);
                Ok(Self { organization_id, key_id })
            }
            None => Err(ApiError::unauthorized("invalid API key (unknown, expired or revoked)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Runner,
    Proxy,
}

/// Checks the bearer token against `want`'s token only. Another service's token is as unknown here as any other
/// string (401, the same answer): an endpoint never says that what it was sent opens something else.
fn service(parts: &Parts, app: &App, want: Service) -> Result<(), ApiError> {
    let (expected, what) = match want {
        Service::Runner => (&app.config.runner_token, "runner join token"),
        Service::Proxy => (&app.config.proxy_token, "proxy service token"),
    };
    let token = bearer(parts).ok_or_else(|| ApiError::unauthorized(format!("missing {what}")))?;
    match expected.as_deref() {
        Some(t) if sandbar_support::ct_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized(format!("invalid {what}"))),
    }
}

/// A runner's registration: the shared join token (`--runner-token`), accepted on `POST /runners/{id}/register`
/// only.
#[derive(Debug, Clone, Copy)]
pub struct RunnerJoin;

impl FromRequestParts<App> for RunnerJoin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        service(parts, app, Service::Runner).map(|()| Self)
    }
}

/// A request from runner `runner_id` (the path's): its own credential, issued by its registration. Another
/// runner's credential is a 403, the join token or an unknown credential a 401, so one runner cannot read, claim
/// or answer another's jobs nor report its sandboxes.
#[derive(Debug, Clone)]
pub struct RunnerAuth {
    pub runner_id: String,
}

impl FromRequestParts<App> for RunnerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, app)
            .await
            .map_err(|_| ApiError::bad_request("runner routes need a runner id in the path"))?;
        let path_id = params
            .iter()
            .find(|(k, _)| *k == "runner_id")
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| ApiError::bad_request("runner routes need a runner id in the path"))?;
        let token = bearer(parts).ok_or_else(|| ApiError::unauthorized("missing runner credential"))?;
        let owner = crate::store::runners::of_credential(&app.db.pool, &crate::store::sha256_hex(token)).await?;
        match owner {
            Some(id) if sandbar_support::ct_eq(id.as_bytes(), path_id.as_bytes()) => Ok(Self { runner_id: id }),
            Some(_) => {
                Err(ApiError::forbidden(format!("this runner credential is not the credential of runner {path_id}")))
            }
            None => Err(ApiError::unauthorized(
                "unknown runner credential: register first (POST /runners/{id}/register with the join token)",
            )),
        }
    }
}

/// A request from the proxy or its SSH gateway.
#[derive(Debug, Clone, Copy)]
pub struct ProxyAuth;

impl FromRequestParts<App> for ProxyAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        service(parts, app, Service::Proxy).map(|()| Self)
    }
}
