//! Control-plane benchmark: create requests per second, p50/p99 of `GET /api/sandbox/{id}`, and listing 10,000
//! sandboxes, on SQLite and (when reachable) PostgreSQL. The API runs in-process on 127.0.0.1:0; a heartbeat task
//! plays a runner with room for everything (no jobs are carried out: the figures are the API's own).
//!
//! `cargo run --release -p sandbar-benches --bin api [-- CREATES]`; PostgreSQL from `SANDBAR_BENCH_DATABASE_URL`
//! (an admin URL; a fresh database is created), default postgres://sandbar:sandbar@127.0.0.1:5432/sandbar_test.
//! For `benches/run`: `SANDBAR_BENCH_SAMPLES=FILE` appends the figures there as samples (see
//! `sandbar_benches::report`), `SANDBAR_BENCH_LIST=0` leaves out the listing of 10,000, and
//! `SANDBAR_BENCH_GETS` sets the number of GETs (default 5000).
//!
//! On PostgreSQL it also times the change feed (`sandbar_api::feed`): two API instances on one fresh database, a
//! create held open on B (`create_wait`) while a fake runner long-polls A and posts the result there; the figure
//! is the time from posting the result to A until B answers the create, p50/p99 (`SANDBAR_BENCH_FEED` rounds,
//! default 200).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sandbar_api::{App, Config, SystemClock};
use sandbar_proto::runner::{Capacity, RunnerStatus};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The allocator `sandbar-api` runs with (`api/src/main.rs`), since the API runs in this process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const RUNNER_TOKEN: &str = "bench-runner-token";
const CONCURRENCY: usize = 32;
const LIST_TOTAL: usize = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let creates: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
    run("sqlite", &sqlite, creates).await?;
    let admin = std::env::var("SANDBAR_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sandbar:sandbar@127.0.0.1:5432/sandbar_test".into());
    match fresh_pg(&admin).await {
        Ok(url) => {
            run("postgres", &url, creates).await?;
            let rounds = std::env::var("SANDBAR_BENCH_FEED").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
            feed(&fresh_pg(&admin).await?, rounds).await?;
        }
        Err(e) => {
            println!("postgres: skipped ({admin} not reachable: {e})");
            for m in ["api_create_rps_pg", "api_get_p50_us_pg", "api_get_p99_us_pg", FEED_P50, FEED_P99] {
                sample(&serde_json::json!({"skip": m, "reason": format!("PostgreSQL not reachable: {e}")}))?;
            }
        }
    }
    Ok(())
}

/// Appends one sample to `SANDBAR_BENCH_SAMPLES`, when set.
fn sample(v: &Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let Ok(path) = std::env::var("SANDBAR_BENCH_SAMPLES") else { return Ok(()) };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).context("samples file")?;
    writeln!(f, "{v}")?;
    Ok(())
}

async fn fresh_pg(admin: &str) -> anyhow::Result<String> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    let name = format!("sbbench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

async fn run(label: &str, url: &str, creates: usize) -> anyhow::Result<()> {
    let mut config = Config::new("/nonexistent");
    config.database_url = Some(url.to_owned());
    config.runner_token = Some(RUNNER_TOKEN.into());
    config.limits.quota_cpu = 1 << 40;
    config.limits.quota_memory = 1 << 40;
    config.limits.quota_disk = 1 << 40;
    config.limits.quota_sandboxes = 1 << 40;
    let app = App::open(config, Arc::new(SystemClock)).await?;
    let boot = sandbar_api::auth::bootstrap(&app.db, "bench", &app.config.limits, app.now()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/api", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (app, s) = (app.clone(), shutdown.clone());
        async move { app.serve(listener, s).await }
    });
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY * 2).build()?;
    let beat = tokio::spawn(heartbeats(http.clone(), base.clone(), shutdown.clone()));
    heartbeat(&http, &base).await?;
    let key = boot.api_key;

    // Creates.
    let t0 = Instant::now();
    let ids = create_many(&http, &base, &key, creates).await?;
    let secs = t0.elapsed().as_secs_f64();
    println!("{label}: create: {creates} requests, {CONCURRENCY} concurrent: {:.0} req/s", creates as f64 / secs);
    let suffix = if label == "postgres" { "_pg" } else { "" };
    let value = creates as f64 / secs;
    sample(&json!({"metric": format!("api_create_rps{suffix}"), "subject": "api", "value": value}))?;

    // GET by id: its latency p50/p99 as one client sees it (one request at a time: what a user waits), then the
    // rate 16 concurrent clients get (on 2 cores their latencies are mostly each other's queueing).
    let gets: usize = std::env::var("SANDBAR_BENCH_GETS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let get = |http: reqwest::Client, url: String, key: String| async move {
        let t = Instant::now();
        let r = http.get(url).bearer_auth(key).send().await?;
        anyhow::ensure!(r.status().is_success(), "GET {}", r.status());
        r.bytes().await?;
        Ok::<_, anyhow::Error>(t.elapsed())
    };
    let mut lat = Vec::with_capacity(gets);
    for i in 0..gets {
        lat.push(get(http.clone(), format!("{base}/sandbox/{}", ids[i % ids.len()]), key.clone()).await?);
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{label}: GET /api/sandbox/{{id}}: {} requests, one at a time: p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    for (q, p) in [("p50", 0.50), ("p99", 0.99)] {
        let value = pct(p).as_secs_f64() * 1e6;
        sample(&json!({"metric": format!("api_get_{q}_us{suffix}"), "subject": "api", "value": value}))?;
    }
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per = gets / 16;
    for w in 0..16 {
        let (http, base, key, ids) = (http.clone(), base.clone(), key.clone(), ids.clone());
        tasks.spawn(async move {
            for i in 0..per {
                get(http.clone(), format!("{base}/sandbox/{}", ids[(w * per + i) % ids.len()]), key.clone()).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let rate = (per * 16) as f64 / t0.elapsed().as_secs_f64();
    println!("{label}: GET /api/sandbox/{{id}}: {} requests, 16 concurrent: {rate:.0} req/s", per * 16);
    sample(&json!({"metric": format!("api_get_rps{suffix}"), "subject": "api", "value": rate}))?;

    // List of 10,000.
    let list = !std::env::var("SANDBAR_BENCH_LIST").is_ok_and(|v| v == "0");
    if list && ids.len() < LIST_TOTAL {
        create_many(&http, &base, &key, LIST_TOTAL - ids.len()).await?;
    }
    for limit in if list { &[1000usize, 100][..] } else { &[] } {
        let t0 = Instant::now();
        let mut n = 0;
        let mut pages = 0;
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{base}/sandbox?limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let v: Value = http.get(url).bearer_auth(&key).send().await?.error_for_status()?.json().await?;
            n += v["items"].as_array().map(Vec::len).unwrap_or(0);
            pages += 1;
            match v["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        anyhow::ensure!(n == LIST_TOTAL, "listed {n}, expected {LIST_TOTAL}");
        println!(
            "{label}: list {n} sandboxes in {pages} pages of {limit}: {:.0} ms total, {:.1} ms per page",
            t0.elapsed().as_secs_f64() * 1e3,
            t0.elapsed().as_secs_f64() * 1e3 / pages as f64
        );
    }
    shutdown.cancel();
    let _ = beat.await;
    server.await??;
    Ok(())
}

const FEED_P50: &str = "api_feed_result_to_create_p50_us_pg";
const FEED_P99: &str = "api_feed_result_to_create_p99_us_pg";

/// One API instance on `url` serving on 127.0.0.1:0: the app, its base URL and its server task.
async fn instance(
    url: &str,
    create_wait: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<(App, String, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let mut config = Config::new("/nonexistent");
    config.database_url = Some(url.to_owned());
    config.runner_token = Some(sandbar_testkit::api::RUNNER_TOKEN.into());
    config.create_wait = create_wait;
    config.limits.quota_sandboxes = 1 << 40;
    config.limits.quota_cpu = 1 << 40;
    config.limits.quota_memory = 1 << 40;
    config.limits.quota_disk = 1 << 40;
    let app = App::open(config, Arc::new(SystemClock)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/api", listener.local_addr()?);
    let server = tokio::spawn({
        let (app, s) = (app.clone(), shutdown.clone());
        async move { app.serve(listener, s).await }
    });
    // Measured with the feed listening: a result must not be found by a poll.
    let t0 = Instant::now();
    while !app.change_feed_connected() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "the change feed did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((app, base, server))
}

/// The change feed's figure: a result posted to instance A, until the create held open on instance B answers.
async fn feed(url: &str, rounds: usize) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let (a, base_a, server_a) = instance(url, Duration::ZERO, &shutdown).await?;
    let (_b, base_b, server_b) = instance(url, Duration::from_secs(60), &shutdown).await?;
    let boot = sandbar_api::auth::bootstrap(&a.db, "bench", &a.config.limits, a.now()).await?;
    let http = reqwest::Client::new();
    let runner = sandbar_testkit::api::FakeRunner {
        id: "feed".into(),
        base: base_a,
        http: http.clone(),
        credential: Arc::default(),
    };
    let mut lat = Vec::with_capacity(rounds);
    for i in 0..rounds {
        if i % 100 == 0 {
            runner.heartbeat(1 << 16, 1 << 16, 1 << 20).await;
        }
        let create = tokio::spawn({
            let (http, url, key) = (http.clone(), format!("{base_b}/sandbox"), boot.api_key.clone());
            async move {
                let body = json!({"env": {}, "labels": {}, "volumes": []});
                let r = http.post(url).bearer_auth(key).json(&body).send().await?;
                let v: Value = r.error_for_status()?.json().await?;
                Ok::<_, anyhow::Error>((Instant::now(), v))
            }
        });
        let jobs = runner.poll(10).await;
        let [job] = &jobs[..] else { anyhow::bail!("round {i}: one job expected, got {}", jobs.len()) };
        let t0 = Instant::now();
        anyhow::ensure!(runner.succeed(job, &boot.organization_id).await.is_success(), "result refused");
        let (answered, v) = create.await??;
        anyhow::ensure!(v["state"] == "started", "round {i}: the held create answered {}", v["state"]);
        lat.push(answered.saturating_duration_since(t0));
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "postgres: change feed, result posted to instance A until the create held on B answers: {} rounds: p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    for (metric, p) in [(FEED_P50, 0.50), (FEED_P99, 0.99)] {
        sample(&json!({"metric": metric, "subject": "api", "value": pct(p).as_secs_f64() * 1e6}))?;
    }
    shutdown.cancel();
    server_a.await??;
    server_b.await??;
    Ok(())
}

async fn create_many(http: &reqwest::Client, base: &str, key: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (http, base, key, next) = (http.clone(), base.to_owned(), key.to_owned(), next.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let body = json!({"env": {}, "labels": {"code-toolbox-language": "python"}, "volumes": []});
                let r = http.post(format!("{base}/sandbox")).bearer_auth(&key).json(&body).send().await?;
                let status = r.status();
                let v: Value = r.json().await?;
                anyhow::ensure!(status.is_success(), "create: {status} {v}");
                ids.push(v["id"].as_str().context("id")?.to_owned());
            }
            Ok::<_, anyhow::Error>(ids)
        });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        ids.extend(r??);
    }
    Ok(ids)
}

async fn heartbeat(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let status = RunnerStatus {
        runner_id: "bench".into(),
        version: "bench".into(),
        capacity: Capacity { cpu: 1 << 20, memory: 1 << 20, disk: 1 << 24 },
        allocated: Capacity::default(),
        sandboxes: 0,
        started: 0,
        storage_driver: "none".into(),
        disk_enforced: false,
        cgroup_version: 2,
        volumes: Vec::new(),
        usage: Vec::new(),
    };
    // Registered anew each time (a credential bound to the runner id; the join token opens nothing else).
    let reg: serde_json::Value = http
        .post(format!("{base}/runners/bench/register"))
        .bearer_auth(RUNNER_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let credential = reg["credential"].as_str().unwrap_or_default().to_owned();
    http.post(format!("{base}/runners/bench/heartbeat"))
        .bearer_auth(credential)
        .json(&status)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn heartbeats(http: reqwest::Client, base: String, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if let Err(e) = heartbeat(&http, &base).await {
            eprintln!("heartbeat: {e}");
        }
    }
}
