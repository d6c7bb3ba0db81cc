//! `process/execute` of `echo hi` on the daemon, directly and through sandbar-proxy, beside `docker exec` of the
//! same command in a running container: one of each in turn (interleaved), then p50 and p99 of each, printed as
//! `benches/run` samples (JSON lines).
//! Usage: exec --daemon ADDR --container NAME [--proxy ADDR --key KEY --sandbox ID] [--n 200]
//! The daemon must have been started with `sandbar_benches::TOKEN` as its token.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use sandbar_benches::{client, median_p99};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let (mut daemon, mut container, mut proxy, mut key, mut sandbox, mut n) =
        (None, None, None, String::new(), String::new(), 200usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--daemon" => daemon = Some(v),
            "--container" => container = Some(v),
            "--proxy" => proxy = Some(v),
            "--key" => key = v,
            "--sandbox" => sandbox = v,
            "--n" => n = v.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let daemon = daemon.context("--daemon is required")?;
    let container = container.context("--container is required")?;
    let signed = client()?;
    let plain = reqwest::Client::new();
    let body = serde_json::json!({"command": "echo hi"});
    let (mut direct, mut via, mut docker) = (Vec::new(), Vec::new(), Vec::new());
    // A few of each first, unmeasured: connections, page cache, docker's own warm-up.
    for i in 0..n + 5 {
        let t = Instant::now();
        let r = signed.post(format!("http://{daemon}/process/execute")).json(&body).send().await?;
        anyhow::ensure!(r.status() == 200, "daemon: {}", r.status());
        r.bytes().await?;
        keep(i, t.elapsed(), &mut direct);
        if let Some(p) = &proxy {
            let t = Instant::now();
            let r = plain
                .post(format!("http://{p}/toolbox/{sandbox}/process/execute"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "proxy: {}", r.status());
            r.bytes().await?;
            keep(i, t.elapsed(), &mut via);
        }
        let t = Instant::now();
        let out = tokio::process::Command::new("docker").args(["exec", &container, "echo", "hi"]).output().await?;
        anyhow::ensure!(out.status.success(), "docker exec: {}", String::from_utf8_lossy(&out.stderr));
        keep(i, t.elapsed(), &mut docker);
    }
    let emit = |subject: &str, p50m: &str, p99m: &str, samples: &mut Vec<Duration>| {
        if samples.is_empty() {
            return;
        }
        let (p50, p99) = median_p99(samples);
        println!("{}", serde_json::json!({"metric": p50m, "subject": subject, "value": p50}));
        println!("{}", serde_json::json!({"metric": p99m, "subject": subject, "value": p99}));
    };
    emit("daemon", "exec_p50_us", "exec_p99_us", &mut direct);
    emit("daemon-via-proxy", "exec_proxy_p50_us", "exec_proxy_p99_us", &mut via);
    emit("docker-exec", "exec_p50_us", "exec_p99_us", &mut docker);
    Ok(())
}

fn keep(i: usize, d: Duration, into: &mut Vec<Duration>) {
    if i >= 5 {
        into.push(d);
    }
}
