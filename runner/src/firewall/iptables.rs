//! The iptables binaries: finding the backend that holds Docker's `DOCKER-USER` chain, running single commands and
//! `iptables-restore --noflush` transactions, the bridge-netfilter check, and [`purge_blocking`] for cleanup.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::NetworkError;
use super::bridge::bridge_table;
use super::rules::chain_prefix;

/// Chains that jump to this runner's top chain.
pub(super) const HOOKS: [&str; 2] = ["DOCKER-USER", "INPUT"];
pub(super) const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// The iptables binaries of the backend in use.
#[derive(Debug, Clone)]
pub(super) struct Iptables {
    pub(super) iptables: String,
    restore: String,
}

impl Iptables {
    /// The backend whose filter table has `DOCKER-USER`: the configured binary, else `iptables` (what Docker itself
    /// runs), `iptables-nft`, `iptables-legacy`, in that order.
    pub(super) async fn detect(preferred: Option<&str>) -> Result<Self, NetworkError> {
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

    pub(super) async fn run(&self, args: &[&str]) -> Result<String, NetworkError> {
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
    pub(super) async fn restore(&self, input: &str) -> Result<(), NetworkError> {
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
pub(super) fn ensure_bridge_filtering(path: &Path) -> Result<(), NetworkError> {
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

/// Removes every chain and hook of `runner_id` from every iptables backend on the host, and its bridge table
/// (tests' cleanup guards, and a runner retired for good). Blocking; errors name the command.
pub fn purge_blocking(runner_id: &str) -> Result<(), String> {
    let prefix = chain_prefix(runner_id);
    let table = bridge_table(runner_id);
    let listed = std::process::Command::new("nft").args(["list", "table", "bridge", &table]).output();
    if listed.is_ok_and(|o| o.status.success()) {
        let out = std::process::Command::new("nft")
            .args(["delete", "table", "bridge", &table])
            .output()
            .map_err(|e| format!("nft delete table bridge {table}: {e}"))?;
        if !out.status.success() {
            return Err(format!("nft delete table bridge {table}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
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
