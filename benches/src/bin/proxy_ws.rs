//! WebSocket messages per second: echo round trips straight to an echo server and through sandbar-proxy's preview
//! URL (`{port}-{sandbox}.localhost` -> daemon `/proxy/{port}` -> echo server). Started by benches/proxy-vs-nginx.
//! Usage: proxy_ws --proxy HOST:PORT --key API_KEY --sandbox ID [--secs N] [--conns N] [--window N] [--size BYTES]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Args {
    proxy: String,
    key: String,
    sandbox: String,
    secs: u64,
    conns: usize,
    window: usize,
    size: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        proxy: String::new(),
        key: String::new(),
        sandbox: String::new(),
        secs: 10,
        conns: 8,
        window: 32,
        size: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--proxy" => a.proxy = v,
            "--key" => a.key = v,
            "--sandbox" => a.sandbox = v,
            "--secs" => a.secs = v.parse()?,
            "--conns" => a.conns = v.parse()?,
            "--window" => a.window = v.parse()?,
            "--size" => a.size = v.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.proxy.is_empty() || a.sandbox.is_empty() {
        bail!("usage: proxy_ws --proxy HOST:PORT --key KEY --sandbox ID [--secs N]");
    }
    Ok(a)
}

async fn echo_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() || m.is_text() {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    } else if m.is_close() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Runs `conns` connections each keeping `window` messages in flight; returns messages echoed per second.
async fn measure(a: &Args, url: &str, host: Option<&str>) -> anyhow::Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for _ in 0..a.conns {
        let mut req = url.into_client_request()?;
        if let Some(h) = host {
            req.headers_mut().insert("host", h.parse()?);
            req.headers_mut().insert("authorization", format!("Bearer {}", a.key).parse()?);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.with_context(|| format!("connect {url}"))?;
        let (mut tx, mut rx) = ws.split();
        let (count, window, payload) = (count.clone(), a.window, vec![b'x'; a.size]);
        tasks.push(tokio::spawn(async move {
            for _ in 0..window {
                tx.send(Message::Binary(payload.clone().into())).await?;
            }
            while Instant::now() < deadline {
                match rx.next().await {
                    Some(Ok(Message::Binary(_))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        tx.send(Message::Binary(payload.clone().into())).await?;
                    }
                    Some(Ok(_)) => {}
                    other => bail!("connection ended: {other:?}"),
                }
            }
            let _ = tx.send(Message::Close(None)).await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / a.secs as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let port = echo_server().await?;
    let direct = measure(&a, &format!("ws://127.0.0.1:{port}/"), None).await.context("direct")?;
    let host = format!("{port}-{}.localhost", a.sandbox);
    let proxied = measure(&a, &format!("ws://{}/", a.proxy), Some(&host)).await.context("through the proxy")?;
    println!(
        "websocket echo ({} conns x {} in flight, {} B): direct {:.0} msg/s, through sandbar-proxy + daemon {:.0} msg/s",
        a.conns, a.window, a.size, direct, proxied
    );
    Ok(())
}
