//! A session channel: collects the PTY and environment requests, then runs the shell, the command or the SFTP
//! subsystem the client asks for, and reports how the process ended (exit-status or exit-signal).
//!
//! The connection's handler answers each request (success/failure) as it arrives; this task, which reads the
//! same requests in the same order from the channel, does the work. Output flows through the channel's writers,
//! which wait for the client's window, so a slow client slows the process down instead of filling memory.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Sig};
use tokio::io::{AsyncWriteExt, copy};
use tokio::sync::mpsc;

use super::ConnCtx;
use crate::engine::procs::{self, Exit};

pub const SFTP: &str = "sftp";
/// Environment variables a channel may set.
const MAX_ENV: usize = 256;
const MAX_ENV_BYTES: usize = 64 * 1024;

/// The terminal size, if the client's is acceptable.
pub fn pty_size(cols: u32, rows: u32) -> Option<(u16, u16)> {
    let cols = u16::try_from(cols).ok()?;
    let rows = u16::try_from(rows).ok()?;
    // Some clients send 0x0 when they do not know: take the classic 80x24.
    let (cols, rows) = if cols == 0 || rows == 0 { (80, 24) } else { (cols, rows) };
    crate::engine::pty::check_size(cols, rows).ok().map(|()| (cols, rows))
}

/// Whether a client may set `name` (the daemon's private variables stay out of reach).
pub fn env_allowed(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && value.len() <= 32 * 1024
        && !name.contains(['=', '\0'])
        && !value.contains('\0')
        && !crate::engine::daemon::PRIVATE_ENV.contains(&name)
}

struct PtyReq {
    term: String,
    cols: u16,
    rows: u16,
}

/// Serves one session channel until it closes.
pub async fn run(mut channel: Channel<Msg>, ctx: ConnCtx, handle: Handle) {
    let mut env = BTreeMap::new();
    let mut env_bytes = 0usize;
    let mut pty: Option<PtyReq> = None;
    let mut agent = false;
    loop {
        let Some(msg) = channel.wait().await else { return };
        match msg {
            ChannelMsg::RequestPty { term, col_width, row_height, .. } => {
                if let Some((cols, rows)) = pty_size(col_width, row_height) {
                    pty = Some(PtyReq { term, cols, rows });
                }
            }
            ChannelMsg::WindowChange { col_width, row_height, .. } => {
                if let (Some(p), Some((cols, rows))) = (pty.as_mut(), pty_size(col_width, row_height)) {
                    (p.cols, p.rows) = (cols, rows);
                }
            }
            ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
                env_bytes += variable_name.len() + variable_value.len();
                if env_allowed(&variable_name, &variable_value) && env.len() < MAX_ENV && env_bytes <= MAX_ENV_BYTES {
                    env.insert(variable_name, variable_value);
                }
            }
            ChannelMsg::AgentForward { .. } => agent = true,
            ChannelMsg::RequestShell { .. } => {
                let env = session_env(&ctx, env, pty.as_ref(), agent);
                return start(channel, &ctx, handle, None, env, pty).await;
            }
            ChannelMsg::Exec { command, .. } => {
                let env = session_env(&ctx, env, pty.as_ref(), agent);
                return start(channel, &ctx, handle, Some(command), env, pty).await;
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == SFTP => {
                super::sftp::serve(channel, ctx.d.clone(), handle);
                return;
            }
            ChannelMsg::Close => return,
            _ => {}
        }
    }
}

/// The environment of a session's process: the daemon's, what the client set, and the usual SSH variables.
fn session_env(
    ctx: &ConnCtx,
    client: BTreeMap<String, String>,
    pty: Option<&PtyReq>,
    agent: bool,
) -> BTreeMap<String, String> {
    let d = &ctx.d;
    let mut env = d.effective_env();
    env.extend(client);
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name);
    if let Some(user) = user {
        env.insert("USER".into(), user.clone());
        env.insert("LOGNAME".into(), user);
    }
    env.insert("SHELL".into(), d.shell.to_string_lossy().into_owned());
    let (peer, local) = (ctx.peer, ctx.local);
    env.insert("SSH_CLIENT".into(), format!("{} {} {}", peer.ip(), peer.port(), local.port()));
    env.insert("SSH_CONNECTION".into(), format!("{} {} {} {}", peer.ip(), peer.port(), local.ip(), local.port()));
    if let Some(p) = pty {
        env.insert("TERM".into(), if p.term.is_empty() { "xterm-256color".into() } else { p.term.clone() });
    }
    if agent && let Some(sock) = ctx.agent_socket() {
        env.insert("SSH_AUTH_SOCK".into(), sock.to_string_lossy().into_owned());
    }
    env
}

async fn start(
    channel: Channel<Msg>,
    ctx: &ConnCtx,
    handle: Handle,
    command: Option<Vec<u8>>,
    env: BTreeMap<String, String>,
    pty: Option<PtyReq>,
) {
    let id = channel.id();
    let exit = match pty {
        Some(p) => run_pty(channel, ctx, command, env, p).await,
        None => run_piped(channel, ctx, command, env).await,
    };
    let Some((exit, writer)) = exit else { return };
    let _ = writer.eof().await;
    match exit {
        Exit::Code(code) => {
            let _ = writer.exit_status(u32::try_from(code).unwrap_or(255)).await;
        }
        Exit::Signal(n) => {
            let _ = handle.exit_signal_request(id, signal_name(n), false, String::new(), "en".into()).await;
        }
    }
    let _ = writer.close().await;
}

/// `shell -c command`, or a login shell.
fn shell_args(command: Option<&[u8]>) -> Vec<&OsStr> {
    match command {
        Some(c) => vec![OsStr::new("-c"), OsStr::from_bytes(c)],
        None => vec![OsStr::new("-l")],
    }
}

/// Tells the client the process could not start, as a shell would (exit status 127).
async fn spawn_failed(writer: &ChannelWriteHalf<Msg>, error: &std::io::Error) -> Exit {
    tracing::warn!(error = %error, "cannot start the ssh session's process");
    let _ = writer
        .extended_data_bytes(1, Bytes::from(format!("sandbar-daemon: cannot start the shell: {error}\r\n")))
        .await;
    Exit::Code(127)
}

/// A command or shell on pipes: stdout as channel data, stderr as extended data 1, channel data to stdin.
async fn run_piped(
    channel: Channel<Msg>,
    ctx: &ConnCtx,
    command: Option<Vec<u8>>,
    env: BTreeMap<String, String>,
) -> Option<(Exit, ChannelWriteHalf<Msg>)> {
    use std::process::Stdio;
    let d = &ctx.d;
    let (mut rx, tx) = channel.split();
    let mut cmd = d.command(&d.shell);
    cmd.args(shell_args(command.as_deref()));
    cmd.env_clear().envs(&env).current_dir(&d.home);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match d.procs.spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => return Some((spawn_failed(&tx, &e).await, tx)),
    };
    let pid = child.pid;
    let out = child.stdout.take().map(|mut o| {
        let mut w = tx.make_writer();
        tokio::spawn(async move { copy(&mut o, &mut w).await })
    });
    let err = child.stderr.take().map(|mut o| {
        let mut w = tx.make_writer_ext(Some(1));
        tokio::spawn(async move { copy(&mut o, &mut w).await })
    });
    let mut stdin = child.stdin.take();
    let mut exit = child.exit_watch();
    let status = loop {
        if let Some(e) = *exit.borrow_and_update() {
            break e;
        }
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(sig) = signal_from(&signal) {
                        procs::kill_group(pid, sig);
                    }
                }
                Some(ChannelMsg::Close) | None => {
                    // The client went away: hang the command up, as a closed terminal would.
                    procs::kill_group(pid, Signal::SIGHUP);
                    return None;
                }
                _ => {}
            },
            _ = exit.changed() => {}
        }
    };
    drop(stdin);
    // Output the process wrote before it ended is still in the pipes: send all of it before the exit status.
    for task in [out, err].into_iter().flatten() {
        let _ = task.await;
    }
    Some((status, tx))
}

/// A command or shell on a pseudo-terminal (portable-pty, spawned under the process table's lock).
async fn run_pty(
    channel: Channel<Msg>,
    ctx: &ConnCtx,
    command: Option<Vec<u8>>,
    env: BTreeMap<String, String>,
    p: PtyReq,
) -> Option<(Exit, ChannelWriteHalf<Msg>)> {
    let (mut rx, tx) = channel.split();
    let spawned = spawn_pty(ctx, command.as_deref(), &env, &p);
    let (master, reader, writer, pid, mut exit) = match spawned {
        Ok(s) => s,
        Err(e) => return Some((spawn_failed(&tx, &e).await, tx)),
    };
    tracing::info!(pid, term = %p.term, "ssh PTY session started");
    // Reader thread -> bounded channel -> channel writer: a slow client holds the program back, nothing is lost.
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(32);
    std::thread::Builder::new().name("ssh-pty-reader".into()).spawn(move || read_pty(reader, out_tx)).ok()?;
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(64);
    std::thread::Builder::new().name("ssh-pty-writer".into()).spawn(move || write_pty(writer, in_rx)).ok()?;
    let mut w = tx.make_writer();
    let out = tokio::spawn(async move {
        while let Some(chunk) = out_rx.recv().await {
            if w.write_all(&chunk).await.is_err() {
                // The client is gone: keep draining so the reader thread never blocks forever.
                while out_rx.recv().await.is_some() {}
                return;
            }
        }
    });
    let mut in_tx = Some(in_tx);
    let status = loop {
        if let Some(e) = *exit.borrow_and_update() {
            break e;
        }
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(t) = &in_tx
                        && t.send(data).await.is_err()
                    {
                        in_tx = None;
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Some((cols, rows)) = pty_size(col_width, row_height) {
                        let _ = master.resize(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 });
                    }
                }
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(sig) = signal_from(&signal) {
                        procs::kill_group(pid, sig);
                    }
                }
                // EOF on a terminal is the user's ^D, which comes as data; the channel's EOF changes nothing.
                Some(ChannelMsg::Eof) => {}
                Some(ChannelMsg::Close) | None => {
                    procs::kill_session(pid, Signal::SIGHUP);
                    return None;
                }
                _ => {}
            },
            _ = exit.changed() => {}
        }
    };
    drop(in_tx);
    // Output written before the exit is still in the terminal: let the reader finish it, but do not wait for
    // background jobs that keep the terminal open (hang them up, as closing a terminal does).
    let mut out = out;
    if tokio::time::timeout(Duration::from_secs(1), &mut out).await.is_err() {
        procs::kill_session(pid, Signal::SIGHUP);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut out).await;
    }
    drop(master);
    tracing::info!(pid, exit_code = status.code(), "ssh PTY session ended");
    Some((status, tx))
}

type Spawned = (
    Box<dyn MasterPty + Send>,
    Box<dyn Read + Send>,
    Box<dyn Write + Send>,
    i32,
    tokio::sync::watch::Receiver<Option<Exit>>,
);

fn spawn_pty(
    ctx: &ConnCtx,
    command: Option<&[u8]>,
    env: &BTreeMap<String, String>,
    p: &PtyReq,
) -> std::io::Result<Spawned> {
    let d = &ctx.d;
    let pair = native_pty_system()
        .openpty(PtySize { rows: p.rows, cols: p.cols, pixel_width: 0, pixel_height: 0 })
        .map_err(std::io::Error::other)?;
    let mut cmd = CommandBuilder::new(&d.shell);
    for a in shell_args(command) {
        cmd.arg(a);
    }
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.cwd(&d.home);
    let slave = pair.slave;
    let (_child, pid, exit) = d.procs.register(|| {
        let child = slave.spawn_command(cmd).map_err(std::io::Error::other)?;
        let pid = child.process_id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        Ok((child, pid))
    })?;
    // Reads end with EIO once the last holder of the slave side is gone: that must not be us.
    drop(slave);
    let reader = pair.master.try_clone_reader().map_err(std::io::Error::other)?;
    let writer = pair.master.take_writer().map_err(std::io::Error::other)?;
    Ok((pair.master, reader, writer, pid, exit))
}

fn read_pty(mut reader: Box<dyn Read + Send>, out: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if out.blocking_send(Bytes::copy_from_slice(buf.get(..n).unwrap_or_default())).is_err() {
            return;
        }
    }
}

fn write_pty(mut writer: Box<dyn Write + Send>, mut input: mpsc::Receiver<Bytes>) {
    while let Some(data) = input.blocking_recv() {
        if writer.write_all(&data).and_then(|()| writer.flush()).is_err() {
            return;
        }
    }
}

/// The signal an SSH `signal` request names (RFC 4254 names, without "SIG").
fn signal_from(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(name) => format!("SIG{name}").parse().ok()?,
    })
}

/// The RFC 4254 name of signal number `n`.
fn signal_name(n: i32) -> Sig {
    match Signal::try_from(n) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(s) => Sig::Custom(s.as_str().trim_start_matches("SIG").to_owned()),
        Err(_) => Sig::Custom(format!("SIG{n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_round_trip() {
        for n in [1, 2, 9, 15, 10, 12] {
            let sig = signal_name(n);
            assert_eq!(signal_from(&sig).map(|s| s as i32), Some(n));
        }
    }

    #[test]
    fn private_env_is_refused() {
        assert!(!env_allowed("SANDBAR_DAEMON_TOKEN", "x"));
        assert!(!env_allowed("A=B", "x"));
        assert!(env_allowed("LANG", "C.UTF-8"));
    }

    #[test]
    fn pty_sizes() {
        assert_eq!(pty_size(0, 0), Some((80, 24)));
        assert_eq!(pty_size(120, 40), Some((120, 40)));
        assert_eq!(pty_size(100_000, 40), None);
    }
}
