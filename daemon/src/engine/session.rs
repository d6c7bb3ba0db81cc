//! Sessions: long-lived shells whose commands run one after another and keep the shell's state (cwd, exported
//! variables, functions), each command's output logged separately and followable live. Plus the reserved
//! session `entrypoint`, which runs the image's entrypoint argv directly (no shell).
//!
//! How a shell session runs a command: the daemon writes the command to a file and three FIFOs next to it (stdin,
//! stdout, stderr), then writes one line to the shell's stdin:
//! `. cmd <in >out 2>err; printf '__SANDBAR_DONE__ <id> %d\n' "$?"`. Sourcing keeps the shell's state; a syntax
//! error fails that command only; the completion line arrives on the shell's own stdout, which nothing else
//! writes to. The daemon opens each FIFO read-write before sending the line, so the shell's opens never block and
//! the daemon never sees a spurious EOF; output is read until the completion line, then drained. Input sent while
//! a command runs goes to that command's own stdin FIFO, so input it never reads is discarded with it instead of
//! being executed by the shell later.
//!
//! Logs are files of frames `[stream u8][len u32 le][bytes]` (1 = stdout, 2 = stderr), so stdout, stderr and the
//! interleaved output all come from one file, and a live follower reads complete frames as they land and turns
//! them into Daytona's marker-prefixed chunks.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sandbar_proto::ENTRYPOINT_SESSION;
use sandbar_proto::toolbox::{
    Session as SessionDto, SessionCommand, SessionCommandLogs, SessionExecuteRequest, SessionExecuteResponse,
};
use sandbar_support::sync::lock;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use super::procs::{self, Exit};
use super::{Daemon, Error, ErrorKind, Result};
use crate::util::shell_quote;

/// Stream byte of a log frame: the command's stdout.
pub const STDOUT: u8 = 1;
/// Stream byte of a log frame: the command's stderr.
pub const STDERR: u8 = 2;
const DONE_PREFIX: &str = "__SANDBAR_DONE__ ";
const MAX_SESSION_ID: usize = 256;

#[derive(Debug)]
pub struct Sessions {
    dir: PathBuf,
    map: Mutex<HashMap<String, Arc<Session>>>,
}

#[derive(Debug)]
struct Session {
    id: String,
    dir: PathBuf,
    commands: Mutex<Vec<Arc<Cmd>>>,
    /// Commands waiting for the shell; `None` for the entrypoint session.
    queue: Option<mpsc::UnboundedSender<Arc<Cmd>>>,
    /// Process group of the shell (or of the entrypoint).
    pgid: Mutex<Option<i32>>,
    ended: AtomicBool,
}

#[derive(Debug)]
struct Cmd {
    id: String,
    command: String,
    log: Arc<Log>,
    /// The running command's stdin FIFO, present while it runs.
    input: tokio::sync::Mutex<Option<pipe::Sender>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LogState {
    len: u64,
    exit: Option<i32>,
}

/// A command's framed output file and the state live followers watch.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    state: watch::Sender<LogState>,
    file: Mutex<Option<std::fs::File>>,
}

impl Log {
    fn create(path: PathBuf) -> std::io::Result<Arc<Self>> {
        let file = std::fs::File::create(&path)?;
        Ok(Arc::new(Self { path, state: watch::channel(LogState::default()).0, file: Mutex::new(Some(file)) }))
    }

    fn append(&self, stream: u8, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut guard = lock(&self.file);
        let Some(file) = guard.as_mut() else { return };
        let mut frame = Vec::with_capacity(data.len() + 5);
        frame.push(stream);
        frame.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
        frame.extend_from_slice(data);
        if let Err(e) = file.write_all(&frame) {
            tracing::warn!(error = %e, "cannot write command log");
            return;
        }
        let n = frame.len() as u64;
        self.state.send_modify(|s| s.len += n);
    }

    fn finish(&self, exit: i32) {
        lock(&self.file).take();
        self.state.send_modify(|s| {
            if s.exit.is_none() {
                s.exit = Some(exit);
            }
        });
    }

    fn exit_code(&self) -> Option<i32> {
        self.state.borrow().exit
    }

    async fn wait(&self) -> i32 {
        let mut rx = self.state.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().exit {
                return e;
            }
            if rx.changed().await.is_err() {
                return -1;
            }
        }
    }

    /// Reads the whole log and splits it into (output, stdout, stderr).
    pub async fn read_all(&self) -> std::io::Result<SessionCommandLogs> {
        let len = self.state.borrow().len;
        let path = self.path.clone();
        let data =
            tokio::task::spawn_blocking(move || read_range(&path, 0, len)).await.map_err(std::io::Error::other)??;
        let (mut out, mut so, mut se) = (Vec::new(), Vec::new(), Vec::new());
        for (stream, chunk) in frames(&data).0 {
            out.extend_from_slice(chunk);
            if stream == STDERR { se.extend_from_slice(chunk) } else { so.extend_from_slice(chunk) }
        }
        Ok(SessionCommandLogs {
            output: String::from_utf8_lossy(&out).into_owned(),
            stdout: String::from_utf8_lossy(&so).into_owned(),
            stderr: String::from_utf8_lossy(&se).into_owned(),
        })
    }
}

fn read_range(path: &Path, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(to.saturating_sub(from)).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Parses complete frames; returns them and how many bytes they used.
fn frames(data: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(head) = data.get(at..at + 5) {
        let stream = head.first().copied().unwrap_or(STDOUT);
        let len = u32::from_le_bytes([
            head.get(1).copied().unwrap_or(0),
            head.get(2).copied().unwrap_or(0),
            head.get(3).copied().unwrap_or(0),
            head.get(4).copied().unwrap_or(0),
        ]) as usize;
        let Some(chunk) = data.get(at + 5..at + 5 + len) else { break };
        out.push((stream, chunk));
        at += 5 + len;
    }
    (out, at)
}

impl Session {
    fn dto(&self) -> SessionDto {
        let commands = lock(&self.commands);
        SessionDto { session_id: self.id.clone(), commands: commands.iter().map(|c| c.dto()).collect() }
    }

    fn command(&self, cid: &str) -> Result<Arc<Cmd>> {
        lock(&self.commands).iter().find(|c| c.id == cid).cloned().ok_or_else(|| {
            Error::not_found(format!("command {cid} not found in session {}", self.id)).with_code("PROCESS_NOT_FOUND")
        })
    }

    fn kill(&self, signal: Signal) {
        if let Some(pgid) = *lock(&self.pgid) {
            procs::kill_group(pgid, signal);
        }
    }

    /// Marks the session ended and finishes every command that will now never run.
    fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        for c in lock(&self.commands).iter() {
            if c.log.exit_code().is_none() {
                c.log.finish(-1);
            }
        }
    }
}

impl Cmd {
    fn dto(&self) -> SessionCommand {
        SessionCommand { id: self.id.clone(), command: self.command.clone(), exit_code: self.log.exit_code() }
    }
}

impl Sessions {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, map: Mutex::new(HashMap::new()) }
    }

    fn get(&self, sid: &str) -> Result<Arc<Session>> {
        lock(&self.map).get(sid).cloned().ok_or_else(|| not_found(sid))
    }

    fn new_session_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Starts the image's entrypoint in the reserved session; its output is logged and mirrored to the daemon's
    /// own stdout/stderr (so `docker logs` shows it).
    pub fn start_entrypoint(&self, d: &Daemon, argv: &[String]) -> Result<()> {
        let dir = self.new_session_dir().map_err(|e| Error::internal("creating session dir", e))?;
        let log = Log::create(dir.join("entrypoint.log")).map_err(|e| Error::internal("creating log", e))?;
        let cmd = Arc::new(Cmd {
            id: ENTRYPOINT_SESSION.to_owned(),
            command: argv.join(" "),
            log: log.clone(),
            input: tokio::sync::Mutex::new(None),
        });
        let session = Arc::new(Session {
            id: ENTRYPOINT_SESSION.to_owned(),
            dir,
            commands: Mutex::new(vec![cmd]),
            queue: None,
            pgid: Mutex::new(None),
            ended: AtomicBool::new(false),
        });
        lock(&self.map).insert(ENTRYPOINT_SESSION.to_owned(), session.clone());
        let Some((program, args)) = argv.split_first() else {
            return Err(Error::bad_request("empty entrypoint"));
        };
        let mut command = d.command(program);
        command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = match d.procs.spawn(&mut command) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("sandbar-daemon: cannot start entrypoint {program}: {e}\n");
                log.append(STDERR, msg.as_bytes());
                log.finish(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
                session.end();
                return Err(Error::bad_request(msg.trim().to_owned()));
            }
        };
        *lock(&session.pgid) = Some(child.pid);
        tracing::info!(pid = child.pid, program = %program, "entrypoint started");
        tokio::spawn(drive_entrypoint(session, child, log));
        Ok(())
    }

    /// Forwards a signal to the entrypoint's process group.
    pub fn signal_entrypoint(&self, signal: Signal) {
        if let Ok(s) = self.get(ENTRYPOINT_SESSION) {
            s.kill(signal);
        }
    }

    /// Removes the state of every session (called once everything is stopped).
    pub fn cleanup(&self) {
        let sessions: Vec<_> = lock(&self.map).drain().collect();
        for (_, s) in sessions {
            let _ = std::fs::remove_dir_all(&s.dir);
        }
    }
}

fn not_found(sid: &str) -> Error {
    Error::not_found(format!("session {sid} not found")).with_code("PROCESS_NOT_FOUND")
}

fn ended(sid: &str) -> Error {
    Error::new(ErrorKind::Gone, format!("session {sid} has ended")).with_code("SESSION_ENDED")
}

/// What the toolbox's session endpoints do.
impl Sessions {
    /// Every session, sorted by id.
    pub fn list(&self) -> Vec<SessionDto> {
        let sessions: Vec<_> = lock(&self.map).values().cloned().collect();
        let mut out: Vec<_> = sessions.iter().map(|s| s.dto()).collect();
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        out
    }

    pub fn session(&self, sid: &str) -> Result<SessionDto> {
        Ok(self.get(sid)?.dto())
    }

    /// Starts a shell for a new session `id`.
    pub fn create(&self, d: &Daemon, id: String) -> Result<SessionDto> {
        if id.is_empty() || id.len() > MAX_SESSION_ID || id.chars().any(char::is_control) {
            return Err(Error::bad_request(format!(
                "sessionId must be 1 to {MAX_SESSION_ID} characters without control characters"
            )));
        }
        if id == ENTRYPOINT_SESSION {
            return Err(Error::conflict("the session name \"entrypoint\" is reserved"));
        }
        if lock(&self.map).contains_key(&id) {
            return Err(Error::conflict(format!("session {id} already exists")));
        }
        let dir = self.new_session_dir().map_err(|e| Error::internal("creating session dir", e))?;
        let mut shell = d.command(&d.shell);
        shell.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let child = d.procs.spawn(&mut shell).map_err(|e| Error::internal("starting the session shell", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            id: id.clone(),
            dir,
            commands: Mutex::new(Vec::new()),
            queue: Some(tx),
            pgid: Mutex::new(Some(child.pid)),
            ended: AtomicBool::new(false),
        });
        {
            let mut map = lock(&self.map);
            if map.contains_key(&id) {
                child.kill_group(Signal::SIGKILL);
                return Err(Error::conflict(format!("session {id} already exists")));
            }
            map.insert(id.clone(), session.clone());
        }
        tracing::info!(session_id = %id, pid = child.pid, "session created");
        tokio::spawn(drive_shell(session.clone(), child, rx));
        Ok(session.dto())
    }

    /// Kills the session's shell and everything it started, and removes its logs.
    pub fn delete(&self, sid: &str) -> Result<()> {
        if sid == ENTRYPOINT_SESSION {
            return Err(Error::bad_request("the entrypoint session cannot be deleted"));
        }
        let session = lock(&self.map).remove(sid).ok_or_else(|| not_found(sid))?;
        session.kill(Signal::SIGKILL);
        session.end();
        let dir = session.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir));
        tracing::info!(session_id = %sid, "session deleted");
        Ok(())
    }

    /// Queues a command. With `runAsync` the answer has only `cmdId` (and no `exitCode`); otherwise it waits for
    /// the command and carries its output and exit code.
    pub async fn exec(&self, d: &Daemon, sid: &str, req: SessionExecuteRequest) -> Result<SessionExecuteResponse> {
        let session = self.get(sid)?;
        if req.command.trim().is_empty() {
            return Err(Error::bad_request("command must not be empty"));
        }
        let queue = session
            .queue
            .as_ref()
            .ok_or_else(|| Error::bad_request("commands cannot be run in the entrypoint session"))?;
        if session.ended.load(Ordering::SeqCst) {
            return Err(ended(sid));
        }
        let id = uuid::Uuid::new_v4().to_string();
        std::fs::create_dir_all(session.dir.join(&id)).map_err(|e| Error::internal("creating command dir", e))?;
        let log = Log::create(session.dir.join(&id).join("log")).map_err(|e| Error::internal("creating log", e))?;
        let cmd = Arc::new(Cmd {
            id: id.clone(),
            command: req.command,
            log: log.clone(),
            input: tokio::sync::Mutex::new(None),
        });
        lock(&session.commands).push(cmd.clone());
        if queue.send(cmd).is_err() {
            log.finish(-1);
            return Err(ended(sid));
        }
        if req.run_async.or(req.async_).unwrap_or(false) {
            return Ok(SessionExecuteResponse {
                cmd_id: id,
                output: None,
                stdout: None,
                stderr: None,
                exit_code: None,
            });
        }
        let code = tokio::select! {
            c = log.wait() => c,
            _ = d.shutdown.cancelled() => return Err(Error::shutting_down()),
        };
        let logs = log.read_all().await.map_err(|e| Error::internal("reading command log", e))?;
        Ok(SessionExecuteResponse {
            cmd_id: id,
            output: Some(logs.output),
            stdout: Some(logs.stdout),
            stderr: Some(logs.stderr),
            exit_code: Some(code),
        })
    }

    pub fn command(&self, sid: &str, cid: &str) -> Result<SessionCommand> {
        Ok(self.get(sid)?.command(cid)?.dto())
    }

    /// Writes `data` to the running command's stdin.
    pub async fn send_input(&self, sid: &str, cid: &str, data: &str) -> Result<()> {
        let cmd = self.get(sid)?.command(cid)?;
        if cmd.log.exit_code().is_some() {
            return Err(Error::bad_request(format!("command {cid} has already completed"))
                .with_code("COMMAND_ALREADY_COMPLETED"));
        }
        let mut input = cmd.input.lock().await;
        let Some(pipe) = input.as_mut() else {
            return Err(Error::conflict(format!("command {cid} has not started yet")));
        };
        // A command that stopped reading must not hang the request: give the write a bound.
        match tokio::time::timeout(Duration::from_secs(10), pipe.write_all(data.as_bytes())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::internal("writing command input", e)),
            Err(_) => Err(Error::new(ErrorKind::Timeout, "the command is not reading its input")),
        }
    }

    /// The log of one command.
    pub fn command_log(&self, sid: &str, cid: &str) -> Result<Arc<Log>> {
        Ok(self.get(sid)?.command(cid)?.log.clone())
    }

    /// The log of the session's last command: for the entrypoint session, the entrypoint's output.
    pub fn last_log(&self, sid: &str) -> Result<Arc<Log>> {
        let session = self.get(sid)?;
        let last = lock(&session.commands).last().cloned();
        let Some(cmd) = last else {
            return Err(Error::not_found(format!("session {sid} has no commands")).with_code("PROCESS_NOT_FOUND"));
        };
        Ok(cmd.log.clone())
    }
}

/// Reads a command's log as it grows, frame by frame: what a live follower sends.
#[derive(Debug)]
pub struct Follower {
    log: Arc<Log>,
    rx: watch::Receiver<LogState>,
    offset: u64,
    seen: LogState,
}

impl Follower {
    pub fn new(log: Arc<Log>) -> Self {
        let rx = log.state.subscribe();
        Self { log, rx, offset: 0, seen: LogState::default() }
    }

    /// The complete frames written since the last call, as (stream, bytes); empty when caught up.
    pub async fn read(&mut self) -> std::io::Result<Vec<(u8, Vec<u8>)>> {
        const MAX_READ: u64 = 256 * 1024;
        self.seen = *self.rx.borrow_and_update();
        if self.seen.len <= self.offset {
            return Ok(Vec::new());
        }
        let (offset, len) = (self.offset, self.seen.len);
        let mut data = self.read_range(offset, len.min(offset + MAX_READ)).await?;
        if frames(&data).1 == 0 {
            // One frame bigger than MAX_READ: read it whole.
            data = self.read_range(offset, len).await?;
        }
        let (frames, used) = frames(&data);
        if used == 0 {
            return Err(std::io::Error::other("the command log holds a partial frame"));
        }
        self.offset += used as u64;
        Ok(frames.into_iter().map(|(stream, chunk)| (stream, chunk.to_vec())).collect())
    }

    /// Whether the command has exited and everything it wrote was read.
    pub fn finished(&self) -> bool {
        self.seen.exit.is_some() && self.offset >= self.seen.len
    }

    /// Waits for more output or the exit; false when the log is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    async fn read_range(&self, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
        let path = self.log.path.clone();
        tokio::task::spawn_blocking(move || read_range(&path, from, to)).await.map_err(std::io::Error::other)?
    }
}

async fn drive_entrypoint(session: Arc<Session>, mut child: procs::Child, log: Arc<Log>) {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let mut exit = child.exit_watch();
    let (mut obuf, mut ebuf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    let mut status: Option<Exit> = None;
    let mut linger: Option<tokio::time::Instant> = None;
    while out.is_some() || err.is_some() || status.is_none() {
        tokio::select! {
            n = read_opt(&mut out, &mut obuf) => {
                if !tee(n, &obuf, &log, STDOUT, std::io::stdout().lock()) {
                    out = None;
                }
            }
            n = read_opt(&mut err, &mut ebuf) => {
                if !tee(n, &ebuf, &log, STDERR, std::io::stderr().lock()) {
                    err = None;
                }
            }
            e = procs::wait_exit(&mut exit), if status.is_none() => {
                status = Some(e);
                linger = Some(tokio::time::Instant::now() + Duration::from_millis(200));
            }
            _ = sleep_opt(linger) => break,
        }
    }
    let code = status.map(Exit::code).unwrap_or(-1);
    tracing::info!(exit_code = code, "entrypoint exited");
    log.finish(code);
    session.end();
}

/// Appends the `n` bytes just read into `buf` to the log as `stream` and copies them to our own `sink` (the
/// entrypoint's output stays visible in `docker logs`). False at the end of the pipe (or a read error).
fn tee(n: Option<usize>, buf: &[u8], log: &Log, stream: u8, mut sink: impl Write) -> bool {
    match n {
        Some(n) if n > 0 => {
            let chunk = buf.get(..n).unwrap_or_default();
            log.append(stream, chunk);
            let _ = sink.write_all(chunk);
            true
        }
        _ => false,
    }
}

async fn read_opt(p: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<usize> {
    match p {
        Some(p) => p.read(buf).await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs the commands of one shell session in order until the session is deleted or its shell exits.
async fn drive_shell(session: Arc<Session>, mut shell: procs::Child, mut queue: mpsc::UnboundedReceiver<Arc<Cmd>>) {
    let (Some(mut stdin), Some(stdout)) = (shell.stdin.take(), shell.stdout.take()) else {
        session.end();
        return;
    };
    let mut control = BufReader::new(stdout).lines();
    'session: loop {
        let cmd = tokio::select! {
            c = queue.recv() => match c {
                Some(c) => c,
                None => break 'session, // deleted
            },
            line = control.next_line() => match line {
                Ok(Some(_)) => continue,
                _ => break 'session, // the shell exited between commands
            },
        };
        let (mut out, mut err) = match prepare(&session, &cmd, &mut stdin).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start session command");
                cmd.log.append(STDERR, format!("sandbar-daemon: cannot start command: {e}\n").as_bytes());
                cmd.log.finish(-1);
                continue;
            }
        };
        let (mut obuf, mut ebuf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
        let done = format!("{DONE_PREFIX}{} ", cmd.id);
        let code = loop {
            tokio::select! {
                n = out.read(&mut obuf) => if let Ok(n) = n {
                    cmd.log.append(STDOUT, obuf.get(..n).unwrap_or_default());
                },
                n = err.read(&mut ebuf) => if let Ok(n) = n {
                    cmd.log.append(STDERR, ebuf.get(..n).unwrap_or_default());
                },
                line = control.next_line() => match line {
                    Ok(Some(l)) => if let Some(code) = l.strip_prefix(&done) {
                        break Some(code.trim().parse::<i32>().unwrap_or(-1));
                    },
                    _ => break None,
                },
            }
        };
        // The command's redirections are closed by now: what it wrote is in the FIFOs' buffers.
        drain(&mut out, &mut obuf, STDOUT, &cmd.log);
        drain(&mut err, &mut ebuf, STDERR, &cmd.log);
        *cmd.input.lock().await = None;
        let _ = std::fs::remove_file(cmd_dir(&session, &cmd).join("in"));
        let _ = std::fs::remove_file(cmd_dir(&session, &cmd).join("out"));
        let _ = std::fs::remove_file(cmd_dir(&session, &cmd).join("err"));
        match code {
            Some(code) => cmd.log.finish(code),
            None => {
                // The shell itself exited (`exit 3` in a command): the command's code is the shell's.
                let status = tokio::time::timeout(Duration::from_secs(5), shell.wait()).await;
                cmd.log.finish(status.map(Exit::code).unwrap_or(-1));
                break 'session;
            }
        }
    }
    session.kill(Signal::SIGKILL);
    session.end();
}

fn cmd_dir(session: &Session, cmd: &Cmd) -> PathBuf {
    session.dir.join(&cmd.id)
}

/// Creates the command's FIFOs and script, and hands the shell the line that runs it.
async fn prepare(
    session: &Session,
    cmd: &Cmd,
    stdin: &mut pipe::Sender,
) -> std::io::Result<(pipe::Receiver, pipe::Receiver)> {
    let dir = cmd_dir(session, cmd);
    let (fin, fout, ferr, script) = (dir.join("in"), dir.join("out"), dir.join("err"), dir.join("cmd"));
    for f in [&fin, &fout, &ferr] {
        nix::unistd::mkfifo(f.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    }
    std::fs::write(&script, format!("{}\n", cmd.command))?;
    let out = pipe::OpenOptions::new().read_write(true).open_receiver(&fout)?;
    let err = pipe::OpenOptions::new().read_write(true).open_receiver(&ferr)?;
    let input = pipe::OpenOptions::new().read_write(true).open_sender(&fin)?;
    *cmd.input.lock().await = Some(input);
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let line = format!(
        ". {} <{} >{} 2>{}; printf '{DONE_PREFIX}%s %d\\n' '{}' \"$?\"\n",
        q(&script),
        q(&fin),
        q(&fout),
        q(&ferr),
        cmd.id
    );
    stdin.write_all(line.as_bytes()).await?;
    Ok((out, err))
}

fn drain(p: &mut pipe::Receiver, buf: &mut [u8], stream: u8, log: &Log) {
    while let Ok(n) = p.try_read(buf) {
        if n == 0 {
            break;
        }
        log.append(stream, buf.get(..n).unwrap_or_default());
    }
}
