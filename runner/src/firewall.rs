//! Network isolation and egress rules: each sandbox may send only from its own address and MAC on its own bridge
//! port, reaches no other sandbox (unless linked), never the host, loopback, link-local (cloud metadata) or the
//! ranges the operator denies, and beyond that its egress is unrestricted, blocked, or limited to an allow list of
//! IPv4 CIDRs.
//!
//! Two layers, each written whole in one transaction per change:
//!
//! - **The bridge** (`bridge`: one nftables table of family `bridge` per runner, `sandbar_<runner hex>`): at
//!   prerouting, before the bridge learns a MAC or decides where a frame goes, a frame from a sandbox's port must
//!   carry its MAC, and IPv4 or ARP with its address; anything else from that port (IPv6 included, link-local too) is
//!   dropped, and so is its MAC, IP or ARP address coming from any other port. This is what stops spoofed sources,
//!   ARP poisoning of the host's neighbour table and forged MACs stealing a neighbour's frames.
//! - **IP** (`rules`: iptables chains in the filter table of the backend that holds Docker's `DOCKER-USER` chain; on
//!   a host where `iptables` is nf_tables and legacy tables also exist, Docker's chains, and so the traffic they see,
//!   are in nf_tables; a runner on a legacy host finds them there). Per runner:
//!
//! ```text
//! DOCKER-USER -> SANDBAR-<runner>            (forwarded: to other containers, other hosts)
//! INPUT       -> SANDBAR-<runner>            (to the host itself: its addresses, published ports)
//! SANDBAR-<runner>:
//!     -m physdev --physdev-in <port> -j SANDBAR-<runner>-<sandbox>   egress, by bridge port, one per sandbox
//!     -s <sandbox ip> ! --physdev-in <its port> -> DROP               its address from elsewhere is forged
//!     -d <sandbox ip> -j SANDBAR-<runner>-<in:sandbox>               what may come in to it
//! SANDBAR-<runner>-<sandbox>:
//!     ! -s <sandbox ip>                       -> DROP     its port, not its address
//!     ctstate ESTABLISHED,RELATED ctdir REPLY -> RETURN   replies to connections others opened to it
//!     -d <linked sandbox ip>                  -> RETURN   links, both ways
//!     -> SANDBAR-<runner>-ISO                             the floor, then every running sandbox of this runner
//!     policy: nothing (unrestricted) | -d <cidr> -> RETURN ... then DENY | DENY
//! SANDBAR-<runner>-<in:sandbox>: replies -> RETURN, linked sandboxes -> RETURN, else DENY (other runners' sandboxes
//!     and plain containers cannot open connections to it)
//! SANDBAR-<runner>-ISO (the floor): DNS to Docker's resolvers -> RETURN; 169.254.0.0/16, 127.0.0.0/8, addrtype
//!     LOCAL/BROADCAST/MULTICAST (every address of the host: API, runner, proxy metrics, PostgreSQL, whatever
//!     listens), `--deny-cidr` ranges -> DENY; then each running sandbox of this runner -> DENY
//! SANDBAR-<runner>-DENY: TCP -> REJECT tcp-reset, else REJECT icmp-admin-prohibited
//! ```
//!
//! Only packets *from* a bridge port or *to* a sandbox are matched, so the host's own connections to a sandbox (the
//! runner and proxy reaching its daemon) are never filtered: they leave through OUTPUT and their replies come back
//! through INPUT as `ctdir REPLY`. Packets a sandbox sends on connections it opened are checked one by one rather
//! than accepted as `ESTABLISHED`, so tightening the policy cuts connections already open. Sandboxes on one bridge
//! reach each other through FORWARD only when `net.bridge.bridge-nf-call-iptables` is 1: the runner sets it (as
//! Docker does when it needs it) and refuses to start if bridged traffic cannot be filtered. The floor's DNS
//! exception covers the resolvers the default bridge hands containers (the host's `/etc/resolv.conf`, or
//! systemd-resolved's upstreams): they are often on the LAN the operator denies.
//!
//! A sandbox's port is found from its container's network namespace (its `eth0@ifN` names the host end of the
//! veth). Ports belong to sandboxes of many runners and to other containers on a shared bridge, so a runner drops
//! what comes from its own sandboxes' ports and addresses only; on a bridge of its own (`--docker-network`) nothing
//! else is there.
//!
//! **Before the entrypoint runs**: a sandbox's daemon starts, but holds the image's entrypoint until the runner
//! sends it SIGUSR2 (`SANDBAR_ENTRYPOINT_GATE`), which the runner does once the rules are in and the daemon answers.
//! Until then only our daemon runs in the container and it sends nothing of its own. This was picked over fixed
//! addresses on a user-defined network (rules written before `docker start`) because Docker's default bridge cannot
//! pre-assign addresses, the veth (which the bridge rules need) exists only after start anyway, and the gate works
//! on every network, runtime and restart path.
//!
//! Every change rewrites this runner's chains in one `iptables-restore --noflush` transaction and its bridge table
//! (only when it changed: a policy change or a warm-pool claim keeps it) in one `nft -f` transaction, so the kernel
//! never sees half a policy, a failed change leaves the previous rules whole, and a sandbox whose address or port
//! changed (a restart) is re-bound by the same rewrite. Right after each write, in a task of its own so the change
//! does not wait, the runner reads both back (`iptables -S`, `nft list table`) and keeps what it read; a
//! **reconciler** compares them every `--firewall-recheck-secs` (5 s) and rewrites everything, hooks included, when
//! anything differs or is gone (an `iptables -F`, a firewall reload, a deleted table). It checks that the hooks are
//! there, not that they come first in `DOCKER-USER`/`INPUT`. Policies live in memory, in the container's spec label (the policy
//! at creation) and in `<state_dir>/network.json` (changes since), so a restarted runner rebuilds the same rules and
//! removes chains of sandboxes that are gone. Sandboxes get no IPv6 address (a network with IPv6 is refused); the
//! bridge layer drops every IPv6 frame from their ports.
//!
//! Here: the firewall's state and its changes (this file), the iptables rules (`rules`), the bridge rules and port
//! lookup (`bridge`), the iptables binaries (`iptables`). Nothing else in the runner runs iptables or nft; the host
//! layer calls `Firewall` when a container gets or loses its address. Rules outlive a stopped runner on purpose
//! (sandboxes keep running); test guards remove theirs with [`purge_blocking`]. Flags: `--network-rules false` (no
//! rules; creates asking for a policy or a link fail), `--iptables BIN`, `--deny-cidr CIDR` (repeatable) and
//! `--firewall-recheck-secs N`.

mod bridge;
mod iptables;
mod rules;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sandbar_proto::network::{Ipv4Cidr, NetworkPolicy};
use serde::{Deserialize, Serialize};

use crate::config::RunnerConfig;
use crate::error::SandboxError;
pub use bridge::bridge_table;
pub use iptables::purge_blocking;
use iptables::{BRIDGE_NF, HOOKS, Iptables, ensure_bridge_filtering};
use rules::{Floor, deny_chain, isolation_chain, render};
pub use rules::{chain_prefix, sandbox_chain};

/// Why network rules could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The policy is invalid.
    #[error("invalid network policy: {0}")]
    Invalid(String),
    /// The host cannot enforce rules (no iptables, no DOCKER-USER chain, bridged traffic bypasses iptables).
    #[error("network rules unavailable: {0}")]
    Unavailable(String),
    /// An iptables command failed.
    #[error("{command} failed: {reason}")]
    Command { command: String, reason: String },
    /// The policy file could not be written.
    #[error("network policy file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl From<NetworkError> for SandboxError {
    fn from(e: NetworkError) -> Self {
        match e {
            NetworkError::Invalid(m) => SandboxError::InvalidRequest(m),
            e => SandboxError::Internal(format!("network rules: {e}")),
        }
    }
}

/// A sandbox's policy and link, as kept in memory and in `network.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Stored {
    #[serde(default, flatten)]
    pub policy: NetworkPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_sandbox: Option<String>,
}

impl Stored {
    fn is_default(&self) -> bool {
        self.policy.is_unrestricted() && self.linked_sandbox.is_none()
    }
}

/// Where a container sits on the network, as the host layer learns it from Docker: its IPv4 address, the MAC
/// Docker gave it and the PID of its main process (whose network namespace names its bridge port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub ip: IpAddr,
    pub mac: Option<String>,
    pub pid: Option<u32>,
}

/// A running container that has rules.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    sandbox_id: String,
    ip: Ipv4Addr,
    /// The host end of its veth (empty when rules are off).
    port: String,
    /// Its MAC, lowercase (empty when rules are off).
    mac: String,
}

/// What the kernel held right after the last write, as read back: the reconciler's reference.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    iptables: String,
    bridge: String,
}

#[derive(Debug, Default)]
struct State {
    policies: BTreeMap<String, Stored>,
    /// Container ID -> the sandbox it serves and where it sits.
    attached: BTreeMap<String, Attached>,
    /// Sandbox chains in the kernel (besides the top and isolation chains).
    installed: BTreeSet<String>,
    /// `None` from a write until it has been read back.
    written: Option<Written>,
    /// The hooks were seen in place since the runner started (or the reconciler last rewrote everything).
    hooked: bool,
    /// The bridge table as last written (rewritten only when it changes: a policy change or a claim keeps it).
    bridge_text: String,
}

/// This runner's rules. Every change goes through one lock, so rewrites never interleave.
#[derive(Debug)]
pub(crate) struct Firewall {
    ipt: Option<Iptables>,
    prefix: String,
    table: String,
    floor: Floor,
    recheck: Duration,
    state_file: Option<PathBuf>,
    state: Arc<tokio::sync::Mutex<State>>,
}

impl Firewall {
    /// Finds the backend and checks the host (when rules are enabled) and loads the stored policies.
    pub(crate) async fn new(config: &RunnerConfig) -> Result<Self, NetworkError> {
        let deny = config
            .deny_cidrs
            .iter()
            .map(|c| c.parse::<Ipv4Cidr>().map_err(|e| NetworkError::Invalid(format!("--deny-cidr: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let ipt = if config.network_rules {
            let ipt = Iptables::detect(config.iptables.as_deref()).await?;
            ensure_bridge_filtering(Path::new(BRIDGE_NF))?;
            bridge::nft(&["list", "tables"], None).await.map_err(|e| {
                NetworkError::Unavailable(format!("nftables is needed for the bridge rules (install nftables): {e}"))
            })?;
            tracing::info!(iptables = %ipt.iptables, "network rules enabled");
            Some(ipt)
        } else {
            tracing::warn!("network rules disabled: sandboxes are not isolated from each other");
            None
        };
        let state_file = config.state_dir.as_ref().map(|d| d.join("network.json"));
        let policies = match &state_file {
            Some(path) => load(path)?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            ipt,
            prefix: chain_prefix(&config.runner_id),
            table: bridge_table(&config.runner_id),
            floor: Floor { deny, resolvers: docker_resolvers() },
            recheck: config.firewall_recheck,
            state_file,
            state: Arc::new(tokio::sync::Mutex::new(State { policies, ..Default::default() })),
        })
    }

    /// Whether rules are enforced (and so worth re-checking).
    pub(crate) fn enabled(&self) -> bool {
        self.ipt.is_some()
    }

    /// How often [`Self::reconcile`] should run.
    pub(crate) fn recheck_interval(&self) -> Duration {
        self.recheck
    }

    /// The sandbox's policy and link.
    pub(crate) async fn policy(&self, sandbox_id: &str) -> (NetworkPolicy, Option<String>) {
        let s = self.state.lock().await;
        let p = s.policies.get(sandbox_id).cloned().unwrap_or_default();
        (p.policy, p.linked_sandbox)
    }

    fn check(&self, stored: &Stored) -> Result<(), NetworkError> {
        stored.policy.allowed().map_err(NetworkError::Invalid)?;
        if self.ipt.is_none() && !stored.is_default() {
            return Err(NetworkError::Unavailable(
                "this runner runs without network rules, so it cannot restrict egress or link sandboxes".into(),
            ));
        }
        Ok(())
    }

    /// Records the policy of a sandbox about to be created (applied when it gets an address).
    pub(crate) async fn set_policy(
        &self,
        sandbox_id: &str,
        policy: NetworkPolicy,
        linked_sandbox: Option<String>,
    ) -> Result<(), NetworkError> {
        let stored = Stored { policy, linked_sandbox };
        self.check(&stored)?;
        let mut s = self.state.lock().await;
        let before = s.policies.insert(sandbox_id.to_owned(), stored.clone());
        // Unrestricted and unlinked is what a missing entry means: no file write on the common path.
        if before.is_some() || !stored.is_default() {
            self.save(&s.policies)?;
        }
        Ok(())
    }

    /// A policy read back from a container's label after a restart; the state file, holding later changes, wins.
    pub(crate) async fn adopt_policy(&self, sandbox_id: &str, stored: Stored) {
        self.state.lock().await.policies.entry(sandbox_id.to_owned()).or_insert(stored);
    }

    /// Changes a sandbox's policy (keeping its link); applied at once when it runs. Without a state dir the
    /// change could not survive a runner restart, so it is refused rather than silently lost.
    pub(crate) async fn update_policy(&self, sandbox_id: &str, policy: NetworkPolicy) -> Result<(), NetworkError> {
        let mut s = self.state.lock().await;
        let mut stored = s.policies.get(sandbox_id).cloned().unwrap_or_default();
        stored.policy = policy;
        self.check(&stored)?;
        if self.state_file.is_none() {
            return Err(NetworkError::Unavailable(
                "changing a network policy needs a runner state dir (--runner-state-dir) so it survives restarts"
                    .into(),
            ));
        }
        let mut policies = s.policies.clone();
        policies.insert(sandbox_id.to_owned(), stored);
        if s.attached.values().any(|a| a.sandbox_id == sandbox_id) {
            let attached = s.attached.clone();
            self.sync(&mut s, policies, attached).await?;
        } else {
            s.policies = policies;
        }
        self.save(&s.policies)
    }

    /// Gives a running container the rules of `sandbox_id` at its endpoint (replacing what it had: a restart with a
    /// new address or port).
    pub(crate) async fn attach(
        &self,
        container_id: &str,
        sandbox_id: &str,
        endpoint: Endpoint,
    ) -> Result<(), NetworkError> {
        let IpAddr::V4(ip) = endpoint.ip else {
            return Err(NetworkError::Invalid(format!(
                "sandbox {sandbox_id} has the IPv6 address {}; egress rules are IPv4 only",
                endpoint.ip
            )));
        };
        let (port, mac) = match &self.ipt {
            Some(_) => self.locate(sandbox_id, &endpoint).await?,
            None => (String::new(), String::new()),
        };
        let new = Attached { sandbox_id: sandbox_id.to_owned(), ip, port, mac };
        let mut s = self.state.lock().await;
        if s.attached.get(container_id) == Some(&new) {
            return Ok(());
        }
        let mut attached = s.attached.clone();
        attached.retain(|c, a| c != container_id && a.ip != ip && (new.port.is_empty() || a.port != new.port));
        attached.insert(container_id.to_owned(), new);
        let policies = s.policies.clone();
        self.sync(&mut s, policies, attached).await
    }

    /// Gives an attached container (a claimed warm-pool member) the rules of another sandbox, on the same port.
    pub(crate) async fn reassign(&self, container_id: &str, sandbox_id: &str) -> Result<(), NetworkError> {
        let mut s = self.state.lock().await;
        let mut attached = s.attached.clone();
        let Some(a) = attached.get_mut(container_id) else {
            return Err(NetworkError::Invalid(format!("container {container_id} has no network rules to hand over")));
        };
        a.sandbox_id = sandbox_id.to_owned();
        let policies = s.policies.clone();
        self.sync(&mut s, policies, attached).await
    }

    /// The bridge port and MAC of a container.
    async fn locate(&self, sandbox_id: &str, endpoint: &Endpoint) -> Result<(String, String), NetworkError> {
        let unavailable = |why: String| {
            NetworkError::Unavailable(format!("cannot bind the rules of sandbox {sandbox_id} to its interface: {why}"))
        };
        let pid = endpoint.pid.filter(|p| *p > 0).ok_or_else(|| unavailable("its container is not running".into()))?;
        let wanted = endpoint.mac.as_deref().filter(|m| !m.is_empty()).map(str::to_ascii_lowercase);
        let (port, mac) = bridge::host_port(pid, wanted.as_deref()).await.map_err(|e| unavailable(e.to_string()))?;
        if !bridge::valid_port(&port) || !bridge::valid_mac(&mac) {
            return Err(unavailable(format!("unexpected interface {port:?} or MAC {mac:?}")));
        }
        Ok((port, mac))
    }

    /// Removes the rules of a container that stopped or is gone. Failures are logged: the next change retries.
    pub(crate) async fn detach(&self, container_id: &str) {
        let mut s = self.state.lock().await;
        if !s.attached.contains_key(container_id) {
            return;
        }
        let mut attached = s.attached.clone();
        attached.remove(container_id);
        let policies = s.policies.clone();
        if let Err(e) = self.sync(&mut s, policies, attached.clone()).await {
            tracing::error!(container = container_id, error = %e, "cannot remove network rules; retried on the next change");
            s.attached = attached;
        }
    }

    /// Removes the rules of whatever container serves `sandbox_id`.
    pub(crate) async fn detach_sandbox(&self, sandbox_id: &str) {
        let containers: Vec<String> = {
            let s = self.state.lock().await;
            s.attached.iter().filter(|(_, a)| a.sandbox_id == sandbox_id).map(|(c, _)| c.clone()).collect()
        };
        for c in containers {
            self.detach(&c).await;
        }
    }

    /// Forgets a destroyed sandbox's policy.
    pub(crate) async fn forget(&self, sandbox_id: &str) {
        let mut s = self.state.lock().await;
        if s.policies.remove(sandbox_id).is_some_and(|p| !p.is_default())
            && let Err(e) = self.save(&s.policies)
        {
            tracing::warn!(sandbox_id, error = %e, "cannot save network policies");
        }
    }

    /// After a runner (re)start: the chains of exactly these running containers, stale chains of this runner
    /// removed, hooks in place.
    /// Policies of sandboxes not in `known` (removed while the runner was down) are dropped.
    pub(crate) async fn reset(
        &self,
        running: Vec<(String, String, Endpoint)>,
        known: &HashSet<String>,
    ) -> Result<(), NetworkError> {
        {
            let mut s = self.state.lock().await;
            let before = s.policies.len();
            s.policies.retain(|id, _| known.contains(id));
            if s.policies.len() != before {
                self.save(&s.policies)?;
            }
        }
        let Some(ipt) = &self.ipt else { return Ok(()) };
        let mut attached = BTreeMap::new();
        for (container, sandbox_id, endpoint) in running {
            let IpAddr::V4(ip) = endpoint.ip else {
                tracing::error!(sandbox_id, ip = %endpoint.ip, "IPv6 sandbox address: no egress rules apply");
                continue;
            };
            match self.locate(&sandbox_id, &endpoint).await {
                Ok((port, mac)) => {
                    attached.insert(container, Attached { sandbox_id, ip, port, mac });
                }
                Err(e) => tracing::error!(sandbox_id, error = %e, "no network rules for a running sandbox"),
            }
        }
        let listing = ipt.run(&["-S"]).await?;
        let mut s = self.state.lock().await;
        s.installed = self.installed_in(&listing);
        s.hooked = false;
        let policies = s.policies.clone();
        self.sync(&mut s, policies, attached).await
    }

    /// Sandbox chains of this runner in an `iptables -S` listing.
    fn installed_in(&self, listing: &str) -> BTreeSet<String> {
        listing
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| {
                c.starts_with(&format!("{}-", self.prefix))
                    && **c != isolation_chain(&self.prefix)
                    && **c != deny_chain(&self.prefix)
            })
            .map(str::to_owned)
            .collect()
    }

    /// Checks that the kernel still holds exactly what was last written (chains, hooks, bridge table) and rewrites
    /// everything when not. Returns whether it had to.
    pub(crate) async fn reconcile(&self) -> Result<bool, NetworkError> {
        let Some(ipt) = &self.ipt else { return Ok(false) };
        let mut s = self.state.lock().await;
        let listing = ipt.run(&["-S"]).await?;
        let now = Written { iptables: ours(&self.prefix, &listing), bridge: bridge_listing(&self.table).await };
        match &s.written {
            Some(w) if *w == now => return Ok(false),
            Some(_) => tracing::warn!(chain = %self.prefix, table = %self.table,
                "network rules changed outside the runner; rewriting them"),
            None => tracing::debug!("network rules not read back since the last write; rewriting them"),
        }
        s.installed = self.installed_in(&listing);
        s.hooked = false;
        s.bridge_text.clear();
        let (policies, attached) = (s.policies.clone(), s.attached.clone());
        self.sync(&mut s, policies, attached).await?;
        Ok(true)
    }

    /// Rewrites every chain of this runner and its bridge table (when it changed) for `attached` and `policies`,
    /// puts the hooks back if they are gone; on success they become the state. What was written is read back
    /// right after, off the caller's path (a claim does not wait for it).
    async fn sync(
        &self,
        s: &mut State,
        policies: BTreeMap<String, Stored>,
        attached: BTreeMap<String, Attached>,
    ) -> Result<(), NetworkError> {
        let Some(ipt) = &self.ipt else {
            s.policies = policies;
            s.attached = attached;
            return Ok(());
        };
        let (text, chains) = render(&self.prefix, &policies, &attached, &s.installed, &self.floor)?;
        // One port per sandbox, the same one the iptables rules use (a sandbox ID is served by one container).
        let by_sandbox: BTreeMap<&str, &Attached> = attached.values().map(|a| (a.sandbox_id.as_str(), a)).collect();
        let ports: Vec<bridge::Port<'_>> =
            by_sandbox.values().map(|a| bridge::Port { port: &a.port, ip: a.ip, mac: &a.mac }).collect();
        let table = bridge::render(&self.table, &ports);
        s.written = None;
        ipt.restore(&text).await?;
        if table != s.bridge_text {
            s.bridge_text.clear();
            bridge::nft(&["-f", "-"], Some(&table)).await?;
            s.bridge_text = table;
        }
        s.installed = chains;
        s.policies = policies;
        s.attached = attached;
        if !s.hooked {
            let listing = ipt.run(&["-S"]).await?;
            for hook in HOOKS {
                if !has_hook(&listing, hook, &self.prefix) {
                    ipt.run(&["-I", hook, "1", "-j", &self.prefix]).await?;
                    tracing::info!(hook, chain = %self.prefix, "hooked the sandbox network rules");
                }
            }
            s.hooked = true;
        }
        self.read_back_soon();
        Ok(())
    }

    /// Reads this runner's rules back into `written` in a task of its own, as soon as the current change lets go
    /// of the state. Hooks found missing leave `written` empty, so the reconciler rewrites everything.
    fn read_back_soon(&self) {
        let Some(ipt) = self.ipt.clone() else { return };
        let (state, prefix, table) = (self.state.clone(), self.prefix.clone(), self.table.clone());
        tokio::spawn(async move {
            let mut s = state.lock().await;
            if s.written.is_some() {
                return;
            }
            let Ok(listing) = ipt.run(&["-S"]).await else { return };
            if HOOKS.iter().all(|h| has_hook(&listing, h, &prefix)) {
                s.written = Some(Written { iptables: ours(&prefix, &listing), bridge: bridge_listing(&table).await });
            }
        });
    }

    fn save(&self, policies: &BTreeMap<String, Stored>) -> Result<(), NetworkError> {
        let Some(path) = &self.state_file else { return Ok(()) };
        let keep: BTreeMap<&String, &Stored> = policies.iter().filter(|(_, p)| !p.is_default()).collect();
        let err = |reason: String| NetworkError::State { path: path.clone(), reason };
        let json = serde_json::to_vec_pretty(&keep).map_err(|e| err(e.to_string()))?;
        sandbar_support::fs::write_private(path, &json).map_err(|e| err(e.to_string()))
    }
}

/// Whether an `iptables -S` listing has `hook` jumping to `prefix`.
fn has_hook(listing: &str, hook: &str, prefix: &str) -> bool {
    listing.lines().any(|l| l.strip_prefix("-A ").and_then(|l| l.strip_prefix(hook)) == Some(&format!(" -j {prefix}")))
}

/// This runner's lines of an `iptables -S` listing: its chains, their rules and the hooks that jump to them.
fn ours(top: &str, listing: &str) -> String {
    let mine = |w: &str| w == top || w.starts_with(&format!("{top}-"));
    listing
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("-N" | "-A"), Some(chain)) if mine(chain) => true,
                (Some("-A"), Some(hook)) if HOOKS.contains(&hook) => l.split_whitespace().any(mine),
                _ => false,
            }
        })
        .fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        })
}

/// A bridge table as nft lists it; empty when it is gone.
async fn bridge_listing(table: &str) -> String {
    bridge::nft(&["list", "table", "bridge", table], None).await.unwrap_or_default()
}

/// The IPv4 resolvers Docker hands containers on the default bridge: the host's, minus loopback ones; when the host
/// uses systemd-resolved's stub, the upstream servers it knows.
fn docker_resolvers() -> Vec<Ipv4Addr> {
    let read = |path: &str| -> Vec<Ipv4Addr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    };
    let mut all = read("/etc/resolv.conf");
    if all.iter().any(Ipv4Addr::is_loopback) {
        all.extend(read("/run/systemd/resolve/resolv.conf"));
    }
    all.retain(|a| !a.is_loopback());
    all.dedup();
    all
}

fn load(path: &Path) -> Result<BTreeMap<String, Stored>, NetworkError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| NetworkError::State { path: path.to_owned(), reason: format!("unreadable: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(NetworkError::State { path: path.to_owned(), reason: e.to_string() }),
    }
}
