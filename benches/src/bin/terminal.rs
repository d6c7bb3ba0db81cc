//! PTY figures, the daemon's web terminal (the WebSocket at `/ws` of port 22222, what a browser terminal talks to)
//! beside `ssh -tt` to OpenSSH's sshd on the same machine: keystroke echo round trips (p50, p99) and the output
//! throughput of `cat` of a 100 MiB file. Both run the same shell command on a PTY, so the same remote work meets
//! both: `stty raw -echo; cat` echoes each byte (cat's copy, one per keystroke), `stty -echo; cat FILE` streams
//! the file. Rounds are interleaved (terminal, sshd, sshd, terminal, ...), each round on fresh sessions.
//!
//! Run as root: `cargo run --release -p sandbar-benches --bin terminal` (needs Debian's openssh-server; uses
//! scripts/build-daemon's output or SANDBAR_STATIC_DAEMON). `TERMINAL_BENCH_ROUNDS` (3), `TERMINAL_BENCH_KEYS`
//! (300 keystrokes a round) and `TERMINAL_BENCH_MIB` (100) size it; `SANDBAR_BENCH_SAMPLES=FILE` appends the
//! figures there for `benches/run` (metrics `pty_echo_p50_us`, `pty_echo_p99_us`, `pty_cat_mib_s`; subjects
//! `terminal` and `sshd`).

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sandbar_benches::sshd::{Scratch, Sshd, client_opts, keygen};
use sandbar_benches::{Daemon, auth, env_num, median_p99, rotate, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Printed by the shell once the command's `stty` ran; typed as `RE''ADY`, so the echo of the typed command line
/// never matches.
const READY: &[u8] = b"READY";
const DONE: &[u8] = b"DONE";
const WAIT: Duration = Duration::from_secs(120);

/// A shell on a PTY, reached through the web terminal or through `ssh -tt`.
enum Session {
    Web(Box<Ws>),
    Ssh(Box<SshIo>),
}

/// `ssh -tt`, its input and output.
struct SshIo {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

impl Session {
    /// A session running `command` in a shell, returned once it printed READY.
    async fn open(subject: &str, daemon: &Daemon, ssh: &Ssh, command: &str) -> anyhow::Result<Self> {
        let mut s = if subject == "terminal" {
            let mut req = format!("ws://{}/ws", daemon.terminal).into_client_request()?;
            req.headers_mut().insert("x-sandbar-daemon-auth", auth("GET", "/ws").parse()?);
            let (ws, _) = tokio_tungstenite::connect_async(req).await?;
            let mut s = Session::Web(Box::new(ws));
            s.send(format!("{command}\n").as_bytes()).await?;
            s
        } else {
            let mut child = tokio::process::Command::new("ssh")
                .args(&ssh.opts)
                .args(["-tt", "-p", &ssh.port, "root@127.0.0.1", command])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            Session::Ssh(Box::new(SshIo { child, stdin, stdout }))
        };
        s.read_until(READY).await?;
        Ok(s)
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Session::Web(ws) => ws.send(Message::Binary(bytes::Bytes::copy_from_slice(bytes))).await?,
            Session::Ssh(io) => {
                io.stdin.write_all(bytes).await?;
                io.stdin.flush().await?;
            }
        }
        Ok(())
    }

    /// Reads output until `needle`; returns the bytes read.
    async fn read_until(&mut self, needle: &[u8]) -> anyhow::Result<u64> {
        let mut total = 0u64;
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let chunk: &[u8] = match self {
                Session::Web(ws) => match tokio::time::timeout(WAIT, ws.next()).await? {
                    Some(Ok(Message::Text(t))) => {
                        tail.extend_from_slice(t.as_bytes());
                        &[]
                    }
                    Some(Ok(Message::Binary(b))) => {
                        tail.extend_from_slice(&b);
                        &[]
                    }
                    Some(Ok(Message::Close(f))) => anyhow::bail!("closed by the daemon: {f:?} after {total} bytes"),
                    Some(Ok(_)) => continue,
                    other => anyhow::bail!("stream ended: {other:?} after {total} bytes"),
                },
                Session::Ssh(io) => {
                    let n = tokio::time::timeout(WAIT, io.stdout.read(&mut buf)).await??;
                    anyhow::ensure!(n > 0, "ssh ended after {total} bytes");
                    &buf[..n]
                }
            };
            tail.extend_from_slice(chunk);
            let fresh = tail.len();
            if tail.windows(needle.len()).any(|w| w == needle) {
                return Ok(total + fresh as u64);
            }
            let keep = tail.len().saturating_sub(needle.len() - 1);
            total += keep as u64;
            tail.drain(..keep);
        }
    }

    async fn close(self) {
        match self {
            Session::Web(mut ws) => {
                let _ = ws.send(Message::Close(None)).await;
            }
            Session::Ssh(mut io) => {
                let _ = io.child.kill().await;
            }
        }
    }
}

struct Ssh {
    opts: Vec<String>,
    port: String,
}

/// Keystroke to echo, `keys` times after 20 unrecorded ones.
async fn echo(s: &mut Session, keys: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(keys);
    for i in 0..keys + 20 {
        let key = [b'a' + (i % 26) as u8];
        let t = Instant::now();
        s.send(&key).await?;
        s.read_until(&key).await?;
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    Ok(samples)
}

fn write_file(path: &Path, mib: usize) -> anyhow::Result<()> {
    let line = format!("{}\n", "y".repeat(99));
    let block = line.repeat((1 << 20) / 100 + 1);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = mib << 20;
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block.as_bytes()[..n])?;
        left -= n;
    }
    f.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var("SANDBAR_STATIC_DAEMON")
        .unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/sandbar-daemon".into());
    let rounds: usize = env_num("TERMINAL_BENCH_ROUNDS", 3);
    let keys: usize = env_num("TERMINAL_BENCH_KEYS", 300);
    let mib: usize = env_num("TERMINAL_BENCH_MIB", 100);
    let scratch = Scratch::new("terminal-bench")?;
    let dir = &scratch.0;
    let key = dir.join("client_key");
    let public = keygen(&key)?;
    let authorized = dir.join("authorized_keys");
    std::fs::write(&authorized, format!("{public}\n"))?;
    let sshd = Sshd::start(dir, &authorized)?;
    let ssh = Ssh { opts: client_opts(dir, &key, "aes256-gcm@openssh.com"), port: sshd.port.clone() };
    let daemon = Daemon::start(Path::new(&bin))?;
    let file = dir.join("out.txt");
    write_file(&file, mib)?;
    let echo_cmd = "stty raw -echo; echo RE''ADY; cat";
    let cat_cmd = format!("stty -echo; echo RE''ADY; read x; cat {}; echo DO''NE", file.display());

    for round in 0..rounds {
        for subject in rotate(&["terminal", "sshd"], round) {
            let mut s = Session::open(subject, &daemon, &ssh, echo_cmd).await?;
            let mut samples = echo(&mut s, keys).await?;
            s.close().await;
            let (p50, p99) = median_p99(&mut samples);

            let mut s = Session::open(subject, &daemon, &ssh, &cat_cmd).await?;
            let t = Instant::now();
            s.send(b"\n").await?;
            let bytes = s.read_until(DONE).await?;
            let secs = t.elapsed().as_secs_f64();
            s.close().await;
            anyhow::ensure!(bytes >= (mib as u64) << 20, "{subject}: only {bytes} bytes of output");
            let mibs = mib as f64 / secs;
            println!(
                "round {}/{rounds} {subject:8} keystroke echo p50 {p50:.0} us, p99 {p99:.0} us ({keys} keys); \
                 cat {mib} MiB: {mibs:.0} MiB/s",
                round + 1
            );
            sample("pty_echo_p50_us", subject, p50)?;
            sample("pty_echo_p99_us", subject, p99)?;
            sample("pty_cat_mib_s", subject, mibs)?;
        }
    }
    drop(daemon);
    drop(sshd);
    Ok(())
}
