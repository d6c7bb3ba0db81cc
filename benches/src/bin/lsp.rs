//! LSP figures: completion latency (median, p99) through the daemon's `POST /lsp/completions` versus the same
//! request sent to pylsp directly over stdio, and the daemon's memory per IDE WebSocket bridge.
//! Run: `cargo run --release -p sandbar-benches --bin lsp` (needs pylsp on PATH; uses scripts/build-daemon's
//! output, or SANDBAR_STATIC_DAEMON). `LSP_BENCH_SAMPLES` (300, after `LSP_BENCH_WARMUP`, 20, unrecorded) and
//! `LSP_BENCH_BRIDGES` (10; 0 leaves the memory figure out) size it; `SANDBAR_BENCH_SAMPLES=FILE` appends the
//! latencies there for `benches/run` (metrics `lsp_completion_ms` and `lsp_completion_p99_ms`, subjects `daemon`
//! and `pylsp`).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sandbar_benches::{Daemon, auth, client, env_num, median_p99, sample};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SOURCE: &str = "import os\nos.pa\n\n\ndef greet(name):\n    return \"hi \" + name\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: usize = env_num("LSP_BENCH_SAMPLES", 300);
    let warmup: usize = env_num("LSP_BENCH_WARMUP", 20);
    let bridges: usize = env_num("LSP_BENCH_BRIDGES", 10);
    let bin = std::env::var("SANDBAR_STATIC_DAEMON")
        .unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/sandbar-daemon".into());
    let d = Daemon::start(std::path::Path::new(&bin))?;
    let project = d.dir.join("work/proj");
    std::fs::create_dir_all(&project)?;
    let file = project.join("main.py");
    std::fs::write(&file, SOURCE)?;
    let uri = format!("file://{}", file.display());

    // pylsp directly over stdio (as an editor runs it, with the capabilities the daemon announces), and the same
    // server behind the daemon's HTTP endpoint (one keep-alive connection). Requests alternate between the two so
    // that load on the machine hits both alike.
    let mut direct = Direct::start(&project).await?;
    direct
        .notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": SOURCE}}),
        )
        .await?;
    let params = json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 5}});
    let c = client()?;
    let base = format!("http://{}", d.toolbox);
    let server = json!({"languageId": "python", "pathToProject": project});
    let r = c.post(format!("{base}/lsp/start")).json(&server).send().await?;
    anyhow::ensure!(r.status() == 200, "start: {}", r.text().await?);
    let mut docreq = server.clone();
    docreq["uri"] = json!(uri);
    c.post(format!("{base}/lsp/did-open")).json(&docreq).send().await?.error_for_status()?;
    let mut req = docreq.clone();
    req["position"] = json!({"line": 1, "character": 5});
    let (mut direct_samples, mut http_samples) = (Vec::new(), Vec::new());
    for i in 0..warmup + samples {
        let t = Instant::now();
        let r = direct.request("textDocument/completion", params.clone()).await?;
        let direct_time = t.elapsed();
        anyhow::ensure!(r.to_string().contains("\"path\""), "direct completion without `path`: {r}");
        let t = Instant::now();
        let body = c.post(format!("{base}/lsp/completions")).json(&req).send().await?.text().await?;
        let http_time = t.elapsed();
        anyhow::ensure!(body.contains("\"path\""), "daemon completion without `path`: {body}");
        if i >= warmup {
            direct_samples.push(direct_time);
            http_samples.push(http_time);
        }
    }
    direct.stop().await;
    let (dm, dp) = median_p99(&mut direct_samples);
    let (hm, hp) = median_p99(&mut http_samples);
    println!(
        "completion `os.pa`, pylsp over stdio directly: median {:.1} ms, p99 {:.1} ms ({samples} requests)",
        dm / 1e3,
        dp / 1e3
    );
    println!(
        "completion `os.pa`, through POST /lsp/completions: median {:.1} ms, p99 {:.1} ms ({samples} requests)",
        hm / 1e3,
        hp / 1e3
    );
    println!("daemon overhead: median {:+.2} ms, p99 {:+.2} ms", (hm - dm) / 1e3, (hp - dp) / 1e3);
    for (subject, med, p99) in [("pylsp", dm, dp), ("daemon", hm, hp)] {
        sample("lsp_completion_ms", subject, med / 1e3)?;
        sample("lsp_completion_p99_ms", subject, p99 / 1e3)?;
    }
    c.post(format!("{base}/lsp/stop")).json(&server).send().await?.error_for_status()?;
    if bridges == 0 {
        return Ok(());
    }
    // The memory figure only: the daemon's RSS settled after the server stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Memory: the daemon's RSS with `bridges` initialized IDE connections (each has its own pylsp process, whose
    // memory is the server's, not the bridge's).
    let before = d.rss_kib();
    let mut sockets = Vec::new();
    for n in 0..bridges {
        let mut r = format!("ws://{}/lsp/ws?languageId=python&pathToProject={}", d.toolbox, project.display())
            .into_client_request()?;
        let signed = auth("GET", r.uri().path_and_query().map_or("/", |p| p.as_str()));
        r.headers_mut().insert("x-sandbar-daemon-auth", signed.parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(r).await?;
        let init = json!({"jsonrpc": "2.0", "id": n, "method": "initialize", "params": {"processId": null, "capabilities": {}}});
        ws.send(Message::text(init.to_string())).await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), ws.next()).await?;
            let Some(Ok(Message::Text(t))) = m else { anyhow::bail!("bridge {n}: {m:?}") };
            if serde_json::from_str::<Value>(&t)?.get("id") == Some(&json!(n)) {
                break;
            }
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = d.rss_kib();
    println!(
        "daemon RSS: {:.1} MiB before, {:.1} MiB with {bridges} initialized bridges: {:.0} KiB per bridge",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / bridges as f64
    );
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    Ok(())
}

/// pylsp as a child of the benchmark, spoken to over stdio with Content-Length framing.
struct Direct {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
    next: i64,
}

impl Direct {
    async fn start(root: &std::path::Path) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new("pylsp")
            .current_dir(root)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
        let mut me = Self { child, stdin, stdout, next: 1 };
        let root_uri = format!("file://{}", root.display());
        let capabilities = json!({
            "workspace": {"workspaceFolders": true, "configuration": true, "symbol": {}},
            "textDocument": {
                "synchronization": {},
                "completion": {"completionItem": {"documentationFormat": ["markdown", "plaintext"]}},
                "hover": {"contentFormat": ["markdown", "plaintext"]},
                "documentSymbol": {"hierarchicalDocumentSymbolSupport": true},
                "publishDiagnostics": {},
            },
        });
        me.request("initialize", json!({"processId": null, "rootUri": root_uri, "capabilities": capabilities})).await?;
        me.notify("initialized", json!({})).await?;
        Ok(me)
    }

    async fn write(&mut self, msg: Value) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&msg)?;
        self.stdin.write_all(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes()).await?;
        self.stdin.write_all(&body).await?;
        Ok(())
    }

    async fn notify(&mut self, method: &str, params: Value) -> anyhow::Result<()> {
        self.write(json!({"jsonrpc": "2.0", "method": method, "params": params})).await
    }

    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next;
        self.next += 1;
        self.write(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await?;
        loop {
            let msg = self.read().await?;
            if msg.get("method").is_none() && msg.get("id") == Some(&json!(id)) {
                return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
            }
        }
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            anyhow::ensure!(self.stdout.read_line(&mut line).await? > 0, "pylsp closed its output");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.stdout.read_exact(&mut body).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn stop(mut self) {
        let _ = self.request("shutdown", Value::Null).await;
        let _ = self.notify("exit", Value::Null).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}
