//! `/git/...`. The SDK sends snake_case bodies (`commit_id`, `insecure_skip_tls`, `set_upstream`, `allow_empty`);
//! the camelCase aliases accept what other clients of Daytona's API send.

use serde::{Deserialize, Serialize};

/// `POST /git/clone`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitCloneRequest {
    pub url: String,
    pub path: String,
    pub branch: Option<String>,
    #[serde(alias = "commitId")]
    pub commit_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    #[serde(alias = "insecureSkipTls")]
    pub insecure_skip_tls: Option<bool>,
    pub depth: Option<u32>,
}

/// `POST /git/init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitInitRequest {
    pub path: String,
    pub bare: Option<bool>,
    #[serde(alias = "initialBranch")]
    pub initial_branch: Option<String>,
}

/// `?path=` of `GET /git/status`, `/git/branches`, `/git/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoQuery {
    pub path: String,
}

/// `POST /git/add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitAddRequest {
    pub path: String,
    pub files: Vec<String>,
}

/// `POST /git/commit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitCommitRequest {
    pub path: String,
    pub message: String,
    pub author: Option<String>,
    pub email: Option<String>,
    #[serde(alias = "allowEmpty")]
    pub allow_empty: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitCommitResponse {
    pub hash: String,
}

/// `POST /git/push`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitPushRequest {
    pub path: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub branch: Option<String>,
    pub remote: Option<String>,
    #[serde(alias = "setUpstream")]
    pub set_upstream: Option<bool>,
}

/// `POST /git/pull`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitPullRequest {
    pub path: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub branch: Option<String>,
    pub remote: Option<String>,
}

/// `POST /git/branches` (create and switch) and `DELETE /git/branches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitBranchRequest {
    pub path: String,
    pub name: String,
}

/// `GET /git/branches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitBranchList {
    pub branches: Vec<String>,
    /// The branch HEAD is on; absent when HEAD is detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

/// `POST /git/checkout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitCheckoutRequest {
    pub path: String,
    pub branch: String,
}

/// `GET /git/status` answer (Daytona's `GitStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitStatus {
    /// The branch HEAD is on (also when it has no commit yet), or `HEAD` when detached, as go-git reports it.
    pub current_branch: String,
    pub file_status: Vec<FileStatus>,
    pub ahead: u64,
    pub behind: u64,
    /// Whether the branch has an upstream that exists (what `ahead`/`behind` are counted against).
    pub branch_published: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub detached: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    pub name: String,
    /// Daytona's words: `Unmodified`, `Modified`, `Added`, `Untracked`, ...
    pub staging: String,
    pub worktree: String,
    /// The original path of a renamed or copied file; empty otherwise.
    pub extra: String,
}

/// One commit of `GET /git/history` (Daytona's `GitCommitInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    pub hash: String,
    pub author: String,
    pub email: String,
    pub message: String,
    /// Author date, RFC 3339 with the author's offset.
    pub timestamp: String,
}

/// `POST /git/reset`: `mode` is soft, mixed (the default), hard, merge or keep; `target` defaults to HEAD.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitResetRequest {
    pub path: String,
    pub mode: Option<String>,
    pub target: Option<String>,
    pub files: Option<Vec<String>>,
}

/// `POST /git/restore`: the working tree when neither `staged` nor `worktree` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitRestoreRequest {
    pub path: String,
    pub files: Vec<String>,
    pub staged: Option<bool>,
    pub worktree: Option<bool>,
    pub source: Option<String>,
}

/// `POST /git/remotes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitAddRemoteRequest {
    pub path: String,
    pub name: String,
    pub url: String,
    pub fetch: Option<bool>,
    pub overwrite: Option<bool>,
}

/// `GET /git/remotes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitRemoteList {
    pub remotes: Vec<GitRemote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRemote {
    pub name: String,
    /// The fetch URL.
    pub url: String,
}

/// `POST /git/config`: `scope` is global (the default), local (needs `path`) or system.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitSetConfigRequest {
    pub key: String,
    pub value: String,
    pub scope: Option<String>,
    pub path: Option<String>,
}

/// `?key&scope&path` of `GET /git/config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitConfigQuery {
    pub key: String,
    pub scope: Option<String>,
    pub path: Option<String>,
}

/// `GET /git/config` answer: `value` is null when the key is not set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitConfigValue {
    pub value: Option<String>,
}

/// `POST /git/config/user`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitConfigureUserRequest {
    pub name: String,
    pub email: String,
    pub scope: Option<String>,
    pub path: Option<String>,
}

/// `POST /git/credentials`: stored with git's `store` helper; `host` defaults to github.com, `protocol` to https.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitCredentialsRequest {
    pub username: String,
    pub password: String,
    pub host: Option<String>,
    pub protocol: Option<String>,
}
