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
//! Each command's output goes to a framed log file (`session/log.rs`), which live followers read as it grows and
//! whole-log answers stream back from: the daemon never holds a command's whole output in memory.

pub(crate) mod log;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sandbar_proto::ENTRYPOINT_SESSION;
use sandbar_proto::toolbox::{Session as SessionDto, SessionCommand, SessionExecuteRequest};
use sandbar_support::sync::lock;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

pub use self::log::{Follower, Log, LogSnapshot, LogText, STDERR, STDOUT, Streams};

use super::procs::{self, Exit};
use super::{Daemon, Error, ErrorKind, Result};
use crate::util::shell_quote;

const DONE_PREFIX: &str = "__SANDBAR_DONE__ ";
const MAX_SESSION_ID: usize = 256;

/// What [`Sessions::exec`] did.
#[derive(Debug)]
pub enum Executed {
    /// `runAsync`: the command is queued.
    Queued { cmd_id: String },
    /// The command ran; `log` is all it wrote.
    Done { cmd_id: String, exit_code: i32, log: LogSnapshot },
}

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

    /// Kills the session's shell and everything it started, and removes its logs: when it returns, their space
    /// is free (readers still streaming a log keep their open file until they finish).
    pub async fn delete(&self, sid: &str) -> Result<()> {
        if sid == ENTRYPOINT_SESSION {
            return Err(Error::bad_request("the entrypoint session cannot be deleted"));
        }
        let session = lock(&self.map).remove(sid).ok_or_else(|| not_found(sid))?;
        session.kill(Signal::SIGKILL);
        session.end();
        let dir = session.dir.clone();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => tracing::warn!(session_id = %sid, error = %e, "cannot remove a session's logs"),
            Err(e) => tracing::warn!(session_id = %sid, error = %e, "removing a session's logs failed"),
        }
        tracing::info!(session_id = %sid, "session deleted");
        Ok(())
    }

    /// Queues a command. With `runAsync` the answer is only its id; otherwise it waits for the command and
    /// answers its exit code and a snapshot of its log, for the caller to stream (never read whole).
    pub async fn exec(&self, d: &Daemon, sid: &str, req: SessionExecuteRequest) -> Result<Executed> {
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
            return Ok(Executed::Queued { cmd_id: id });
        }
        let code = tokio::select! {
            c = log.wait() => c,
            _ = d.shutdown.cancelled() => return Err(Error::shutting_down()),
        };
        let log = log.snapshot().map_err(|e| Error::internal("opening command log", e))?;
        Ok(Executed::Done { cmd_id: id, exit_code: code, log })
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

async fn drive_entrypoint(session: Arc<Session>, mut child: procs::Child, log: Arc<Log>) {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let mut exit = child.exit_watch();
    // Small: they live as long as the entrypoint, in every sandbox (the pipe holds 64 KiB between reads).
    let (mut obuf, mut ebuf) = (vec![0u8; 8 * 1024], vec![0u8; 8 * 1024]);
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
    drop((obuf, ebuf));
    // An entrypoint that ends (a shell without input) often ends right after start-up, whose holes it reused.
    crate::util::release_free_memory();
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
