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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sandbar_proto::network::{Ipv4Cidr, NetworkPolicy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::RunnerConfig;
use crate::error::SandboxError;

/// Chains that jump to this runner's top chain.
const HOOKS: [&str; 2] = ["DOCKER-USER", "INPUT"];
/// How often a sync re-checks that the hooks are still in place (a firewall reload may remove them).
const HOOK_RECHECK: Duration = Duration::from_secs(30);
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

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

/// The top chain of a runner: `SANDBAR-` and 8 hex digits of the SHA-256 of its ID (chain names are at most 28
/// characters, so IDs cannot appear whole).
pub fn chain_prefix(runner_id: &str) -> String {
    format!("SANDBAR-{}", hex(runner_id, 4))
}

/// The chain of one sandbox of a runner.
pub fn sandbox_chain(runner_id: &str, sandbox_id: &str) -> String {
    format!("{}-{}", chain_prefix(runner_id), hex(sandbox_id, 5))
}

fn isolation_chain(prefix: &str) -> String {
    format!("{prefix}-ISO")
}

/// Where refused packets go: TCP gets a reset (a new connection is refused, an open one is cut at once: an ICMP
/// error alone would only be a soft error to an established connection), anything else "administratively
/// prohibited".
fn deny_chain(prefix: &str) -> String {
    format!("{prefix}-DENY")
}

fn hex(s: &str, bytes: usize) -> String {
    Sha256::digest(s.as_bytes()).iter().take(bytes).map(|b| format!("{b:02X}")).collect()
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

/// The iptables binaries of the backend in use.
#[derive(Debug, Clone)]
struct Iptables {
    iptables: String,
    restore: String,
}

impl Iptables {
    /// The backend whose filter table has `DOCKER-USER`: the configured binary, else `iptables` (what Docker itself
    /// runs), `iptables-nft`, `iptables-legacy`, in that order.
    async fn detect(preferred: Option<&str>) -> Result<Self, NetworkError> {
        let candidates: Vec<&str> = match preferred {
            Some(p) => vec![p],
            None => vec!["iptables", "iptables-nft", "iptables-legacy"],
        };
        let mut tried = Vec::new();
        for bin in candidates {
            let ipt = Self { iptables: bin.to_owned(), restore: format!("{bin}-restore") };
            match ipt.run(&["-S", "DOCKER-USER"]).await {
                Ok(_) => return Ok(ipt),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(NetworkError::Unavailable(format!(
            "no iptables backend has Docker's DOCKER-USER chain (is Docker running with iptables enabled, and are \
             we root?): {}",
            tried.join("; ")
        )))
    }

    async fn run(&self, args: &[&str]) -> Result<String, NetworkError> {
        let command = format!("{} {}", self.iptables, args.join(" "));
        let out = tokio::process::Command::new(&self.iptables)
            .arg("-w")
            .arg("5")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| NetworkError::Command { command: command.clone(), reason: e.to_string() })?;
        if !out.status.success() {
            let reason = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
            return Err(NetworkError::Command { command, reason });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a ruleset in one transaction; chains it does not name are left alone.
    async fn restore(&self, input: &str) -> Result<(), NetworkError> {
        let command = format!("{} --noflush", self.restore);
        let err = |reason: String| NetworkError::Command { command: command.clone(), reason };
        let mut child = tokio::process::Command::new(&self.restore)
            .args(["-w", "5", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).await.map_err(|e| err(e.to_string()))?;
        }
        let out = child.wait_with_output().await.map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(())
    }
}

/// Makes sure bridged traffic passes through iptables, without which sandboxes on one bridge reach each other
/// whatever the rules say.
fn ensure_bridge_filtering(path: &Path) -> Result<(), NetworkError> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => {
            std::fs::write(path, "1").map_err(|e| {
                NetworkError::Unavailable(format!(
                    "{} is 0, so bridged traffic bypasses iptables, and it cannot be set to 1: {e}",
                    path.display()
                ))
            })?;
            tracing::warn!(path = %path.display(), "set to 1 so bridged sandbox traffic passes the isolation rules");
            Ok(())
        }
        Err(e) => Err(NetworkError::Unavailable(format!(
            "cannot read {} ({e}): load br_netfilter (modprobe br_netfilter) so bridged traffic passes iptables",
            path.display()
        ))),
    }
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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(&json).and_then(|()| f.sync_all()).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
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

/// The `iptables-restore` input for this runner's chains, and the sandbox chains it leaves in the kernel.
fn render(
    prefix: &str,
    policies: &BTreeMap<String, Stored>,
    attached: &BTreeMap<String, Attached>,
    installed: &BTreeSet<String>,
) -> Result<(String, BTreeSet<String>), NetworkError> {
    let iso = isolation_chain(prefix);
    let deny = deny_chain(prefix);
    let chain_of = |sandbox: &str| format!("{prefix}-{}", hex(sandbox, 5));
    // One entry per sandbox, by address (a sandbox ID is served by one container at a time).
    let mut members: BTreeMap<&str, Ipv4Addr> = BTreeMap::new();
    for a in attached.values() {
        if let Some(old) = members.insert(&a.sandbox_id, a.ip) {
            tracing::warn!(sandbox_id = %a.sandbox_id, %old, new = %a.ip, "two containers for one sandbox");
        }
    }
    let mut chains = BTreeSet::new();
    for sandbox in members.keys() {
        if !chains.insert(chain_of(sandbox)) {
            return Err(NetworkError::Invalid(format!("chain name collision for sandbox {sandbox}")));
        }
    }
    let mut out = String::from("*filter\n");
    for c in [prefix, iso.as_str(), deny.as_str()].into_iter().chain(chains.iter().map(String::as_str)) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    let stale: Vec<&String> = installed.iter().filter(|c| !chains.contains(*c)).collect();
    for c in &stale {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    let mut rule = |chain: &str, args: &[&str]| {
        out.push_str(&format!("-A {chain} {}\n", args.join(" ")));
    };
    rule(&deny, &["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]);
    rule(&deny, &["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]);
    for (sandbox, ip) in &members {
        let comment = format!("\"sandbar {}\"", comment_safe(sandbox));
        rule(prefix, &["-s", &format!("{ip}/32"), "-m", "comment", "--comment", &comment, "-j", &chain_of(sandbox)]);
        rule(&iso, &["-d", &format!("{ip}/32"), "-j", &deny]);
    }
    for sandbox in members.keys() {
        let chain = chain_of(sandbox);
        let stored = policies.get(*sandbox).cloned().unwrap_or_default();
        rule(&chain, &["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "--ctdir", "REPLY", "-j", "RETURN"]);
        // Links go both ways: the linked sandbox's own link, and every sandbox linked to this one.
        let peers = members.iter().filter(|(other, _)| {
            *other != sandbox
                && (stored.linked_sandbox.as_deref() == Some(**other)
                    || policies.get(**other).is_some_and(|p| p.linked_sandbox.as_deref() == Some(*sandbox)))
        });
        for (_, peer_ip) in peers {
            rule(&chain, &["-d", &format!("{peer_ip}/32"), "-j", "RETURN"]);
        }
        rule(&chain, &["-j", &iso]);
        let policy = &stored.policy;
        if policy.network_block_all {
            rule(&chain, &["-j", &deny]);
        } else if policy.network_allow_list.is_some() {
            let allowed: Vec<Ipv4Cidr> = policy.allowed().map_err(NetworkError::Invalid)?;
            for cidr in allowed {
                rule(&chain, &["-d", &cidr.to_string(), "-j", "RETURN"]);
            }
            rule(&chain, &["-j", &deny]);
        }
    }
    for c in stale {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    Ok((out, chains))
}

/// Rule comments hold sandbox IDs for people reading `iptables -S`; only harmless characters go in.
fn comment_safe(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')).take(200).collect()
}

/// Removes every chain and hook of `runner_id` from every iptables backend on the host (tests' cleanup guards,
/// and a runner retired for good). Blocking; errors name the command.
pub fn purge_blocking(runner_id: &str) -> Result<(), String> {
    let prefix = chain_prefix(runner_id);
    for bin in ["iptables-nft", "iptables-legacy"] {
        let run = |args: &[&str]| std::process::Command::new(bin).arg("-w").arg("5").args(args).output();
        let Ok(listing) = run(&["-S"]) else { continue };
        if !listing.status.success() {
            continue;
        }
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        let ours: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| *c == prefix || c.starts_with(&format!("{prefix}-")))
            .collect();
        if ours.is_empty() {
            continue;
        }
        for hook in HOOKS {
            while run(&["-D", hook, "-j", &prefix]).is_ok_and(|o| o.status.success()) {}
        }
        for c in &ours {
            let _ = run(&["-F", c]);
        }
        for c in &ours {
            let out = run(&["-X", c]).map_err(|e| format!("{bin} -X {c}: {e}"))?;
            if !out.status.success() {
                return Err(format!("{bin} -X {c}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(sandbox: &str, ip: &str) -> Attached {
        Attached { sandbox_id: sandbox.into(), ip: ip.parse().unwrap() }
    }

    #[test]
    fn chain_names_fit_iptables() {
        let c = sandbox_chain(&"r".repeat(64), &"s".repeat(64));
        assert!(c.len() <= 28, "{c}");
        assert!(c.starts_with(&chain_prefix(&"r".repeat(64))));
        assert_ne!(sandbox_chain("r", "a"), sandbox_chain("r", "b"));
        assert_ne!(chain_prefix("r1"), chain_prefix("r2"));
    }

    #[test]
    fn renders_isolation_links_and_policies() {
        let p = chain_prefix("r");
        let policies = BTreeMap::from([
            (
                "blocked".to_owned(),
                Stored {
                    policy: NetworkPolicy { network_block_all: true, ..Default::default() },
                    ..Default::default()
                },
            ),
            (
                "listed".to_owned(),
                Stored {
                    policy: NetworkPolicy { network_allow_list: Some(vec!["10.1.2.3/8".into()]), ..Default::default() },
                    ..Default::default()
                },
            ),
            ("child".to_owned(), Stored { linked_sandbox: Some("parent".into()), ..Default::default() }),
        ]);
        let attached = BTreeMap::from([
            ("c1".to_owned(), att("blocked", "172.17.0.2")),
            ("c2".to_owned(), att("listed", "172.17.0.3")),
            ("c3".to_owned(), att("parent", "172.17.0.4")),
            ("c4".to_owned(), att("child", "172.17.0.5")),
        ]);
        let stale = BTreeSet::from([format!("{p}-DEADBEEF00")]);
        let (text, chains) = render(&p, &policies, &attached, &stale).unwrap();
        assert_eq!(chains.len(), 4);
        let ch = |s: &str| sandbox_chain("r", s);
        let has = |line: String| assert!(text.contains(&line), "missing {line:?} in\n{text}");
        has(format!("-A {p} -s 172.17.0.2/32 -m comment --comment \"sandbar blocked\" -j {}\n", ch("blocked")));
        has(format!("-A {p}-ISO -d 172.17.0.5/32 -j {p}-DENY\n"));
        has(format!("-A {p}-DENY -p tcp -j REJECT --reject-with tcp-reset\n"));
        has(format!("-A {} -j {p}-DENY\n", ch("blocked")));
        has(format!("-A {} -d 10.0.0.0/8 -j RETURN\n-A {} -j {p}-DENY", ch("listed"), ch("listed")));
        // The link, both ways, before the isolation jump.
        has(format!("-A {} -d 172.17.0.4/32 -j RETURN\n-A {} -j {p}-ISO\n", ch("child"), ch("child")));
        has(format!("-A {} -d 172.17.0.5/32 -j RETURN\n-A {} -j {p}-ISO\n", ch("parent"), ch("parent")));
        // Unrestricted: nothing after isolation.
        assert!(!text.contains(&format!("-A {} -j {p}-DENY", ch("parent"))));
        has(format!(":{p}-DEADBEEF00 - [0:0]\n"));
        assert!(text.ends_with(&format!("-X {p}-DEADBEEF00\nCOMMIT\n")), "{text}");
        assert!(!chains.contains(&format!("{p}-DEADBEEF00")));
    }

    #[test]
    fn an_empty_allow_list_allows_nothing() {
        let p = chain_prefix("r");
        let policies = BTreeMap::from([(
            "s".to_owned(),
            Stored {
                policy: NetworkPolicy { network_allow_list: Some(vec![]), ..Default::default() },
                ..Default::default()
            },
        )]);
        let attached = BTreeMap::from([("c".to_owned(), att("s", "10.0.0.2"))]);
        let (text, _) = render(&p, &policies, &attached, &BTreeSet::new()).unwrap();
        assert!(text.contains(&format!("-A {} -j {p}-DENY", sandbox_chain("r", "s"))), "{text}");
    }

    #[test]
    fn comments_keep_only_safe_characters() {
        assert_eq!(comment_safe("a\"b c;d-1"), "abcd-1");
    }
}
