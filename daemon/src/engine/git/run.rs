//! Running the `git` program: one helper that every git endpoint goes through, and the mapping of git's
//! complaints to Daytona's status codes and error codes.
//!
//! git is started through the daemon's process table (PID 1 reaps everything, so nothing else may wait for a
//! child). It never prompts: `GIT_TERMINAL_PROMPT=0` makes a missing password an error instead of a hang, and
//! stdin is /dev/null. `LC_ALL=C` keeps its messages in the English the classifier below matches. Configuration
//! the daemon needs (credentials, TLS, `safe.directory`) is passed through `GIT_CONFIG_COUNT`/`_KEY_n`/`_VALUE_n`,
//! so it lives only in the environment of that one process: never in argv (visible in `ps`) nor on disk.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::engine::procs::{self, Exit};
use crate::engine::{Daemon, Error, ErrorKind, Result};

/// How long a git command that talks to a remote may run before its process group is killed.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The same for commands that only touch the local repository.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// How long output may keep arriving after git exited: a process git left in the background holding its pipes
/// must not hold the answer.
const OUTPUT_LINGER: Duration = Duration::from_millis(500);
/// Most of git's stderr kept; an error message is the tail of it.
const MAX_STDERR: usize = 1 << 20;
/// Longest error message sent back (git's last words are the ones that matter).
const MAX_MESSAGE: usize = 4 * 1024;

/// What a finished git command left behind.
#[derive(Debug, Clone)]
pub struct GitOutput {
    /// Exit code (128 + signal number if git was killed).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl GitOutput {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// Per-call additions to git's environment.
#[derive(Debug, Default, Clone)]
pub struct GitEnv {
    /// Configuration entries, applied with command-line precedence.
    pub config: Vec<(String, String)>,
    /// Plain environment variables.
    pub vars: Vec<(String, String)>,
    /// Strings that must not appear in an error message (the password and the header made from it).
    secrets: Vec<String>,
}

impl GitEnv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn config(mut self, key: &str, value: impl Into<String>) -> Self {
        self.config.push((key.to_owned(), value.into()));
        self
    }

    pub fn var(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.push((key.to_owned(), value.into()));
        self
    }

    /// HTTP basic credentials, sent as an `Authorization` header that git adds to every HTTP request of this one
    /// process. Nothing happens without a password (a username alone authenticates nothing); a token given
    /// without a username goes with the username `git`, which hosts that take tokens ignore.
    pub fn credentials(mut self, username: Option<&str>, password: Option<&str>) -> Self {
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return self;
        };
        let username = username.filter(|u| !u.is_empty()).unwrap_or("git");
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        self.config.push(("http.extraHeader".to_owned(), format!("Authorization: Basic {token}")));
        self.secrets.push(token);
        self.secrets.push(password.to_owned());
        self
    }

    /// `insecure_skip_tls`: do not verify the server's certificate (self-signed in-house servers).
    pub fn insecure_tls(self, skip: bool) -> Self {
        if skip { self.config("http.sslVerify", "false") } else { self }
    }

    fn redact(&self, s: &str) -> String {
        self.secrets.iter().filter(|x| !x.is_empty()).fold(s.to_owned(), |acc, x| acc.replace(x.as_str(), "***"))
    }
}

/// Runs `git <args>` in `cwd` and returns its exit code and output, whatever the code. Fails only if git cannot
/// be started, runs out of time (408, process group killed), or the daemon is shutting down (503).
pub async fn run_git<S: AsRef<std::ffi::OsStr>>(
    d: &Daemon,
    cwd: &Path,
    args: &[S],
    extra: &GitEnv,
) -> Result<GitOutput> {
    let op = args.first().map(|a| a.as_ref().to_string_lossy().into_owned()).unwrap_or_default();
    let timeout = if matches!(op.as_str(), "clone" | "fetch" | "pull" | "push" | "ls-remote") {
        NETWORK_TIMEOUT
    } else {
        LOCAL_TIMEOUT
    };

    let mut cmd = d.command("git");
    cmd.current_dir(cwd).args(args);
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("LANGUAGE", "C")
        // A merge made by `pull` must not wait for an editor.
        .env("GIT_MERGE_AUTOEDIT", "no");
    // The daemon acts for the sandbox's only user, who may run as another uid than the owner of a cloned or
    // mounted repository; git's ownership check would then refuse every command (go-git, which Daytona used, has
    // no such check). `safe.directory` is honoured from command-line scope, which is what GIT_CONFIG_* is.
    let mut config: Vec<(&str, &str)> = vec![("safe.directory", "*")];
    config.extend(extra.config.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (k, v)) in config.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k).env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    for (k, v) in &extra.vars {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());

    let mut child = d.procs.spawn(&mut cmd).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_request("git is not installed in this sandbox (no git on PATH)"),
        // A NUL byte in an argument or a credential.
        std::io::ErrorKind::InvalidInput => Error::bad_request(format!("cannot run git: {e}")),
        _ => Error::internal("starting git", e),
    })?;
    drop(cmd);
    let pid = child.pid;
    let mut exit = child.exit_watch();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = {
        let out_done = read_into(stdout, d.config.max_exec_output, &mut out);
        let err_done = read_into(stderr, MAX_STDERR, &mut err);
        tokio::pin!(out_done, err_done);
        let (mut out_eof, mut err_eof) = (false, false);
        let mut status: Option<Exit> = None;
        let mut linger_until = deadline;
        loop {
            if out_eof && err_eof && status.is_some() {
                break;
            }
            tokio::select! {
                () = &mut out_done, if !out_eof => out_eof = true,
                () = &mut err_done, if !err_eof => err_eof = true,
                e = procs::wait_exit(&mut exit), if status.is_none() => {
                    status = Some(e);
                    linger_until = deadline.min(tokio::time::Instant::now() + OUTPUT_LINGER);
                }
                () = tokio::time::sleep_until(linger_until) => {
                    if status.is_some() {
                        break; // something git started in the background still holds the pipes
                    }
                    procs::kill_group(pid, Signal::SIGKILL);
                    tracing::info!(pid, op = %op, secs = timeout.as_secs(), "git timed out; process group killed");
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("git {op} timed out after {} seconds", timeout.as_secs()),
                    ));
                }
                () = d.shutdown.cancelled() => {
                    procs::kill_group(pid, Signal::SIGTERM);
                    return Err(Error::new(ErrorKind::Unavailable, "the sandbox is shutting down"));
                }
            }
        }
        status.unwrap_or(Exit::Code(-1))
    };
    let code = match status {
        Exit::Code(c) => c,
        s @ Exit::Signal(_) => s.code(),
    };
    tracing::debug!(op = %op, code, "git finished");
    Ok(GitOutput {
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: extra.redact(&String::from_utf8_lossy(&err)),
    })
}

/// `run_git`, with a non-zero exit turned into the matching `Error`.
pub async fn git_ok<S: AsRef<std::ffi::OsStr>>(
    d: &Daemon,
    cwd: &Path,
    args: &[S],
    extra: &GitEnv,
) -> Result<GitOutput> {
    let out = run_git(d, cwd, args, extra).await?;
    if out.ok() { Ok(out) } else { Err(classify(&out)) }
}

/// Reads a pipe to its end into `buf`, keeping at most `max` bytes (the rest is drained so git never blocks on a
/// full pipe). Writes into the caller's buffer so that what arrived is kept even if the read is abandoned.
async fn read_into(pipe: Option<pipe::Receiver>, max: usize, buf: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let take = n.min(max.saturating_sub(buf.len()));
                buf.extend_from_slice(chunk.get(..take).unwrap_or_default());
            }
        }
    }
}

/// The message for a failed command: git's stderr (its stdout when stderr is empty, as for "nothing to
/// commit"), trimmed, and cut to its tail when long.
pub fn message(out: &GitOutput) -> String {
    let text = if out.stderr.trim().is_empty() { out.stdout.trim() } else { out.stderr.trim() };
    if text.is_empty() {
        return format!("git exited with status {}", out.code);
    }
    if text.len() <= MAX_MESSAGE {
        return text.to_owned();
    }
    let mut start = text.len() - MAX_MESSAGE;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", text.get(start..).unwrap_or_default())
}

/// Maps a failed git command to a status and Daytona's error code, from what git printed (both streams: a merge
/// reports its conflicts on stdout). The order matters: a push refused for missing credentials also says
/// "failed to push some refs", a 404 over HTTP also says "unable to access".
pub fn classify(out: &GitOutput) -> Error {
    let msg = message(out);
    let text = format!("{}\n{}", out.stderr, out.stdout).to_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let (status, code) = if has(&["returned error: 403", "http basic: access denied"])
        || (text.contains("remote: permission") && text.contains("denied"))
    {
        (ErrorKind::Forbidden, Some("GIT_AUTH_FAILED"))
    } else if has(&[
        "authentication failed",
        "invalid username or password",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "returned error: 401",
        "permission denied (publickey",
    ]) {
        (ErrorKind::Unauthorized, Some("GIT_AUTH_FAILED"))
    } else if has(&[
        "not a git repository",
        "does not appear to be a git repository",
        "repository not found",
        "returned error: 404",
        "remote: not found",
    ]) || (text.contains("repository '") && text.contains("' does not exist"))
    {
        (ErrorKind::NotFound, Some("GIT_REPO_NOT_FOUND"))
    } else if text.contains("already exists") && text.contains("branch named") {
        (ErrorKind::Conflict, Some("GIT_BRANCH_EXISTS"))
    } else if has(&[
        "conflict (",
        "automatic merge failed",
        "fix conflicts",
        "unmerged files",
        "resolve your current index first",
        "you have not concluded your merge",
    ]) {
        (ErrorKind::Conflict, Some("GIT_MERGE_CONFLICT"))
    } else if has(&[
        "would be overwritten",
        "please commit your changes or stash them",
        "please move or remove them before",
    ]) {
        (ErrorKind::Conflict, Some("GIT_DIRTY_WORKTREE"))
    } else if text.contains("[remote rejected]") {
        (ErrorKind::Conflict, Some("GIT_REMOTE_REJECTED"))
    } else if has(&["[rejected]", "non-fast-forward", "fetch first", "updates were rejected", "stale info"]) {
        (ErrorKind::Conflict, Some("GIT_PUSH_REJECTED"))
    } else if has(&[
        "couldn't find remote ref",
        "did not match any file(s) known to git",
        "invalid reference:",
        "unknown revision",
        "not a valid object name",
        "reference is not a tree",
        "you are not currently on a branch",
    ]) || (text.contains("src refspec") && text.contains("does not match any"))
        || (text.contains("remote branch") && text.contains("not found"))
        || (text.contains("branch '") && text.contains("' not found"))
    {
        (ErrorKind::NotFound, Some("GIT_BRANCH_NOT_FOUND"))
    } else if has(&[
        // Conflicts without a Daytona code: diverged history, a concurrent git holding the index, a clone
        // onto files, deleting the branch that is checked out.
        "divergent branches",
        "not possible to fast-forward",
        "index.lock",
        "already exists and is not an empty directory",
        "cannot delete branch",
    ]) {
        (ErrorKind::Conflict, None)
    } else if has(&[
        "could not resolve host",
        "failed to connect",
        "connection refused",
        "connection timed out",
        "ssl certificate problem",
        "unable to access",
        "early eof",
        "the remote end hung up",
    ]) {
        (ErrorKind::BadRequest, Some("GIT_TRANSPORT_FAILED"))
    } else {
        // Whatever else git refuses (nothing to commit, no identity, a bad name) is about the request.
        (ErrorKind::BadRequest, None)
    };
    let err = Error::new(status, msg);
    match code {
        Some(c) => err.with_code(c),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(stderr: &str, stdout: &str) -> Error {
        classify(&GitOutput { code: 128, stdout: stdout.into(), stderr: stderr.into() })
    }

    #[test]
    fn classifies_what_git_prints() {
        let cases: &[(&str, &str, u16, Option<&str>)] = &[
            (
                "fatal: not a git repository (or any of the parent directories): .git",
                "",
                404,
                Some("GIT_REPO_NOT_FOUND"),
            ),
            ("Cloning into 'x'...\nfatal: repository '/nope' does not exist", "", 404, Some("GIT_REPO_NOT_FOUND")),
            (
                "fatal: could not read Username for 'https://h': terminal prompts disabled",
                "",
                401,
                Some("GIT_AUTH_FAILED"),
            ),
            (
                "fatal: unable to access 'https://h/': The requested URL returned error: 403",
                "",
                403,
                Some("GIT_AUTH_FAILED"),
            ),
            (
                "fatal: unable to access 'https://h/': The requested URL returned error: 404",
                "",
                404,
                Some("GIT_REPO_NOT_FOUND"),
            ),
            ("fatal: a branch named 'main' already exists", "", 409, Some("GIT_BRANCH_EXISTS")),
            ("error: pathspec 'nope' did not match any file(s) known to git", "", 404, Some("GIT_BRANCH_NOT_FOUND")),
            ("fatal: invalid reference: nope", "", 404, Some("GIT_BRANCH_NOT_FOUND")),
            ("error: branch 'nope' not found", "", 404, Some("GIT_BRANCH_NOT_FOUND")),
            (
                "warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope not found in upstream origin",
                "",
                404,
                Some("GIT_BRANCH_NOT_FOUND"),
            ),
            (
                " ! [rejected]        main -> main (fetch first)\nerror: failed to push some refs",
                "",
                409,
                Some("GIT_PUSH_REJECTED"),
            ),
            (" ! [remote rejected] main -> main (pre-receive hook declined)", "", 409, Some("GIT_REMOTE_REJECTED")),
            (
                "error: Your local changes to the following files would be overwritten by merge:\n\ta\nPlease commit your changes or stash them before you merge.",
                "",
                409,
                Some("GIT_DIRTY_WORKTREE"),
            ),
            (
                "",
                "CONFLICT (content): Merge conflict in a\nAutomatic merge failed; fix conflicts and then commit the result.",
                409,
                Some("GIT_MERGE_CONFLICT"),
            ),
            (
                "fatal: unable to access 'https://nohost/': Could not resolve host: nohost",
                "",
                400,
                Some("GIT_TRANSPORT_FAILED"),
            ),
            ("", "On branch main\nnothing to commit, working tree clean", 400, None),
        ];
        for (stderr, stdout, status, code) in cases {
            let e = failed(stderr, stdout);
            let status_of = crate::toolbox::error::ApiError::from(e.clone()).status;
            assert_eq!(status_of.as_u16(), *status, "{stderr}{stdout}");
            assert_eq!(e.code, *code, "{stderr}{stdout}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn message_prefers_stderr_and_keeps_the_tail() {
        let out = GitOutput { code: 1, stdout: "nothing to commit\n".into(), stderr: " \n".into() };
        assert_eq!(message(&out), "nothing to commit");
        let long = format!("{}fatal: the end", "é".repeat(5000));
        let out = GitOutput { code: 1, stdout: String::new(), stderr: long };
        let m = message(&out);
        assert!(m.ends_with("fatal: the end") && m.len() < MAX_MESSAGE + 8);
    }

    #[test]
    fn credentials_go_in_a_header_and_are_redacted() {
        let env = GitEnv::new().credentials(Some("me"), Some("s3cret"));
        let (k, v) = env.config.first().unwrap();
        assert_eq!(k, "http.extraHeader");
        assert_eq!(v, "Authorization: Basic bWU6czNjcmV0");
        assert_eq!(env.redact("token s3cret and bWU6czNjcmV0"), "token *** and ***");
        assert!(GitEnv::new().credentials(Some("me"), None).config.is_empty());
        assert!(GitEnv::new().credentials(Some("me"), Some("")).config.is_empty());
    }
}
