//! Network isolation and egress rules: each sandbox may send only from its own address and MAC on its own bridge
//! port, reaches no other sandbox (unless linked), never the host, loopback, link-local (cloud metadata) or the
//! ranges the operator denies, and beyond that its egress is unrestricted, blocked, or limited to an allow list of
//! IPv4 CIDRs.
//!
//! Two layers, each changed in one transaction per change:
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
//! SANDBAR-<runner>-<in:sandbox>: replies -> RETURN, linked sandboxes -> RETURN, with `--advertise-addr` the
//!     daemon's toolbox and SSH ports forwarded from that address by a published port and not from a bridge port
//!     (a proxy on another host) -> RETURN, else DENY (other runners' sandboxes and plain containers cannot open
//!     connections to it)
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
//! A change (attach, detach, claim, policy) touches only the sandboxes it concerns (and the other ends of their
//! links): one `iptables-restore --noflush` transaction that rewrites their chains whole, deletes their old lines
//! from the top and isolation chains and appends their new ones, and one `nft -f` transaction for their bridge
//! chains and elements, so its cost does not grow with the number of sandboxes, the kernel never sees half a
//! policy, and a failed change leaves the previous rules whole. A line that should be there and is not fails the
//! transaction; the change is then made by rewriting everything (every chain of the runner, the bridge table
//! replaced), as at start. Right after each write, in a task of its own so the change does not wait, the runner
//! reads back what it touched (`iptables -S <chain>`, `nft list table`) and keeps it; a **reconciler** compares
//! the whole of it with the kernel every `--firewall-recheck-secs` (5 s) and rewrites everything, hooks included,
//! when anything differs or is gone (an `iptables -F`, a firewall reload, a deleted table). Each write is logged
//! (`network rules written`, with `mode`, `sandboxes` and `micros`). The reconciler checks that the hooks are
//! there, not that they come first in `DOCKER-USER`/`INPUT`. A warm-pool claim whose sandbox and pool member both
//! have the default policy changes nothing but names, so that rewrite is made after the claim answers, under the
//! same lock (`Firewall::reassign`). Policies live in memory, in the container's spec label (the policy at
//! creation) and in `<state_dir>/network.json` (changes since), so a restarted runner rebuilds the same rules and
//! removes chains of sandboxes that are gone. Sandboxes get no IPv6 address (a network with IPv6 is refused); the
//! bridge layer drops every IPv6 frame from their ports.
//!
//! **Stale claims.** A runner's bridge table drops a sandbox's address and MAC from any port but the sandbox's
//! own, and Docker hands a freed address to the next container on the bridge. A table whose runner is gone (killed
//! without its rules removed, never restarted) or that has not yet taken in a container's death still claims the
//! address, and the next container given it (any runner's sandbox, or a plain container) can send nothing: its
//! daemon never answers. Docker never gives out an address in use on a bridge, so a claim on a port that no longer
//! exists is stale by construction. When a new sandbox's daemon is silent for a second, the runner lists the other
//! `sandbar_*` bridge tables and deletes, in one `nft` transaction per table, the claims on its address or MAC
//! whose port is gone (`Firewall::clear_stale_claims`, logged as `removed a stale claim`); claims on live ports
//! are never touched. The fast path costs nothing: a daemon that answers is not sending into a stale claim.
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
use std::time::{Duration, Instant};

use sandbar_proto::network::{Ipv4Cidr, NetworkPolicy};
use serde::{Deserialize, Serialize};

use crate::config::RunnerConfig;
use crate::error::SandboxError;
pub use bridge::bridge_table;
pub use iptables::purge_blocking;
use iptables::{BRIDGE_NF, HOOKS, Iptables, ensure_bridge_filtering};
use rules::{Floor, Fragment, deny_chain, fragment, isolation_chain, members, render, render_change};
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

/// What the kernel held right after the last write, as read back: the reconciler's reference. `iptables` is this
/// runner's lines of `iptables -S` by chain (hooks under the hook's name), `bridge` the bridge table's items
/// (`bridge::items`). A change updates it in place: the lines and elements it removed and added in the shared
/// chains and sets are known, the chains it wrote whole are read back. Nothing else is re-read, so a change never
/// takes in what someone else did to the rest (the reconciler finds that).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    iptables: BTreeMap<String, String>,
    bridge: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    policies: BTreeMap<String, Stored>,
    /// Container ID -> the sandbox it serves and where it sits.
    attached: BTreeMap<String, Attached>,
    /// Sandbox chains in the kernel (besides the top and isolation chains).
    installed: BTreeSet<String>,
    /// `None` from a full rewrite until it has been read back.
    written: Option<Written>,
    /// Sandbox chains and bridge port chains a change wrote whole since the last read-back.
    stale: BTreeSet<String>,
    stale_ports: BTreeSet<String>,
    /// The hooks were seen in place since the runner started (or the reconciler last rewrote everything).
    hooked: bool,
    /// The kernel holds what the state says, as far as the runner knows: a change may be written as a difference.
    /// False at start, after a failed write and when the reconciler found a difference.
    clean: bool,
}

/// This runner's rules. Every change goes through one lock, so rewrites never interleave. A clone shares the state.
#[derive(Debug, Clone)]
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
            floor: Floor { deny, resolvers: docker_resolvers(), published: config.advertise_addr },
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
        self.attach_at(container_id, Attached { sandbox_id: sandbox_id.to_owned(), ip, port, mac }).await
    }

    async fn attach_at(&self, container_id: &str, new: Attached) -> Result<(), NetworkError> {
        let ip = new.ip;
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
    ///
    /// When both have the default policy (unrestricted, unlinked; a sandbox nobody could link to yet), the rules in
    /// the kernel already do what the sandbox's will, and only their names and comments differ. The rewrite then
    /// runs in a task that holds the rules' lock from before this returns, so every later change (a policy update,
    /// the delete, a link to it, the reconciler) waits for it, and the claim does not: it was most of a warm
    /// create's time. A failed rewrite leaves the state to be rewritten whole by the next change or the reconciler.
    /// Any other policy is in the kernel before this returns.
    pub(crate) async fn reassign(&self, container_id: &str, sandbox_id: &str) -> Result<(), NetworkError> {
        let mut s = self.state.clone().lock_owned().await;
        let mut attached = s.attached.clone();
        let Some(a) = attached.get_mut(container_id) else {
            return Err(NetworkError::Invalid(format!("container {container_id} has no network rules to hand over")));
        };
        let default = |id: &str| s.policies.get(id).is_none_or(Stored::is_default);
        let same_rules = default(&a.sandbox_id) && default(sandbox_id);
        a.sandbox_id = sandbox_id.to_owned();
        let policies = s.policies.clone();
        if !same_rules || self.ipt.is_none() {
            return self.sync(&mut s, policies, attached).await;
        }
        let (fw, sandbox_id) = (self.clone(), sandbox_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = fw.sync(&mut s, policies.clone(), attached.clone()).await {
                tracing::warn!(sandbox_id, error = %e, "renaming a claimed pool sandbox's rules failed; they are rewritten whole");
                s.policies = policies;
                s.attached = attached;
                s.clean = false;
            }
        });
        Ok(())
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

    /// Takes `ip` (and the MAC this runner bound to it) back from other runners' bridge tables where the port that
    /// held it is gone: see "Stale claims" in the module doc. Returns what was removed (`table port ip`), logged
    /// by the caller; failures are logged here and change nothing.
    pub(crate) async fn clear_stale_claims(&self, ip: Ipv4Addr) -> Vec<String> {
        if self.ipt.is_none() {
            return Vec::new();
        }
        let mac = {
            let s = self.state.lock().await;
            s.attached.values().find(|a| a.ip == ip).map(|a| a.mac.clone())
        };
        let tables = match bridge::nft(&["-j", "list", "tables", "bridge"], None).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the bridge tables to look for stale claims");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for table in bridge::table_names(&tables).into_iter().filter(|t| t.starts_with("sandbar_") && *t != self.table)
        {
            let Ok(listing) = bridge::nft(&["-j", "list", "table", "bridge", &table], None).await else { continue };
            let stale: BTreeSet<bridge::Claim> = bridge::claims(&listing)
                .into_iter()
                .filter(|c| c.ip == ip || mac.as_deref() == Some(c.mac.as_str()))
                .filter(|c| !Path::new("/sys/class/net").join(&c.port).exists())
                .collect();
            let Some(text) = bridge::render_release(&table, &stale) else { continue };
            match bridge::nft(&["-f", "-"], Some(&text)).await {
                Ok(_) => removed.extend(stale.iter().map(|c| format!("{table} {} {}", c.port, c.ip))),
                Err(e) => tracing::warn!(table, error = %e, "cannot remove a stale claim"),
            }
        }
        removed
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
        s.clean = false;
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
        if s.clean && s.written.is_some() {
            // The chains the last changes wrote, if the task that reads them back has not run yet (after a full
            // rewrite nothing is taken from the kernel here: that read-back may not be late by a whole recheck).
            read_back(ipt, &mut s, &self.prefix, &self.table).await;
        }
        let listing = ipt.run(&["-S"]).await?;
        let now = Written { iptables: ours(&self.prefix, &listing), bridge: bridge_listing(&self.table).await };
        match &s.written {
            Some(w) if s.clean && *w == now => return Ok(false),
            Some(_) if s.clean => tracing::warn!(chain = %self.prefix, table = %self.table,
                "network rules changed outside the runner; rewriting them"),
            _ => {
                tracing::debug!("network rules not read back since the last full write (or it failed); rewriting them")
            }
        }
        s.installed = self.installed_in(&listing);
        s.hooked = false;
        s.clean = false;
        let (policies, attached) = (s.policies.clone(), s.attached.clone());
        self.sync(&mut s, policies, attached).await?;
        Ok(true)
    }

    /// Makes the kernel's rules those of `attached` and `policies`: as a change when the state is clean (only what
    /// differs), else (or when the change fails) by rewriting every chain of this runner and its bridge table; puts
    /// the hooks back if they are gone; on success they become the state. What was written is read back right after,
    /// off the caller's path (a claim does not wait for it).
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
        let started = Instant::now();
        let mut mode = "change";
        if !(s.clean && s.hooked) {
            mode = "full";
            self.write_all(ipt, s, &policies, &attached).await?;
        } else if let Err(e) = self.write_change(ipt, s, &policies, &attached).await {
            tracing::warn!(chain = %self.prefix, error = %e, "network rules differ from what was written; rewriting them");
            mode = "full";
            self.write_all(ipt, s, &policies, &attached).await?;
        }
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
        s.clean = true;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::info!(mode, sandboxes = s.attached.len(), micros, "network rules written");
        self.read_back_soon();
        Ok(())
    }

    /// Every chain of this runner and the whole bridge table.
    async fn write_all(
        &self,
        ipt: &Iptables,
        s: &mut State,
        policies: &BTreeMap<String, Stored>,
        attached: &BTreeMap<String, Attached>,
    ) -> Result<(), NetworkError> {
        s.clean = false;
        s.written = None;
        let (text, chains) = render(&self.prefix, policies, attached, &s.installed, &self.floor)?;
        ipt.restore(&text).await?;
        let ports: Vec<bridge::Port<'_>> = members(attached).values().map(|a| port_of(a)).collect();
        bridge::nft(&["-f", "-"], Some(&bridge::render(&self.table, &ports))).await?;
        s.installed = chains;
        Ok(())
    }

    /// Only what differs between the state and `attached`/`policies`: the sandboxes whose address, port or policy
    /// changed, and the other ends of their links (whose chains name their addresses).
    async fn write_change(
        &self,
        ipt: &Iptables,
        s: &mut State,
        policies: &BTreeMap<String, Stored>,
        attached: &BTreeMap<String, Attached>,
    ) -> Result<(), NetworkError> {
        let (old_m, new_m) = (members(&s.attached), members(attached));
        let changed: BTreeSet<&str> = old_m
            .keys()
            .chain(new_m.keys())
            .copied()
            .filter(|sb| old_m.get(sb) != new_m.get(sb) || s.policies.get(*sb) != policies.get(*sb))
            .collect();
        let mut affected: BTreeSet<&str> = changed.clone();
        for pol in [&s.policies, policies] {
            for (sb, stored) in pol {
                if let Some(link) = stored.linked_sandbox.as_deref() {
                    if changed.contains(sb.as_str()) {
                        affected.insert(link);
                    }
                    if changed.contains(link) {
                        affected.insert(sb.as_str());
                    }
                }
            }
        }
        let old_f = fragments(&self.prefix, &affected, &old_m, &s.policies, &self.floor)?;
        let new_f = fragments(&self.prefix, &affected, &new_m, policies, &self.floor)?;
        let chains_of = |f: &BTreeMap<String, Fragment>| -> Vec<String> {
            f.values().flat_map(|f| f.chains.iter().map(|(n, _)| n.clone())).collect()
        };
        let (old_chains, new_chains) = (chains_of(&old_f), chains_of(&new_f));
        let mut installed = s.installed.clone();
        for c in &old_chains {
            installed.remove(c);
        }
        for c in &new_chains {
            if !installed.insert(c.clone()) {
                return Err(NetworkError::Invalid(format!("chain name collision: {c}")));
            }
        }
        let old_ports: BTreeSet<bridge::Port<'_>> =
            changed.iter().filter_map(|sb| old_m.get(sb)).map(|a| port_of(a)).collect();
        let new_ports: BTreeSet<bridge::Port<'_>> =
            changed.iter().filter_map(|sb| new_m.get(sb)).map(|a| port_of(a)).collect();
        if let Some(text) = render_change(&self.prefix, &old_f, &new_f) {
            s.clean = false;
            ipt.restore(&text).await?;
            if let Some(w) = s.written.as_mut() {
                self.note_change(w, &old_f, &new_f);
            }
            let old_lines: BTreeMap<&String, &Vec<String>> =
                old_f.values().flat_map(|f| f.chains.iter().map(|(c, l)| (c, l))).collect();
            let rewritten = new_f.values().flat_map(|f| f.chains.iter()).filter(|(c, l)| old_lines.get(c) != Some(&l));
            s.stale.extend(rewritten.map(|(c, _)| c.clone()));
        }
        if let Some(text) = bridge::render_change(&self.table, &old_ports, &new_ports) {
            s.clean = false;
            bridge::nft(&["-f", "-"], Some(&text)).await?;
            let kept: BTreeSet<&str> = new_ports.iter().map(|p| p.port).collect();
            if let Some(w) = s.written.as_mut() {
                for p in old_ports.difference(&new_ports) {
                    for e in bridge::element_items(p) {
                        w.bridge.remove(&e);
                    }
                    if !kept.contains(p.port) {
                        bridge::remove_chain(&mut w.bridge, &bridge::port_chain(p.port));
                    }
                }
                for p in new_ports.difference(&old_ports) {
                    w.bridge.extend(bridge::element_items(p).map(|e| (e, String::new())));
                }
            }
            s.stale_ports.extend(new_ports.difference(&old_ports).map(|p| bridge::port_chain(p.port)));
        }
        s.installed = installed;
        Ok(())
    }

    /// The reference after a change written by `render_change`: the shared chains' lines it deleted and appended
    /// (`iptables -S` shows them as they were written), the chains it removed gone; the chains it wrote are read
    /// back later.
    fn note_change(&self, w: &mut Written, old: &BTreeMap<String, Fragment>, new: &BTreeMap<String, Fragment>) {
        let iso = isolation_chain(&self.prefix);
        let shared_same = |a: &Fragment, b: Option<&Fragment>| b.is_some_and(|b| a.top == b.top && a.iso == b.iso);
        for (sb, f) in old {
            if !shared_same(f, new.get(sb)) {
                for l in &f.top {
                    remove_line(w.iptables.entry(self.prefix.clone()).or_default(), &format!("-A {} {l}", self.prefix));
                }
                remove_line(w.iptables.entry(iso.clone()).or_default(), &format!("-A {iso} {}", f.iso));
            }
            for (chain, _) in &f.chains {
                if !new.values().any(|n| n.chains.iter().any(|(c, _)| c == chain)) {
                    w.iptables.remove(chain);
                }
            }
        }
        for (sb, f) in new {
            if !shared_same(f, old.get(sb)) {
                let top = w.iptables.entry(self.prefix.clone()).or_default();
                for l in &f.top {
                    top.push_str(&format!("-A {} {l}\n", self.prefix));
                }
                w.iptables.entry(iso.clone()).or_default().push_str(&format!("-A {iso} {}\n", f.iso));
            }
        }
    }

    /// Reads this runner's rules back into `written` in a task of its own, as soon as the current change lets go
    /// of the state.
    fn read_back_soon(&self) {
        let Some(ipt) = self.ipt.clone() else { return };
        let (state, prefix, table) = (self.state.clone(), self.prefix.clone(), self.table.clone());
        tokio::spawn(async move {
            let mut s = state.lock().await;
            read_back(&ipt, &mut s, &prefix, &table).await;
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

/// This runner's firewall driven directly, with bridge ports the caller names instead of containers found through
/// Docker: for the rewrite benchmark (`benches/src/bin/firewall_rewrite.rs`) and the tests that compare a series of
/// changes with a full rewrite. It writes the host's real rules under the runner's prefix; remove them with
/// [`purge_blocking`].
#[derive(Debug)]
pub struct Standalone(Firewall);

impl Standalone {
    /// The firewall of `config` (`network_rules` must be on for anything to be written).
    pub async fn new(config: &RunnerConfig) -> Result<Self, NetworkError> {
        let fw = Firewall::new(config).await?;
        fw.reset(Vec::new(), &HashSet::new()).await?;
        Ok(Self(fw))
    }

    /// Binds `sandbox_id`'s rules to `port` (a bridge port; it need not exist), `ip` and `mac`.
    pub async fn attach(
        &self,
        container_id: &str,
        sandbox_id: &str,
        ip: Ipv4Addr,
        port: &str,
        mac: &str,
    ) -> Result<(), NetworkError> {
        if !bridge::valid_port(port) || !bridge::valid_mac(mac) {
            return Err(NetworkError::Invalid(format!("unexpected interface {port:?} or MAC {mac:?}")));
        }
        let a = Attached { sandbox_id: sandbox_id.to_owned(), ip, port: port.to_owned(), mac: mac.to_owned() };
        self.0.attach_at(container_id, a).await
    }

    /// Records a sandbox's policy and link before it is attached.
    pub async fn set_policy(
        &self,
        sandbox_id: &str,
        policy: NetworkPolicy,
        linked_sandbox: Option<String>,
    ) -> Result<(), NetworkError> {
        self.0.set_policy(sandbox_id, policy, linked_sandbox).await
    }

    /// Changes an attached sandbox's policy.
    pub async fn update_policy(&self, sandbox_id: &str, policy: NetworkPolicy) -> Result<(), NetworkError> {
        self.0.update_policy(sandbox_id, policy).await
    }

    /// Hands an attached container's rules to another sandbox (a warm-pool claim).
    pub async fn reassign(&self, container_id: &str, sandbox_id: &str) -> Result<(), NetworkError> {
        self.0.reassign(container_id, sandbox_id).await
    }

    /// Removes a container's rules.
    pub async fn detach(&self, container_id: &str) {
        self.0.detach(container_id).await;
    }

    /// The reconciler's check: whether it had to rewrite everything.
    pub async fn reconcile(&self) -> Result<bool, NetworkError> {
        self.0.reconcile().await
    }

    /// What the reconciler does when the kernel drifted: every chain and the bridge table rewritten, for the
    /// attached sandboxes as they are (what every change cost before changes were written as differences).
    pub async fn rewrite_all(&self) -> Result<(), NetworkError> {
        let mut s = self.0.state.lock().await;
        s.clean = false;
        let (policies, attached) = (s.policies.clone(), s.attached.clone());
        self.0.sync(&mut s, policies, attached).await
    }
}

/// Whether an `iptables -S` listing has `hook` jumping to `prefix`.
fn has_hook(listing: &str, hook: &str, prefix: &str) -> bool {
    listing.lines().any(|l| l.strip_prefix("-A ").and_then(|l| l.strip_prefix(hook)) == Some(&format!(" -j {prefix}")))
}

/// The fragments of the `affected` sandboxes that are among `members`.
fn fragments(
    prefix: &str,
    affected: &BTreeSet<&str>,
    members: &BTreeMap<&str, &Attached>,
    policies: &BTreeMap<String, Stored>,
    floor: &Floor,
) -> Result<BTreeMap<String, Fragment>, NetworkError> {
    let mut out = BTreeMap::new();
    for sb in affected {
        if let Some(a) = members.get(sb) {
            out.insert((*sb).to_owned(), fragment(prefix, sb, a, members, policies, floor)?);
        }
    }
    Ok(out)
}

/// A sandbox's entry in the bridge table.
fn port_of<'a>(a: &'a Attached) -> bridge::Port<'a> {
    bridge::Port { port: &a.port, ip: a.ip, mac: &a.mac }
}

/// Brings `written` up to date with the kernel after a write: everything after a full rewrite (left empty when a
/// hook is missing, so the reconciler rewrites everything), else the chains and the bridge table a change touched.
async fn read_back(ipt: &Iptables, s: &mut State, prefix: &str, table: &str) {
    if s.written.is_none() {
        let Ok(listing) = ipt.run(&["-S"]).await else { return };
        if HOOKS.iter().all(|h| has_hook(&listing, h, prefix)) {
            s.written = Some(Written { iptables: ours(prefix, &listing), bridge: bridge_listing(table).await });
        }
        s.stale.clear();
        s.stale_ports.clear();
        return;
    }
    // Chains removed since they were written are gone from the reference already.
    for chain in std::mem::take(&mut s.stale) {
        if !s.installed.contains(&chain) {
            continue;
        }
        let Ok(listing) = ipt.run(&["-S", &chain]).await else {
            tracing::debug!(chain, "cannot read a chain back; the reconciler rewrites everything");
            s.written = None;
            return;
        };
        if let Some(w) = s.written.as_mut() {
            w.iptables.remove(&chain);
            w.iptables.extend(ours(prefix, &listing));
        }
    }
    for chain in std::mem::take(&mut s.stale_ports) {
        let Ok(listing) = bridge::nft(&["-j", "list", "chain", "bridge", table, &chain], None).await else {
            // Removed by a later change, or the table is gone: either way the reconciler compares the whole.
            continue;
        };
        if let Some(w) = s.written.as_mut() {
            bridge::remove_chain(&mut w.bridge, &chain);
            w.bridge.extend(bridge::items(&listing).into_iter().filter(|(k, _)| k != "table"));
        }
    }
}

/// Removes the line `line` (without its newline) from `text`, once.
fn remove_line(text: &mut String, line: &str) {
    let mut found = false;
    let kept: String = text
        .lines()
        .filter(|l| {
            let drop = !found && *l == line;
            found |= drop;
            !drop
        })
        .fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        });
    *text = kept;
}

/// This runner's lines of an `iptables -S` listing by chain: its chains and their rules, and the hooks that jump to
/// them (under the hook's name).
fn ours(top: &str, listing: &str) -> BTreeMap<String, String> {
    let mine = |w: &str| w == top || w.starts_with(&format!("{top}-"));
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for l in listing.lines() {
        let mut words = l.split_whitespace();
        let chain = match (words.next(), words.next()) {
            (Some("-N" | "-A"), Some(chain)) if mine(chain) => chain,
            (Some("-A"), Some(hook)) if HOOKS.contains(&hook) && l.split_whitespace().any(mine) => hook,
            _ => continue,
        };
        let text = out.entry(chain.to_owned()).or_default();
        text.push_str(l);
        text.push('\n');
    }
    out
}

/// A bridge table's items as nft lists them; empty when it is gone.
async fn bridge_listing(table: &str) -> BTreeMap<String, String> {
    bridge::items(&bridge::nft(&["-j", "list", "table", "bridge", table], None).await.unwrap_or_default())
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
