//! The code interpreter (`/process/interpreter/*`): Python contexts whose state lasts across runs.
//!
//! Each context is one long-lived `python3` process (its own process group, started through the process table)
//! running the embedded `interpreter/driver.py`, spoken to over its stdin and stdout with the line protocol of
//! `interpreter/protocol.rs`. The daemon owns the contexts: a run takes its context's lock for its whole length,
//! so runs in one context queue in order and never share the worker; two contexts share nothing but the sandbox.
//!
//! A run that times out is interrupted (SIGINT to the context's process group: `KeyboardInterrupt` in the code,
//! and the commands it started get the signal too) and the context lives on; a run that does not stop within
//! `INTERRUPT_GRACE` of that has its worker killed, and the next run starts a fresh one (its state is lost, and
//! that run's error says so). A client that goes away interrupts its run the same way. Deleting a context kills
//! its process group. The default context (`default`) is made on first use and cannot be deleted.
//!
//! Limits: `SANDBAR_MAX_INTERPRETER_CONTEXTS` contexts besides the default (409 beyond), `max_exec_output` bytes
//! of output a run (the rest is dropped and counted in a last stderr frame), frame lines of at most
//! `protocol::MAX_LINE` bytes.

mod protocol;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sandbar_proto::toolbox::{CreateContextRequest, InterpreterContext, InterpreterFrame, InterpreterRunRequest};
use sandbar_support::sync::lock;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::exec::find_program;
use super::procs::{self, Exit};
use super::{Daemon, Error, Result};
use protocol::{MAX_LINE, ProtocolError, WorkerFrame};

/// The worker program, passed with `python3 -u -c`.
const DRIVER: &str = include_str!("interpreter/driver.py");
pub const DEFAULT_CONTEXT: &str = "default";
/// A run with no timeout given may take this long (the SDK documents ten minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an interrupted run has to stop before its worker is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// How long a new worker has to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a run ended (the transport's close code: 1000 or 4008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Done,
    TimedOut,
}

/// Every context of the daemon.
#[derive(Debug)]
pub struct Interpreters {
    contexts: Mutex<HashMap<String, Arc<Context>>>,
    max_contexts: usize,
}

#[derive(Debug)]
struct Context {
    id: String,
    cwd: PathBuf,
    created_at: String,
    /// The worker, held for the whole of a run.
    worker: tokio::sync::Mutex<Option<Worker>>,
    /// The worker's process group and exit, readable without the run's lock (for delete and listing).
    process: Mutex<Option<(i32, watch::Receiver<Option<Exit>>)>>,
    deleted: CancellationToken,
}

#[derive(Debug)]
struct Worker {
    pid: i32,
    exit: watch::Receiver<Option<Exit>>,
    stdin: pipe::Sender,
    stdout: BufReader<pipe::Receiver>,
    /// A partial line carried over when a read was interrupted by another event.
    pending: Vec<u8>,
}

/// A run's environment: names a shell could set, values without NUL.
pub(crate) fn check_envs(envs: &BTreeMap<String, String>) -> Result<()> {
    if let Some(k) = envs.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err(Error::bad_request(format!("invalid environment variable name {k:?}")));
    }
    if envs.values().any(|v| v.contains('\0')) {
        return Err(Error::bad_request("environment variable values must not contain NUL"));
    }
    Ok(())
}

/// A run's timeout: 0 is none, absent is [`DEFAULT_TIMEOUT`].
pub(crate) fn run_timeout(secs: Option<u64>) -> Option<Duration> {
    match secs {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => Some(DEFAULT_TIMEOUT),
    }
}

impl Interpreters {
    pub fn new(max_contexts: usize) -> Self {
        Self { contexts: Mutex::new(HashMap::new()), max_contexts }
    }

    /// Makes a context and starts its worker.
    pub async fn create(&self, d: &Daemon, req: CreateContextRequest) -> Result<InterpreterContext> {
        let language = req.language.as_deref().filter(|l| !l.is_empty()).unwrap_or("python");
        if language != "python" {
            return Err(Error::bad_request(format!(
                "unsupported interpreter language {language:?}: only python is served (use process.code_run for others)"
            )));
        }
        let cwd = context_dir(d, req.cwd.as_deref())?;
        let id = uuid::Uuid::new_v4().to_string();
        let ctx = Arc::new(Context::new(id.clone(), cwd));
        {
            let mut contexts = lock(&self.contexts);
            let user_made = contexts.keys().filter(|k| k.as_str() != DEFAULT_CONTEXT).count();
            if user_made >= self.max_contexts {
                return Err(Error::conflict(format!(
                    "this sandbox already has {user_made} interpreter contexts (the most allowed): delete one first"
                )));
            }
            contexts.insert(id.clone(), ctx.clone());
        }
        let started = async {
            let mut worker = ctx.worker.lock().await;
            ctx.ensure_worker(d, &mut worker).await
        }
        .await;
        if let Err(e) = started {
            lock(&self.contexts).remove(&id);
            return Err(e);
        }
        Ok(ctx.dto())
    }

    /// The contexts made with `create`, oldest first.
    pub fn list(&self) -> Vec<InterpreterContext> {
        let mut out: Vec<InterpreterContext> =
            lock(&self.contexts).values().filter(|c| c.id != DEFAULT_CONTEXT).map(|c| c.dto()).collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Removes a context and kills its process group (a run in it ends with an error frame).
    pub async fn delete(&self, id: &str) -> Result<()> {
        if id == DEFAULT_CONTEXT {
            return Err(Error::bad_request("the default context cannot be deleted"));
        }
        let ctx = lock(&self.contexts).remove(id).ok_or_else(|| unknown_context(id))?;
        ctx.deleted.cancel();
        let process = lock(&ctx.process).take();
        if let Some((pid, mut exit)) = process {
            procs::kill_group(pid, Signal::SIGKILL);
            let _ = tokio::time::timeout(INTERRUPT_GRACE, procs::wait_exit(&mut exit)).await;
        }
        tracing::info!(context = id, "interpreter context deleted");
        Ok(())
    }

    /// Runs `req.code` in its context, sending its output and error to `out` as they come. `client_gone` is
    /// cancelled when nobody reads `out` any more (the run is then interrupted).
    pub async fn run(
        &self,
        d: &Daemon,
        req: InterpreterRunRequest,
        out: mpsc::Sender<InterpreterFrame>,
        client_gone: CancellationToken,
    ) -> Result<RunEnd> {
        let envs = req.envs.unwrap_or_default();
        check_envs(&envs)?;
        let ctx = match req.context_id.as_deref().filter(|c| !c.is_empty()) {
            Some(id) => lock(&self.contexts).get(id).cloned().ok_or_else(|| unknown_context(id))?,
            None => self.default_context(d),
        };
        let timeout = run_timeout(req.timeout);
        let mut worker = ctx.worker.lock().await;
        if ctx.deleted.is_cancelled() {
            return Err(unknown_context(&ctx.id));
        }
        ctx.ensure_worker(d, &mut worker).await?;
        let budget = OutputBudget { left: d.config.max_exec_output, dropped: 0 };
        let run = Run { d, ctx: &ctx, out, client_gone, budget };
        run.go(&mut worker, &req.code, &envs, timeout).await
    }

    fn default_context(&self, d: &Daemon) -> Arc<Context> {
        lock(&self.contexts)
            .entry(DEFAULT_CONTEXT.to_owned())
            .or_insert_with(|| Arc::new(Context::new(DEFAULT_CONTEXT.to_owned(), d.work_dir.clone())))
            .clone()
    }
}

fn unknown_context(id: &str) -> Error {
    Error::not_found(format!("interpreter context {id} not found"))
}

/// The directory a context runs in: the work dir, or an existing directory (relative to the work dir).
fn context_dir(d: &Daemon, cwd: Option<&str>) -> Result<PathBuf> {
    let Some(cwd) = cwd.filter(|c| !c.is_empty()) else { return Ok(d.work_dir.clone()) };
    let dir = d.resolve(cwd);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(Error::bad_request(format!("cwd {cwd} is not a directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::bad_request(format!("cwd {cwd}: no such directory")))
        }
        Err(e) => Err(Error::io(cwd, &e)),
    }
}

impl Context {
    fn new(id: String, cwd: PathBuf) -> Self {
        Self {
            id,
            cwd,
            created_at: crate::util::now_rfc3339(),
            worker: tokio::sync::Mutex::new(None),
            process: Mutex::new(None),
            deleted: CancellationToken::new(),
        }
    }

    fn dto(&self) -> InterpreterContext {
        let active = lock(&self.process).as_ref().is_some_and(|(_, exit)| exit.borrow().is_none());
        InterpreterContext {
            id: self.id.clone(),
            cwd: self.cwd.to_string_lossy().into_owned(),
            language: "python".into(),
            created_at: self.created_at.clone(),
            active,
        }
    }

    /// Starts the worker if there is none or it has died.
    async fn ensure_worker(&self, d: &Daemon, slot: &mut Option<Worker>) -> Result<()> {
        if slot.as_ref().is_some_and(|w| w.exit.borrow().is_none()) {
            return Ok(());
        }
        *slot = None;
        let worker = start_worker(d, &self.cwd).await?;
        *lock(&self.process) = Some((worker.pid, worker.exit.clone()));
        tracing::info!(context = %self.id, pid = worker.pid, "interpreter started");
        *slot = Some(worker);
        Ok(())
    }
}

async fn start_worker(d: &Daemon, cwd: &std::path::Path) -> Result<Worker> {
    let path = d.effective_env().get("PATH").cloned().unwrap_or_default();
    let python = find_program(&path, &["python3", "python"]).ok_or_else(|| {
        Error::bad_request("the code interpreter needs python3, which is not installed in this sandbox")
    })?;
    let mut cmd = d.command(python);
    cmd.arg("-u").arg("-c").arg(DRIVER).current_dir(cwd);
    // Charts render off-screen unless the user picks a backend.
    if !d.effective_env().contains_key("MPLBACKEND") {
        cmd.env("MPLBACKEND", "Agg");
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = d.procs.spawn(&mut cmd).map_err(|e| Error::internal("starting the interpreter", e))?;
    drop(cmd);
    let (Some(stdin), Some(stdout), Some(mut stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        child.kill_group(Signal::SIGKILL);
        return Err(Error::internal("starting the interpreter", "its pipes are missing"));
    };
    // Until the driver swaps its fds, stderr is Python's own: read a little of it to explain a failed start.
    let stderr_text = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).trim().to_owned()
    });
    let mut worker =
        Worker { pid: child.pid, exit: child.exit_watch(), stdin, stdout: BufReader::new(stdout), pending: Vec::new() };
    let first = tokio::time::timeout(START_TIMEOUT, worker.read_frame()).await;
    match first {
        Ok(Ok(Some(WorkerFrame::Ready))) => Ok(worker),
        other => {
            worker.kill();
            let said = tokio::time::timeout(Duration::from_secs(1), stderr_text).await.ok().and_then(|r| r.ok());
            let why = match other {
                Err(_) => "it did not start in time".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "it exited before it was ready".to_owned(),
            };
            let detail = said.filter(|s| !s.is_empty()).map(|s| format!(": {s}")).unwrap_or_default();
            tracing::warn!(reason = %why, "interpreter failed to start");
            Err(Error::new(
                super::ErrorKind::Internal,
                format!("the python interpreter failed to start ({why}){detail}"),
            ))
        }
    }
}

impl Worker {
    /// The next frame; `None` when the worker closed its stdout (it exited). Cancel-safe: a partial line is kept.
    async fn read_frame(&mut self) -> std::result::Result<Option<WorkerFrame>, ProtocolError> {
        loop {
            let room = (MAX_LINE + 1).saturating_sub(self.pending.len()) as u64;
            let n = (&mut self.stdout)
                .take(room)
                .read_until(b'\n', &mut self.pending)
                .await
                .map_err(|e| ProtocolError::Invalid(e.to_string()))?;
            if self.pending.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.pending);
                return protocol::parse_line(&line).map(Some);
            }
            if self.pending.len() > MAX_LINE {
                return Err(ProtocolError::TooLong);
            }
            if n == 0 {
                return Ok(None);
            }
        }
    }

    fn signal(&self, signal: Signal) {
        procs::kill_group(self.pid, signal);
    }

    fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    async fn exit_status(&mut self) -> Option<Exit> {
        tokio::time::timeout(Duration::from_secs(2), procs::wait_exit(&mut self.exit)).await.ok()
    }
}

/// One run in progress.
struct Run<'a> {
    d: &'a Daemon,
    ctx: &'a Context,
    out: mpsc::Sender<InterpreterFrame>,
    client_gone: CancellationToken,
    budget: OutputBudget,
}

impl Run<'_> {
    async fn go(
        mut self,
        slot: &mut Option<Worker>,
        code: &str,
        envs: &BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> Result<RunEnd> {
        let Some(worker) = slot.as_mut() else { return Err(Error::internal("running code", "no interpreter")) };
        if let Err(e) = worker.stdin.write_all(&protocol::request_line(code, envs)).await {
            worker.kill();
            *slot = None;
            return Err(Error::internal("sending code to the interpreter", e));
        }
        let deadline = timeout.and_then(crate::util::deadline_after);
        let mut timed_out = false;
        let mut interrupted = false;
        let mut kill_at: Option<tokio::time::Instant> = None;
        loop {
            let next_alarm = match (interrupted, deadline, kill_at) {
                (_, _, Some(k)) => Some(k),
                (false, Some(d), None) => Some(d),
                _ => None,
            };
            tokio::select! {
                frame = worker.read_frame() => match frame {
                    Ok(Some(WorkerFrame::Done)) => break,
                    Ok(Some(frame)) => {
                        if let Some(f) = frame.into_client() {
                            self.send(f).await;
                        }
                    }
                    Ok(None) => {
                        let why = self.worker_died(worker, timed_out).await;
                        *slot = None;
                        self.send(why).await;
                        return Ok(if timed_out { RunEnd::TimedOut } else { RunEnd::Done });
                    }
                    Err(e) => {
                        tracing::warn!(context = %self.ctx.id, error = %e, "interpreter protocol error; worker killed");
                        worker.kill();
                        *slot = None;
                        return Err(Error::internal("reading the interpreter", e));
                    }
                },
                _ = sleep_until_opt(next_alarm) => {
                    if kill_at.is_some() {
                        tracing::info!(context = %self.ctx.id, "interrupted code did not stop; worker killed");
                        worker.kill();
                        kill_at = None;
                        interrupted = true;
                    } else {
                        timed_out = true;
                        interrupted = true;
                        worker.signal(Signal::SIGINT);
                        kill_at = Some(tokio::time::Instant::now() + INTERRUPT_GRACE);
                    }
                }
                _ = self.client_gone.cancelled(), if !interrupted => {
                    interrupted = true;
                    worker.signal(Signal::SIGINT);
                    kill_at = Some(tokio::time::Instant::now() + INTERRUPT_GRACE);
                }
                _ = self.ctx.deleted.cancelled() => {
                    worker.kill();
                    *slot = None;
                    self.send(error_frame("ContextDeleted", "the interpreter context was deleted during this run")).await;
                    return Ok(RunEnd::Done);
                }
                _ = self.d.shutdown.cancelled() => {
                    worker.signal(Signal::SIGTERM);
                    *slot = None;
                    return Err(Error::shutting_down());
                }
            }
        }
        if self.budget.dropped > 0 {
            let note = format!("\n[sandbar: {} more bytes of output were dropped]\n", self.budget.dropped);
            let _ = self.out.send(InterpreterFrame::Stderr { text: note }).await;
        }
        Ok(if timed_out { RunEnd::TimedOut } else { RunEnd::Done })
    }

    /// Sends a frame, within the run's output budget (error frames always go).
    async fn send(&mut self, frame: InterpreterFrame) {
        let frame = match frame {
            InterpreterFrame::Stdout { text } => self.budget.take(text).map(|text| InterpreterFrame::Stdout { text }),
            InterpreterFrame::Stderr { text } => self.budget.take(text).map(|text| InterpreterFrame::Stderr { text }),
            error @ InterpreterFrame::Error { .. } => Some(error),
        };
        if let Some(frame) = frame
            && self.out.send(frame).await.is_err()
        {
            self.client_gone.cancel();
        }
    }

    /// The error a run reports when its worker exited under it.
    async fn worker_died(&self, worker: &mut Worker, timed_out: bool) -> InterpreterFrame {
        let exit = worker.exit_status().await;
        let how = match exit {
            Some(Exit::Code(c)) => format!("exited with code {c}"),
            Some(Exit::Signal(s)) if s == Signal::SIGKILL as i32 && timed_out => {
                "was killed after it ignored the interrupt".to_owned()
            }
            Some(Exit::Signal(s)) if s == Signal::SIGKILL as i32 => {
                "was killed (SIGKILL: out of memory, or killed from outside)".to_owned()
            }
            Some(Exit::Signal(s)) => {
                format!(
                    "was killed by signal {}",
                    Signal::try_from(s).map_or_else(|_| s.to_string(), |s| s.to_string())
                )
            }
            None => "stopped answering".to_owned(),
        };
        tracing::info!(context = %self.ctx.id, how = %how, "interpreter worker ended during a run");
        error_frame(
            "InterpreterExited",
            &format!("the python interpreter {how}; the context's state was lost, and the next run starts afresh"),
        )
    }
}

fn error_frame(name: &str, value: &str) -> InterpreterFrame {
    InterpreterFrame::Error { name: name.into(), value: value.into(), traceback: String::new() }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// What is left of a run's output allowance, and what was dropped beyond it.
#[derive(Debug)]
struct OutputBudget {
    left: usize,
    dropped: usize,
}

impl OutputBudget {
    /// The part of `text` that fits (cut on a character boundary); `None` when nothing does.
    fn take(&mut self, mut text: String) -> Option<String> {
        if text.len() <= self.left {
            self.left -= text.len();
            return Some(text);
        }
        let mut keep = self.left;
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        self.dropped += text.len() - keep;
        // Once something is dropped, everything after it is too: the output never has a hole in the middle.
        self.left = 0;
        text.truncate(keep);
        (!text.is_empty()).then_some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_beyond_the_budget_is_cut_on_a_char_boundary_and_counted() {
        let mut b = OutputBudget { left: 5, dropped: 0 };
        assert_eq!(b.take("abc".into()).as_deref(), Some("abc"));
        // "dé" is 3 bytes; 2 are left: only "d" fits whole, and nothing after the cut is sent.
        assert_eq!(b.take("dé".into()).as_deref(), Some("d"));
        assert_eq!(b.take("fgh".into()), None);
        assert_eq!(b.dropped, 2 + 3);
        assert_eq!(b.take(String::new()).as_deref(), Some(""));
    }
}
