//! `/git/*`: Daytona's git endpoints, done by running the sandbox's own `git` program (see `git/run.rs` for how
//! and why), so users get exactly the git they know: their config, hooks, credential helpers and error messages.
//!
//! Where Daytona's daemon (go-git) behaves differently from a plain git command, the SDK's expectations win:
//! `POST /git/branches` creates the branch *and switches to it*, `DELETE /git/branches` deletes unmerged branches
//! too, status lists every untracked file, and `pull` merges when the user configured no pull strategy (git would
//! otherwise refuse to reconcile diverged branches).

mod parse;
mod run;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::util::{ApiJson, ApiQuery};
use crate::{AppState, Daemon};
use parse::{CommitInfo, GitStatus, LOG_FORMAT, parse_log, parse_status};
pub use run::{GitEnv, GitOutput, run_git};
use run::{classify, git_ok};

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
}

// The SDK sends snake_case bodies (`commit_id`, `insecure_skip_tls`, `set_upstream`, `allow_empty`); the camelCase
// aliases accept what other clients of Daytona's API send.

#[derive(Debug, Deserialize)]
struct CloneRequest {
    url: String,
    path: String,
    branch: Option<String>,
    #[serde(alias = "commitId")]
    commit_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(alias = "insecureSkipTls")]
    insecure_skip_tls: Option<bool>,
    depth: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct InitRequest {
    path: String,
    bare: Option<bool>,
    #[serde(alias = "initialBranch")]
    initial_branch: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PathQuery {
    path: String,
}

#[derive(Debug, Deserialize)]
struct AddRequest {
    path: String,
    files: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct CommitRequest {
    path: String,
    message: String,
    author: Option<String>,
    email: Option<String>,
    #[serde(alias = "allowEmpty")]
    allow_empty: Option<bool>,
}

#[derive(Debug, Serialize)]
struct CommitResponse {
    hash: String,
}

#[derive(Debug, Deserialize)]
struct PushRequest {
    path: String,
    username: Option<String>,
    password: Option<String>,
    branch: Option<String>,
    remote: Option<String>,
    #[serde(alias = "setUpstream")]
    set_upstream: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    path: String,
    username: Option<String>,
    password: Option<String>,
    branch: Option<String>,
    remote: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BranchRequest {
    path: String,
    name: String,
}

#[derive(Debug, Serialize)]
struct BranchList {
    branches: Vec<String>,
    /// The branch HEAD is on; absent when HEAD is detached.
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CheckoutRequest {
    path: String,
    branch: String,
}

/// A required string field: present and not blank.
fn required<'a>(field: &str, value: &'a str) -> ApiResult<&'a str> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{field} is required")));
    }
    Ok(value)
}

/// A value git reads as a name (branch, commit, remote, URL): a leading `-` would make it an option.
fn name_arg<'a>(field: &str, value: &'a str) -> ApiResult<&'a str> {
    let value = required(field, value)?;
    if value.starts_with('-') {
        return Err(ApiError::bad_request(format!("{field} must not start with '-': {value:?}")));
    }
    Ok(value)
}

/// An optional name: absent and blank are the same.
fn opt_name<'a>(field: &str, value: Option<&'a str>) -> ApiResult<Option<&'a str>> {
    match value.filter(|v| !v.trim().is_empty()) {
        Some(v) => name_arg(field, v).map(Some),
        None => Ok(None),
    }
}

/// The directory a repository request is about: it must exist (git itself then says whether it is a repository).
fn repo_dir(d: &Daemon, path: &str) -> ApiResult<PathBuf> {
    let path = required("path", path)?;
    let dir = d.resolve(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(ApiError::not_found(format!("{path} is not a git repository (not a directory)"))
            .with_code("GIT_REPO_NOT_FOUND")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::not_found(format!("{path}: no such directory")).with_code("GIT_REPO_NOT_FOUND"))
        }
        Err(e) => Err(ApiError::io(path, &e)),
    }
}

/// Where git runs when no repository is involved yet (clone, init): the work dir, so relative URLs and paths
/// mean the same as in `process/execute`.
fn base_dir(d: &Daemon) -> &Path {
    if d.work_dir.is_dir() { &d.work_dir } else { Path::new("/") }
}

async fn clone(State(d): State<AppState>, ApiJson(req): ApiJson<CloneRequest>) -> ApiResult<StatusCode> {
    let url = name_arg("url", &req.url)?;
    let target = d.resolve(required("path", &req.path)?);
    let branch = opt_name("branch", req.branch.as_deref())?;
    let commit = opt_name("commit_id", req.commit_id.as_deref())?;
    let mut args: Vec<OsString> = vec!["clone".into()];
    if let Some(b) = branch {
        args.push(format!("--branch={b}").into());
    }
    if let Some(depth) = req.depth.filter(|n| *n > 0) {
        args.push(format!("--depth={depth}").into());
    }
    args.extend(["--".into(), url.into(), target.clone().into_os_string()]);
    let env = GitEnv::new()
        .credentials(req.username.as_deref(), req.password.as_deref())
        .insecure_tls(req.insecure_skip_tls.unwrap_or(false));
    git_ok(&d, base_dir(&d), &args, &env).await?;
    if let Some(commit) = commit {
        // Detached at that commit, as Daytona leaves it. The `--` makes git take it as a commit, never a file.
        git_ok(&d, &target, &["checkout", commit, "--"], &GitEnv::new()).await?;
    }
    Ok(StatusCode::OK)
}

async fn init(State(d): State<AppState>, ApiJson(req): ApiJson<InitRequest>) -> ApiResult<StatusCode> {
    let target = d.resolve(required("path", &req.path)?);
    let mut args: Vec<OsString> = vec!["init".into(), "--quiet".into()];
    if req.bare.unwrap_or(false) {
        args.push("--bare".into());
    }
    if let Some(b) = opt_name("initial_branch", req.initial_branch.as_deref())? {
        args.push(format!("--initial-branch={b}").into());
    }
    args.extend(["--".into(), target.into_os_string()]);
    git_ok(&d, base_dir(&d), &args, &GitEnv::new()).await?;
    Ok(StatusCode::CREATED)
}

async fn status(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<GitStatus>> {
    let dir = repo_dir(&d, &q.path)?;
    // No optional locks: a status must not fight a concurrent commit for the index lock.
    let env = GitEnv::new().var("GIT_OPTIONAL_LOCKS", "0");
    let args = ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"];
    let out = git_ok(&d, &dir, &args, &env).await?;
    Ok(Json(parse_status(&out.stdout)))
}

async fn add(State(d): State<AppState>, ApiJson(req): ApiJson<AddRequest>) -> ApiResult<StatusCode> {
    let dir = repo_dir(&d, &req.path)?;
    if req.files.is_empty() {
        return Err(ApiError::bad_request("files is required (use \".\" for everything)"));
    }
    let mut args: Vec<&str> = vec!["add", "--"];
    for f in &req.files {
        args.push(required("files", f)?);
    }
    git_ok(&d, &dir, &args, &GitEnv::new()).await?;
    Ok(StatusCode::OK)
}

async fn commit(State(d): State<AppState>, ApiJson(req): ApiJson<CommitRequest>) -> ApiResult<Json<CommitResponse>> {
    let dir = repo_dir(&d, &req.path)?;
    // Author and committer both, as Daytona records them; absent fields fall back to the user's git config.
    let mut env = GitEnv::new();
    if let Some(name) = req.author.as_deref().filter(|s| !s.trim().is_empty()) {
        env = env.var("GIT_AUTHOR_NAME", name).var("GIT_COMMITTER_NAME", name);
    }
    if let Some(email) = req.email.as_deref().filter(|s| !s.trim().is_empty()) {
        env = env.var("GIT_AUTHOR_EMAIL", email).var("GIT_COMMITTER_EMAIL", email);
    }
    let mut args: Vec<String> = vec!["commit".into(), format!("--message={}", req.message)];
    if req.allow_empty.unwrap_or(false) {
        args.push("--allow-empty".into());
    }
    git_ok(&d, &dir, &args, &env).await?;
    let out = git_ok(&d, &dir, &["rev-parse", "--verify", "HEAD"], &GitEnv::new()).await?;
    Ok(Json(CommitResponse { hash: out.stdout.trim().to_owned() }))
}

async fn push(State(d): State<AppState>, ApiJson(req): ApiJson<PushRequest>) -> ApiResult<StatusCode> {
    let dir = repo_dir(&d, &req.path)?;
    let remote = opt_name("remote", req.remote.as_deref())?;
    let branch = opt_name("branch", req.branch.as_deref())?;
    let mut args: Vec<&str> = vec!["push"];
    if req.set_upstream.unwrap_or(false) {
        args.push("--set-upstream");
    }
    match (remote, branch) {
        // A branch without an upstream is pushed to a branch of the same name on origin, as the SDK's
        // `push(path)` expects (a bare `git push` would refuse it).
        (None, None) if !has_upstream(&d, &dir).await? => args.extend(["origin", "HEAD"]),
        (None, None) => {}
        (remote, branch) => {
            args.push(remote.unwrap_or("origin"));
            args.extend(branch);
        }
    }
    let env = GitEnv::new().credentials(req.username.as_deref(), req.password.as_deref());
    git_ok(&d, &dir, &args, &env).await?;
    Ok(StatusCode::OK)
}

async fn has_upstream(d: &Daemon, dir: &Path) -> ApiResult<bool> {
    let args = ["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}"];
    Ok(run_git(d, dir, &args, &GitEnv::new()).await?.ok())
}

async fn pull(State(d): State<AppState>, ApiJson(req): ApiJson<PullRequest>) -> ApiResult<StatusCode> {
    let dir = repo_dir(&d, &req.path)?;
    let remote = opt_name("remote", req.remote.as_deref())?;
    let branch = opt_name("branch", req.branch.as_deref())?;
    let mut args: Vec<&str> = vec!["pull"];
    // With no pull strategy configured, git refuses to reconcile diverged branches; merge as git used to.
    // A strategy the user did configure (pull.rebase, branch.<name>.rebase) is left alone.
    let strategy = ["config", "--get-regexp", r"^(pull|branch\..+)\.rebase$"];
    let configured = run_git(&d, &dir, &strategy, &GitEnv::new()).await?;
    if configured.code == 1 {
        args.push("--no-rebase");
    }
    if remote.is_some() || branch.is_some() {
        args.push(remote.unwrap_or("origin"));
        args.extend(branch);
    }
    let env = GitEnv::new().credentials(req.username.as_deref(), req.password.as_deref());
    git_ok(&d, &dir, &args, &env).await?;
    Ok(StatusCode::OK)
}

async fn list_branches(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<BranchList>> {
    let dir = repo_dir(&d, &q.path)?;
    let out = git_ok(&d, &dir, &["for-each-ref", "--format=%(refname)", "refs/heads/"], &GitEnv::new()).await?;
    let branches = out.stdout.lines().filter_map(|l| l.strip_prefix("refs/heads/")).map(str::to_owned).collect();
    // Exit 1 (and nothing printed) when HEAD is detached.
    let head = run_git(&d, &dir, &["symbolic-ref", "--quiet", "HEAD"], &GitEnv::new()).await?;
    let current = head.ok().then(|| head.stdout.trim().strip_prefix("refs/heads/").map(str::to_owned)).flatten();
    Ok(Json(BranchList { branches, current }))
}

async fn create_branch(State(d): State<AppState>, ApiJson(req): ApiJson<BranchRequest>) -> ApiResult<StatusCode> {
    let dir = repo_dir(&d, &req.path)?;
    let name = name_arg("name", &req.name)?;
    git_ok(&d, &dir, &["checkout", "-b", name], &GitEnv::new()).await?;
    Ok(StatusCode::CREATED)
}

/// The SDK sends the branch as a JSON body on DELETE; a client that cannot send a body may use the query.
async fn delete_branch(
    State(d): State<AppState>,
    headers: HeaderMap,
    query: axum::extract::RawQuery,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: BranchRequest = body_or_query(&headers, query.0.as_deref(), &body)?;
    let dir = repo_dir(&d, &req.path)?;
    let name = name_arg("name", &req.name)?;
    git_ok(&d, &dir, &["branch", "-D", "--", name], &GitEnv::new()).await?;
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

async fn checkout(State(d): State<AppState>, ApiJson(req): ApiJson<CheckoutRequest>) -> ApiResult<StatusCode> {
    let dir = repo_dir(&d, &req.path)?;
    let target = name_arg("branch", &req.branch)?;
    // The trailing `--` makes git read the name as a branch or commit only: a file of that name is never
    // restored over local changes. A name that only exists on a remote becomes a local tracking branch.
    git_ok(&d, &dir, &["checkout", target, "--"], &GitEnv::new()).await?;
    Ok(StatusCode::OK)
}

async fn history(State(d): State<AppState>, ApiQuery(q): ApiQuery<PathQuery>) -> ApiResult<Json<Vec<CommitInfo>>> {
    let dir = repo_dir(&d, &q.path)?;
    let out = run_git(&d, &dir, &["log", "-z", LOG_FORMAT, "HEAD", "--"], &GitEnv::new()).await?;
    if !out.ok() {
        // A repository whose branch has no commit yet has an empty history, not an error.
        let head = ["rev-parse", "--verify", "--quiet", "HEAD"];
        if !out.stderr.contains("not a git repository") && !run_git(&d, &dir, &head, &GitEnv::new()).await?.ok() {
            return Ok(Json(Vec::new()));
        }
        return Err(classify(&out));
    }
    Ok(Json(parse_log(&out.stdout)))
}
