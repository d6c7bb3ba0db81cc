//! One command run to completion with its output returned (`/process/execute`), and code in a language run the
//! same way (`/process/code-run`).
//!
//! The answer (its status included) is known only once the command ended, so its output is kept until then: in
//! memory up to `SPOOL_AT` bytes, beyond that in a file under the state dir (`exec-output/`), unlinked as soon as
//! the answer starts (the open file is read on) or the request is dropped, for the transport to stream. Output
//! past `max_exec_output` bytes (`SANDBAR_MAX_EXEC_OUTPUT`) is drained and dropped, and the answer says how many
//! bytes were (`[sandbar: N more bytes of output were dropped]` at the end of `result`): that bounds the disk a
//! runaway command can fill through this path; the daemon's memory is bounded either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use sandbar_proto::toolbox::{Artifacts, CodeRunRequest, CodeRunResponse, ExecuteRequest, ExecuteResponse};
use tokio::io::AsyncReadExt;

use super::procs::{self, Exit};
use super::session::{Log, LogSnapshot, STDOUT};
use super::{Daemon, Error, ErrorKind, Result};

/// Output kept in memory; more goes to a file.
const SPOOL_AT: usize = 1 << 20;

/// A command's output, as [`execute`] and [`code_run`] answer it: the response with `result` empty, and the text
/// that belongs there.
#[derive(Debug)]
pub struct WithOutput<T> {
    pub response: T,
    pub result: Output,
}

/// The merged output of a command that ran to the end.
#[derive(Debug)]
pub enum Output {
    Text(String),
    /// Too much to hold: read it (`Streams::Both`) from the file, decoded as `String::from_utf8_lossy` would.
    Spooled(LogSnapshot),
}

/// How long output may keep arriving after the command itself exited (a background job holding the pipe open
/// must not hold the answer hostage).
const OUTPUT_LINGER: Duration = Duration::from_millis(100);

/// Runs `req.command` through the shell; stdout and stderr merged in `result`.
pub async fn execute(d: &Daemon, req: ExecuteRequest) -> Result<WithOutput<ExecuteResponse>> {
    if req.command.trim().is_empty() {
        return Err(Error::bad_request("command must not be empty"));
    }
    let mut cmd = d.shell_command(&req.command);
    apply_cwd_env(d, &mut cmd, req.cwd.as_deref(), req.envs.as_ref())?;
    let oom_before = oom_kills();
    let (exit, result) = run_to_end(d, cmd, req.timeout, &req.command).await?;
    let (exit_reason, signal) = match exit {
        Exit::Code(_) => ("exited", None),
        // The kernel's OOM killer sends SIGKILL; its counter for the sandbox's cgroup says whether it acted.
        Exit::Signal(s) if s == Signal::SIGKILL as i32 && oom_kills() > oom_before => ("oom", Some(s)),
        Exit::Signal(s) => ("signal", Some(s)),
    };
    let signal = signal.map(|s| Signal::try_from(s).map_or_else(|_| s.to_string(), |s| s.as_str().to_owned()));
    let response = ExecuteResponse {
        exit_code: exit.code(),
        result: String::new(),
        exit_reason: Some(exit_reason.to_owned()),
        signal,
    };
    Ok(WithOutput { response, result })
}

/// How many processes the kernel's OOM killer has killed in the daemon's cgroup (the sandbox's): cgroup v2's
/// `memory.events`, or cgroup v1's `memory.oom_control` (Docker mounts the container's own memory cgroup at
/// `/sys/fs/cgroup/memory`); 0 where neither can be read.
fn oom_kills() -> u64 {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    oom_files(&cgroups).iter().find_map(|f| std::fs::read_to_string(f).ok()).map_or(0, |text| parse_oom_kills(&text))
}

/// Where the OOM counter may be, in order, given `/proc/self/cgroup`.
fn oom_files(proc_cgroup: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut files = Vec::new();
    if let Some(path) = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        files.push(root.join(path.trim_start_matches('/')).join("memory.events"));
    }
    files.push(root.join("memory/memory.oom_control"));
    // A private cgroup namespace shows the container's own path (usually `/`) under the memory controller.
    if let Some(path) = proc_cgroup.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p)) {
        files.push(root.join("memory").join(path.trim_start_matches('/')).join("memory.oom_control"));
    }
    files
}

/// The `oom_kill` counter of a `memory.events` (v2) or `memory.oom_control` (v1) file.
fn parse_oom_kills(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
}

/// Runs `req.code` with the language's interpreter found on the sandbox's PATH.
pub async fn code_run(d: &Daemon, req: CodeRunRequest) -> Result<WithOutput<CodeRunResponse>> {
    let language = req.language.as_deref().unwrap_or("python");
    let path = d.effective_env().get("PATH").cloned().unwrap_or_default();
    let mut cmd = match language {
        "python" => {
            let py = find_program(&path, &["python3", "python"]).ok_or_else(|| {
                Error::bad_request("python is not installed in this sandbox (no python3 or python on PATH)")
            })?;
            let mut c = d.command(py);
            c.arg("-u").arg("-c").arg(&req.code);
            c
        }
        "javascript" => {
            let node = find_program(&path, &["node", "nodejs"])
                .ok_or_else(|| Error::bad_request("javascript needs node, which is not installed in this sandbox"))?;
            let mut c = d.command(node);
            c.arg("-e").arg(&req.code).arg("--");
            c
        }
        "typescript" => {
            if let Some(tsx) = find_program(&path, &["tsx"]) {
                let mut c = d.command(tsx);
                c.arg("-e").arg(&req.code).arg("--");
                c
            } else if let Some(tsn) = find_program(&path, &["ts-node"]) {
                let mut c = d.command(tsn);
                c.arg("-T").arg("-e").arg(&req.code).arg("--");
                c
            } else if let Some(node) = find_program(&path, &["node"]) {
                // Node 22.6+ strips types itself; older nodes answer with their own error.
                let mut c = d.command(node);
                c.arg("--experimental-strip-types")
                    .arg("--input-type=module-typescript")
                    .arg("-e")
                    .arg(&req.code)
                    .arg("--");
                c
            } else {
                return Err(Error::bad_request(
                    "typescript needs tsx, ts-node or node, none of which is installed in this sandbox",
                ));
            }
        }
        other => {
            return Err(Error::bad_request(format!(
                "unsupported language {other:?}: use python, javascript or typescript"
            )));
        }
    };
    cmd.args(req.argv.iter().flatten());
    apply_cwd_env(d, &mut cmd, None, req.envs.as_ref())?;
    let (exit, result) = run_to_end(d, cmd, req.timeout, "code").await?;
    let response = CodeRunResponse { exit_code: exit.code(), result: String::new(), artifacts: Artifacts::default() };
    Ok(WithOutput { response, result })
}

/// The first of `names` found on `path`.
pub fn find_program(path: &str, names: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    names.iter().find_map(|n| {
        path.split(':').filter(|dir| !dir.is_empty()).find_map(|dir| {
            let p = Path::new(dir).join(n);
            let meta = std::fs::metadata(&p).ok()?;
            (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(p)
        })
    })
}

fn apply_cwd_env(
    d: &Daemon,
    cmd: &mut Command,
    cwd: Option<&str>,
    envs: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    if let Some(cwd) = cwd.filter(|c| !c.is_empty()) {
        let dir = d.resolve(cwd);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::bad_request(format!("cwd {cwd} is not a directory"))),
            Err(e) => return Err(Error::io(cwd, &e)),
        }
        cmd.current_dir(dir);
    }
    for (k, v) in envs.into_iter().flatten() {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Error::bad_request(format!("invalid environment variable {k:?}")));
        }
        cmd.env(k, v);
    }
    Ok(())
}

/// Runs `cmd` with stdout and stderr merged, up to `timeout` seconds. On timeout the whole process group is
/// killed and the answer is 408 `PROCESS_EXECUTION_TIMEOUT`.
async fn run_to_end(d: &Daemon, mut cmd: Command, timeout: Option<u64>, what: &str) -> Result<(Exit, Output)> {
    let (mut out, w1, w2) = procs::merged_output_pipe().map_err(|e| Error::internal("creating output pipe", e))?;
    cmd.stdout(w1).stderr(w2);
    let child = d.procs.spawn(&mut cmd).map_err(|e| spawn_error(&e))?;
    // The write ends live in `cmd` until it is dropped: drop it so EOF arrives when the child is done.
    drop(cmd);
    let max = d.config.max_exec_output;
    let mut buf = Vec::new();
    let mut spool: Option<Spool> = None;
    let mut kept = 0usize;
    let mut dropped = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut exit = child.exit_watch();
    let deadline = timeout.filter(|t| *t > 0).and_then(|t| crate::util::deadline_after(Duration::from_secs(t)));
    let mut exited: Option<Exit> = None;
    let mut eof = false;
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        if eof && exited.is_some() {
            break;
        }
        let sleep_until = match (deadline, linger_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            n = out.read(&mut chunk), if !eof => match n {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let take = n.min(max.saturating_sub(kept));
                    let part = chunk.get(..take).unwrap_or_default();
                    kept += take;
                    dropped += n - take;
                    match &spool {
                        Some(s) => s.log.append(STDOUT, part),
                        None if buf.len() + part.len() > SPOOL_AT => {
                            let s = Spool::create(d).map_err(|e| {
                                child.kill_group(Signal::SIGKILL);
                                Error::internal("creating the output spool file", e)
                            })?;
                            s.log.append(STDOUT, &std::mem::take(&mut buf));
                            s.log.append(STDOUT, part);
                            spool = Some(s);
                        }
                        None => buf.extend_from_slice(part),
                    }
                }
            },
            e = procs::wait_exit(&mut exit), if exited.is_none() => {
                exited = Some(e);
                linger_until = Some(tokio::time::Instant::now() + OUTPUT_LINGER);
            },
            _ = sleep_until_opt(sleep_until) => {
                if exited.is_some() {
                    break; // linger over: something in the background still holds the pipe
                }
                child.kill_group(Signal::SIGKILL);
                let secs = timeout.unwrap_or_default();
                tracing::info!(pid = child.pid, secs, "command timed out; process group killed");
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("Command execution timed out after {secs} seconds: {what}"),
                )
                .with_code("PROCESS_EXECUTION_TIMEOUT"));
            }
            _ = d.shutdown.cancelled() => {
                child.kill_group(Signal::SIGTERM);
                return Err(Error::shutting_down());
            }
        }
    }
    let note = (dropped > 0).then(|| format!("\n[sandbar: {dropped} more bytes of output were dropped]\n"));
    let result = match spool {
        None => {
            let mut result = String::from_utf8_lossy(&buf).into_owned();
            result.push_str(note.as_deref().unwrap_or_default());
            Output::Text(result)
        }
        Some(s) => {
            if let Some(note) = &note {
                s.log.append(STDOUT, note.as_bytes());
            }
            s.log.finish(0);
            // `s` drops here, unlinking the file; the snapshot reads on through its open descriptor.
            Output::Spooled(s.log.snapshot().map_err(|e| Error::internal("opening the output spool file", e))?)
        }
    };
    Ok((exited.unwrap_or(Exit::Code(-1)), result))
}

/// The file a large output goes to; removed when dropped, however the request ends.
struct Spool {
    log: Arc<Log>,
    path: PathBuf,
}

impl Spool {
    fn create(d: &Daemon) -> std::io::Result<Self> {
        let dir = d.state_dir.join("exec-output");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
        Ok(Self { log: Log::create(path.clone())?, path })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(error = %e, "cannot remove an output spool file");
        }
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn spawn_error(e: &std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_request(format!("cannot start the command: {e}")),
        _ => Error::internal("spawning command", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_oom_kill_counter() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), 2);
        assert_eq!(parse_oom_kills("oom 1\n"), 0);
        assert_eq!(parse_oom_kills(""), 0);
        // cgroup v1's memory.oom_control.
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), 3);
    }

    #[test]
    fn oom_counter_files_for_cgroup_v1_and_v2() {
        let v2 = oom_files("0::/\n");
        assert_eq!(v2[0], Path::new("/sys/fs/cgroup/memory.events"));
        let v1 = oom_files("12:pids:/docker/abc\n5:memory:/docker/abc\n1:name=systemd:/docker/abc\n");
        assert_eq!(v1[0], Path::new("/sys/fs/cgroup/memory/memory.oom_control"));
        assert_eq!(v1[1], Path::new("/sys/fs/cgroup/memory/docker/abc/memory.oom_control"));
        assert_eq!(oom_files("").len(), 1);
    }
}
