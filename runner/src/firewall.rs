//! Network isolation and egress rules: sandboxes cannot reach each other (unless linked), and each one's egress is
//! unrestricted, blocked, or limited to an allow list of IPv4 CIDRs.
//!
//! The rules are iptables chains in the filter table of the backend that holds Docker's `DOCKER-USER` chain (on a
//! host where `iptables` is nf_tables and legacy tables also exist, Docker's chains, and so the traffic they see,
//! are in nf_tables; a runner on a legacy host finds them there). Per runner:
//!
//! ```text
//! DOCKER-USER -> SANDBAR-<runner>            (forwarded: to other containers, other hosts)
//! INPUT       -> SANDBAR-<runner>            (to the host itself: its addresses, published ports)
//! SANDBAR-<runner>:  -s <sandbox ip> -j SANDBAR-<runner>-<sandbox>     one per running sandbox
//! SANDBAR-<runner>-<sandbox>:
//!     ctstate ESTABLISHED,RELATED ctdir REPLY -> RETURN   replies to connections others opened to it
//!     -d <linked sandbox ip>                  -> RETURN   links, both ways
//!     -> SANDBAR-<runner>-ISO                             -> DENY to every running sandbox of this runner
//!     policy: nothing (unrestricted) | -d <cidr> -> RETURN ... then DENY | DENY
//! SANDBAR-<runner>-DENY: TCP -> REJECT tcp-reset, else REJECT icmp-admin-prohibited
//! ```
//!
//! Only packets *from* a sandbox are matched, so the host's own connections to a sandbox (the runner and proxy
//! reaching its daemon) are never filtered: they leave through OUTPUT and their replies come back through INPUT
//! as `ctdir REPLY`. Packets a sandbox sends on connections it opened are checked one by one rather than accepted
//! as `ESTABLISHED`, so tightening the policy cuts connections already open. Sandboxes on one bridge reach each
//! other through FORWARD only when `net.bridge.bridge-nf-call-iptables` is 1: the runner sets it (as Docker does
//! when it needs it) and refuses to start if bridged traffic cannot be filtered.
//!
//! Every change rewrites this runner's chains in one `iptables-restore --noflush` transaction, so the kernel
//! never sees half a policy, a failed change leaves the previous rules whole, and a sandbox whose IP changed
//! (a restart) is re-hooked by the same rewrite. Policies live in memory, in the container's spec label (the
//! policy at creation) and in `<state_dir>/network.json` (changes since), so a restarted runner rebuilds the same
//! rules and removes chains of sandboxes that are gone. IPv4 only: a sandbox network with IPv6 is refused.
//!
//! Here: the firewall's state and its changes (this file), the rules (`rules`), the iptables binaries
//! (`iptables`). Nothing else in the runner runs iptables; the host layer calls `Firewall` when a container gets or
//! loses its address. Chains outlive a stopped runner on purpose (sandboxes keep running); test guards remove theirs
//! with [`purge_blocking`]. Flags: `--network-rules false` (no rules; creates asking for a policy or a link fail) and
//! `--iptables BIN`.

mod iptables;
mod rules;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbar_proto::network::NetworkPolicy;
use serde::{Deserialize, Serialize};

use crate::config::RunnerConfig;
use crate::error::SandboxError;
pub use iptables::purge_blocking;
use iptables::{BRIDGE_NF, HOOKS, Iptables, ensure_bridge_filtering};
pub use rules::{bridge_table, chain_prefix, sandbox_chain};
use rules::{deny_chain, isolation_chain, render};

/// How often a sync re-checks that the hooks are still in place (a firewall reload may remove them).
const HOOK_RECHECK: Duration = Duration::from_secs(30);

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

/// A running container that has rules.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    sandbox_id: String,
    ip: Ipv4Addr,
}

#[derive(Debug, Default)]
struct State {
    policies: BTreeMap<String, Stored>,
    /// Container ID -> the sandbox it serves and its address.
    attached: BTreeMap<String, Attached>,
    /// Sandbox chains in the kernel (besides the top and isolation chains).
    installed: BTreeSet<String>,
    hooks_checked: Option<Instant>,
}

/// This runner's rules. Every change goes through one lock, so rewrites never interleave.
#[derive(Debug)]
pub(crate) struct Firewall {
    ipt: Option<Iptables>,
    prefix: String,
    state_file: Option<PathBuf>,
    state: tokio::sync::Mutex<State>,
}

impl Firewall {
    /// Finds the backend and checks the host (when rules are enabled) and loads the stored policies.
    pub(crate) async fn new(config: &RunnerConfig) -> Result<Self, NetworkError> {
        let ipt = if config.network_rules {
            let ipt = Iptables::detect(config.iptables.as_deref()).await?;
            ensure_bridge_filtering(Path::new(BRIDGE_NF))?;
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
            state_file,
            state: tokio::sync::Mutex::new(State { policies, ..Default::default() }),
        })
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

    /// Gives a running container the rules of `sandbox_id` at `ip` (replacing what it had: a claimed pool
    /// container, a restart with a new address).
    pub(crate) async fn attach(&self, container_id: &str, sandbox_id: &str, ip: IpAddr) -> Result<(), NetworkError> {
        let IpAddr::V4(ip) = ip else {
            return Err(NetworkError::Invalid(format!(
                "sandbox {sandbox_id} has the IPv6 address {ip}; egress rules are IPv4 only"
            )));
        };
        let mut s = self.state.lock().await;
        let mut attached = s.attached.clone();
        attached.retain(|c, a| c != container_id && a.ip != ip);
        attached.insert(container_id.to_owned(), Attached { sandbox_id: sandbox_id.to_owned(), ip });
        let policies = s.policies.clone();
        self.sync(&mut s, policies, attached).await
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
        running: Vec<(String, String, IpAddr)>,
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
        let listing = ipt.run(&["-S"]).await?;
        let mut s = self.state.lock().await;
        s.installed = listing
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| {
                c.starts_with(&format!("{}-", self.prefix))
                    && **c != isolation_chain(&self.prefix)
                    && **c != deny_chain(&self.prefix)
            })
            .map(str::to_owned)
            .collect();
        let mut attached = BTreeMap::new();
        for (container, sandbox_id, ip) in running {
            match ip {
                IpAddr::V4(ip) => {
                    attached.insert(container, Attached { sandbox_id, ip });
                }
                IpAddr::V6(ip) => tracing::error!(sandbox_id, %ip, "IPv6 sandbox address: no egress rules apply"),
            }
        }
        s.hooks_checked = None;
        let policies = s.policies.clone();
        self.sync(&mut s, policies, attached).await
    }

    /// Rewrites every chain of this runner for `attached` and `policies`; on success they become the state.
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
        let (text, chains) = render(&self.prefix, &policies, &attached, &s.installed)?;
        ipt.restore(&text).await?;
        s.installed = chains;
        s.policies = policies;
        s.attached = attached;
        if s.hooks_checked.is_none_or(|t| t.elapsed() > HOOK_RECHECK) {
            for hook in HOOKS {
                if ipt.run(&["-C", hook, "-j", &self.prefix]).await.is_err() {
                    ipt.run(&["-I", hook, "1", "-j", &self.prefix]).await?;
                    tracing::info!(hook, chain = %self.prefix, "hooked the sandbox network rules");
                }
            }
            s.hooks_checked = Some(Instant::now());
        }
        Ok(())
    }

    fn save(&self, policies: &BTreeMap<String, Stored>) -> Result<(), NetworkError> {
        let Some(path) = &self.state_file else { return Ok(()) };
        let keep: BTreeMap<&String, &Stored> = policies.iter().filter(|(_, p)| !p.is_default()).collect();
        let err = |reason: String| NetworkError::State { path: path.clone(), reason };
        let json = serde_json::to_vec_pretty(&keep).map_err(|e| err(e.to_string()))?;
        sandbar_support::fs::write_private(path, &json).map_err(|e| err(e.to_string()))
    }
}

fn load(path: &Path) -> Result<BTreeMap<String, Stored>, NetworkError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| NetworkError::State { path: path.to_owned(), reason: format!("unreadable: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(NetworkError::State { path: path.to_owned(), reason: e.to_string() }),
    }
}
