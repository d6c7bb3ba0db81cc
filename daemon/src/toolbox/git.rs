//! `/git/*` (engine: `engine::git`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandbar_proto::toolbox::{
    CommitInfo, GitAddRemoteRequest, GitAddRequest, GitBranchList, GitBranchRequest, GitCheckoutRequest,
    GitCloneRequest, GitCommitRequest, GitCommitResponse, GitConfigQuery, GitConfigValue, GitConfigureUserRequest,
    GitCredentialsRequest, GitInitRequest, GitPullRequest, GitPushRequest, GitRemoteList, GitResetRequest,
    GitRestoreRequest, GitSetConfigRequest, GitStatus, RepoQuery,
};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use crate::AppState;
use crate::engine::git;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/git/clone", post(clone))
        .route("/git/init", post(init))
        .route("/git/status", get(status))
        .route("/git/add", post(add))
        .route("/git/commit", post(commit))
        .route("/git/push", post(push))
        .route("/git/pull", post(pull))
        .route("/git/branches", get(list_branches).post(create_branch).delete(delete_branch))
        .route("/git/checkout", post(checkout))
        .route("/git/history", get(history))
        .route("/git/reset", post(reset))
        .route("/git/restore", post(restore))
        .route("/git/remotes", get(list_remotes).post(add_remote))
        .route("/git/config", get(get_config).post(set_config))
        .route("/git/config/user", post(configure_user))
        .route("/git/credentials", post(credentials))
}

async fn clone(State(d): State<AppState>, ApiJson(req): ApiJson<GitCloneRequest>) -> ApiResult<StatusCode> {
    git::clone(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn init(State(d): State<AppState>, ApiJson(req): ApiJson<GitInitRequest>) -> ApiResult<StatusCode> {
    git::init(&d, req).await?;
    Ok(StatusCode::CREATED)
}

async fn status(State(d): State<AppState>, ApiQuery(q): ApiQuery<RepoQuery>) -> ApiResult<Json<GitStatus>> {
    Ok(Json(git::status(&d, &q.path).await?))
}

async fn add(State(d): State<AppState>, ApiJson(req): ApiJson<GitAddRequest>) -> ApiResult<StatusCode> {
    git::add(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn commit(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<GitCommitRequest>,
) -> ApiResult<Json<GitCommitResponse>> {
    Ok(Json(git::commit(&d, req).await?))
}

async fn push(State(d): State<AppState>, ApiJson(req): ApiJson<GitPushRequest>) -> ApiResult<StatusCode> {
    git::push(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn pull(State(d): State<AppState>, ApiJson(req): ApiJson<GitPullRequest>) -> ApiResult<StatusCode> {
    git::pull(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn list_branches(State(d): State<AppState>, ApiQuery(q): ApiQuery<RepoQuery>) -> ApiResult<Json<GitBranchList>> {
    Ok(Json(git::branches(&d, &q.path).await?))
}

async fn create_branch(State(d): State<AppState>, ApiJson(req): ApiJson<GitBranchRequest>) -> ApiResult<StatusCode> {
    git::create_branch(&d, req).await?;
    Ok(StatusCode::CREATED)
}

/// The SDK sends the branch as a JSON body on DELETE; a client that cannot send a body may use the query.
async fn delete_branch(
    State(d): State<AppState>,
    headers: HeaderMap,
    query: axum::extract::RawQuery,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: GitBranchRequest = body_or_query(&headers, query.0.as_deref(), &body)?;
    git::delete_branch(&d, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn body_or_query<T: DeserializeOwned>(headers: &HeaderMap, query: Option<&str>, body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return from_query(query.unwrap_or_default());
    }
    let json_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json") || v.contains("+json"));
    if !json_type {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Decodes a query string with axum's own query extractor rules.
fn from_query<T: DeserializeOwned>(query: &str) -> ApiResult<T> {
    let uri: axum::http::Uri =
        format!("/?{query}").parse().map_err(|_| ApiError::bad_request("invalid query string"))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON body {{path, name}}: {}", e.body_text())))
}

async fn checkout(State(d): State<AppState>, ApiJson(req): ApiJson<GitCheckoutRequest>) -> ApiResult<StatusCode> {
    git::checkout(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn history(State(d): State<AppState>, ApiQuery(q): ApiQuery<RepoQuery>) -> ApiResult<Json<Vec<CommitInfo>>> {
    Ok(Json(git::history(&d, &q.path).await?))
}

async fn reset(State(d): State<AppState>, ApiJson(req): ApiJson<GitResetRequest>) -> ApiResult<StatusCode> {
    git::reset(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn restore(State(d): State<AppState>, ApiJson(req): ApiJson<GitRestoreRequest>) -> ApiResult<StatusCode> {
    git::restore(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn list_remotes(State(d): State<AppState>, ApiQuery(q): ApiQuery<RepoQuery>) -> ApiResult<Json<GitRemoteList>> {
    Ok(Json(git::remotes(&d, &q.path).await?))
}

async fn add_remote(State(d): State<AppState>, ApiJson(req): ApiJson<GitAddRemoteRequest>) -> ApiResult<StatusCode> {
    git::add_remote(&d, req).await?;
    Ok(StatusCode::CREATED)
}

async fn get_config(
    State(d): State<AppState>,
    ApiQuery(q): ApiQuery<GitConfigQuery>,
) -> ApiResult<Json<GitConfigValue>> {
    Ok(Json(git::get_config(&d, q).await?))
}

async fn set_config(State(d): State<AppState>, ApiJson(req): ApiJson<GitSetConfigRequest>) -> ApiResult<StatusCode> {
    git::set_config(&d, req).await?;
    Ok(StatusCode::OK)
}

async fn configure_user(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<GitConfigureUserRequest>,
) -> ApiResult<StatusCode> {
    git::configure_user(&d, req).await?;
    Ok(StatusCode::OK)
}

/// Never logged: the body holds a password.
async fn credentials(State(d): State<AppState>, ApiJson(req): ApiJson<GitCredentialsRequest>) -> ApiResult<StatusCode> {
    git::store_credentials(&d, req).await?;
    Ok(StatusCode::OK)
}
