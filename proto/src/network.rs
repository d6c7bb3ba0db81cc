//! A sandbox's network policy as the control plane hands it to a runner: block all egress, or allow only a list
//! of IPv4 CIDRs (Daytona's `networkBlockAll` and `networkAllowList`), plus the CIDR syntax both sides check.
//! Sandboxes never reach each other unless one was created linked to the other; that link travels in
//! [`crate::runner::CreateSandbox::linked_sandbox`], since it cannot change.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Most CIDRs an allow list may hold (every entry is a rule the kernel checks per packet).
pub const MAX_ALLOW_LIST: usize = 64;

/// Egress of one sandbox. Precedence: `network_block_all`, then `network_allow_list` (an empty list allows
/// nothing), else unrestricted. Replies to connections others opened to the sandbox always pass, and so do the
/// host's own connections to the sandbox (the runner and proxy reaching its daemon).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network_block_all: bool,
    /// IPv4 CIDRs (`10.0.0.0/8`); `None`: no list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_allow_list: Option<Vec<String>>,
}

impl NetworkPolicy {
    /// Whether the sandbox may open connections anywhere (other sandboxes excepted).
    pub fn is_unrestricted(&self) -> bool {
        !self.network_block_all && self.network_allow_list.is_none()
    }

    /// The allow list parsed; an error names the bad entry.
    pub fn allowed(&self) -> Result<Vec<Ipv4Cidr>, String> {
        let list = self.network_allow_list.as_deref().unwrap_or_default();
        if list.len() > MAX_ALLOW_LIST {
            return Err(format!("networkAllowList has {} entries; at most {MAX_ALLOW_LIST} are allowed", list.len()));
        }
        list.iter().map(|s| s.parse()).collect()
    }
}

/// Job: change the network policy of a sandbox. A started sandbox gets it at once (connections it opened that the
/// new policy refuses are cut); a stopped one at its next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateSandboxNetwork {
    pub sandbox_id: String,
    #[serde(default, flatten)]
    pub policy: NetworkPolicy,
}

/// An IPv4 network: address and prefix length. Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        u32::from(ip) & mask == u32::from(self.addr)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR (like 10.0.0.0/8 or 203.0.113.7/32)");
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        // Only plain decimal: `u8::from_str` would accept a leading `+`.
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        Ok(Self { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Daytona's comma-separated `networkAllowList` ("10.0.0.0/8, 1.2.3.4/32"): entries trimmed, empty ones skipped,
/// each checked and normalised. An empty string is an empty list.
pub fn parse_allow_list(s: &str) -> Result<Vec<Ipv4Cidr>, String> {
    let list: Vec<Ipv4Cidr> =
        s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    if list.len() > MAX_ALLOW_LIST {
        return Err(format!("networkAllowList has {} entries; at most {MAX_ALLOW_LIST} are allowed", list.len()));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_normalise_and_reject() {
        let c: Ipv4Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()) && !c.contains("11.0.0.1".parse().unwrap()));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "example.com/8", "::1/128", "1.2.3.4/+8", "1.2.3.4/"] {
            let e = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn allow_lists_as_daytona_sends_them() {
        let l = parse_allow_list(" 192.168.1.0/24, 10.0.0.1/32 ,,").unwrap();
        assert_eq!(l.iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.168.1.0/24", "10.0.0.1/32"]);
        assert!(parse_allow_list("").unwrap().is_empty());
        let e = parse_allow_list("10.0.0.0/8,nope").unwrap_err();
        assert!(e.contains("\"nope\""), "{e}");
        let long = vec!["1.1.1.1/32"; MAX_ALLOW_LIST + 1].join(",");
        assert!(parse_allow_list(&long).is_err());
    }

    #[test]
    fn policy_wire_format() {
        let p: NetworkPolicy = serde_json::from_str("{}").unwrap();
        assert!(p.is_unrestricted());
        assert_eq!(serde_json::to_string(&p).unwrap(), "{}");
        let u: UpdateSandboxNetwork =
            serde_json::from_str(r#"{"sandboxId":"s","networkAllowList":["10.0.0.0/8"]}"#).unwrap();
        assert!(!u.policy.is_unrestricted());
        assert_eq!(u.policy.allowed().unwrap()[0].prefix, 8);
    }
}
