//! Containers: validating and creating a sandbox (from the warm pool when one matches, else a container of its
//! own whose daemon is waited for), start, stop, destroy, resize and network policy changes. Each holds the
//! sandbox's operation lock; the public entry points on [`Runner`](super::Runner) run them as their own tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, ContainerUpdateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use sandbar_proto::ports;
use sandbar_proto::runner::{
    CreateSandbox, ResizeSandbox, Resources, SandboxInfo, SandboxSpecLabel, SandboxState, StopSandbox,
    UpdateSandboxNetwork, labels,
};
use sandbar_support::otlp::Kind;
use sandbar_support::sync::lock;

use super::daemon::{new_host_key, new_token};
use super::events::{endpoint, exit_reason, has_ipv6};
use super::{
    ENV_ENTRYPOINT_GATE, ENV_SANDBOX_ID, ENV_SSH_HOST_KEY, ENV_TOKEN, ENV_TOOLBOX_ADDR, ENV_TRACE_SPANS,
    ENV_TRACEPARENT, Entry, GIB, Inner, NANO, RESERVED_ENV, container_name, image, strip_daemon,
};
use crate::config::{DAEMON_MOUNT_PATH, valid_name};
use crate::error::{SandboxError, docker_status};

impl Inner {
    pub(super) fn validate_resources(&self, r: &Resources) -> Result<(), SandboxError> {
        let bad = |m: String| Err(SandboxError::InvalidRequest(m));
        let host_gib = self.host.mem_total / (GIB as u64);
        if r.cpu == 0 || r.cpu > self.host.ncpu {
            return bad(format!("cpu must be 1..={} cores on this host, not {}", self.host.ncpu, r.cpu));
        }
        if r.memory == 0 || u64::from(r.memory) > host_gib {
            return bad(format!("memory must be 1..={host_gib} GiB on this host, not {}", r.memory));
        }
        if r.disk == 0 {
            return bad("disk must be at least 1 GiB".into());
        }
        Ok(())
    }

    pub(super) fn validate_create(&self, req: &CreateSandbox) -> Result<(), SandboxError> {
        let bad = |m: String| Err(SandboxError::InvalidRequest(m));
        if !valid_name(&req.id) {
            return bad(format!("sandbox ID {:?} must be 1-64 of [A-Za-z0-9_.-]", req.id));
        }
        if req.organization_id.is_empty()
            || req.organization_id.len() > 128
            || req.organization_id.chars().any(char::is_control)
        {
            return bad("organization ID must be 1-128 printable characters".into());
        }
        if req.image.trim().is_empty() {
            return bad("image must not be empty".into());
        }
        if image::looks_like_id(&req.image) {
            return bad(format!("image {:?} looks like an image ID or digest; name images by reference", req.image));
        }
        if matches!(&req.entrypoint, Some(argv) if argv.is_empty()) {
            return bad("entrypoint, when given, must not be empty".into());
        }
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return bad(format!("invalid environment variable name {key:?}"));
            }
            if RESERVED_ENV.contains(&key.as_str()) || sandbar_proto::runner::reserved_env(key) {
                return bad(format!("{key} is set by the runner"));
            }
        }
        if req.env.values().any(|v| v.contains('\0')) {
            return bad("environment values must not contain NUL".into());
        }
        if let Some(runtime) = &req.runtime
            && !self.config.runtimes.contains(runtime)
        {
            return bad(format!(
                "runtime {runtime:?} is not allowed on this runner (allowed: {})",
                self.config.runtimes.join(", ")
            ));
        }
        self.validate_resources(&req.resources)
    }

    /// The bind mounts of `req`'s volumes, each made ready by the volume driver first.
    fn volume_mounts(&self, req: &CreateSandbox) -> Result<Vec<bollard::models::Mount>, SandboxError> {
        if req.volumes.is_empty() {
            return Ok(Vec::new());
        }
        let driver = self.volumes.as_ref().ok_or(super::volumes::VolumeError::NoStore)?;
        req.volumes
            .iter()
            .map(|m| -> Result<bollard::models::Mount, SandboxError> {
                let source = driver.prepare(&req.organization_id, m)?;
                Ok(bollard::models::Mount {
                    target: Some(m.mount_path.clone()),
                    source: Some(source.display().to_string()),
                    typ: Some(bollard::models::MountType::BIND),
                    read_only: Some(false),
                    ..Default::default()
                })
            })
            .collect()
    }

    /// The picture of a sandbox about to be made from `req`.
    pub(super) fn new_info(&self, req: &CreateSandbox, state: SandboxState, daemon_token: String) -> SandboxInfo {
        SandboxInfo {
            id: req.id.clone(),
            name: req.name.clone(),
            organization_id: req.organization_id.clone(),
            runner_id: self.config.runner_id.clone(),
            container_id: String::new(),
            image: req.image.clone(),
            state,
            error_reason: None,
            resources: req.resources,
            disk_enforced: self.host.disk_enforced,
            daemon_addr: None,
            ssh_addr: None,
            daemon_token,
            daemon_host_key: None,
            user: req.user.clone(),
            env: req.env.clone(),
            labels: req.labels.clone(),
            auto: req.auto,
        }
    }

    /// Creates sandbox `req`; with `copy`, a fork: its container gets the source's layer before it starts (never
    /// a warm pool member, which runs already).
    pub(super) async fn create(
        self: &Arc<Self>,
        req: CreateSandbox,
        copy: Option<super::archive::LayerSource>,
    ) -> Result<SandboxInfo, SandboxError> {
        self.validate_create(&req)?;
        let info = self.new_info(&req, SandboxState::Creating, new_token()?);
        let entry = Entry::new(info, false);
        {
            let mut map = lock(&self.sandboxes);
            if map.contains_key(&req.id) {
                return Err(SandboxError::Conflict(format!("sandbox {} already exists", req.id)));
            }
            if let Some(name) = &req.name {
                let taken = map.values().any(|e| {
                    let i = lock(&e.info);
                    i.organization_id == req.organization_id && i.name.as_deref() == Some(name.as_str())
                });
                if taken {
                    return Err(SandboxError::Conflict(format!("a sandbox named {name:?} already exists")));
                }
            }
            if let Some(parent) = &req.linked_sandbox
                && (parent == &req.id || !map.contains_key(parent))
            {
                return Err(SandboxError::InvalidRequest(format!(
                    "linked sandbox {parent} is not another sandbox on this runner"
                )));
            }
            map.insert(req.id.clone(), entry.clone());
        }
        let _op = entry.op.lock().await;
        if let Err(e) = self.firewall.set_policy(&req.id, req.network.clone(), req.linked_sandbox.clone()).await {
            lock(&self.sandboxes).remove(&req.id);
            return Err(e.into());
        }
        if let Some(member) = copy.is_none().then(|| self.take_pool_member(&req)).flatten() {
            match self.claim(&entry, &req, member).await {
                Ok(()) => {
                    self.set_state(&entry, SandboxState::Started, None, None);
                    return Ok(lock(&entry.info).clone());
                }
                Err(e) => tracing::warn!(sandbox_id = %req.id, error = %e, "warm pool claim failed; creating cold"),
            }
        }
        let made = match copy {
            None => self.create_container(&entry, &req, false).await,
            Some(source) => {
                async {
                    let container = self.make_container(&entry, &req, false).await?;
                    self.copy_layer(&source, &container).await?;
                    self.run_container(&entry, &req.id, &container).await
                }
                .await
            }
        };
        match made {
            Ok(()) => {
                self.set_state(&entry, SandboxState::Started, None, None);
                Ok(lock(&entry.info).clone())
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %req.id, error = %e, "create failed; removing what was made");
                self.remove_container_quietly(&container_name(&req.id)).await;
                self.firewall.detach_sandbox(&req.id).await;
                self.firewall.forget(&req.id).await;
                lock(&self.sandboxes).remove(&req.id);
                Err(e)
            }
        }
    }

    /// Creates and starts the container for `req` and waits for its daemon; fills in the entry's container ID,
    /// user and daemon address. The caller sets the state.
    pub(super) async fn create_container(
        &self,
        entry: &Entry,
        req: &CreateSandbox,
        pool: bool,
    ) -> Result<(), SandboxError> {
        let container = self.make_container(entry, req, pool).await?;
        self.run_container(entry, &req.id, &container).await
    }

    /// Starts a container [`make_container`](Self::make_container) made and waits for its daemon; fills in the
    /// entry's user and daemon address.
    pub(super) async fn run_container(&self, entry: &Entry, id: &str, container: &str) -> Result<(), SandboxError> {
        let (bridge, (addr, ssh), user) = self.start_and_wait(id, container).await?;
        let token = {
            let mut info = lock(&entry.info);
            info.user = user;
            (info.daemon_addr, info.ssh_addr) = (Some(addr), ssh);
            info.daemon_token.clone()
        };
        self.collect_daemon_spans(id, bridge, &token).await;
        Ok(())
    }

    /// Passes the spans the daemon at `addr` kept (its start, the entrypoint's spawn, requests the runner made) on
    /// to the collector, when this runner exports spans (`crate::trace`). Best effort: a failure is logged only.
    pub(super) async fn collect_daemon_spans(&self, id: &str, addr: SocketAddr, token: &str) {
        if !crate::trace::daemons_record() {
            return;
        }
        match self.daemon.spans(addr, token).await {
            Ok(Some(encoded)) => crate::trace::forward_daemon_spans(id, encoded),
            Ok(None) => tracing::debug!(sandbox_id = %id, "the daemon had no spans"),
            Err(e) => tracing::warn!(sandbox_id = %id, error = %e, "cannot collect the daemon's spans"),
        }
    }

    /// Creates (never starts) the container for `req`; fills in the entry's container ID and returns it. Between
    /// this and [`run_container`](Self::run_container) a restore or a fork writes the sandbox's layer into it.
    pub(super) async fn make_container(
        &self,
        entry: &Entry,
        req: &CreateSandbox,
        pool: bool,
    ) -> Result<String, SandboxError> {
        let image = image::inspect(&self.docker, &req.image)
            .await?
            .ok_or_else(|| SandboxError::ImageNotFound(req.image.clone()))?;
        let argv = req.entrypoint.clone().unwrap_or_else(|| strip_daemon(image.argv()));
        let mut entrypoint = vec![DAEMON_MOUNT_PATH.to_owned()];
        if !argv.is_empty() {
            entrypoint.push("--".into());
            entrypoint.extend(argv);
        }
        let token = lock(&entry.info).daemon_token.clone();
        let host_key = new_host_key()?;
        let mut env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("{ENV_SANDBOX_ID}={}", req.id));
        env.push(format!("{ENV_TOKEN}={token}"));
        env.push(format!("{ENV_SSH_HOST_KEY}={}", host_key.private));
        lock(&entry.info).daemon_host_key = Some(host_key.public);
        env.push(format!("{ENV_TOOLBOX_ADDR}=0.0.0.0:{}", ports::TOOLBOX));
        // The daemon holds the entrypoint until the network rules are in (`release_entrypoint`).
        env.push(format!("{ENV_ENTRYPOINT_GATE}=1"));
        if crate::trace::daemons_record() {
            env.push(format!("{ENV_TRACE_SPANS}=1"));
            if let Some(t) = crate::trace::current() {
                env.push(format!("{ENV_TRACEPARENT}={}", t.header()));
            }
        }

        let spec = SandboxSpecLabel {
            labels: req.labels.clone(),
            disk: req.resources.disk,
            auto: req.auto,
            env_keys: req.env.keys().cloned().collect(),
            network: req.network.clone(),
            linked_sandbox: req.linked_sandbox.clone(),
        };
        let spec = serde_json::to_string(&spec).map_err(|e| SandboxError::Internal(e.to_string()))?;
        let mut container_labels: HashMap<String, String> =
            self.config.extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        container_labels.insert(labels::SANDBOX_ID.into(), req.id.clone());
        container_labels.insert(labels::ORG.into(), req.organization_id.clone());
        container_labels.insert(labels::RUNNER.into(), self.config.runner_id.clone());
        container_labels.insert(labels::SPEC.into(), spec);
        // Always set, even empty: a container inherits its image's labels, and a snapshot's image has ours.
        container_labels.insert(labels::NAME.into(), req.name.clone().unwrap_or_default());
        container_labels.insert(labels::POOL.into(), if pool { "1".into() } else { String::new() });

        let r = req.resources;
        let memory = i64::from(r.memory) * GIB;
        let volume_mounts = self.volume_mounts(req)?;
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:{DAEMON_MOUNT_PATH}:ro", self.config.daemon_binary.display())]),
            mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
            nano_cpus: Some(i64::from(r.cpu) * NANO),
            memory: Some(memory),
            // No swap beyond the memory limit (ignored where the kernel has no swap accounting).
            memory_swap: Some(memory),
            pids_limit: self.config.pids_limit,
            network_mode: self.config.network.clone(),
            storage_opt: self.host.disk_enforced.then(|| HashMap::from([("size".to_owned(), format!("{}G", r.disk))])),
            port_bindings: self.config.advertise_addr.map(published_daemon_ports),
            ..self.hardening(req, image.user.as_deref())
        };
        let body = ContainerCreateBody {
            image: Some(req.image.clone()),
            entrypoint: Some(entrypoint),
            env: Some(env),
            labels: Some(container_labels),
            user: req.user.clone(),
            stop_timeout: i64::try_from(self.config.stop_timeout.as_secs()).ok(),
            exposed_ports: self
                .config
                .advertise_addr
                .map(|_| DAEMON_PUBLISHED.iter().map(|p| format!("{p}/tcp")).collect()),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = container_name(&req.id);
        let _span = crate::trace::child("docker create container", Kind::Client);
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
            .await
            .map_err(|e| match docker_status(&e) {
                Some(409) => SandboxError::Conflict(format!("a container named {name} already exists")),
                Some(404) => SandboxError::ImageNotFound(req.image.clone()),
                _ => SandboxError::Docker(e),
            })?;
        lock(&entry.info).container_id = created.id.clone();
        Ok(created.id)
    }

    /// Starts the container and waits for its daemon. Returns the daemon's bridge address (which this host
    /// reaches), the addresses reported to the API ([`super::events::daemon_addrs`]) and the container's user.
    pub(super) async fn start_and_wait(
        &self,
        id: &str,
        container: &str,
    ) -> Result<(SocketAddr, (String, Option<String>), Option<String>), SandboxError> {
        let span = crate::trace::child("docker start container", Kind::Client);
        self.docker.start_container(container, None).await?;
        drop(span);
        let span = crate::trace::child("docker inspect container", Kind::Client);
        let inspect = self.docker.inspect_container(container, None).await?;
        drop(span);
        let ep = endpoint(&inspect).ok_or_else(|| SandboxError::DaemonNotReady {
            id: id.into(),
            reason: "the container has no IP address (network mode none?)".into(),
        })?;
        if has_ipv6(&inspect) {
            return Err(SandboxError::InvalidRequest(format!(
                "sandbox {id} got an IPv6 address; sandbar's network rules are IPv4 only: use a Docker network \
                 without IPv6"
            )));
        }
        // Before the daemon answers, so no request reaches a sandbox whose rules are not in place, and before the
        // entrypoint runs (the daemon holds it until released).
        let addr = SocketAddr::new(ep.ip, ports::TOOLBOX);
        let reported = super::events::daemon_addrs(&inspect, self.config.advertise_addr).ok_or_else(|| {
            SandboxError::DaemonNotReady {
                id: id.into(),
                reason: "Docker published no port for the daemon on the advertise address".into(),
            }
        })?;
        let span = crate::trace::child("firewall attach", Kind::Internal);
        self.firewall.attach(container, id, ep).await?;
        drop(span);
        let span = crate::trace::child("wait for the daemon", Kind::Internal);
        self.wait_daemon(id, container, addr).await?;
        drop(span);
        self.release_entrypoint(container).await;
        let user = inspect.config.and_then(|c| c.user).filter(|u| !u.is_empty());
        Ok((addr, reported, user))
    }

    /// Lets the daemon start the image's entrypoint, which it holds (`SANDBAR_ENTRYPOINT_GATE`) until the sandbox's
    /// network rules are in place: SIGUSR2 to the container's PID 1. Harmless when already released; a failure is
    /// logged (the container is then gone or stopping).
    pub(super) async fn release_entrypoint(&self, container: &str) {
        let opts = KillContainerOptionsBuilder::default().signal("SIGUSR2").build();
        let mut span = crate::trace::child("docker kill container SIGUSR2 (release the entrypoint)", Kind::Client);
        if let Err(e) = self.docker.kill_container(container, Some(opts)).await {
            tracing::warn!(container, error = %e, "cannot release the entrypoint");
            if let Some(span) = &mut span {
                span.fail(&e);
            }
        }
    }

    /// Polls `GET /version` until it answers; checks that the container is still running every 200 ms so a daemon
    /// that cannot start fails fast with its exit code and last log lines.
    pub(super) async fn wait_daemon(&self, id: &str, container: &str, addr: SocketAddr) -> Result<(), SandboxError> {
        let started = Instant::now();
        let deadline = started + self.config.daemon_ready_timeout;
        let mut next_check = started + Duration::from_millis(200);
        let mut swept = false;
        let mut last_error: String;
        loop {
            match self.daemon.version(addr, Duration::from_millis(500)).await {
                Ok(_) => {
                    tracing::debug!(sandbox_id = %id, ms = started.elapsed().as_millis(), "daemon ready");
                    return Ok(());
                }
                Err(e) => last_error = e,
            }
            let now = Instant::now();
            // A daemon that does not answer within a second may be answering into a stale claim on its address
            // (another runner's bridge table, `crate::firewall`'s "Stale claims"): taken back once.
            if !swept
                && now >= started + STALE_CLAIM_SWEEP_AFTER
                && let std::net::IpAddr::V4(ip) = addr.ip()
            {
                swept = true;
                for claim in self.firewall.clear_stale_claims(ip).await {
                    tracing::warn!(sandbox_id = %id, claim, "removed a stale claim on the sandbox's address");
                }
            }
            if now >= next_check {
                next_check = now + Duration::from_millis(200);
                let inspect = self.docker.inspect_container(container, None).await?;
                let state = inspect.state.unwrap_or_default();
                if state.running != Some(true) {
                    let logs = self.logs_tail(container, 20).await;
                    return Err(SandboxError::DaemonNotReady {
                        id: id.into(),
                        reason: format!(
                            "the container stopped ({}); last output:\n{logs}",
                            exit_reason(state.exit_code.unwrap_or(-1), state.oom_killed == Some(true))
                        ),
                    });
                }
            }
            if now >= deadline {
                let logs = self.logs_tail(container, 20).await;
                return Err(SandboxError::DaemonNotReady {
                    id: id.into(),
                    reason: format!(
                        "no answer from GET /version at {addr} within {:?} (the container runs; the last try: {last_error}); \
                         last output:\n{logs}",
                        self.config.daemon_ready_timeout
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> String {
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&lines.to_string()).build();
        let mut out = String::new();
        let mut stream = self.docker.logs(container, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    /// Removes a container and its anonymous volumes, running or not; one that is gone already is no error.
    pub(super) async fn remove_container(&self, container: &str) -> Result<(), bollard::errors::Error> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(container, Some(opts)).await {
            Err(e) if docker_status(&e) == Some(404) => Ok(()),
            r => r,
        }
    }

    /// Removes a container (logging a failure) and its network rules.
    pub(super) async fn remove_container_quietly(&self, container: &str) {
        if let Err(e) = self.remove_container(container).await {
            tracing::warn!(container, error = %e, "cannot remove container");
        }
        self.firewall.detach(container).await;
    }

    pub(super) async fn start(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let (state, container) = entry.state_and_container();
        match state {
            SandboxState::Started => return Ok(lock(&entry.info).clone()),
            SandboxState::Stopped | SandboxState::Error => {}
            state => return Err(SandboxError::InvalidState { id: id.into(), state, action: "start" }),
        }
        self.set_state(&entry, SandboxState::Starting, None, None);
        let started = match self.start_and_wait(id, &container).await {
            // A restarted daemon has forgotten the identity a claim gave it.
            Ok((addr, reported, _)) if entry.is_claimed() => self.init_claimed(&entry, addr).await.map(|()| reported),
            Ok((_, reported, _)) => Ok(reported),
            Err(e) => Err(e),
        };
        match started {
            Ok((addr, ssh)) => {
                {
                    let mut info = lock(&entry.info);
                    (info.daemon_addr, info.ssh_addr) = (Some(addr), ssh);
                }
                self.set_state(&entry, SandboxState::Started, None, None);
                Ok(lock(&entry.info).clone())
            }
            Err(e) => {
                // Leave nothing running that the runner does not consider started.
                let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                let _ = self.docker.kill_container(&container, Some(kill)).await;
                self.firewall.detach(&container).await;
                self.set_state(&entry, SandboxState::Error, Some(e.to_string()), None);
                Err(e)
            }
        }
    }

    pub(super) async fn stop(&self, req: StopSandbox) -> Result<SandboxInfo, SandboxError> {
        self.stop_because(req, None).await
    }

    /// A stop the runner decided itself (the disk watchdog): `reason` goes with the `stopped` state change.
    pub(super) async fn stop_because(
        &self,
        req: StopSandbox,
        reason: Option<String>,
    ) -> Result<SandboxInfo, SandboxError> {
        let id = req.sandbox_id.as_str();
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let (state, container) = entry.state_and_container();
        match state {
            SandboxState::Stopped => return Ok(lock(&entry.info).clone()),
            SandboxState::Started | SandboxState::Error => {}
            // Frozen processes cannot run their SIGTERM handlers: thaw them, then stop as usual.
            SandboxState::Paused => super::fork::unpause_quietly(&self.docker, &container).await,
            state => return Err(SandboxError::InvalidState { id: id.into(), state, action: "stop" }),
        }
        self.set_state(&entry, SandboxState::Stopping, None, None);
        let result = if req.force {
            self.kill_and_wait(&container).await
        } else {
            let deadline = req.timeout_secs.map_or(self.config.stop_timeout, |s| Duration::from_secs(s.into()));
            let t = i32::try_from(deadline.as_secs()).unwrap_or(i32::MAX);
            let opts = StopContainerOptionsBuilder::default().t(t).build();
            match self.docker.stop_container(&container, Some(opts)).await {
                Err(e) if docker_status(&e) == Some(304) => Ok(()),
                r => r,
            }
        };
        match result {
            Ok(()) => {
                // Its address is free for other containers now.
                self.firewall.detach(&container).await;
                self.set_state(&entry, SandboxState::Stopped, reason, None);
                Ok(lock(&entry.info).clone())
            }
            Err(e) => {
                self.set_state(&entry, SandboxState::Error, Some(format!("stop failed: {e}")), None);
                Err(e.into())
            }
        }
    }

    async fn kill_and_wait(&self, container: &str) -> Result<(), bollard::errors::Error> {
        let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        match self.docker.kill_container(container, Some(kill)).await {
            // 409: not running.
            Err(e) if docker_status(&e) == Some(409) => return Ok(()),
            r => r?,
        }
        let wait = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut stream = self.docker.wait_container(container, Some(wait));
        match stream.next().await {
            // bollard reports a non-zero exit as an error; for a kill that is the expected outcome.
            None | Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) => return Err(e),
        }
        Ok(())
    }

    pub(super) async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let entry = match self.entry(id) {
            Ok(entry) => entry,
            // Not here: an archived sandbox (no container) still has its archive to delete.
            Err(not_found) => return self.destroy_archived(id, not_found).await,
        };
        let _op = entry.op.lock().await;
        let (container, image) = {
            let i = lock(&entry.info);
            (i.container_id.clone(), i.image.clone())
        };
        self.set_state(&entry, SandboxState::Destroying, None, None);
        if let Err(e) = self.remove_container(&container).await {
            self.set_state(&entry, SandboxState::Error, Some(format!("destroy failed: {e}")), None);
            return Err(e.into());
        }
        self.firewall.detach(&container).await;
        self.firewall.forget(id).await;
        lock(&self.sandboxes).remove(id);
        if entry.is_claimed() {
            self.save_claims()?;
        }
        self.forget_archive(id).await;
        // A fork's own image goes with it.
        super::fork::release_fork_image(&self.docker, &image).await;
        self.set_state(&entry, SandboxState::Destroyed, None, None);
        Ok(())
    }

    pub(super) async fn update_network(&self, req: UpdateSandboxNetwork) -> Result<SandboxInfo, SandboxError> {
        let entry = self.entry(&req.sandbox_id)?;
        let _op = entry.op.lock().await;
        self.firewall.update_policy(&req.sandbox_id, req.policy).await?;
        tracing::info!(sandbox_id = %req.sandbox_id, "network policy changed");
        Ok(lock(&entry.info).clone())
    }

    pub(super) async fn resize(&self, req: ResizeSandbox) -> Result<SandboxInfo, SandboxError> {
        let id = req.sandbox_id.as_str();
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let (state, container, current) = {
            let i = lock(&entry.info);
            (i.state, i.container_id.clone(), i.resources)
        };
        if !matches!(state, SandboxState::Started | SandboxState::Stopped) {
            return Err(SandboxError::InvalidState { id: id.into(), state, action: "resize" });
        }
        let wanted = Resources {
            cpu: req.cpu.unwrap_or(current.cpu),
            memory: req.memory.unwrap_or(current.memory),
            disk: req.disk.unwrap_or(current.disk),
        };
        self.validate_resources(&wanted)?;
        if wanted.disk != current.disk {
            let why = if self.host.disk_enforced {
                "changing an enforced disk limit needs the container recreated, which this runner does not do yet"
                    .to_owned()
            } else {
                format!(
                    "disk limits are not enforced on storage driver {}, so there is none to resize",
                    self.host.storage_driver
                )
            };
            return Err(SandboxError::InvalidRequest(why));
        }
        if wanted == current {
            return Ok(lock(&entry.info).clone());
        }
        let memory = i64::from(wanted.memory) * GIB;
        let update = ContainerUpdateBody {
            nano_cpus: Some(i64::from(wanted.cpu) * NANO),
            memory: Some(memory),
            memory_swap: Some(memory),
            ..Default::default()
        };
        self.docker.update_container(&container, update).await?;
        lock(&entry.info).resources = wanted;
        Ok(lock(&entry.info).clone())
    }
}

/// The daemon's ports published on the advertise address: toolbox and SSH (the web terminal is reached through
/// the toolbox).
/// How long a daemon may stay silent before [`Inner::wait_daemon`] looks for stale claims on its address (a daemon
/// answers within a few milliseconds of its start here; a second is far beyond a slow start).
const STALE_CLAIM_SWEEP_AFTER: Duration = Duration::from_secs(1);

const DAEMON_PUBLISHED: [u16; 2] = [ports::TOOLBOX, ports::SSH];

/// Docker's port bindings that publish [`DAEMON_PUBLISHED`] on `advertise`, each on a free port Docker picks.
fn published_daemon_ports(advertise: std::net::Ipv4Addr) -> bollard::models::PortMap {
    DAEMON_PUBLISHED
        .iter()
        .map(|p| {
            let binding =
                bollard::models::PortBinding { host_ip: Some(advertise.to_string()), host_port: Some(String::new()) };
            (format!("{p}/tcp"), Some(vec![binding]))
        })
        .collect()
}
