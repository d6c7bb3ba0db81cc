//! The whole platform in one test process: the real API (sandbar-api in-process on a SQLite file, with a
//! hand-moved clock so auto-stop needs no waiting), a runner that speaks the real job protocol over HTTP and runs
//! each sandbox as a real `sandbar-daemon` process ([`TestDaemon`]; a stopped sandbox has none, a start launches a
//! new one), and the proxy in front of both ([`Proxy`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbar_api::{App, ManualClock};
use sandbar_proto::runner::{
    Capacity, Job, JobKind, JobOutcome, JobResult, Resources, RunnerStatus, SandboxInfo, SandboxState,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api_standin::PROXY_TOKEN;
use crate::daemon::TestDaemon;
use crate::proxy::{Proxy, json_of};

pub const RUNNER_TOKEN: &str = "runner-service-token";
const RUNNER_ID: &str = "runner-1";

/// The runner: sandboxes are daemon processes; a stopped sandbox has none, a start launches a new one (on a new
/// address, as a restarted container gets).
pub struct Runner {
    base: String,
    http: reqwest::Client,
    /// Its credential from registering with [`RUNNER_TOKEN`].
    credential: String,
    daemons: Mutex<HashMap<String, TestDaemon>>,
    /// While true, start jobs are taken but not carried out (a slow start).
    pub hold_starts: AtomicBool,
    pub starts: AtomicUsize,
}

impl Runner {
    async fn post(&self, tail: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}/runners/{RUNNER_ID}/{tail}", self.base))
            .bearer_auth(&self.credential)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{tail}: {}", r.status());
    }

    pub async fn heartbeat(&self) {
        let status = RunnerStatus {
            runner_id: RUNNER_ID.into(),
            version: "test".into(),
            capacity: Capacity { cpu: 64, memory: 64, disk: 1000 },
            allocated: Capacity::default(),
            sandboxes: 0,
            started: 0,
            storage_driver: "overlay2".into(),
            disk_enforced: false,
            cgroup_version: 2,
            volumes: Vec::new(),
            usage: Vec::new(),
        };
        self.post("heartbeat", serde_json::to_value(status).unwrap()).await;
    }

    fn info(&self, id: &str, org: &str, state: SandboxState, daemon: Option<&TestDaemon>) -> SandboxInfo {
        SandboxInfo {
            id: id.into(),
            name: None,
            organization_id: org.into(),
            runner_id: RUNNER_ID.into(),
            container_id: format!("c-{id}"),
            image: "img".into(),
            state,
            error_reason: None,
            resources: Resources::default(),
            disk_enforced: false,
            daemon_addr: daemon.map(|d| d.addr.clone()),
            ssh_addr: None,
            daemon_token: daemon.map(|d| d.token.clone()).unwrap_or_else(|| format!("token-{id}")),
            daemon_host_key: daemon.map(crate::proxy::daemon_host_key),
            user: None,
            env: Default::default(),
            labels: Default::default(),
            auto: Default::default(),
        }
    }

    async fn launch(&self, id: &str) -> SandboxInfo {
        let token = format!("daemon-token-{}", uuid::Uuid::new_v4().simple());
        let daemon = tokio::task::spawn_blocking(move || TestDaemon::start_token(&token)).await.unwrap();
        let info = self.info(id, "", SandboxState::Started, Some(&daemon));
        self.daemons.lock().unwrap().insert(id.to_owned(), daemon);
        info
    }

    async fn carry_out(&self, job: &Job) {
        let sandbox = match &job.kind {
            JobKind::CreateSandbox(c) => {
                let mut info = self.launch(&c.id).await;
                info.organization_id = c.organization_id.clone();
                Some(Box::new(info))
            }
            JobKind::StartSandbox { sandbox_id } => {
                self.starts.fetch_add(1, Ordering::SeqCst);
                while self.hold_starts.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // A start takes a moment, as a container's does: requests pile up meanwhile.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some(Box::new(self.launch(sandbox_id).await))
            }
            JobKind::StopSandbox(s) => {
                self.daemons.lock().unwrap().remove(&s.sandbox_id);
                Some(Box::new(self.info(&s.sandbox_id, "", SandboxState::Stopped, None)))
            }
            JobKind::DestroySandbox { sandbox_id } => {
                self.daemons.lock().unwrap().remove(sandbox_id);
                None
            }
            JobKind::ResizeSandbox(_) | JobKind::RemoveVolume(_) => None,
            JobKind::ArchiveSandbox { sandbox_id } => {
                self.daemons.lock().unwrap().remove(sandbox_id);
                Some(Box::new(self.info(sandbox_id, "", SandboxState::Archived, None)))
            }
            // These tests never ask for the rest; say so rather than pretend.
            JobKind::UpdateSandboxNetwork(_)
            | JobKind::RestoreSandbox(_)
            | JobKind::BuildSnapshot(_)
            | JobKind::ForkSandbox(_)
            | JobKind::SnapshotSandbox(_)
            | JobKind::RemoveSnapshot(_)
            | JobKind::PauseSandbox { .. }
            | JobKind::ResumeSandbox { .. }
            | JobKind::PingSandbox { .. }
            | JobKind::PullImage(_) => {
                let message = format!("the stack's runner does not carry out {}", job.kind.tag());
                let outcome = JobOutcome::Failed { code: sandbar_proto::runner::JobErrorCode::InvalidRequest, message };
                let result = JobResult { job_id: job.id.clone(), outcome };
                self.post(&format!("jobs/{}/result", job.id), serde_json::to_value(result).unwrap()).await;
                return;
            }
        };
        let result = JobResult { job_id: job.id.clone(), outcome: JobOutcome::Succeeded { sandbox, snapshot: None } };
        self.post(&format!("jobs/{}/result", job.id), serde_json::to_value(result).unwrap()).await;
    }

    /// Heartbeats and long-polls jobs until `stop`, each job in its own task (as the real runner does).
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.heartbeat().await;
            let poll = self
                .http
                .get(format!("{}/runners/{RUNNER_ID}/jobs?wait=1", self.base))
                .bearer_auth(&self.credential)
                .timeout(Duration::from_secs(10))
                .send();
            let jobs: Vec<Job> = tokio::select! {
                () = stop.cancelled() => return,
                r = poll => match r {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => continue,
                },
            };
            for job in jobs {
                let me = self.clone();
                tokio::spawn(async move { me.carry_out(&job).await });
            }
        }
    }
}

pub struct Stack {
    pub app: App,
    pub clock: Arc<ManualClock>,
    pub api: String,
    pub key: String,
    pub org: String,
    pub runner: Arc<Runner>,
    pub proxy: Proxy,
    pub http: reqwest::Client,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
        // The daemons are killed by their guards.
        self.runner.daemons.lock().unwrap().clear();
    }
}

impl Stack {
    /// Binds the proxy first (the API hands out URLs with its real port), then starts the API, the runner and
    /// the proxy with `tweak` applied to its configuration.
    pub async fn start(tweak: impl FnOnce(&mut sandbar_proxy::Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let proxy_dir = tempfile::tempdir().unwrap();
        let mut proxy_config = sandbar_proxy::Config::local("http://unset", PROXY_TOKEN, proxy_dir.path().to_owned());
        proxy_config.activity_interval = Duration::from_millis(100);
        tweak(&mut proxy_config);
        let listeners = sandbar_proxy::Listeners::bind(&proxy_config).unwrap();
        let proxy_http = listeners.addrs().unwrap().0;

        let mut config = sandbar_api::Config::new(dir.path());
        config.database_url = Some(format!("sqlite://{}?mode=rwc", dir.path().join("sandbar.db").display()));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.proxy_url = format!("http://localhost:{}", proxy_http.port());
        config.runner_token = Some(RUNNER_TOKEN.into());
        config.proxy_token = Some(PROXY_TOKEN.into());
        let clock = Arc::new(ManualClock::default());
        let app = App::open(config, clock.clone()).await.unwrap();
        let b = sandbar_api::auth::bootstrap(&app.db, "org-a", &app.config.limits, app.now()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}/api", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn({
            let (app, stop) = (app.clone(), stop.clone());
            async move { app.serve(listener, stop).await }
        });

        let http = reqwest::Client::new();
        let credential = crate::api::register_runner(&http, &api, RUNNER_ID, RUNNER_TOKEN).await;
        let runner = Arc::new(Runner {
            base: api.clone(),
            http: http.clone(),
            credential,
            daemons: Mutex::default(),
            hold_starts: AtomicBool::new(false),
            starts: AtomicUsize::new(0),
        });
        runner.heartbeat().await;
        tokio::spawn(runner.clone().run(stop.clone()));

        proxy_config.api_url = api.clone();
        let proxy = Proxy::start_bound(proxy_config, listeners, proxy_dir).await;
        Stack { app, clock, api, key: b.api_key, org: b.organization_id, runner, proxy, http, stop, _dir: dir }
    }

    /// An API key of another organization, `org` (made when missing).
    pub async fn org_key(&self, org: &str) -> String {
        let b = sandbar_api::auth::bootstrap(&self.app.db, org, &self.app.config.limits, self.app.now()).await.unwrap();
        b.api_key
    }

    /// A user call to the API with the organization's key.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.api)).bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn state(&self, id: &str) -> String {
        let (s, v) = self.call(reqwest::Method::GET, &format!("/sandbox/{id}"), None).await;
        assert_eq!(s, 200, "{v}");
        v["state"].as_str().unwrap().to_owned()
    }

    /// Polls the API until the sandbox is in `state` (the runner works in the background).
    pub async fn wait_state(&self, id: &str, state: &str) {
        let mut last = String::new();
        for _ in 0..200 {
            last = self.state(id).await;
            if last == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sandbox {id} is {last}, never {state}");
    }

    /// A started sandbox (on a new daemon process).
    pub async fn started_sandbox(&self, extra: Value) -> String {
        let mut body = json!({"env": {}, "labels": {}, "volumes": []});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (s, v) = self.call(reqwest::Method::POST, "/sandbox", Some(body)).await;
        assert_eq!(s, 200, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        self.wait_state(&id, "started").await;
        id
    }

    /// `POST /toolbox/{id}/process/execute` through the proxy with the organization's key.
    pub async fn exec(&self, id: &str, cmd: &str) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .post(self.proxy.http_url(&format!("/toolbox/{id}/process/execute")))
            .bearer_auth(&self.key)
            .json(&json!({ "command": cmd }))
            .send()
            .await
            .unwrap();
        json_of(r).await
    }

    /// GETs `path` on the host of `url` (a signed preview URL handed out by the API) through the proxy, with
    /// reqwest resolving that host to the proxy.
    pub async fn get_signed(&self, url: &str, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        let u = reqwest::Url::parse(url).unwrap();
        let host = u.host_str().unwrap().to_owned();
        let client = reqwest::Client::builder().resolve(&host, self.proxy.http).build().unwrap();
        let r = client.get(u.join(path).unwrap()).send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, r.text().await.unwrap(), headers)
    }

    /// Moves time past the auto-stop interval and lets the timers stop the sandbox, as they do after real idling.
    pub async fn auto_stop(&self, id: &str, minutes: i64) {
        // Traffic the proxy saw is reported within its activity interval: let it land before time moves.
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.clock.advance_secs(minutes * 60 + 1);
        // The runner must not look unreachable at the new time.
        self.runner.heartbeat().await;
        let report = sandbar_api::lifecycle::tick(&self.app).await.unwrap();
        assert!(report.stopped.contains(&id.to_owned()) || self.state(id).await != "started", "{report:?}");
        self.wait_state(id, "stopped").await;
    }
}
