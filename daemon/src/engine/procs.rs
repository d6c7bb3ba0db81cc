//! The process table: every child the daemon starts goes through it.
//!
//! As PID 1 the daemon must reap every zombie in the container, including orphans re-parented to it. Reaping
//! with `waitpid(-1)` would steal the exit status of the daemon's own children from whoever waits for them, so
//! the daemon never waits for a child anywhere else: this table reaps everything, hands the status of a child it
//! spawned to that child's waiter, and drops the status of orphans. Spawning registers the pid while holding the
//! same lock the reaper takes before it looks a pid up, so a child that dies at once is never mistaken for an
//! orphan. Consequence: nothing in the daemon may use `std::process::Command::{output,status}` or
//! `tokio::process`, which wait on their own.
//!
//! Every child also starts with [`CHILD_OOM_SCORE_ADJ`]: when the sandbox's processes fill its memory, the
//! kernel's OOM killer takes one of them, not the daemon. Among thousands of small processes (a fork bomb of 2 MB
//! shells) the daemon is the largest, and at equal `oom_score_adj` it would be the one killed, taking the sandbox's
//! toolbox, terminals and SSH with it. Raising a score needs no privilege (a child may lower its own back to the
//! daemon's, which only hurts its own sandbox); it also makes sandbox processes the first victims of a host-wide
//! OOM rather than the host's services. A `Command` child writes it itself between fork and exec, so nothing it
//! starts escapes it; a child a library spawns (a PTY's shell) gets it written just after the spawn returns.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use sandbar_support::sync::lock;
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// The `oom_score_adj` of every child (the daemon keeps the container's, 0): with it, any child's OOM score is
/// above the daemon's, whatever their sizes (the score is memory in thousandths of the limit plus this).
pub const CHILD_OOM_SCORE_ADJ: &str = "500";
const OOM_SCORE_ADJ_SELF: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// Puts `pid` ahead of the daemon for the OOM killer (a child the daemon did not fork itself). A child already
/// gone, or a `/proc` that refuses, is logged and otherwise ignored: the child runs either way.
fn set_oom_score_adj(pid: i32) {
    if pid <= 0 {
        return;
    }
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), CHILD_OOM_SCORE_ADJ) {
        tracing::debug!(pid, error = %e, "could not raise the child's oom_score_adj");
    }
}

/// Makes `cmd`'s child raise its own `oom_score_adj` between fork and exec.
#[allow(unsafe_code)]
fn raise_oom_score_before_exec(cmd: &mut Command) {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are allowed: it makes three
    // system calls (open, write, close) on a path that is a static C string, and allocates nothing. A failure is
    // ignored (the child runs either way), as in `set_oom_score_adj`.
    unsafe {
        cmd.pre_exec(|| {
            if let Ok(fd) = open(OOM_SCORE_ADJ_SELF, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()) {
                let _ = nix::unistd::write(&fd, CHILD_OOM_SCORE_ADJ.as_bytes());
            }
            Ok(())
        });
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// A spawned child: its pid (which is also its process group id) and its piped stdio, already non-blocking.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Child {
    /// Waits for the child to end. Can be called from several places (each clones the watch).
    pub async fn wait(&mut self) -> Exit {
        wait_exit(&mut self.exit).await
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    /// Signals the child's whole process group. A group that is already gone is not an error.
    pub fn kill_group(&self, signal: Signal) {
        kill_group(self.pid, signal);
    }
}

/// Waits on a child's exit watch.
pub async fn wait_exit(exit: &mut watch::Receiver<Option<Exit>>) -> Exit {
    loop {
        if let Some(e) = *exit.borrow_and_update() {
            return e;
        }
        if exit.changed().await.is_err() {
            // The table went away (daemon shutting down); report the child as killed.
            return (*exit.borrow()).unwrap_or(Exit::Signal(Signal::SIGKILL as i32));
        }
    }
}

/// The daemon's one process table, for the free signalling functions below.
static TABLE: std::sync::OnceLock<Arc<ProcessTable>> = std::sync::OnceLock::new();

/// Signals a child's process group, if the child has not been reaped (see `ProcessTable::reap`).
pub fn kill_group(pgid: i32, signal: Signal) {
    if let Some(t) = TABLE.get() {
        t.signal_group(pgid, signal);
    }
}

/// Signals a child's whole terminal session, if the leader has not been reaped.
pub fn kill_session(sid: i32, signal: Signal) {
    if let Some(t) = TABLE.get() {
        t.signal_session(sid, signal);
    }
}

#[derive(Debug, Default)]
pub struct ProcessTable {
    children: Mutex<HashMap<i32, watch::Sender<Option<Exit>>>>,
    /// Sends when an orphan (a process the daemon did not start) is reaped; tests and metrics read it.
    orphans_reaped: std::sync::atomic::AtomicU64,
}

impl ProcessTable {
    /// The table; the first one made in a process also serves `kill_group` and `kill_session`.
    pub fn new() -> Arc<Self> {
        let table = Arc::new(Self::default());
        let _ = TABLE.set(table.clone());
        table
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, watch::Sender<Option<Exit>>>> {
        lock(&self.children)
    }

    /// Spawns `cmd` in a new process group. Stdio set to `Stdio::piped()` comes back as async pipes.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        raise_oom_score_before_exec(cmd);
        let (tx, rx) = watch::channel(None);
        let mut std_child = {
            let mut children = self.lock();
            let child = cmd.spawn()?;
            let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
            children.insert(pid, tx);
            child
        };
        let pid = i32::try_from(std_child.id()).map_err(io::Error::other)?;
        let stdin = match std_child.stdin.take() {
            Some(s) => Some(pipe::Sender::from_owned_fd(OwnedFd::from(s))?),
            None => None,
        };
        let stdout = match std_child.stdout.take() {
            Some(s) => Some(pipe::Receiver::from_owned_fd(OwnedFd::from(s))?),
            None => None,
        };
        let stderr = match std_child.stderr.take() {
            Some(s) => Some(pipe::Receiver::from_owned_fd(OwnedFd::from(s))?),
            None => None,
        };
        // Dropping a std Child neither waits nor kills: the table owns the reaping.
        drop(std_child);
        Ok(Child { pid, stdin, stdout, stderr, exit: rx })
    }

    /// Registers a child that a library spawns itself (a PTY shell): `spawn` runs under the table's lock, so the
    /// child cannot be reaped as an orphan before it is known. Returns `spawn`'s value and the child's exit watch.
    pub fn register<T>(
        &self,
        spawn: impl FnOnce() -> io::Result<(T, i32)>,
    ) -> io::Result<(T, i32, watch::Receiver<Option<Exit>>)> {
        let (tx, rx) = watch::channel(None);
        let mut children = self.lock();
        let (value, pid) = spawn()?;
        children.insert(pid, tx);
        // Under the lock: the pid cannot have been reaped and reused yet.
        set_oom_score_adj(pid);
        Ok((value, pid, rx))
    }

    /// Process groups of every live child the daemon started.
    pub fn live_groups(&self) -> Vec<i32> {
        self.lock().keys().copied().collect()
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reaps every exited child until none is left to reap.
    ///
    /// A zombie is found with `waitid(WNOWAIT)` (which leaves it in place) and reaped only while the table's lock
    /// is held, so "registered in the table" always means "not reaped yet": its pid and process group number
    /// cannot have been reused, and signalling them through the table can never hit an unrelated process.
    pub fn reap(&self) {
        loop {
            let peeked = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT) {
                Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => pid,
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return, // ECHILD: no children at all
            };
            let mut children = self.lock();
            let exit = match waitpid(peeked, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
                _ => return, // not reapable after all: try again on the next tick
            };
            match children.remove(&peeked.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(Some(exit));
                }
                None => {
                    drop(children);
                    self.orphans_reaped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(pid = peeked.as_raw(), ?exit, "reaped orphan");
                }
            }
        }
    }

    /// Signals the process group `pgid` if it is a child of ours that has not been reaped.
    pub fn signal_group(&self, pgid: i32, signal: Signal) -> bool {
        let children = self.lock();
        if pgid > 1 && children.contains_key(&pgid) {
            return killpg(Pid::from_raw(pgid), signal).is_ok();
        }
        false
    }

    /// Signals every process of the terminal session led by `sid` (a PTY shell is a session leader; job control
    /// puts its jobs in process groups of their own, so the shell's group alone would miss them), if the leader
    /// is a child of ours that has not been reaped.
    pub fn signal_session(&self, sid: i32, signal: Signal) {
        let children = self.lock();
        if sid <= 1 || !children.contains_key(&sid) {
            return;
        }
        let _ = killpg(Pid::from_raw(sid), signal);
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // Fields after the parenthesised command name: state ppid pgrp session ...
            let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 1..)) else { continue };
            let session = rest.split_whitespace().nth(3).and_then(|s| s.parse::<i32>().ok());
            if session == Some(sid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Reaps on every SIGCHLD, and once a second in case a signal was coalesced away. Runs until the runtime stops.
    pub async fn reap_forever(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGCHLD; reaping once a second");
                None
            }
        };
        loop {
            self.reap();
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Sends `signal` to every live process group, waits up to `grace` for them to end, then kills what is left.
    pub async fn stop_all(&self, grace: Duration) {
        let groups = self.live_groups();
        if groups.is_empty() {
            return;
        }
        for g in &groups {
            self.signal_group(*g, Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            self.reap();
            if self.lock().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for g in self.live_groups() {
            self.signal_group(g, Signal::SIGKILL);
        }
        self.reap();
    }
}

/// `Stdio` pair for merged stdout+stderr: both ends of one pipe, the read end returned async.
pub fn merged_output_pipe() -> io::Result<(pipe::Receiver, Stdio, Stdio)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let write2 = write.try_clone()?;
    let rx = pipe::Receiver::from_owned_fd(read)?;
    Ok((rx, Stdio::from(write), Stdio::from(write2)))
}
