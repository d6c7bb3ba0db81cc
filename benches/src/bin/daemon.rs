//! Daemon figures: static binary size, idle RSS, `process/execute` latency, 1 GiB upload and download
//! throughput, PTY keystroke echo round trip, PTY output throughput, memory per idle PTY session.
//! Run: `cargo run -p sandbar-benches --bin daemon` (it builds nothing: it uses scripts/build-daemon's output,
//! or SANDBAR_STATIC_DAEMON).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sandbar_benches::{Daemon, auth, client, median_p99};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var("SANDBAR_STATIC_DAEMON")
        .unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/sandbar-daemon".into());
    let bin = std::path::PathBuf::from(bin);
    println!("static binary: {:.1} MiB", std::fs::metadata(&bin)?.len() as f64 / (1 << 20) as f64);
    let d = Daemon::start(&bin)?;
    let c = client()?;
    let base = format!("http://{}", d.toolbox);
    c.get(format!("{base}/version")).send().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("idle RSS: {:.1} MiB", d.rss_kib() as f64 / 1024.0);

    // process/execute `echo hi`, sequential on one keep-alive connection.
    let mut samples = Vec::new();
    for i in 0..520 {
        let t = Instant::now();
        let r =
            c.post(format!("{base}/process/execute")).json(&serde_json::json!({"command": "echo hi"})).send().await?;
        r.bytes().await?;
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    let (med, p99) = median_p99(&mut samples);
    println!("process/execute echo hi: median {:.0} us, p99 {:.0} us (500 requests)", med, p99);
    println!("RSS after exec load: {:.1} MiB", d.rss_kib() as f64 / 1024.0);

    // 1 GiB upload (streamed multipart) and download.
    const GIB: u64 = 1 << 30;
    let chunk = bytes::Bytes::from(vec![0x5au8; 1 << 20]);
    let stream = futures_util::stream::iter((0..1024).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), GIB).file_name("big");
    let form = reqwest::multipart::Form::new().part("file", part);
    let path = d.dir.join("work/big.bin");
    let t = Instant::now();
    let r = c.post(format!("{base}/files/upload?path={}", path.display())).multipart(form).send().await?;
    anyhow::ensure!(r.status() == 200, "upload: {}", r.status());
    let up = t.elapsed();
    let peak_after_upload = d.rss_kib();
    let t = Instant::now();
    let mut r = c.get(format!("{base}/files/download?path={}", path.display())).send().await?;
    let mut got = 0u64;
    while let Some(b) = r.chunk().await? {
        got += b.len() as u64;
    }
    let down = t.elapsed();
    anyhow::ensure!(got == GIB, "downloaded {got} bytes");
    println!(
        "1 GiB upload: {:.0} MiB/s, download: {:.0} MiB/s (RSS after upload {:.1} MiB, after download {:.1} MiB)",
        1024.0 / up.as_secs_f64(),
        1024.0 / down.as_secs_f64(),
        peak_after_upload as f64 / 1024.0,
        d.rss_kib() as f64 / 1024.0
    );
    std::fs::remove_file(&path)?;

    pty_figures(&d, &c, &base).await?;
    Ok(())
}

async fn open(d: &Daemon, path: &str) -> anyhow::Result<Ws> {
    let mut req = format!("ws://{}{path}", d.toolbox).into_client_request()?;
    let signed = auth("GET", req.uri().path_and_query().map_or("/", |p| p.as_str()));
    req.headers_mut().insert("x-sandbar-daemon-auth", signed.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    ws.next().await; // the `connected` control message
    Ok(ws)
}

async fn read_until(ws: &mut Ws, needle: &[u8]) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), ws.next()).await? {
            Some(Ok(Message::Binary(b))) => {
                total += b.len() as u64;
                tail.extend_from_slice(&b);
                if tail.windows(needle.len()).any(|w| w == needle) {
                    return Ok(total);
                }
                let keep = tail.len().saturating_sub(needle.len());
                tail.drain(..keep);
            }
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed by the daemon: {f:?} after {total} bytes"),
            Some(Ok(_)) => {}
            other => anyhow::bail!("stream ended: {other:?} after {total} bytes"),
        }
    }
}

async fn pty_figures(d: &Daemon, c: &sandbar_testkit::daemon::SignedClient, base: &str) -> anyhow::Result<()> {
    c.post(format!("{base}/process/pty")).json(&serde_json::json!({"id": "bench"})).send().await?;
    let mut ws = open(d, "/process/pty/bench/connect").await?;
    ws.send(Message::Binary("stty raw -echo; cat\n".into())).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Drain whatever the prompt printed.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await {}
    // Keystroke echo: one byte in, `cat` writes it back through the PTY.
    let mut samples = Vec::new();
    for i in 0..220u32 {
        let key = [b'a' + (i % 26) as u8];
        let t = Instant::now();
        ws.send(Message::Binary(bytes::Bytes::copy_from_slice(&key))).await?;
        read_until(&mut ws, &key).await?;
        if i >= 20 {
            samples.push(t.elapsed());
        }
    }
    let (med, p99) = median_p99(&mut samples);
    println!("PTY keystroke echo round trip: median {:.0} us, p99 {:.0} us (200 keys)", med, p99);
    drop(ws);
    // A fresh session for throughput (the first one's terminal is raw, where Ctrl-C is just a byte).
    c.post(format!("{base}/process/pty")).json(&serde_json::json!({"id": "bench-out"})).send().await?;
    let mut ws = open(d, "/process/pty/bench-out/connect").await?;

    let file = d.dir.join("work/100m.txt");
    let line = format!("{}\n", "y".repeat(99));
    std::fs::write(&file, line.repeat(1 << 20))?;
    let cmd = format!("stty -echo; cat {}; echo BENCH-$((1+1))-DONE\n", file.display());
    let t = Instant::now();
    ws.send(Message::Binary(cmd.into())).await?;
    let bytes = read_until(&mut ws, b"BENCH-2-DONE").await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "PTY output: cat of a 100 MiB file through the WebSocket: {:.0} MiB/s ({bytes} bytes)",
        bytes as f64 / secs / (1 << 20) as f64
    );
    drop(ws);

    let before = d.rss_kib();
    for i in 0..20 {
        c.post(format!("{base}/process/pty")).json(&serde_json::json!({"id": format!("idle-{i}")})).send().await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = d.rss_kib();
    println!(
        "memory per idle PTY session (daemon RSS only; the shell itself is extra): {:.0} KiB",
        (after.saturating_sub(before)) as f64 / 20.0
    );
    Ok(())
}
