//! Git for the toolbox's `/git/*` endpoints, done by running the sandbox's own `git` program (see `git/run.rs`
//! for how and why), so users get exactly the git they know: their config, hooks, credential helpers and error
//! messages.
//!
//! Where Daytona's daemon (go-git) behaves differently from a plain git command, the SDK's expectations win:
//! `POST /git/branches` creates the branch *and switches to it*, `DELETE /git/branches` deletes unmerged branches
//! too, status lists every untracked file, and `pull` merges when the user configured no pull strategy (git would
//! otherwise refuse to reconcile diverged branches).

mod parse;
mod run;
mod settings;
mod undo;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sandbar_proto::toolbox::{
    CommitInfo, GitAddRequest, GitBranchList, GitBranchRequest, GitCheckoutRequest, GitCloneRequest, GitCommitRequest,
    GitCommitResponse, GitInitRequest, GitPullRequest, GitPushRequest, GitStatus,
};

use super::{Daemon, Error, Result};
use parse::{LOG_FORMAT, parse_log, parse_status};
pub use run::{GitEnv, GitOutput, run_git};
use run::{classify, git_ok};
pub use settings::{add_remote, configure_user, get_config, remotes, set_config, store_credentials};
pub use undo::{reset, restore};

/// A required string field: present and not blank.
fn required<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    if value.trim().is_empty() {
        return Err(Error::bad_request(format!("{field} is required")));
    }
    Ok(value)
}

/// A value git reads as a name (branch, commit, remote, URL): a leading `-` would make it an option.
fn name_arg<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    let value = required(field, value)?;
    if value.starts_with('-') {
        return Err(Error::bad_request(format!("{field} must not start with '-': {value:?}")));
    }
    Ok(value)
}

/// An optional name: absent and blank are the same.
fn opt_name<'a>(field: &str, value: Option<&'a str>) -> Result<Option<&'a str>> {
    match value.filter(|v| !v.trim().is_empty()) {
        Some(v) => name_arg(field, v).map(Some),
        None => Ok(None),
    }
}

/// The directory a repository request is about: it must exist (git itself then says whether it is a repository).
fn repo_dir(d: &Daemon, path: &str) -> Result<PathBuf> {
    let path = required("path", path)?;
    let dir = d.resolve(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(Error::not_found(format!("{path} is not a git repository (not a directory)"))
            .with_code("GIT_REPO_NOT_FOUND")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::not_found(format!("{path}: no such directory")).with_code("GIT_REPO_NOT_FOUND"))
        }
        Err(e) => Err(Error::io(path, &e)),
    }
}

/// Where git runs when no repository is involved yet (clone, init): the work dir, so relative URLs and paths
/// mean the same as in `process/execute`.
fn base_dir(d: &Daemon) -> &Path {
    if d.work_dir.is_dir() { &d.work_dir } else { Path::new("/") }
}

pub async fn clone(d: &Daemon, req: GitCloneRequest) -> Result<()> {
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
    git_ok(d, base_dir(d), &args, &env).await?;
    if let Some(commit) = commit {
        // Detached at that commit, as Daytona leaves it. The `--` makes git take it as a commit, never a file.
        git_ok(d, &target, &["checkout", commit, "--"], &GitEnv::new()).await?;
    }
    Ok(())
}

pub async fn init(d: &Daemon, req: GitInitRequest) -> Result<()> {
    let target = d.resolve(required("path", &req.path)?);
    let mut args: Vec<OsString> = vec!["init".into(), "--quiet".into()];
    if req.bare.unwrap_or(false) {
        args.push("--bare".into());
    }
    if let Some(b) = opt_name("initial_branch", req.initial_branch.as_deref())? {
        args.push(format!("--initial-branch={b}").into());
    }
    args.extend(["--".into(), target.into_os_string()]);
    git_ok(d, base_dir(d), &args, &GitEnv::new()).await?;
    Ok(())
}

pub async fn status(d: &Daemon, path: &str) -> Result<GitStatus> {
    let dir = repo_dir(d, path)?;
    // No optional locks: a status must not fight a concurrent commit for the index lock.
    let env = GitEnv::new().var("GIT_OPTIONAL_LOCKS", "0");
    let args = ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"];
    let out = git_ok(d, &dir, &args, &env).await?;
    Ok(parse_status(&out.stdout))
}

pub async fn add(d: &Daemon, req: GitAddRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    if req.files.is_empty() {
        return Err(Error::bad_request("files is required (use \".\" for everything)"));
    }
    let mut args: Vec<&str> = vec!["add", "--"];
    for f in &req.files {
        args.push(required("files", f)?);
    }
    git_ok(d, &dir, &args, &GitEnv::new()).await?;
    Ok(())
}

pub async fn commit(d: &Daemon, req: GitCommitRequest) -> Result<GitCommitResponse> {
    let dir = repo_dir(d, &req.path)?;
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
    git_ok(d, &dir, &args, &env).await?;
    let out = git_ok(d, &dir, &["rev-parse", "--verify", "HEAD"], &GitEnv::new()).await?;
    Ok(GitCommitResponse { hash: out.stdout.trim().to_owned() })
}

pub async fn push(d: &Daemon, req: GitPushRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    let remote = opt_name("remote", req.remote.as_deref())?;
    let branch = opt_name("branch", req.branch.as_deref())?;
    let mut args: Vec<&str> = vec!["push"];
    if req.set_upstream.unwrap_or(false) {
        args.push("--set-upstream");
    }
    match (remote, branch) {
        // A branch without an upstream is pushed to a branch of the same name on origin, as the SDK's
        // `push(path)` expects (a bare `git push` would refuse it).
        (None, None) if !has_upstream(d, &dir).await? => args.extend(["origin", "HEAD"]),
        (None, None) => {}
        (remote, branch) => {
            args.push(remote.unwrap_or("origin"));
            args.extend(branch);
        }
    }
    let env = GitEnv::new().credentials(req.username.as_deref(), req.password.as_deref());
    git_ok(d, &dir, &args, &env).await?;
    Ok(())
}

async fn has_upstream(d: &Daemon, dir: &Path) -> Result<bool> {
    let args = ["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}"];
    Ok(run_git(d, dir, &args, &GitEnv::new()).await?.ok())
}

pub async fn pull(d: &Daemon, req: GitPullRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    let remote = opt_name("remote", req.remote.as_deref())?;
    let branch = opt_name("branch", req.branch.as_deref())?;
    let mut args: Vec<&str> = vec!["pull"];
    // With no pull strategy configured, git refuses to reconcile diverged branches; merge as git used to.
    // A strategy the user did configure (pull.rebase, branch.<name>.rebase) is left alone.
    let strategy = ["config", "--get-regexp", r"^(pull|branch\..+)\.rebase$"];
    let configured = run_git(d, &dir, &strategy, &GitEnv::new()).await?;
    if configured.code == 1 {
        args.push("--no-rebase");
    }
    if remote.is_some() || branch.is_some() {
        args.push(remote.unwrap_or("origin"));
        args.extend(branch);
    }
    let env = GitEnv::new().credentials(req.username.as_deref(), req.password.as_deref());
    git_ok(d, &dir, &args, &env).await?;
    Ok(())
}

pub async fn branches(d: &Daemon, path: &str) -> Result<GitBranchList> {
    let dir = repo_dir(d, path)?;
    let out = git_ok(d, &dir, &["for-each-ref", "--format=%(refname)", "refs/heads/"], &GitEnv::new()).await?;
    let branches = out.stdout.lines().filter_map(|l| l.strip_prefix("refs/heads/")).map(str::to_owned).collect();
    // Exit 1 (and nothing printed) when HEAD is detached.
    let head = run_git(d, &dir, &["symbolic-ref", "--quiet", "HEAD"], &GitEnv::new()).await?;
    let current = head.ok().then(|| head.stdout.trim().strip_prefix("refs/heads/").map(str::to_owned)).flatten();
    Ok(GitBranchList { branches, current })
}

/// Creates the branch and switches to it, as Daytona does.
pub async fn create_branch(d: &Daemon, req: GitBranchRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    let name = name_arg("name", &req.name)?;
    git_ok(d, &dir, &["checkout", "-b", name], &GitEnv::new()).await?;
    Ok(())
}

/// Deletes the branch, merged or not.
pub async fn delete_branch(d: &Daemon, req: GitBranchRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    let name = name_arg("name", &req.name)?;
    git_ok(d, &dir, &["branch", "-D", "--", name], &GitEnv::new()).await?;
    Ok(())
}

pub async fn checkout(d: &Daemon, req: GitCheckoutRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    let target = name_arg("branch", &req.branch)?;
    // The trailing `--` makes git read the name as a branch or commit only: a file of that name is never
    // restored over local changes. A name that only exists on a remote becomes a local tracking branch.
    git_ok(d, &dir, &["checkout", target, "--"], &GitEnv::new()).await?;
    Ok(())
}

pub async fn history(d: &Daemon, path: &str) -> Result<Vec<CommitInfo>> {
    let dir = repo_dir(d, path)?;
    let out = run_git(d, &dir, &["log", "-z", LOG_FORMAT, "HEAD", "--"], &GitEnv::new()).await?;
    if !out.ok() {
        // A repository whose branch has no commit yet has an empty history, not an error.
        let head = ["rev-parse", "--verify", "--quiet", "HEAD"];
        if !out.stderr.contains("not a git repository") && !run_git(d, &dir, &head, &GitEnv::new()).await?.ok() {
            return Ok(Vec::new());
        }
        return Err(classify(&out));
    }
    Ok(parse_log(&out.stdout))
}
