//! `sandbar term`: this terminal attached to a PTY session in the sandbox over the toolbox's PTY WebSocket (the
//! same one the SDK uses), through the proxy. Raw mode while attached; SIGWINCH resizes the remote PTY; Ctrl-]
//! detaches and leaves the session running for a later `--session` reattach.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, enc};

/// The detach key: Ctrl-] (as telnet).
const DETACH: u8 = 0x1d;

/// Leaves raw mode when dropped, whatever happens.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode().context("putting the terminal in raw mode (is stdin a terminal?)")?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn size() -> (u16, u16) {
    crossterm::terminal::size().unwrap_or((80, 24))
}

pub async fn attach(c: &Client, base: &str, session: Option<String>) -> anyhow::Result<ExitCode> {
    let (cols, rows) = size();
    let (id, url) = match session {
        Some(id) => (id.clone(), format!("{base}/process/pty/{}/connect", enc(&id))),
        None => {
            let id = format!("term-{}-{}", std::process::id(), rows as u32 * 1000 + cols as u32);
            (id.clone(), format!("{base}/process/pty/create-connect?id={}&cols={cols}&rows={rows}", enc(&id)))
        }
    };
    let mut socket = c.ws(&url, &["X-Daytona-Pty-Exit-Control"]).await?;
    // The daemon confirms with a control frame before any output.
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = socket.next().await {
            if let Message::Text(t) = msg? {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                match v["status"].as_str() {
                    Some("connected") => return anyhow::Ok(()),
                    Some("error") => anyhow::bail!("PTY: {}", v["error"].as_str().unwrap_or("error")),
                    _ => {}
                }
            }
        }
        anyhow::bail!("the PTY connection closed before it was ready")
    })
    .await;
    connected.context("PTY connection timed out")??;

    let raw = RawMode::enter()?;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdin = stdin_reader();
    let mut exit: Option<i64> = None;
    let mut detached = false;
    loop {
        tokio::select! {
            msg = socket.next() => match msg {
                Some(Ok(Message::Binary(b))) => write_out(&b),
                Some(Ok(Message::Text(t))) => {
                    match serde_json::from_str::<Value>(&t) {
                        Ok(v) if v["type"] == "control" => {
                            if v["status"] == "exited" {
                                exit = v["exitCode"].as_i64();
                            }
                        }
                        _ => write_out(t.as_bytes()),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if exit.is_none() {
                        exit = frame
                            .and_then(|f| serde_json::from_str::<Value>(&f.reason).ok())
                            .and_then(|v| v["exitCode"].as_i64());
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(raw);
                    anyhow::bail!("PTY connection lost: {e}");
                }
                None => break,
            },
            input = stdin.recv() => {
                let input = match input {
                    Some(Ok(b)) if !b.is_empty() => b,
                    Some(Err(e)) => return Err(e).context("reading the terminal"),
                    _ => break,
                };
                if let Some(pos) = input.iter().position(|&b| b == DETACH) {
                    if pos > 0 {
                        socket.send(Message::Binary(input[..pos].to_vec().into())).await?;
                    }
                    detached = true;
                    // A proper close handshake, so the last keystrokes are not lost to a reset connection.
                    let _ = socket.close(None).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(m)) = socket.next().await {
                            if matches!(m, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
                socket.send(Message::Binary(input.to_vec().into())).await?;
            }
            _ = winch.recv() => {
                let (cols, rows) = size();
                let path = format!("/process/pty/{}/resize", enc(&id));
                if let Err(e) = c.toolbox(base, Method::POST, &path, Some(json!({"cols": cols, "rows": rows}))).await {
                    tracing::warn!(error = %e, "resize failed");
                }
            }
        }
    }
    drop(raw);
    if detached {
        eprintln!("\r\nsandbar: detached; the shell keeps running. Reattach: sandbar term <id> --session {id}");
        return Ok(ExitCode::SUCCESS);
    }
    let code = exit.unwrap_or(0);
    Ok(ExitCode::from(u8::try_from(code.rem_euclid(256)).unwrap_or(1)))
}

/// Terminal input read on a plain thread: tokio's stdin reads on a runtime blocking thread that cannot be
/// cancelled, so the runtime's shutdown (and `sandbar term`'s exit after the shell exits) would wait for a key press.
/// A plain thread does not hold the process up. An empty chunk is end of input.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 4096];
        loop {
            let chunk = match stdin.read(&mut buf) {
                Ok(n) => Ok(buf.get(..n).unwrap_or_default().to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let last = !matches!(&chunk, Ok(b) if !b.is_empty());
            if tx.blocking_send(chunk).is_err() || last {
                return;
            }
        }
    });
    rx
}

fn write_out(b: &[u8]) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(b);
    let _ = o.flush();
}
