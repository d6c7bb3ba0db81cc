//! One running language server: a child of the process table speaking Content-Length framed JSON-RPC on its
//! stdin/stdout.
//!
//! The daemon's own requests carry string ids `sandbar:N`, so they never collide with the ids of an IDE bridged
//! to the same process; their answers go to the waiting caller. Everything else the server sends goes to the
//! bridge (an IDE's WebSocket) if there is one; without a bridge (the HTTP API) the daemon answers the server's
//! own requests itself (`workspace/configuration`, `client/registerCapability`, ...) and drops notifications.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sandbar_support::sync::lock;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tower_lsp_server::jsonrpc;

use super::{LspError, codec};
use crate::Daemon;
use crate::engine::procs::{self, Exit};

/// Prefix of the ids of the daemon's own requests.
pub const OWN_ID_PREFIX: &str = "sandbar:";
/// How much of a server's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;
/// How long `shutdown` waits for each step of a polite stop before it kills.
const STOP_STEP: Duration = Duration::from_secs(2);

type Reply = Result<Value, jsonrpc::Error>;
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

#[derive(Debug)]
pub struct Server {
    pub language: String,
    pub root: PathBuf,
    pub program: String,
    pub pid: i32,
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    exit: watch::Receiver<Option<Exit>>,
    /// Cancelled when the server's stdout ends (it exited or broke the framing).
    closed: CancellationToken,
    stderr_tail: Arc<Mutex<String>>,
    timeout: Duration,
}

impl Server {
    /// Starts `argv` in `root`. With `bridge`, every message that is not an answer to the daemon's own requests
    /// is sent there; the channel closes when the server's output ends.
    pub fn spawn(
        d: &Daemon,
        language: &str,
        root: PathBuf,
        argv: &[String],
        timeout: Duration,
        bridge: Option<mpsc::Sender<Value>>,
    ) -> Result<Arc<Self>, LspError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| LspError::NotInstalled { language: language.to_owned(), program: String::new() })?;
        let path = d.effective_env().get("PATH").cloned().unwrap_or_default();
        let resolved = if program.contains('/') {
            Some(PathBuf::from(program))
        } else {
            crate::engine::exec::find_program(&path, &[program.as_str()])
        };
        let Some(resolved) = resolved.filter(|p| p.is_file()) else {
            return Err(LspError::NotInstalled { language: language.to_owned(), program: program.clone() });
        };
        let mut cmd = d.command(&resolved);
        cmd.args(args).current_dir(&root).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = d.procs.spawn(&mut cmd).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                LspError::NotInstalled { language: language.to_owned(), program: program.clone() }
            }
            _ => LspError::Spawn { program: program.clone(), error: e.to_string() },
        })?;
        drop(cmd);
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            child.kill_group(Signal::SIGKILL);
            return Err(LspError::Spawn { program: program.clone(), error: "stdio pipes missing".into() });
        };
        let span = tracing::info_span!("lsp_server", language, pid = child.pid, program = %program);
        tracing::info!(parent: &span, root = %root.display(), "language server started");

        let (out, out_rx) = mpsc::channel::<Vec<u8>>(64);
        let pending: Pending = Arc::default();
        let closed = CancellationToken::new();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        tokio::spawn(write_loop(stdin, out_rx));
        tokio::spawn(stderr_loop(stderr, stderr_tail.clone(), span.clone()));
        tokio::spawn(read_loop(stdout, pending.clone(), bridge, out.clone(), closed.clone(), span));
        Ok(Arc::new(Self {
            language: language.to_owned(),
            root,
            program: program.clone(),
            pid: child.pid,
            out,
            pending,
            next_id: AtomicU64::new(1),
            exit: child.exit_watch(),
            closed,
            stderr_tail,
            timeout,
        }))
    }

    pub fn is_alive(&self) -> bool {
        !self.closed.is_cancelled() && self.exit.borrow().is_none()
    }

    /// Resolves when the server's output has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Sends one JSON-RPC message as it is.
    pub async fn send(&self, msg: &Value) -> Result<(), LspError> {
        let body = serde_json::to_vec(msg)
            .map_err(|e| LspError::Spawn { program: self.program.clone(), error: e.to_string() })?;
        match tokio::time::timeout(self.timeout, self.out.send(codec::frame(&body))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.exited_error().await),
            Err(_) => Err(LspError::Timeout { method: "writing to the server".into(), secs: self.timeout.as_secs() }),
        }
    }

    pub async fn notify(&self, method: &str, params: Value) -> Result<(), LspError> {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params})).await
    }

    /// A request from the daemon itself, answered within the server's timeout.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, LspError> {
        self.request_within(method, params, self.timeout).await
    }

    pub async fn request_within(&self, method: &str, params: Value, wait: Duration) -> Result<Value, LspError> {
        let id = format!("{OWN_ID_PREFIX}{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        // The reader cancels `closed` before it drops every pending sender: checking after inserting means a
        // request is either dropped by it or sees the cancellation, never left waiting.
        if self.closed.is_cancelled() {
            lock(&self.pending).remove(&id);
            return Err(self.exited_error().await);
        }
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => {
                Err(LspError::Rpc { method: method.to_owned(), code: e.code.code(), message: e.message.into_owned() })
            }
            Ok(Err(_)) => Err(self.exited_error().await),
            Err(_) => {
                lock(&self.pending).remove(&id);
                let _ = self.notify("$/cancelRequest", json!({"id": id})).await;
                Err(LspError::Timeout { method: method.to_owned(), secs: wait.as_secs() })
            }
        }
    }

    /// The error for a server that is gone, with its exit status and the end of its stderr.
    pub async fn exited_error(&self) -> LspError {
        let mut exit = self.exit.clone();
        let status = tokio::time::timeout(Duration::from_secs(1), procs::wait_exit(&mut exit)).await.ok();
        let status = match status {
            Some(Exit::Code(c)) => format!("exit code {c}"),
            Some(Exit::Signal(s)) => format!("signal {s}"),
            None => "its output closed".to_owned(),
        };
        let tail = lock(&self.stderr_tail).clone();
        let last: String =
            tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().chars().take(200).collect();
        let detail = if last.is_empty() { String::new() } else { format!(": {last}") };
        LspError::Exited { language: self.language.clone(), program: self.program.clone(), status, detail }
    }

    /// Stops the server: `shutdown`, `exit`, a short wait, then SIGKILL to its process group.
    pub async fn shutdown(&self) {
        if self.is_alive() {
            let _ = self.request_within("shutdown", Value::Null, STOP_STEP).await;
            let _ = self.notify("exit", Value::Null).await;
            let mut exit = self.exit.clone();
            let _ = tokio::time::timeout(STOP_STEP, procs::wait_exit(&mut exit)).await;
        }
        procs::kill_group(self.pid, Signal::SIGKILL);
        tracing::info!(language = %self.language, pid = self.pid, "language server stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Whatever path dropped the last handle, the process must not outlive it. A reaped pid is never signalled.
        procs::kill_group(self.pid, Signal::SIGKILL);
    }
}

async fn write_loop(mut stdin: pipe::Sender, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if stdin.write_all(&frame).await.is_err() {
            break;
        }
    }
}

async fn stderr_loop(mut stderr: pipe::Receiver, tail: Arc<Mutex<String>>, span: tracing::Span) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let line: String = line.chars().take(300).collect();
            tracing::debug!(parent: &span, line = %line, "language server stderr");
        }
        let mut t = lock(&tail);
        t.push_str(&text);
        if t.len() > STDERR_TAIL {
            let mut cut = t.len() - STDERR_TAIL;
            while !t.is_char_boundary(cut) {
                cut += 1;
            }
            t.drain(..cut);
        }
    }
}

async fn read_loop(
    stdout: pipe::Receiver,
    pending: Pending,
    bridge: Option<mpsc::Sender<Value>>,
    out: mpsc::Sender<Vec<u8>>,
    closed: CancellationToken,
    span: tracing::Span,
) {
    let mut r = BufReader::with_capacity(64 * 1024, stdout);
    loop {
        let body = match codec::read_message(&mut r).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                // The framing is lost: nothing after this can be trusted.
                tracing::warn!(parent: &span, error = %e, "language server broke the protocol");
                break;
            }
        };
        let msg: Value = match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                tracing::warn!(parent: &span, bytes = body.len(), "language server sent a message that is not a JSON object");
                continue;
            }
        };
        let id = msg.get("id").cloned();
        let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
        match (method, id) {
            (None, Some(Value::String(id))) if id.starts_with(OWN_ID_PREFIX) => {
                let reply = match msg.get("error") {
                    Some(err) => {
                        Err(serde_json::from_value::<jsonrpc::Error>(err.clone()).unwrap_or_else(|_| jsonrpc::Error {
                            code: err.get("code").and_then(Value::as_i64).unwrap_or(-32603).into(),
                            message: err.get("message").and_then(Value::as_str).unwrap_or("error").to_owned().into(),
                            data: None,
                        }))
                    }
                    None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                };
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            (method, id) => match &bridge {
                Some(b) => {
                    if b.send(msg).await.is_err() {
                        tracing::debug!(parent: &span, "bridge gone; dropping server message");
                    }
                }
                None => {
                    if let (Some(method), Some(id)) = (method, id) {
                        let answer = answer_server_request(&method, msg.get("params"), id);
                        if let Ok(body) = serde_json::to_vec(&answer) {
                            let _ = out.send(codec::frame(&body)).await;
                        }
                    }
                }
            },
        }
    }
    closed.cancel();
    lock(&pending).clear();
}

/// What the daemon answers a server's requests with when no IDE is attached: empty settings for every
/// configuration item, acceptance of capability registrations and progress tokens, "not supported" otherwise.
fn answer_server_request(method: &str, params: Option<&Value>, id: Value) -> Value {
    let result = match method {
        "workspace/configuration" => {
            let n = params.and_then(|p| p.get("items")).and_then(Value::as_array).map_or(0, Vec::len);
            Value::Array(vec![Value::Null; n])
        }
        "client/registerCapability"
        | "client/unregisterCapability"
        | "window/workDoneProgress/create"
        | "window/showMessageRequest"
        | "workspace/codeLens/refresh"
        | "workspace/semanticTokens/refresh"
        | "workspace/inlayHint/refresh"
        | "workspace/diagnostic/refresh" => Value::Null,
        _ => {
            let err = jsonrpc::Error::method_not_found();
            return json!({"jsonrpc": "2.0", "id": id, "error": err});
        }
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}
