//! The API in-process on 127.0.0.1:0 with a hand-moved clock ([`Harness`]), on a temporary SQLite file and (when
//! PostgreSQL is reachable) on a fresh PostgreSQL database ([`databases`]), and a fake runner speaking the job
//! protocol over HTTP ([`FakeRunner`]).

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sandbar_api::{App, Config, ManualClock};
use sandbar_proto::runner::{
    Capacity, Job, JobErrorCode, JobOutcome, JobResult, Resources, RunnerStatus, SandboxInfo, SandboxState,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const RUNNER_TOKEN: &str = "runner-secret-token";
pub const PROXY_TOKEN: &str = "proxy-secret-token";
const DEFAULT_PG: &str = "postgres://sandbar:sandbar@127.0.0.1:5432/sandbar_test";

/// A database for one test: a SQLite file in a temp dir, or a PostgreSQL database created for it.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub label: &'static str,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// The same database reached at another URL (through a test's TCP forwarder, say); `self` keeps it alive.
    pub fn via(&self, url: String) -> TestDb {
        TestDb { url, label: self.label, _dir: None }
    }
}

/// The databases every test runs on: SQLite always, PostgreSQL when `SANDBAR_TEST_DATABASE_URL` is set or the
/// fixed local URL answers. In CI (`CI` set) an unreachable PostgreSQL fails the test instead of skipping it.
pub async fn databases() -> Vec<TestDb> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = TestDb {
        url: format!("sqlite://{}?mode=rwc", dir.path().join("sandbar.db").display()),
        label: "sqlite",
        _dir: Some(dir),
    };
    let mut dbs = vec![sqlite];
    let explicit = std::env::var("SANDBAR_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty());
    let admin = explicit.clone().unwrap_or_else(|| DEFAULT_PG.to_owned());
    match fresh_pg(&admin).await {
        Ok(url) => dbs.push(TestDb { url, label: "postgres", _dir: None }),
        Err(e) if explicit.is_some() || std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL at {admin} is not usable: {e}")
        }
        Err(e) => eprintln!(
            "\n!!!!! SKIPPING the PostgreSQL half of this test: {admin} is not reachable ({e}).\n\
             !!!!! Run scripts/setup (starts the local cluster) or set SANDBAR_TEST_DATABASE_URL.\n"
        ),
    }
    dbs
}

/// A fresh database per test, named with its creation time; ones older than an hour (left by killed runs) are
/// dropped on the way.
async fn fresh_pg(admin_url: &str) -> Result<String, sqlx::Error> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let old: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'sbt\\_%'").fetch_all(&mut conn).await?;
    for db in old {
        let born = db.split('_').nth(1).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        if born + 3600 < now {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}"))).execute(&mut conn).await;
        }
    }
    let name = format!("sbt_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    conn.close().await?;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin_url);
    Ok(format!("{base}/{name}"))
}

#[derive(Debug)]
pub struct Harness {
    pub app: App,
    pub clock: Arc<ManualClock>,
    pub base: String,
    pub http: reqwest::Client,
    pub key: String,
    pub org: String,
    pub db_url: String,
    pub label: &'static str,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// An API config for tests on `db_url`: port 0, fixed service tokens, a proxy at `proxy.test`, no background timers.
pub fn config(db_url: &str) -> Config {
    let mut c = Config::new("/nonexistent");
    c.database_url = Some(db_url.to_owned());
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.proxy_url = "http://proxy.test:4000".into();
    c.runner_token = Some(RUNNER_TOKEN.into());
    c.proxy_token = Some(PROXY_TOKEN.into());
    // The clock is moved by hand, and the test ticks when it means to.
    c.run_timers = false;
    c
}

impl Harness {
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(db, config(&db.url), Arc::new(ManualClock::default())).await
    }

    /// A harness with one runner, `r1`, registered by a first heartbeat that offers `cpu` cores, `memory` GiB and
    /// `disk` GiB: how most tests begin.
    pub async fn start_with_runner(db: &TestDb, cpu: u32, memory: u32, disk: u32) -> (Self, FakeRunner) {
        let h = Self::start(db).await;
        let r = h.runner("r1");
        r.heartbeat(cpu, memory, disk).await;
        (h, r)
    }

    pub async fn start_with(db: &TestDb, config: Config, clock: Arc<ManualClock>) -> Self {
        let mut h = Self::launch(config, clock, &db.url, db.label).await;
        let b = sandbar_api::auth::bootstrap(&h.app.db, "test-org", &h.app.config.limits, h.app.now())
            .await
            .expect("bootstrap");
        h.key = b.api_key;
        h.org = b.organization_id;
        h
    }

    async fn launch(config: Config, clock: Arc<ManualClock>, db_url: &str, label: &'static str) -> Self {
        let app = App::open(config, clock.clone()).await.expect("open app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}/api", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (app, shutdown) = (app.clone(), shutdown.clone());
            async move { app.serve(listener, shutdown).await }
        });
        Self {
            app,
            clock,
            base,
            http: reqwest::Client::new(),
            key: String::new(),
            org: String::new(),
            db_url: db_url.to_owned(),
            label,
            shutdown,
            task,
        }
    }

    /// Stops this API instance and starts a new one on the same database (same key, same clock).
    pub async fn restart(self) -> Self {
        let Self { clock, key, org, db_url, label, shutdown, task, app, .. } = self;
        let config = app.config.clone();
        shutdown.cancel();
        task.await.expect("join").expect("serve");
        app.db.pool.close().await;
        let mut h = Self::launch(config, clock, &db_url, label).await;
        h.key = key;
        h.org = org;
        h
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// A second organization with its own key.
    pub async fn new_org(&self, name: &str) -> (String, String) {
        let b = sandbar_api::auth::bootstrap(&self.app.db, name, &self.app.config.limits, self.app.now())
            .await
            .expect("bootstrap");
        (b.organization_id, b.api_key)
    }

    pub async fn req(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, v)
    }

    /// A user call with this harness' key.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.req(method, path, Some(&self.key.clone()), body).await
    }

    pub async fn get_sandbox(&self, id: &str) -> Value {
        let (s, v) = self.call(Method::GET, &format!("/sandbox/{id}"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn state(&self, id: &str) -> String {
        self.get_sandbox(id).await["state"].as_str().expect("state").to_owned()
    }

    pub async fn create(&self, body: Value) -> Value {
        let (s, v) = self.call(Method::POST, "/sandbox", Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// A GET of `url` (a whole URL) with this harness' key, read to its end: `(status, content type, text)`.
    pub async fn get_text(&self, url: &str) -> (StatusCode, String, String) {
        let mut resp =
            self.http.get(url).bearer_auth(&self.key).timeout(Duration::from_secs(30)).send().await.expect("get");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut text = Vec::new();
        while let Some(chunk) = resp.chunk().await.expect("chunk") {
            text.extend_from_slice(&chunk);
        }
        (status, content_type, String::from_utf8(text).expect("utf-8"))
    }

    /// A GET with the proxy's token; the JSON answer when it succeeded.
    pub async fn proxy_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> (StatusCode, Option<T>) {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(PROXY_TOKEN).send().await.expect("send");
        let s = resp.status();
        (s, if s.is_success() { Some(resp.json().await.expect("json")) } else { None })
    }

    /// A POST with the proxy's token.
    pub async fn proxy_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::POST, path, Some(PROXY_TOKEN), Some(body)).await
    }

    pub fn runner(&self, id: &str) -> FakeRunner {
        FakeRunner { id: id.to_owned(), base: self.base.clone(), http: self.http.clone(), credential: Arc::default() }
    }

    pub async fn tick(&self) -> sandbar_api::lifecycle::TickReport {
        sandbar_api::lifecycle::tick(&self.app).await.expect("tick")
    }
}

/// A runner that speaks the job protocol over HTTP and reports every job done as its test asks.
#[derive(Debug, Clone)]
pub struct FakeRunner {
    pub id: String,
    pub base: String,
    pub http: reqwest::Client,
    /// The credential its registration gave it (registered at its first call).
    pub credential: Arc<std::sync::Mutex<Option<String>>>,
}

/// Registers runner `runner_id` with the join token; its credential.
pub async fn register_runner(http: &reqwest::Client, base: &str, runner_id: &str, join_token: &str) -> String {
    let resp = http
        .post(format!("{base}/runners/{runner_id}/register"))
        .bearer_auth(join_token)
        // The fake runner reports daemons at 172.17.0.9; the in-process stack's are on loopback.
        .json(&serde_json::json!({"daemonNetworks": ["172.17.0.0/16", "127.0.0.0/8"]}))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), StatusCode::OK, "register {runner_id}");
    let v: Value = resp.json().await.expect("registration");
    v["credential"].as_str().expect("credential").to_owned()
}

impl FakeRunner {
    /// Its credential, registering first if it has none.
    pub async fn credential(&self) -> String {
        let held = self.credential.lock().map(|c| c.clone()).unwrap_or_default();
        if let Some(c) = held {
            return c;
        }
        let c = register_runner(&self.http, &self.base, &self.id, RUNNER_TOKEN).await;
        if let Ok(mut held) = self.credential.lock() {
            *held = Some(c.clone());
        }
        c
    }

    /// `GET /runners/{id}/{tail}` with its credential: status and JSON body.
    pub async fn get(&self, tail: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(format!("{}/runners/{}/{tail}", self.base, self.id))
            .bearer_auth(self.credential().await)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, tail: &str, body: Value) -> StatusCode {
        self.http
            .post(format!("{}/runners/{}/{tail}", self.base, self.id))
            .bearer_auth(self.credential().await)
            .json(&body)
            .send()
            .await
            .expect("send")
            .status()
    }

    pub async fn heartbeat(&self, cpu: u32, memory: u32, disk: u32) {
        let status = RunnerStatus {
            runner_id: self.id.clone(),
            version: "test".into(),
            capacity: Capacity { cpu, memory, disk },
            allocated: Capacity::default(),
            sandboxes: 0,
            started: 0,
            storage_driver: "overlay2".into(),
            disk_enforced: false,
            cgroup_version: 2,
            volumes: Vec::new(),
            usage: Vec::new(),
        };
        let s = self.post("heartbeat", serde_json::to_value(status).expect("json")).await;
        assert_eq!(s, StatusCode::OK);
    }

    pub async fn poll(&self, wait_secs: u64) -> Vec<Job> {
        let resp = self
            .http
            .get(format!("{}/runners/{}/jobs?wait={wait_secs}", self.base, self.id))
            .bearer_auth(self.credential().await)
            .timeout(Duration::from_secs(wait_secs + 10))
            .send()
            .await
            .expect("poll");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("jobs")
    }

    pub fn info(&self, sandbox_id: &str, org: &str, state: SandboxState) -> SandboxInfo {
        SandboxInfo {
            id: sandbox_id.to_owned(),
            name: None,
            organization_id: org.to_owned(),
            runner_id: self.id.clone(),
            container_id: format!("c-{sandbox_id}"),
            image: "img".into(),
            state,
            error_reason: None,
            resources: Resources::default(),
            disk_enforced: false,
            daemon_addr: Some("172.17.0.9:2280".into()),
            ssh_addr: None,
            daemon_token: format!("daemon-token-{sandbox_id}"),
            daemon_host_key: Some(fake_host_key(sandbox_id)),
            user: None,
            env: Default::default(),
            labels: Default::default(),
            auto: Default::default(),
        }
    }

    /// Reports `job` done, with the sandbox in the state the job leads to.
    pub async fn succeed(&self, job: &Job, org: &str) -> StatusCode {
        use sandbar_proto::runner::JobKind as K;
        let started = |id: &str| Some(Box::new(self.info(id, org, SandboxState::Started)));
        let sandbox = match &job.kind {
            // A real runner reports the sandbox's actual state after a resize; this one does not know it.
            K::DestroySandbox { .. } | K::ResizeSandbox(_) | K::RemoveVolume(_) | K::PullImage(_) => None,
            K::StopSandbox(s) => Some(Box::new(self.info(&s.sandbox_id, org, SandboxState::Stopped))),
            K::ArchiveSandbox { sandbox_id } => {
                let mut info = self.info(sandbox_id, org, SandboxState::Archived);
                (info.container_id, info.daemon_addr) = (String::new(), None);
                Some(Box::new(info))
            }
            K::CreateSandbox(_)
            | K::StartSandbox { .. }
            | K::UpdateSandboxNetwork(_)
            | K::RestoreSandbox(_)
            | K::BuildSnapshot(_)
            | K::ForkSandbox(_)
            | K::SnapshotSandbox(_)
            | K::RemoveSnapshot(_)
            | K::PauseSandbox { .. }
            | K::ResumeSandbox { .. }
            | K::PingSandbox { .. } => started(job.kind.sandbox_id()),
        };
        self.result(JobResult { job_id: job.id.clone(), outcome: JobOutcome::Succeeded { sandbox, snapshot: None } })
            .await
    }

    pub async fn fail(&self, job: &Job, code: JobErrorCode, message: &str) -> StatusCode {
        self.result(JobResult { job_id: job.id.clone(), outcome: JobOutcome::Failed { code, message: message.into() } })
            .await
    }

    pub async fn result(&self, r: JobResult) -> StatusCode {
        self.post(&format!("jobs/{}/result", r.job_id), serde_json::to_value(&r).expect("json")).await
    }

    /// Polls once and completes every job successfully; returns them.
    pub async fn work(&self, org: &str) -> Vec<Job> {
        let jobs = self.poll(0).await;
        for j in &jobs {
            assert_eq!(self.succeed(j, org).await, StatusCode::NO_CONTENT);
        }
        jobs
    }
}

/// A started sandbox: create, let the runner carry out the job, check it is `started`.
pub async fn started_sandbox(h: &Harness, runner: &FakeRunner, body: Value) -> String {
    let v = h.create(body).await;
    let id = v["id"].as_str().expect("id").to_owned();
    let jobs = runner.work(&h.org).await;
    assert!(jobs.iter().any(|j| j.kind.sandbox_id() == id), "no create job for {id}: {jobs:?}");
    assert_eq!(h.state(&id).await, "started");
    id
}

/// The body the Daytona SDK sends for a default sandbox.
pub fn empty() -> Value {
    json!({"env": {}, "labels": {"code-toolbox-language": "python"}, "volumes": []})
}

/// The host key the fake runner reports for `sandbox_id` (an OpenSSH-looking line; nothing connects to it).
pub fn fake_host_key(sandbox_id: &str) -> String {
    format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5-test-key-of-{sandbox_id}")
}
