//! Docker as the source of truth: the sandbox table rebuilt from container labels when the runner starts
//! (half-created containers removed, claims and network policies read back, daemons probed), and Docker's event
//! stream (die, start, destroy, oom, unpause) followed to correct the state of sandboxes that changed outside an operation.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures_util::StreamExt;
use sandbar_proto::ports;
use sandbar_proto::runner::{Resources, SandboxInfo, SandboxSpecLabel, SandboxState, labels};
use sandbar_support::sync::lock;

use super::{ENV_SSH_HOST_KEY, ENV_TOKEN, Entry, GIB, Inner, NANO};
use crate::error::{StartupError, docker_status};
use crate::firewall;

impl Inner {
    /// Rebuilds the sandbox table from the containers labelled with this runner's ID.
    pub(super) async fn rebuild(self: &Arc<Self>) -> Result<(), StartupError> {
        self.thaw_fork_sources().await;
        let filters = HashMap::from([("label", vec![format!("{}={}", labels::RUNNER, self.config.runner_id)])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(opts)).await?;
        let mut claims = self.load_claims();
        let mut probes = Vec::new();
        let mut pool_candidates = Vec::new();
        let mut endpoints: HashMap<String, firewall::Endpoint> = HashMap::new();
        let mut release = Vec::new();
        for c in containers {
            let Some(cid) = c.id else { continue };
            let inspect = match self.docker.inspect_container(&cid, None).await {
                Ok(i) => i,
                Err(e) if docker_status(&e) == Some(404) => continue,
                Err(e) => return Err(e.into()),
            };
            let status = inspect.state.as_ref().and_then(|s| s.status);
            if status == Some(ContainerStateStatusEnum::CREATED) {
                // A create that was interrupted before its container started: nobody was told it exists.
                tracing::info!(container = %cid, "removing a container an interrupted create left behind");
                self.remove_container_quietly(&cid).await;
                continue;
            }
            let st = inspect.state.as_ref();
            if let Some(ep) = endpoint(&inspect).filter(|_| st.and_then(|s| s.running) == Some(true)) {
                endpoints.insert(cid.clone(), ep);
                // A signal would thaw a paused one; its daemon released the entrypoint before the pause anyway.
                if st.and_then(|s| s.paused) != Some(true) {
                    release.push(cid.clone());
                }
            }
            let Some(mut info) = info_from_container(
                &inspect,
                &self.config.runner_id,
                self.host.disk_enforced,
                self.config.advertise_addr,
            ) else {
                tracing::warn!(container = %cid, "container has our runner label but no usable sandbox labels; ignored");
                continue;
            };
            self.firewall.adopt_policy(&info.id, network_from_container(&inspect)).await;
            let pooled = inspect
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(labels::POOL))
                .is_some_and(|v| v == "1");
            let claimed = if pooled {
                match claims.remove(&cid) {
                    // Identity from the claim; what Docker knows better (state, address, live limits) from Docker.
                    Some(claim) => {
                        info = SandboxInfo {
                            container_id: info.container_id,
                            state: info.state,
                            error_reason: info.error_reason,
                            daemon_addr: info.daemon_addr,
                            ssh_addr: info.ssh_addr,
                            daemon_token: info.daemon_token,
                            daemon_host_key: info.daemon_host_key,
                            user: info.user,
                            image: info.image,
                            resources: Resources { disk: claim.resources.disk, ..info.resources },
                            runner_id: info.runner_id,
                            ..claim
                        };
                        true
                    }
                    None if info.state == SandboxState::Started => {
                        pool_candidates.push(info);
                        continue;
                    }
                    None => {
                        self.remove_container_quietly(&cid).await;
                        continue;
                    }
                }
            } else {
                false
            };
            let entry = Entry::new(info.clone(), claimed);
            lock(&self.sandboxes).insert(info.id.clone(), entry.clone());
            if info.state == SandboxState::Started {
                probes.push((entry, info));
            }
        }
        self.adopt_pool_members(pool_candidates).await;
        // Rules for every running container before anything else happens; stale chains go.
        let mut running: Vec<(String, String)> = {
            let entries: Vec<Arc<Entry>> = lock(&self.sandboxes).values().cloned().collect();
            entries
                .iter()
                .filter_map(|e| {
                    let i = lock(&e.info);
                    i.daemon_addr.as_ref()?;
                    Some((i.container_id.clone(), i.id.clone()))
                })
                .collect()
        };
        running.extend(self.pool_addrs().into_iter().map(|(c, _)| (c.clone(), format!("pool-{c}"))));
        let running: Vec<(String, String, firewall::Endpoint)> = running
            .into_iter()
            .filter_map(|(c, id)| {
                let ep = endpoints.remove(&c)?;
                Some((c, id, ep))
            })
            .collect();
        let known = lock(&self.sandboxes).keys().cloned().collect();
        self.firewall.reset(running, &known).await?;
        // A daemon may still hold its entrypoint if the runner stopped between a start and its rules.
        for c in &release {
            self.release_entrypoint(c).await;
        }
        // A running container whose daemon does not answer is not a working sandbox.
        let checks = probes.into_iter().map(|(entry, info)| {
            let inner = self.clone();
            async move {
                let addr = info.daemon_addr.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
                let ok = match addr {
                    Some(addr) => {
                        inner.daemon.version(addr, Duration::from_secs(2)).await.is_ok()
                            && (!entry.is_claimed() || inner.init_claimed(&entry, addr).await.is_ok())
                    }
                    None => false,
                };
                if !ok {
                    inner.set_state(
                        &entry,
                        SandboxState::Error,
                        Some("daemon not answering after runner restart".into()),
                        None,
                    );
                }
            }
        });
        futures_util::future::join_all(checks).await;
        tracing::info!(sandboxes = lock(&self.sandboxes).len(), "state rebuilt from Docker");
        Ok(())
    }

    /// Brings one sandbox's state in line with its container after a Docker event. Operations in progress own the
    /// state of their sandbox; this only corrects `started` sandboxes that died, `stopped`/`error` sandboxes that
    /// were started from outside, and containers removed from outside.
    async fn reconcile(self: &Arc<Self>, id: &str) {
        let Ok(entry) = self.entry(id) else { return };
        let (state, container) = entry.state_and_container();
        if container.is_empty() {
            return;
        }
        let inspect = match self.docker.inspect_container(&container, None).await {
            Ok(i) => i,
            Err(e) if docker_status(&e) == Some(404) => {
                if matches!(state, SandboxState::Started | SandboxState::Stopped | SandboxState::Error) {
                    self.firewall.detach(&container).await;
                    self.firewall.forget(id).await;
                    lock(&self.sandboxes).remove(id);
                    if entry.is_claimed()
                        && let Err(e) = self.save_claims()
                    {
                        tracing::warn!(sandbox_id = %id, error = %e, "cannot save claims");
                    }
                    self.set_state(
                        &entry,
                        SandboxState::Destroyed,
                        Some("container removed outside the runner".into()),
                        None,
                    );
                }
                return;
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, error = %e, "cannot inspect container after an event");
                return;
            }
        };
        let s = inspect.state.clone().unwrap_or_default();
        let running = s.running == Some(true);
        if !running {
            let code = s.exit_code.unwrap_or(-1);
            let oom = s.oom_killed == Some(true);
            // Re-check under the lock: an operation may have begun while Docker was answering.
            let died = lock(&entry.info).state == SandboxState::Started;
            if died {
                self.firewall.detach(&container).await;
                let new = if oom || code != 0 { SandboxState::Error } else { SandboxState::Stopped };
                let reason = format!("the sandbox's container stopped: {}", exit_reason(code, oom));
                self.set_state(&entry, new, Some(reason), Some((code, oom)));
            }
            return;
        }
        if s.paused == Some(true) {
            // Frozen (a user's pause, or Docker's own pause for a commit): nothing to correct until it thaws.
            return;
        }
        if state == SandboxState::Paused {
            // Thawed outside a resume: Docker's pause for a commit ended (the runner restarted during a fork or
            // snapshot, and its table was rebuilt while the container was frozen), or a `docker unpause`. It is the
            // started sandbox it was; a resume in progress owns the state instead.
            let Ok(_op) = entry.op.clone().try_lock_owned() else { return };
            if lock(&entry.info).state != SandboxState::Paused {
                return;
            }
            if let Some((addr, ssh)) = daemon_addrs(&inspect, self.config.advertise_addr) {
                {
                    let mut info = lock(&entry.info);
                    (info.daemon_addr, info.ssh_addr) = (Some(addr), ssh);
                }
                self.set_state(&entry, SandboxState::Started, None, None);
            }
            return;
        }
        if state == SandboxState::Started
            && let Some(ep) = endpoint(&inspect)
        {
            // Restarted from outside faster than the events were handled: the address and the bridge port may
            // have changed (a no-op for the firewall when neither did), and the daemon holds the entrypoint.
            let addrs = daemon_addrs(&inspect, self.config.advertise_addr);
            match self.firewall.attach(&container, id, ep).await {
                Ok(()) => {
                    {
                        let mut info = lock(&entry.info);
                        (info.daemon_addr, info.ssh_addr) = addrs.map_or((None, None), |(a, s)| (Some(a), s));
                    }
                    self.release_entrypoint(&container).await;
                }
                Err(e) => tracing::error!(sandbox_id = %id, error = %e, "cannot re-hook network rules"),
            }
            return;
        }
        if matches!(state, SandboxState::Stopped | SandboxState::Error) {
            // Started from outside (`docker start`): adopt it once its daemon answers, unless an operation is busy.
            let Ok(_op) = entry.op.clone().try_lock_owned() else { return };
            if !matches!(lock(&entry.info).state, SandboxState::Stopped | SandboxState::Error) {
                return;
            }
            let Some(ep) = endpoint(&inspect) else { return };
            let addr = SocketAddr::new(ep.ip, ports::TOOLBOX);
            if let Err(e) = self.firewall.attach(&container, id, ep).await {
                tracing::error!(sandbox_id = %id, error = %e, "started outside the runner, but its network rules failed");
                return;
            }
            let ready = self.wait_daemon(id, &container, addr).await.is_ok()
                && (!entry.is_claimed() || self.init_claimed(&entry, addr).await.is_ok());
            if ready {
                self.release_entrypoint(&container).await;
                let addrs = daemon_addrs(&inspect, self.config.advertise_addr);
                {
                    let mut info = lock(&entry.info);
                    (info.daemon_addr, info.ssh_addr) = addrs.map_or((None, None), |(a, s)| (Some(a), s));
                }
                self.set_state(&entry, SandboxState::Started, Some("started outside the runner".into()), None);
            }
        }
    }
}

/// Follows Docker's container events for this runner's containers until the runner is dropped. On a broken
/// stream it reconnects from the last event's time and reconciles every sandbox, since events may have been lost.
pub(super) async fn watch_events(weak: Weak<Inner>, mut since: i64) {
    let mut resync = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if resync {
            let ids: Vec<String> = lock(&inner.sandboxes).keys().cloned().collect();
            for id in ids {
                inner.reconcile(&id).await;
            }
        }
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![format!("{}={}", labels::RUNNER, inner.config.runner_id)]),
            ("event", ["die", "start", "destroy", "oom", "unpause"].map(String::from).to_vec()),
        ]);
        let opts = EventsOptionsBuilder::default().since(&since.to_string()).filters(&filters).build();
        let mut stream = Box::pin(inner.docker.events(Some(opts)));
        drop(inner);
        while let Some(item) = stream.next().await {
            let ev = match item {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "Docker event stream failed; reconnecting");
                    break;
                }
            };
            if let Some(t) = ev.time {
                since = since.max(t);
            }
            let Some(inner) = weak.upgrade() else { return };
            let action = ev.action.clone().unwrap_or_default();
            let container = ev.actor.and_then(|a| a.id).unwrap_or_default();
            // Claimed pool containers carry the pool's labels, so find the sandbox by container ID.
            let Some(id) = inner.sandbox_of_container(&container) else {
                if inner.is_pool_member(&container) && action != "start" {
                    tokio::spawn(async move { inner.drop_pool_member(&container).await });
                }
                continue;
            };
            tracing::debug!(sandbox_id = %id, action = %action, "Docker event");
            if action == "oom" {
                tracing::warn!(sandbox_id = %id, "sandbox hit its memory limit (OOM kill)");
            }
            // Reconciling can wait for a daemon; do it beside the stream so other events are not held up.
            tokio::spawn(async move { inner.reconcile(&id).await });
        }
        resync = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Where a running container sits on the network, for its firewall rules: its address, MAC and main PID.
pub(crate) fn endpoint(inspect: &ContainerInspectResponse) -> Option<firewall::Endpoint> {
    let ip = container_ip(inspect)?;
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let mac = networks
        .values()
        .find(|n| n.ip_address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) == Some(ip))
        .and_then(|n| n.mac_address.clone())
        .filter(|m| !m.is_empty());
    let pid = inspect.state.as_ref().and_then(|s| s.pid).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
    Some(firewall::Endpoint { ip, mac, pid })
}

/// Where the API is told a running container's daemon answers: `(toolbox, ssh)`. Without an advertise address,
/// its bridge address on the toolbox port, and no SSH address (the API derives it). With one, the ports Docker
/// published for the daemon's toolbox and SSH ports on that address; `None` when either is missing (a container
/// made before the runner had the option: only its own host reaches it, so it is reported unreachable).
pub(crate) fn daemon_addrs(
    inspect: &ContainerInspectResponse,
    advertise: Option<std::net::Ipv4Addr>,
) -> Option<(String, Option<String>)> {
    let Some(adv) = advertise else {
        return container_ip(inspect).map(|ip| (SocketAddr::new(ip, ports::TOOLBOX).to_string(), None));
    };
    let published = inspect.network_settings.as_ref()?.ports.as_ref()?;
    let port = |container_port: u16| {
        published.get(&format!("{container_port}/tcp"))?.as_ref()?.iter().find_map(|b| {
            let on: std::net::Ipv4Addr = b.host_ip.as_deref()?.parse().ok()?;
            let port: u16 = b.host_port.as_deref()?.parse().ok()?;
            (on == adv && port != 0).then(|| SocketAddr::new(IpAddr::V4(adv), port).to_string())
        })
    };
    Some((port(ports::TOOLBOX)?, Some(port(ports::SSH)?)))
}

pub(crate) fn container_ip(inspect: &ContainerInspectResponse) -> Option<IpAddr> {
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<_> = networks.keys().collect();
    names.sort();
    names.into_iter().find_map(|n| networks.get(n)?.ip_address.as_deref().filter(|ip| !ip.is_empty())?.parse().ok())
}

/// Whether any of the container's networks gave it an IPv6 address, which the IPv4 rules would not cover.
pub(super) fn has_ipv6(inspect: &ContainerInspectResponse) -> bool {
    let networks = inspect.network_settings.as_ref().and_then(|n| n.networks.as_ref());
    networks.is_some_and(|n| n.values().any(|e| e.global_ipv6_address.as_deref().is_some_and(|a| !a.is_empty())))
}

/// The network policy and link a container was created with (its spec label).
fn network_from_container(c: &ContainerInspectResponse) -> firewall::Stored {
    let spec = c
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(labels::SPEC))
        .and_then(|s| serde_json::from_str::<SandboxSpecLabel>(s).ok())
        .unwrap_or_default();
    firewall::Stored { policy: spec.network, linked_sandbox: spec.linked_sandbox }
}

/// How a container's main process ended, in words.
pub(super) fn exit_reason(code: i64, oom: bool) -> String {
    if oom {
        return format!("killed for running out of memory (OOM), exit code {code}");
    }
    match code {
        // The daemon exits 0 only after draining on SIGTERM: Docker stopped the container (`docker stop`, the
        // engine shutting down), not the sandbox's own doing.
        0 => "stopped from outside the runner (the daemon drained on SIGTERM and exited with code 0)".into(),
        129..=192 => {
            let sig = code - 128;
            let name = match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                6 => " (SIGABRT)",
                11 => " (SIGSEGV)",
                2 => " (SIGINT)",
                _ => "",
            };
            format!("killed by signal {sig}{name}, exit code {code}")
        }
        c => format!("exited with code {c}"),
    }
}

/// A sandbox as its container describes it (for a restarted runner).
fn info_from_container(
    c: &ContainerInspectResponse,
    runner_id: &str,
    disk_enforced: bool,
    advertise: Option<std::net::Ipv4Addr>,
) -> Option<SandboxInfo> {
    let config = c.config.as_ref()?;
    let container_labels = config.labels.as_ref()?;
    let id = container_labels.get(labels::SANDBOX_ID)?.clone();
    let spec: SandboxSpecLabel = container_labels
        .get(labels::SPEC)
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| tracing::warn!(sandbox_id = %id, error = %e, "bad spec label")).ok()
        })
        .unwrap_or_default();
    let all_env: BTreeMap<&str, &str> = config.env.iter().flatten().filter_map(|kv| kv.split_once('=')).collect();
    let daemon_token = all_env.get(ENV_TOKEN)?.to_string();
    // A container made before runners handed out host keys has none: the gateway then refuses SSH to it.
    let daemon_host_key = all_env.get(ENV_SSH_HOST_KEY).and_then(|k| super::daemon::host_key_public(k));
    let env = spec.env_keys.iter().filter_map(|k| Some((k.clone(), all_env.get(k.as_str())?.to_string()))).collect();
    let hc = c.host_config.as_ref();
    let cpu = hc.and_then(|h| h.nano_cpus).map_or(0, |n| (n + NANO / 2) / NANO);
    let memory = hc.and_then(|h| h.memory).map_or(0, |m| (m + GIB / 2) / GIB);
    let s = c.state.clone().unwrap_or_default();
    let running = s.running == Some(true);
    let oom = s.oom_killed == Some(true);
    let code = s.exit_code.unwrap_or(0);
    let (state, error_reason) = match s.status {
        Some(ContainerStateStatusEnum::PAUSED) => (SandboxState::Paused, None),
        _ if running => (SandboxState::Started, None),
        // A restarted runner cannot tell a requested stop from a crash except by OOM: report the exit either way.
        _ if oom => (SandboxState::Error, Some(exit_reason(code, true))),
        _ if code != 0 => (SandboxState::Stopped, Some(exit_reason(code, false))),
        _ => (SandboxState::Stopped, None),
    };
    let (daemon_addr, ssh_addr) = match daemon_addrs(c, advertise).filter(|_| running) {
        Some((toolbox, ssh)) => (Some(toolbox), ssh),
        None => (None, None),
    };
    Some(SandboxInfo {
        id,
        name: container_labels.get(labels::NAME).filter(|n| !n.is_empty()).cloned(),
        organization_id: container_labels.get(labels::ORG).cloned().unwrap_or_default(),
        runner_id: runner_id.to_owned(),
        container_id: c.id.clone().unwrap_or_default(),
        image: config.image.clone().unwrap_or_default(),
        state,
        error_reason,
        resources: Resources {
            cpu: u32::try_from(cpu).unwrap_or(0),
            memory: u32::try_from(memory).unwrap_or(0),
            disk: spec.disk,
        },
        disk_enforced,
        daemon_addr,
        ssh_addr,
        daemon_token,
        daemon_host_key,
        user: config.user.clone().filter(|u| !u.is_empty()),
        env,
        labels: spec.labels,
        auto: spec.auto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ENV_SANDBOX_ID;
    use bollard::models::{ContainerConfig, ContainerState, EndpointSettings, HostConfig, NetworkSettings};

    #[test]
    fn exit_reasons_name_signals_and_oom() {
        assert_eq!(exit_reason(137, false), "killed by signal 9 (SIGKILL), exit code 137");
        assert!(exit_reason(137, true).contains("OOM"));
        assert_eq!(exit_reason(3, false), "exited with code 3");
        assert!(exit_reason(0, false).contains("stopped from outside the runner"));
    }

    /// One host key for every container of these tests.
    fn host_key() -> &'static sandbar_support::ssh::HostKeyText {
        static KEY: std::sync::OnceLock<sandbar_support::ssh::HostKeyText> = std::sync::OnceLock::new();
        KEY.get_or_init(|| crate::host::daemon::new_host_key().unwrap())
    }

    fn container(running: bool, exit: i64, oom: bool) -> ContainerInspectResponse {
        let spec = SandboxSpecLabel {
            labels: BTreeMap::from([("team".into(), "a".into())]),
            disk: 5,
            auto: Default::default(),
            env_keys: vec!["FOO".into()],
            network: Default::default(),
            linked_sandbox: None,
        };
        ContainerInspectResponse {
            id: Some("cid".into()),
            config: Some(ContainerConfig {
                image: Some("img:1".into()),
                user: Some("sandbar".into()),
                env: Some(vec![
                    "FOO=bar=baz".into(),
                    "PATH=/bin".into(),
                    format!("{ENV_TOKEN}=tok"),
                    format!("{ENV_SSH_HOST_KEY}={}", host_key().private),
                    format!("{ENV_SANDBOX_ID}=s1"),
                ]),
                labels: Some(HashMap::from([
                    (labels::SANDBOX_ID.into(), "s1".into()),
                    (labels::ORG.into(), "org".into()),
                    (labels::NAME.into(), "nice".into()),
                    (labels::SPEC.into(), serde_json::to_string(&spec).unwrap()),
                ])),
                ..Default::default()
            }),
            host_config: Some(HostConfig { nano_cpus: Some(2 * NANO), memory: Some(3 * GIB), ..Default::default() }),
            state: Some(ContainerState {
                running: Some(running),
                exit_code: Some(exit),
                oom_killed: Some(oom),
                status: Some(if running {
                    ContainerStateStatusEnum::RUNNING
                } else {
                    ContainerStateStatusEnum::EXITED
                }),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([(
                    "bridge".into(),
                    EndpointSettings { ip_address: Some("172.17.0.9".into()), ..Default::default() },
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rebuilds_info_from_a_container() {
        let info = info_from_container(&container(true, 0, false), "r1", false, None).unwrap();
        assert_eq!(info.id, "s1");
        assert_eq!(info.name.as_deref(), Some("nice"));
        assert_eq!(info.organization_id, "org");
        assert_eq!(info.daemon_token, "tok");
        assert_eq!(info.daemon_host_key.as_deref(), Some(host_key().public.as_str()), "the key is recovered");
        assert_eq!(info.env, BTreeMap::from([("FOO".into(), "bar=baz".into())]));
        assert_eq!(info.resources, Resources { cpu: 2, memory: 3, disk: 5 });
        assert_eq!(info.state, SandboxState::Started);
        assert_eq!(info.daemon_addr.as_deref(), Some("172.17.0.9:2280"));
        assert_eq!(info.labels.get("team").map(String::as_str), Some("a"));

        let stopped = info_from_container(&container(false, 0, false), "r1", false, None).unwrap();
        assert_eq!((stopped.state, stopped.daemon_addr, stopped.error_reason), (SandboxState::Stopped, None, None));
        let oom = info_from_container(&container(false, 137, true), "r1", false, None).unwrap();
        assert_eq!(oom.state, SandboxState::Error);
    }

    #[test]
    fn an_advertised_runner_reports_the_published_ports() {
        use bollard::models::PortBinding;
        let adv: std::net::Ipv4Addr = "192.0.2.7".parse().unwrap();
        let mut c = container(true, 0, false);
        // Not published yet (a container made before --advertise-addr): no address the API could use.
        assert_eq!(daemon_addrs(&c, Some(adv)), None);
        let bind = |ip: &str, port: &str| PortBinding { host_ip: Some(ip.into()), host_port: Some(port.into()) };
        if let Some(n) = c.network_settings.as_mut() {
            n.ports = Some(HashMap::from([
                ("2280/tcp".into(), Some(vec![bind("0.0.0.0", "1"), bind("192.0.2.7", "49153")])),
                ("22220/tcp".into(), Some(vec![bind("192.0.2.7", "49154")])),
            ]));
        }
        assert_eq!(daemon_addrs(&c, Some(adv)), Some(("192.0.2.7:49153".into(), Some("192.0.2.7:49154".into()))));
        let info = info_from_container(&c, "r1", false, Some(adv)).unwrap();
        assert_eq!(
            (info.daemon_addr.as_deref(), info.ssh_addr.as_deref()),
            (Some("192.0.2.7:49153"), Some("192.0.2.7:49154"))
        );
        // Without the option, the bridge address, as on one host.
        assert_eq!(daemon_addrs(&c, None), Some(("172.17.0.9:2280".into(), None)));
        // Published on another address only: not reachable where the runner said.
        assert_eq!(daemon_addrs(&c, Some("192.0.2.8".parse().unwrap())), None);
    }

    #[test]
    fn a_container_without_a_token_is_not_a_sandbox() {
        let mut c = container(true, 0, false);
        if let Some(cfg) = c.config.as_mut() {
            cfg.env = Some(vec![]);
        }
        assert!(info_from_container(&c, "r1", false, None).is_none());
    }
}
