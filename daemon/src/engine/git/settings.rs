//! Remotes, configuration and stored credentials.
//!
//! Credentials go where git's own `store` helper keeps them (`~/.git-credentials`, mode 0600, one URL a line),
//! and `credential.helper=store` is added to the global config unless it is there already: as the SDK's name
//! `dangerously_authenticate` warns, the password is then on disk in plain text, readable by the sandbox's user.

use std::path::PathBuf;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sandbar_proto::toolbox::{
    GitAddRemoteRequest, GitConfigQuery, GitConfigValue, GitConfigureUserRequest, GitCredentialsRequest, GitRemote,
    GitRemoteList, GitSetConfigRequest,
};

use super::{GitEnv, base_dir, git_ok, name_arg, repo_dir, required, run_git};
use crate::engine::{Daemon, Error, Result};

pub async fn remotes(d: &Daemon, path: &str) -> Result<GitRemoteList> {
    let dir = repo_dir(d, path)?;
    let out = git_ok(d, &dir, &["remote"], &GitEnv::new()).await?;
    let mut remotes = Vec::new();
    for name in out.stdout.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let url = git_ok(d, &dir, &["remote", "get-url", "--", name], &GitEnv::new()).await?;
        remotes.push(GitRemote { name: name.to_owned(), url: url.stdout.trim().to_owned() });
    }
    Ok(GitRemoteList { remotes })
}

/// Adds a remote; an existing one of that name is a 409 unless `overwrite`, which sets its URL instead.
pub async fn add_remote(d: &Daemon, req: GitAddRemoteRequest) -> Result<()> {
    let dir = repo_dir(d, &req.path)?;
    let name = name_arg("name", &req.name)?;
    let url = name_arg("url", &req.url)?;
    let exists = run_git(d, &dir, &["remote", "get-url", "--", name], &GitEnv::new()).await?.ok();
    if exists && !req.overwrite.unwrap_or(false) {
        return Err(Error::conflict(format!("remote {name} already exists (pass overwrite to replace its URL)")));
    }
    let args: [&str; 5] =
        if exists { ["remote", "set-url", "--", name, url] } else { ["remote", "add", "--", name, url] };
    git_ok(d, &dir, &args, &GitEnv::new()).await?;
    if req.fetch.unwrap_or(false) {
        git_ok(d, &dir, &["fetch", "--quiet", name], &GitEnv::new()).await?;
    }
    Ok(())
}

/// Where a config command runs and with which scope flag.
fn scope(d: &Daemon, scope: Option<&str>, path: Option<&str>) -> Result<(PathBuf, &'static str)> {
    match scope.filter(|s| !s.is_empty()).unwrap_or("global") {
        "global" => Ok((base_dir(d).to_path_buf(), "--global")),
        "system" => Ok((base_dir(d).to_path_buf(), "--system")),
        "local" => {
            let path = path.filter(|p| !p.trim().is_empty()).ok_or_else(|| {
                Error::bad_request("path is required for the local scope (the repository whose config it is)")
            })?;
            Ok((repo_dir(d, path)?, "--local"))
        }
        other => Err(Error::bad_request(format!("scope must be global, local or system, not {other:?}"))),
    }
}

fn config_key(key: &str) -> Result<&str> {
    let key = name_arg("key", key)?;
    if !key.contains('.') || key.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(Error::bad_request(format!("key must be a dotted config name such as user.name, not {key:?}")));
    }
    Ok(key)
}

pub async fn set_config(d: &Daemon, req: GitSetConfigRequest) -> Result<()> {
    let key = config_key(&req.key)?;
    let (dir, flag) = scope(d, req.scope.as_deref(), req.path.as_deref())?;
    git_ok(d, &dir, &["config", flag, "--replace-all", "--", key, &req.value], &GitEnv::new()).await?;
    Ok(())
}

/// The key's value, or `None` when it is not set in that scope.
pub async fn get_config(d: &Daemon, q: GitConfigQuery) -> Result<GitConfigValue> {
    let key = config_key(&q.key)?;
    let (dir, flag) = scope(d, q.scope.as_deref(), q.path.as_deref())?;
    let out = run_git(d, &dir, &["config", flag, "--get", "--", key], &GitEnv::new()).await?;
    match out.code {
        0 => Ok(GitConfigValue { value: Some(out.stdout.strip_suffix('\n').unwrap_or(&out.stdout).to_owned()) }),
        // 1: not set (a missing global or system file is the same).
        1 => Ok(GitConfigValue { value: None }),
        _ => Err(super::run::classify(&out)),
    }
}

pub async fn configure_user(d: &Daemon, req: GitConfigureUserRequest) -> Result<()> {
    let name = required("name", &req.name)?;
    let email = required("email", &req.email)?;
    for (key, value) in [("user.name", name), ("user.email", email)] {
        let set = GitSetConfigRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            scope: req.scope.clone(),
            path: req.path.clone(),
        };
        set_config(d, set).await?;
    }
    Ok(())
}

/// Stores a username and password for `protocol://host` with git's `store` helper.
pub async fn store_credentials(d: &Daemon, req: GitCredentialsRequest) -> Result<()> {
    let username = required("username", &req.username)?;
    let password = required("password", &req.password)?;
    let host = req.host.as_deref().filter(|h| !h.trim().is_empty()).unwrap_or("github.com");
    let protocol = req.protocol.as_deref().filter(|p| !p.trim().is_empty()).unwrap_or("https");
    if !protocol.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.') {
        return Err(Error::bad_request(format!("invalid protocol {protocol:?}")));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '?' | '#')) {
        return Err(Error::bad_request(format!("invalid host {host:?} (a host name, optionally with :port)")));
    }
    let home = d.effective_env().get("HOME").map(PathBuf::from).unwrap_or_else(|| d.home.clone());
    let file = home.join(".git-credentials");
    let existing = match std::fs::read_to_string(&file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(".git-credentials", &e)),
    };
    let line = credential_line(protocol, host, username, password);
    let prefix = format!("{protocol}://");
    let mut lines: Vec<&str> =
        existing.lines().filter(|l| !(l.starts_with(&prefix) && line_host(l) == Some(host))).collect();
    lines.push(&line);
    let mut text = lines.join("\n");
    text.push('\n');
    sandbar_support::fs::write_private(&file, text.as_bytes()).map_err(|e| Error::io(".git-credentials", &e))?;
    let helpers =
        run_git(d, base_dir(d), &["config", "--global", "--get-all", "credential.helper"], &GitEnv::new()).await?;
    if !helpers.stdout.lines().any(|h| h.trim() == "store") {
        git_ok(d, base_dir(d), &["config", "--global", "--add", "credential.helper", "store"], &GitEnv::new()).await?;
    }
    Ok(())
}

/// One line of `~/.git-credentials`: `protocol://user:password@host`, user and password percent-encoded.
fn credential_line(protocol: &str, host: &str, username: &str, password: &str) -> String {
    let user = utf8_percent_encode(username, NON_ALPHANUMERIC);
    let pass = utf8_percent_encode(password, NON_ALPHANUMERIC);
    format!("{protocol}://{user}:{pass}@{host}")
}

/// The host of a stored credential line (after the last `@`, before any path).
fn line_host(line: &str) -> Option<&str> {
    let rest = line.split_once("://")?.1;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Some(host.split('/').next().unwrap_or(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_lines_encode_user_and_password() {
        let line = credential_line("https", "git.example:8443", "me@corp", "p:a/ss@w");
        assert_eq!(line, "https://me%40corp:p%3Aa%2Fss%40w@git.example:8443");
        assert_eq!(line_host(&line), Some("git.example:8443"));
        assert_eq!(line_host("https://u:p@github.com/path"), Some("github.com"));
        assert_eq!(line_host("garbage"), None);
    }
}
