//! `reset` and `restore`: undoing changes in a repository.

use std::ffi::OsString;

use sandbar_proto::toolbox::{GitResetRequest, GitRestoreRequest};

use super::{GitEnv, git_ok, opt_name, repo_dir, required};
use crate::engine::{Daemon, Error, Result};

const RESET_MODES: &[&str] = &["soft", "mixed", "hard", "merge", "keep"];

/// `git reset --<mode> [<target>]`, or for `files`, `git reset [<target>] -- <files>` (which only unstages, so
/// only the mixed mode goes with files).
pub async fn reset(d: &Daemon, req: GitResetRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    let mode = req.mode.as_deref().filter(|m| !m.is_empty());
    if let Some(m) = mode.filter(|m| !RESET_MODES.contains(m)) {
        return Err(Error::bad_request(format!("mode must be one of soft, mixed, hard, merge or keep, not {m:?}")));
    }
    let target = opt_name("target", req.target.as_deref())?;
    let files = req.files.unwrap_or_default();
    let mut args: Vec<OsString> = vec!["reset".into(), "--quiet".into()];
    if files.is_empty() {
        args.push(format!("--{}", mode.unwrap_or("mixed")).into());
        args.extend(target.map(OsString::from));
        args.push("--".into());
    } else {
        if mode.is_some_and(|m| m != "mixed") {
            return Err(Error::bad_request("a reset of some files only unstages them: use mode mixed (or none)"));
        }
        args.extend(target.map(OsString::from));
        args.push("--".into());
        for f in &files {
            args.push(required("files", f)?.into());
        }
    }
    git_ok(d, &dir, &args, &GitEnv::new()).await?;
    Ok(())
}

/// `git restore [--staged] [--worktree] [--source=<rev>] -- <files>`; the working tree when neither is asked.
pub async fn restore(d: &Daemon, req: GitRestoreRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    if req.files.is_empty() {
        return Err(Error::bad_request("files is required"));
    }
    let mut args: Vec<OsString> = vec!["restore".into()];
    let staged = req.staged.unwrap_or(false);
    let worktree = req.worktree.unwrap_or(!staged);
    if staged {
        args.push("--staged".into());
    }
    if worktree {
        args.push("--worktree".into());
    }
    if let Some(source) = opt_name("source", req.source.as_deref())? {
        args.push(format!("--source={source}").into());
    }
    args.push("--".into());
    for f in &req.files {
        args.push(required("files", f)?.into());
    }
    git_ok(d, &dir, &args, &GitEnv::new()).await?;
    Ok(())
}
