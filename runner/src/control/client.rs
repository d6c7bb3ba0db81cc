//! The HTTP client of the control plane's runner routes (`/runners/{id}/...`): heartbeat, job poll, results, build
//! log lines, state changes and the full picture. The shared join token is sent only to register
//! (`POST /runners/{id}/register`), which answers a credential bound to this runner's id; every other call carries
//! that credential, kept in memory only (a restarted runner registers again). A 401 (the API forgot it, or another
//! registration under this id replaced it) registers once more and retries the call.
//!
//! Every call also records whether the API answered ([`Contact`]), for the runner's `GET /readyz`.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sandbar_support::sync::lock;

use sandbar_proto::api::{
    BuildLog, HeartbeatResponse, MAX_POLL_WAIT_SECS, RunnerRegistration, RunnerRegistrationRequest,
};
use sandbar_proto::runner::{Job, JobResult, RegistryAuth, SandboxInfo, StateChange};

use crate::Runner;

/// How the runner reaches the control plane.
#[derive(Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    /// The API's base URL including `/api`, without a trailing slash.
    base: String,
    /// The join token, for registering only.
    token: String,
    /// `(runner id, credential)` from the last registration.
    credential: Arc<tokio::sync::Mutex<Option<(String, String)>>>,
    contact: Arc<Contact>,
    /// What each registration declares (the networks of this runner's daemon addresses).
    registration: Arc<RunnerRegistrationRequest>,
}

/// What the runner last heard from the API: whether it took this runner's full picture once (registered), and
/// whether the last call got an answer (any status below 500) or why not.
#[derive(Debug, Default)]
pub struct Contact {
    registered: AtomicBool,
    failure: std::sync::Mutex<Option<String>>,
}

impl Contact {
    /// Why the runner is not in touch with the API, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if !self.registered.load(Ordering::Relaxed) {
            let why = lock(&self.failure).clone().unwrap_or_else(|| "no answer yet".into());
            return Some(format!("not registered with the control plane yet: {why}"));
        }
        lock(&self.failure).clone().map(|e| format!("the last call to the control plane failed: {e}"))
    }

    fn record<T>(&self, result: &Result<T, ControlPlaneError>) {
        let failure = match result {
            Ok(_) | Err(ControlPlaneError::Status { status: 0..500, .. }) => None,
            Err(e) => Some(e.to_string()),
        };
        *lock(&self.failure) = failure;
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A failed call to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("control plane unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("control plane answered {status}: {message}")]
    Status { status: u16, message: String },
}

impl ControlPlane {
    /// `api_url` is the API's base URL with its `/api` prefix (`http://127.0.0.1:3000/api`).
    pub fn new(api_url: &str, token: impl Into<String>) -> Result<Self, ControlPlaneError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: api_url.trim_end_matches('/').to_owned(),
            token: token.into(),
            credential: Arc::default(),
            contact: Arc::default(),
            registration: Arc::default(),
        })
    }

    /// Declares, at every registration, the IPv4 networks (CIDRs) this runner's daemon addresses lie in
    /// ([`Runner::daemon_networks`]); the API refuses reports of addresses outside them.
    pub fn with_daemon_networks(mut self, networks: Vec<String>) -> Self {
        self.registration = Arc::new(RunnerRegistrationRequest { daemon_networks: networks });
        self
    }

    /// What the runner last heard from the API (shared with every clone of this client).
    pub fn contact(&self) -> Arc<Contact> {
        self.contact.clone()
    }

    /// This runner's credential: the one held, or a new registration's when none is held or the held one is
    /// `refused` (another call may have renewed it meanwhile: then that one is used).
    async fn credential(&self, runner_id: &str, refused: Option<&str>) -> Result<String, ControlPlaneError> {
        let mut held = self.credential.lock().await;
        if let Some((id, c)) = held.as_ref()
            && id == runner_id
            && Some(c.as_str()) != refused
        {
            return Ok(c.clone());
        }
        let req = self
            .http
            .post(self.url(runner_id, "register"))
            .json(self.registration.as_ref())
            .timeout(Duration::from_secs(10));
        let resp = Self::checked(req.bearer_auth(&self.token).send().await?).await?;
        let reg: RunnerRegistration = resp.json().await?;
        tracing::info!(runner_id, "registered with the control plane");
        *held = Some((runner_id.to_owned(), reg.credential.clone()));
        Ok(reg.credential)
    }

    /// Sends `req` as runner `runner_id`, registering first when needed and once more on a 401.
    async fn send(
        &self,
        runner_id: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ControlPlaneError> {
        let result = self.send_once(runner_id, req).await;
        self.contact.record(&result);
        result
    }

    async fn send_once(
        &self,
        runner_id: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ControlPlaneError> {
        let again = req.try_clone();
        let used = self.credential(runner_id, None).await?;
        let resp = req.bearer_auth(&used).send().await?;
        let resp = match again {
            Some(again) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                again.bearer_auth(self.credential(runner_id, Some(&used)).await?).send().await?
            }
            _ => resp,
        };
        Self::checked(resp).await
    }

    async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, ControlPlaneError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(body);
        Err(ControlPlaneError::Status { status, message })
    }

    fn url(&self, runner_id: &str, tail: &str) -> String {
        format!("{}/runners/{runner_id}/{tail}", self.base)
    }

    pub async fn heartbeat(&self, runner: &Runner) -> Result<HeartbeatResponse, ControlPlaneError> {
        let mut status = runner.status();
        // A failed sample costs the heartbeat its usage, not the heartbeat.
        status.usage = runner.sample_usage().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot sample the sandboxes' usage");
            Vec::new()
        });
        let req = self.http.post(self.url(&status.runner_id, "heartbeat")).timeout(Duration::from_secs(10));
        Ok(self.send(&status.runner_id, req.json(&status)).await?.json().await?)
    }

    /// Long-polls for jobs; `[]` after `wait`.
    pub async fn poll(&self, runner_id: &str, wait: Duration) -> Result<Vec<Job>, ControlPlaneError> {
        let secs = wait.as_secs().min(MAX_POLL_WAIT_SECS);
        let req =
            self.http.get(self.url(runner_id, "jobs")).query(&[("wait", secs)]).timeout(Duration::from_secs(secs + 10));
        Ok(self.send(runner_id, req).await?.json().await?)
    }

    pub async fn report(&self, runner_id: &str, result: &JobResult) -> Result<(), ControlPlaneError> {
        let url = self.url(runner_id, &format!("jobs/{}/result", result.job_id));
        self.send(runner_id, self.http.post(url).timeout(Duration::from_secs(10)).json(result)).await.map(drop)
    }

    /// Lines of a running build job's output.
    pub async fn build_log(&self, runner_id: &str, job_id: &str, log: &BuildLog) -> Result<(), ControlPlaneError> {
        let url = self.url(runner_id, &format!("jobs/{job_id}/log"));
        self.send(runner_id, self.http.post(url).timeout(Duration::from_secs(10)).json(log)).await.map(drop)
    }

    /// The organization's registry credentials for the images job `job_id` pulls (only this runner's jobs).
    pub async fn registry_auth(&self, runner_id: &str, job_id: &str) -> Result<Vec<RegistryAuth>, ControlPlaneError> {
        let url = self.url(runner_id, &format!("jobs/{job_id}/registry-auth"));
        Ok(self.send(runner_id, self.http.get(url).timeout(Duration::from_secs(10))).await?.json().await?)
    }

    pub async fn report_states(&self, runner_id: &str, changes: &[StateChange]) -> Result<(), ControlPlaneError> {
        let req = self.http.post(self.url(runner_id, "states")).timeout(Duration::from_secs(10));
        self.send(runner_id, req.json(changes)).await.map(drop)
    }

    pub async fn report_sandboxes(&self, runner_id: &str, list: &[SandboxInfo]) -> Result<(), ControlPlaneError> {
        // The API applies a full report a batch of sandboxes at a time (a few ms a sandbox on a busy PostgreSQL):
        // a host with thousands of them must not time out, and retry, forever.
        let wait = Duration::from_secs(30).max(Duration::from_millis(10).saturating_mul(list.len() as u32));
        let req = self.http.post(self.url(runner_id, "sandboxes")).timeout(wait);
        self.send(runner_id, req.json(list)).await?;
        self.contact.registered.store(true, Ordering::Relaxed);
        Ok(())
    }
}
