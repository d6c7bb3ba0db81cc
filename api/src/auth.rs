//! Organizations, API keys (stored as SHA-256 hashes, scoped to one organization, optional expiry, revocable) and
//! the extractors that authenticate users (`Caller`) and services (`RunnerAuth`, `ProxyAuth`).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use subtle::ConstantTimeEq as _;

use crate::App;
use crate::config::Limits;
use crate::db::{Db, random_token, sha256_hex};
use crate::error::ApiError;

/// Prefix of every user API key, so a leaked one is recognisable.
pub const KEY_PREFIX: &str = "sbk_";

/// The organization an API key belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub organization_id: String,
}

/// A new organization's first key (shown once; only its hash is kept).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub organization_id: String,
    pub key_id: String,
    pub api_key: String,
}

pub async fn create_organization(db: &Db, name: &str, limits: &Limits, now_ms: i64) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO organizations (id, name, quota_cpu, quota_memory, quota_disk, quota_sandboxes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(name)
    .bind(limits.quota_cpu)
    .bind(limits.quota_memory)
    .bind(limits.quota_disk)
    .bind(limits.quota_sandboxes)
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    Ok(id)
}

/// Creates a key for `organization_id`; returns `(key id, key)`.
pub async fn create_api_key(
    db: &Db,
    organization_id: &str,
    name: &str,
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<(String, String), sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let key = format!("{KEY_PREFIX}{}", random_token(32));
    sqlx::query(
        "INSERT INTO api_keys (id, organization_id, name, key_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(organization_id)
    .bind(name)
    .bind(sha256_hex(&key))
    .bind(now_ms)
    .bind(expires_at_ms)
    .execute(&db.pool)
    .await?;
    Ok((id, key))
}

/// Revokes a key by id; false when there is no such key.
pub async fn revoke_api_key(db: &Db, key_id: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms)
        .bind(key_id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The organization named `org_name` (created with `limits` as quotas when missing) and a new key for it.
pub async fn bootstrap(db: &Db, org_name: &str, limits: &Limits, now_ms: i64) -> Result<Bootstrap, sqlx::Error> {
    let existing: Option<String> =
        sqlx::query_scalar("SELECT id FROM organizations WHERE name = $1 ORDER BY created_at LIMIT 1")
            .bind(org_name)
            .fetch_optional(&db.pool)
            .await?;
    let organization_id = match existing {
        Some(id) => id,
        None => create_organization(db, org_name, limits, now_ms).await?,
    };
    let (key_id, api_key) = create_api_key(db, &organization_id, "bootstrap", None, now_ms).await?;
    Ok(Bootstrap { organization_id, key_id, api_key })
}

/// The organization of a valid (known, unexpired, unrevoked) key.
pub async fn organization_of_key(db: &Db, key: &str, now_ms: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT organization_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(sha256_hex(key))
    .bind(now_ms)
    .fetch_optional(&db.pool)
    .await
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let key =
            bearer(parts).ok_or_else(|| ApiError::unauthorized("missing API key: send Authorization: Bearer <key>"))?;
        match organization_of_key(&app.db, key, app.now()).await? {
            Some(organization_id) => Ok(Self { organization_id }),
            None => Err(ApiError::unauthorized("invalid API key (unknown, expired or revoked)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Runner,
    Proxy,
}

fn service(parts: &Parts, app: &App, want: Service) -> Result<(), ApiError> {
    let token = bearer(parts).ok_or_else(|| ApiError::unauthorized("missing service token"))?;
    let is = |t: &Option<String>| t.as_deref().is_some_and(|t| same(t, token));
    let kind = if is(&app.config.runner_token) {
        Service::Runner
    } else if is(&app.config.proxy_token) {
        Service::Proxy
    } else {
        return Err(ApiError::unauthorized("invalid service token"));
    };
    if kind != want {
        return Err(ApiError::forbidden(match want {
            Service::Runner => "this endpoint is for runners; the proxy token is not accepted",
            Service::Proxy => "this endpoint is for the proxy; the runner token is not accepted",
        }));
    }
    Ok(())
}

/// A request from a runner (its service token).
#[derive(Debug, Clone, Copy)]
pub struct RunnerAuth;

impl FromRequestParts<App> for RunnerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        service(parts, app, Service::Runner).map(|()| Self)
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
