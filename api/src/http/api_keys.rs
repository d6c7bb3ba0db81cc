//! Daytona's `/api-keys` endpoints, shared by scripts (bearer key) and the dashboard (session cookie and CSRF
//! token): create (the value shown once, 201), list (masked values), the caller's own key, one by name, revoke by
//! name (204). A revoked key stops working at once at the API; the proxy drops its cached answer within about 35 s.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Json, Path};
use crate::App;
use crate::clock::iso;
use crate::domain::keys;
use crate::store::orgs::{self, KEY_PREFIX, KeyRow};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/api-keys", get(list).post(create))
        .route("/api-keys/current", get(current))
        .route("/api-keys/{name}", get(get_one).delete(revoke))
}

/// What a sandbar key may do: everything its organization owns (Daytona's per-resource permissions are not
/// modelled, so a narrower list is refused rather than silently widened).
pub const ALL_PERMISSIONS: &str = "*";

/// Daytona's `CreateApiKey`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateApiKeyBody {
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// RFC 3339; none: the key never expires.
    pub expires_at: Option<String>,
}

/// Daytona's `ApiKeyResponse`: the only time the value is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyResponse {
    pub name: String,
    pub value: String,
    pub created_at: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<String>,
}

/// Daytona's `ApiKeyList` item: the value masked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyList {
    pub name: String,
    pub value: String,
    pub created_at: String,
    pub permissions: Vec<String>,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub user_id: String,
    pub organization_id: String,
}

/// How a list shows a key: the prefix and its last characters.
pub fn masked(row: &KeyRow) -> String {
    format!("{KEY_PREFIX}…{}", row.value_hint.as_deref().unwrap_or(""))
}

impl From<&KeyRow> for ApiKeyList {
    fn from(k: &KeyRow) -> Self {
        Self {
            name: k.name.clone(),
            value: masked(k),
            created_at: iso(k.created_at),
            permissions: vec![ALL_PERMISSIONS.into()],
            last_used_at: None,
            expires_at: k.expires_at.map(iso),
            // Keys belong to organizations here, not to users.
            user_id: k.organization_id.clone(),
            organization_id: k.organization_id.clone(),
        }
    }
}

async fn create(State(app): State<App>, caller: Caller, Json(body): Json<CreateApiKeyBody>) -> ApiResult<Response> {
    if body.permissions.iter().any(|p| p != ALL_PERMISSIONS) {
        return Err(ApiError::bad_request(
            "sandbar keys open everything their organization owns: send permissions [] or [\"*\"]",
        ));
    }
    let expires_at = match body.expires_at.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(keys::parse_time(s).ok_or_else(|| {
            ApiError::bad_request(format!("expiresAt must be an RFC 3339 time like 2026-12-31T23:59:59Z, got {s:?}"))
        })?),
        None => None,
    };
    let new = keys::create(&app, &caller.organization_id, &body.name, expires_at).await?;
    let out = ApiKeyResponse {
        name: new.row.name.clone(),
        value: new.value,
        created_at: iso(new.row.created_at),
        permissions: vec![ALL_PERMISSIONS.into()],
        expires_at: new.row.expires_at.map(iso),
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn list(State(app): State<App>, caller: Caller) -> ApiResult<Response> {
    let keys = orgs::list_keys(&app.db, &caller.organization_id).await?;
    Ok(Json(keys.iter().map(ApiKeyList::from).collect::<Vec<_>>()).into_response())
}

async fn current(State(app): State<App>, caller: Caller) -> ApiResult<Response> {
    let key = orgs::key_by_id(&app.db, &caller.key_id).await?.ok_or_else(|| ApiError::not_found("no such API key"))?;
    Ok(Json(ApiKeyList::from(&key)).into_response())
}

async fn get_one(State(app): State<App>, caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    let keys = orgs::list_keys(&app.db, &caller.organization_id).await?;
    let key = keys
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no API key named {name:?}")))?;
    Ok(Json(ApiKeyList::from(key)).into_response())
}

async fn revoke(State(app): State<App>, caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    keys::revoke(&app, &caller.organization_id, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
