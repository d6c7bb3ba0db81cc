//! PTY sessions: a shell on a pseudo-terminal (portable-pty) that outlives the WebSockets attached to it.
//!
//! One reader task per session copies output into a bounded scrollback ring, the optional asciicast recording
//! and one bounded channel per attached client. Attaching snapshots the ring and registers the client under the
//! same lock the reader appends under, so a reattaching client sees every byte exactly once. A client whose
//! channel is full holds the reader back (so `cat` of a big file through a healthy connection loses nothing and
//! simply runs at the client's pace), but only for `CLIENT_STALL`: then that client is dropped (close 1008) and
//! the others go on. Memory stays bounded either way. Input goes through a bounded channel to a writer task. Both
//! tasks use a non-blocking duplicate of the master on the runtime, so a keystroke's echo crosses no thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use sandbar_proto::toolbox::{PtyRecording, PtySessionInfo};
use sandbar_support::sync::lock;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use super::{Daemon, Error, ErrorKind};
use crate::engine::procs::{self, Exit};
use crate::utf8::Utf8Stream;

/// Scrollback replayed to a client that (re)attaches.
pub const SCROLLBACK_BYTES: usize = 256 * 1024;
/// Output chunks queued per client.
const CLIENT_CHUNKS: usize = 256;
/// How long a client with a full queue may hold the terminal's output back before it is dropped.
const CLIENT_STALL: Duration = Duration::from_secs(2);
/// Largest terminal accepted.
pub const MAX_COLS: u16 = 1000;
pub const MAX_ROWS: u16 = 1000;
/// How long a finished session stays listed (so a client that reattaches late still gets its exit code).
const KEEP_FINISHED: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("invalid terminal size {cols}x{rows}: columns and rows must be between 1 and {MAX_COLS}")]
    BadSize { cols: u16, rows: u16 },
    #[error("PTY session {0} already exists")]
    Exists(String),
    #[error("PTY session {0} not found")]
    NotFound(String),
    #[error("invalid PTY session id: use 1 to 128 letters, digits, '-', '_' or '.'")]
    BadId,
    #[error("cwd {0} is not a directory")]
    BadCwd(String),
    #[error("the PTY session has ended")]
    Ended,
    #[error("cannot start the shell: {0}")]
    Spawn(String),
    #[error("invalid environment variable {0:?}")]
    BadEnv(String),
}

impl From<PtyError> for Error {
    fn from(e: PtyError) -> Self {
        match e {
            PtyError::NotFound(_) => Error::not_found(e.to_string()).with_code("PROCESS_NOT_FOUND"),
            PtyError::Exists(_) => Error::conflict(e.to_string()),
            PtyError::Ended => Error::new(ErrorKind::Gone, e.to_string()).with_code("SESSION_ENDED"),
            PtyError::Spawn(_) => Error::internal("starting the PTY shell", e),
            PtyError::BadSize { .. } | PtyError::BadId | PtyError::BadCwd(_) | PtyError::BadEnv(_) => {
                Error::bad_request(e.to_string())
            }
        }
    }
}

/// Environment variables a client may hand a PTY: a name without `=` or NUL, a value without NUL.
pub fn check_envs(envs: &BTreeMap<String, String>) -> Result<(), PtyError> {
    match envs.iter().find(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0')) {
        Some((k, _)) => Err(PtyError::BadEnv(k.clone())),
        None => Ok(()),
    }
}

pub fn check_size(cols: u16, rows: u16) -> Result<(), PtyError> {
    if cols == 0 || rows == 0 || cols > MAX_COLS || rows > MAX_ROWS {
        return Err(PtyError::BadSize { cols, rows });
    }
    Ok(())
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// What a PTY session is created with.
#[derive(Debug, Clone)]
pub struct PtyOptions {
    pub id: String,
    pub cwd: Option<String>,
    pub envs: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
    pub lazy_start: bool,
    pub record: bool,
}

#[derive(Debug)]
pub struct PtySession {
    pub id: String,
    pub cwd: PathBuf,
    pub envs: BTreeMap<String, String>,
    pub created_at: String,
    pub lazy_start: bool,
    size: Mutex<(u16, u16)>,
    running: Mutex<Option<Running>>,
    out: Mutex<Output>,
    exit: watch::Sender<Option<Exit>>,
    recording: Option<PathBuf>,
    started: std::sync::atomic::AtomicBool,
}

struct Running {
    master: Box<dyn MasterPty + Send>,
    input: mpsc::Sender<Bytes>,
    pid: i32,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("pid", &self.pid).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Output {
    ring: VecDeque<u8>,
    recorder: Option<Recorder>,
    clients: Vec<mpsc::Sender<Bytes>>,
}

/// asciicast v2 writer: a header line, then `[seconds, "o", text]` and `[seconds, "r", "COLSxROWS"]` events.
#[derive(Debug)]
struct Recorder {
    file: std::io::BufWriter<std::fs::File>,
    start: Instant,
    text: Utf8Stream,
}

impl Recorder {
    fn create(path: &Path, cols: u16, rows: u16, shell: &str) -> std::io::Result<Self> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let header = serde_json::json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": time::OffsetDateTime::now_utc().unix_timestamp(),
            "env": {"TERM": "xterm-256color", "SHELL": shell},
        });
        writeln!(file, "{header}")?;
        Ok(Self { file, start: Instant::now(), text: Utf8Stream::default() })
    }

    fn event(&mut self, kind: &str, data: &str) {
        if data.is_empty() {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        let line = serde_json::json!([t, kind, data]);
        if writeln!(self.file, "{line}").and_then(|()| self.file.flush()).is_err() {
            tracing::warn!("cannot write the PTY recording");
        }
    }

    fn output(&mut self, data: &[u8]) {
        let text = self.text.push(data);
        self.event("o", &text);
    }
}

/// A client's view of a session: the scrollback so far and the live output after it.
#[derive(Debug)]
pub struct Attachment {
    pub replay: Bytes,
    /// Ends (`None`) when the client was dropped for falling behind.
    pub live: mpsc::Receiver<Bytes>,
    pub exit: watch::Receiver<Option<Exit>>,
}

impl PtySession {
    /// Daytona's `PtySessionInfo` of this session.
    pub fn info(&self) -> PtySessionInfo {
        let (cols, rows) = self.size();
        PtySessionInfo {
            id: self.id.clone(),
            cwd: self.cwd.to_string_lossy().into_owned(),
            envs: self.envs.clone(),
            cols,
            rows,
            created_at: self.created_at.clone(),
            active: self.active(),
            lazy_start: self.lazy_start,
        }
    }

    fn lock_out(&self) -> MutexGuard<'_, Output> {
        lock(&self.out)
    }

    pub fn size(&self) -> (u16, u16) {
        *lock(&self.size)
    }

    pub fn active(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::SeqCst) && self.exit.borrow().is_none()
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn attach(&self) -> Attachment {
        let mut out = self.lock_out();
        let replay = Bytes::from(out.ring.iter().copied().collect::<Vec<u8>>());
        let (tx, live) = mpsc::channel(CLIENT_CHUNKS);
        out.clients.retain(|c| !c.is_closed());
        out.clients.push(tx);
        drop(out);
        Attachment { replay, live, exit: self.exit.subscribe() }
    }

    /// The input channel of the running shell.
    pub fn input(&self) -> Option<mpsc::Sender<Bytes>> {
        lock(&self.running).as_ref().map(|r| r.input.clone())
    }

    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), PtyError> {
        check_size(cols, rows)?;
        *lock(&self.size) = (cols, rows);
        if let Some(r) = lock(&self.running).as_ref() {
            let _ = r.master.resize(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 });
        }
        if let Some(rec) = self.lock_out().recorder.as_mut() {
            rec.event("r", &format!("{cols}x{rows}"));
        }
        Ok(())
    }

    /// Signals every process of the shell's terminal session (the exit is reported by the shell's waiter).
    pub fn kill(&self, signal: nix::sys::signal::Signal) {
        if let Some(r) = lock(&self.running).as_ref() {
            procs::kill_session(r.pid, signal);
        }
    }

    pub fn pid(&self) -> Option<i32> {
        lock(&self.running).as_ref().map(|r| r.pid)
    }

    /// Starts the shell (once). Called at creation, or on first attach for `lazyStart` sessions.
    pub fn start(self: &Arc<Self>, d: &Daemon) -> Result<(), PtyError> {
        use std::sync::atomic::Ordering;
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (cols, rows) = self.size();
        let pair = native_pty_system()
            .openpty(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 })
            .map_err(|e| PtyError::Spawn(e.to_string()))?;
        let shell = pty_shell(d);
        let mut cmd = CommandBuilder::new(&shell);
        cmd.env_clear();
        for (k, v) in d.effective_env() {
            cmd.env(k, v);
        }
        cmd.env("TERM", "xterm-256color");
        cmd.env("SHELL", &shell);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.cwd(&self.cwd);
        let slave = pair.slave;
        let (_child, pid, mut exit) = d
            .procs
            .register(|| {
                let child = slave.spawn_command(cmd).map_err(std::io::Error::other)?;
                let pid = child.process_id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
                Ok((child, pid))
            })
            .map_err(|e| PtyError::Spawn(e.to_string()))?;
        // Reads end with EIO once the last holder of the slave side is gone: that must not be us.
        drop(slave);
        // The master is read and written on the runtime (non-blocking, through epoll), not by threads of its own:
        // a keystroke's echo then crosses no thread, as in sshd (two thread hand-offs cost the p99 of the echo).
        let master_fd = pair.master.as_raw_fd().ok_or_else(|| PtyError::Spawn("the PTY has no master fd".into()))?;
        let io = async_master(master_fd).map_err(|e| PtyError::Spawn(e.to_string()))?;
        let (input_tx, input_rx) = mpsc::channel::<Bytes>(256);
        *lock(&self.running) = Some(Running { master: pair.master, input: input_tx, pid });
        if let Some(path) = &self.recording {
            match Recorder::create(path, cols, rows, &shell.to_string_lossy()) {
                Ok(r) => self.lock_out().recorder = Some(r),
                Err(e) => tracing::warn!(error = %e, "cannot create the PTY recording"),
            }
        }
        tracing::info!(pty = %self.id, pid, "PTY shell started");

        let io = Arc::new(io);
        tokio::spawn(write_input(io.clone(), input_rx));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        tokio::spawn(async move {
            me.read_output(&io).await;
            let _ = done_tx.send(());
        });
        let me = self.clone();
        tokio::spawn(async move {
            let status = procs::wait_exit(&mut exit).await;
            // Output the shell wrote before it exited is still in the PTY: let the reader finish it, but do not
            // wait for background jobs that keep the terminal open.
            if tokio::time::timeout(Duration::from_secs(1), done_rx).await.is_err() {
                procs::kill_session(pid, nix::sys::signal::Signal::SIGHUP);
            }
            if let Some(rec) = me.lock_out().recorder.as_mut() {
                let rest = rec.text.finish();
                rec.event("o", &rest);
            }
            // Dropping the input sender ends the writer task.
            if let Some(r) = lock(&me.running).as_mut() {
                let (closed, _) = mpsc::channel(1);
                r.input = closed;
            }
            tracing::info!(pty = %me.id, exit_code = status.code(), "PTY shell exited");
            me.exit.send_replace(Some(status));
        });
        Ok(())
    }

    async fn read_output(&self, master: &AsyncFd<OwnedFd>) {
        use nix::errno::Errno;
        let mut buf = vec![0u8; 16 * 1024];
        let mut ended = false;
        while !ended {
            let Ok(mut ready) = master.readable().await else { return };
            // Everything the terminal holds, up to a buffer, in one chunk: a thread blocked in read(2) took a
            // fast writer's output in large pieces by itself; reading only once per wake-up here sent 20% less of
            // a `cat` through.
            let mut n = 0;
            while let Some(free) = buf.get_mut(n..).filter(|b| !b.is_empty()) {
                match nix::unistd::read(master.get_ref(), free) {
                    Ok(0) => ended = true,
                    Ok(k) => {
                        n += k;
                        continue;
                    }
                    Err(Errno::EAGAIN) => ready.clear_ready(),
                    Err(Errno::EINTR) => continue,
                    // EIO once the last holder of the slave side is gone: the end.
                    Err(_) => ended = true,
                }
                break;
            }
            drop(ready);
            if n == 0 {
                continue;
            }
            let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
            let clients = {
                let mut out = self.lock_out();
                out.ring.extend(chunk.iter().copied());
                let over = out.ring.len().saturating_sub(SCROLLBACK_BYTES);
                out.ring.drain(..over);
                if let Some(rec) = out.recorder.as_mut() {
                    rec.output(&chunk);
                }
                out.clients.clone()
            };
            let mut dropped = Vec::new();
            for client in &clients {
                let sent = match client.try_send(chunk.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                    Err(mpsc::error::TrySendError::Full(c)) => {
                        // Backpressure: wait for this client, but not forever.
                        matches!(tokio::time::timeout(CLIENT_STALL, client.send(c)).await, Ok(Ok(())))
                    }
                };
                if !sent {
                    dropped.push(client.clone());
                }
            }
            if !dropped.is_empty() {
                // Dropping the sender ends that client's stream; its socket is closed with 1008.
                self.lock_out().clients.retain(|c| !dropped.iter().any(|d| d.same_channel(c)));
            }
        }
    }
}

/// A non-blocking duplicate of the PTY master, registered with the runtime. (`O_NONBLOCK` is a flag of the open
/// file, which portable-pty's own handle shares; nothing else reads or writes through it.)
#[allow(unsafe_code)]
fn async_master(fd: std::os::fd::RawFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // SAFETY: `fd` is the master's descriptor, open while the caller holds the master; it is borrowed only to
    // duplicate it.
    let owned = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    let flags = OFlag::from_bits_truncate(fcntl(&owned, FcntlArg::F_GETFL)?);
    fcntl(&owned, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: the AsyncFd owns the duplicate, so it stays open and the same until the AsyncFd is dropped.
    Ok(unsafe { AsyncFd::register(owned) }?)
}

/// Writes each chunk of input whole, waiting while the terminal's input queue is full.
async fn write_input(master: Arc<AsyncFd<OwnedFd>>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        let mut rest = data.as_ref();
        while !rest.is_empty() {
            match master.async_io(Interest::WRITABLE, |fd| Ok(nix::unistd::write(fd, rest)?)).await {
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                Err(_) => return,
            }
        }
    }
}

/// bash if present, else sh (a terminal wants a friendly shell even if the user's login shell is sh).
fn pty_shell(d: &Daemon) -> PathBuf {
    if d.config.shell.is_some() {
        return d.shell.clone();
    }
    for s in ["/bin/bash", "/usr/bin/bash"] {
        if Path::new(s).is_file() {
            return PathBuf::from(s);
        }
    }
    d.shell.clone()
}

/// Every PTY session of the toolbox API, by id.
#[derive(Debug)]
pub struct Ptys {
    map: Mutex<HashMap<String, Arc<PtySession>>>,
    pub recordings: PathBuf,
}

impl Ptys {
    pub fn new(recordings: PathBuf) -> Self {
        Self { map: Mutex::new(HashMap::new()), recordings }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<PtySession>>> {
        lock(&self.map)
    }

    pub fn get(&self, id: &str) -> Result<Arc<PtySession>, PtyError> {
        self.lock().get(id).cloned().ok_or_else(|| PtyError::NotFound(id.to_owned()))
    }

    pub fn list(&self) -> Vec<Arc<PtySession>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    pub fn remove(&self, id: &str) -> Option<Arc<PtySession>> {
        self.lock().remove(id)
    }

    /// Creates a session (registered under its id unless `detached`) and starts it unless it is lazy.
    pub fn create(
        self: &Arc<Self>,
        d: &Arc<Daemon>,
        opts: PtyOptions,
        detached: bool,
    ) -> Result<Arc<PtySession>, PtyError> {
        if !valid_id(&opts.id) {
            return Err(PtyError::BadId);
        }
        check_size(opts.cols, opts.rows)?;
        let cwd = match opts.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => d.resolve(c),
            None => d.home.clone(),
        };
        if !cwd.is_dir() {
            return Err(PtyError::BadCwd(cwd.to_string_lossy().into_owned()));
        }
        let recording = opts.record.then(|| {
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            self.recordings.join(format!("{}-{stamp}.cast", opts.id))
        });
        if recording.is_some() {
            let _ = std::fs::create_dir_all(&self.recordings);
        }
        let session = Arc::new(PtySession {
            id: opts.id.clone(),
            cwd,
            envs: opts.envs,
            created_at: crate::util::now_rfc3339(),
            lazy_start: opts.lazy_start,
            size: Mutex::new((opts.cols, opts.rows)),
            running: Mutex::new(None),
            out: Mutex::new(Output { ring: VecDeque::new(), recorder: None, clients: Vec::new() }),
            exit: watch::channel(None).0,
            recording,
            started: std::sync::atomic::AtomicBool::new(false),
        });
        if !detached {
            let mut map = self.lock();
            if map.contains_key(&opts.id) {
                return Err(PtyError::Exists(opts.id));
            }
            map.insert(opts.id.clone(), session.clone());
        }
        if !opts.lazy_start
            && let Err(e) = session.start(d)
        {
            self.lock().remove(&opts.id);
            return Err(e);
        }
        if !detached {
            // Forget the session a while after it ends.
            let (ptys, s) = (Arc::downgrade(self), session.clone());
            tokio::spawn(async move {
                let mut exit = s.exit.subscribe();
                while exit.borrow_and_update().is_none() {
                    if exit.changed().await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(KEEP_FINISHED).await;
                if let Some(ptys) = ptys.upgrade() {
                    let mut map = ptys.lock();
                    if map.get(&s.id).is_some_and(|cur| Arc::ptr_eq(cur, &s)) {
                        map.remove(&s.id);
                    }
                }
            });
        }
        Ok(session)
    }

    /// Hangs up every session (shutdown).
    /// The asciicast files in the recordings directory, by name.
    pub async fn recordings(&self) -> super::Result<Vec<PtyRecording>> {
        let dir = self.recordings.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let Ok(meta) = e.metadata() else { continue };
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !meta.is_file() || !name.ends_with(".cast") {
                        continue;
                    }
                    let mod_time = meta
                        .modified()
                        .ok()
                        .map(|t| crate::util::rfc3339(time::OffsetDateTime::from(t)))
                        .unwrap_or_default();
                    out.push(PtyRecording { name, size: meta.len(), mod_time });
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out
        })
        .await
        .map_err(|e| Error::internal("listing recordings", e))
    }

    /// Opens one recording for download; returns it with its length.
    pub async fn recording(&self, name: &str) -> super::Result<(tokio::fs::File, u64)> {
        if name.contains('/') || name.starts_with('.') || !name.ends_with(".cast") {
            return Err(Error::bad_request("invalid recording name"));
        }
        let file = tokio::fs::File::open(self.recordings.join(name)).await.map_err(|e| Error::io(name, &e))?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        Ok((file, len))
    }

    pub fn hangup_all(&self) {
        for s in self.list() {
            s.kill(nix::sys::signal::Signal::SIGHUP);
        }
    }
}

/// Daytona's exit reason for a non-zero exit.
pub fn exit_reason(exit: Exit) -> Option<String> {
    match exit {
        Exit::Code(0) => None,
        Exit::Code(_) => Some("non-zero exit".into()),
        Exit::Signal(2) => Some("Ctrl+C".into()),
        Exit::Signal(9) => Some("SIGKILL".into()),
        Exit::Signal(15) => Some("SIGTERM".into()),
        Exit::Signal(n) => Some(format!("signal {n}")),
    }
}
