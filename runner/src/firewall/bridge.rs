//! The bridge layer: each sandbox's bridge port (the host end of its veth) bound to its IPv4 address and MAC, in one
//! nftables table of family `bridge` per runner, written with `nft -f` in one transaction. Also finding that port
//! from the container's network namespace.
//!
//! ```text
//! table bridge sandbar_<runner hex>
//!   map ports { ifname : verdict }     "<port>" : jump p_<port hex>, one element per sandbox
//!   set macs { ether_addr }            every sandbox's MAC
//!   set ips { ipv4_addr }              every sandbox's address
//!   chain pre  (hook prerouting, priority -300: before the bridge learns a MAC or forwards/delivers a frame)
//!     iifname vmap @ports                                     a sandbox's port: its chain, which accepts
//!     ether saddr @macs drop                                  its MAC, IP or ARP address from any other port
//!     ip saddr @ips drop ; arp saddr ip @ips drop
//!   chain p_<port hex>
//!     ether type != { ip, arp } drop                          IPv6 (link-local included), VLAN tags, everything else
//!     ether saddr != <MAC> drop ; arp saddr ether != <MAC> drop ; arp saddr ip != <IP> drop ; ip saddr != <IP> drop
//!     accept
//! ```
//!
//! A sandbox is a chain and three elements, so one sandbox's change is one small transaction ([`render_change`])
//! whatever the number of sandboxes; a deleted element that is not there fails it whole, which is how a table that
//! drifted is caught (the caller then replaces it with [`render`]). Why here and not ebtables' shared chains: our own
//! table, nothing another program owns is touched, and `nft list table` is the reconciler's read-back. The kernel
//! objects are the ones the nf_tables backend of `ebtables` makes. Prerouting rather than FORWARD/INPUT because
//! learning happens between them: a frame dropped in FORWARD has already taught the bridge its source MAC, which is
//! how a forged MAC steals a neighbour's frames.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::NetworkError;
use super::rules::hex;

/// The nftables bridge table of a runner.
pub fn bridge_table(runner_id: &str) -> String {
    format!("sandbar_{}", hex(runner_id, 4).to_ascii_lowercase())
}

/// One sandbox's port, address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Port<'a> {
    pub port: &'a str,
    pub ip: std::net::Ipv4Addr,
    pub mac: &'a str,
}

/// The `nft -f` input that replaces the table with the rules of `ports` (creating it first, so the delete never
/// fails).
pub(super) fn render(table: &str, ports: &[Port<'_>]) -> String {
    let mut out = format!("table bridge {table} {{}}\ndelete table bridge {table}\ntable bridge {table} {{\n");
    out.push_str("  map ports { type ifname : verdict; }\n");
    out.push_str("  set macs { type ether_addr; }\n  set ips { type ipv4_addr; }\n");
    out.push_str("  chain pre {\n    type filter hook prerouting priority -300; policy accept;\n");
    out.push_str("    iifname vmap @ports\n    ether saddr @macs drop\n    ip saddr @ips drop\n");
    out.push_str("    arp saddr ip @ips drop\n  }\n}\n");
    let none = BTreeSet::new();
    out.push_str(&render_change(table, &none, &ports.iter().copied().collect()).unwrap_or_default());
    out
}

/// The `nft -f` input that turns the table's `old` ports into `new`, touching only the ports that differ; `None`
/// when none does.
pub(super) fn render_change(table: &str, old: &BTreeSet<Port<'_>>, new: &BTreeSet<Port<'_>>) -> Option<String> {
    let mut out = String::new();
    let kept: BTreeSet<&str> = new.iter().map(|p| p.port).collect();
    for p in old.difference(new) {
        let chain = port_chain(p.port);
        out.push_str(&format!("delete element bridge {table} ports {{ \"{}\" }}\n", p.port));
        out.push_str(&format!("delete element bridge {table} macs {{ {} }}\n", p.mac));
        out.push_str(&format!("delete element bridge {table} ips {{ {} }}\n", p.ip));
        if !kept.contains(p.port) {
            out.push_str(&format!("flush chain bridge {table} {chain}\ndelete chain bridge {table} {chain}\n"));
        }
    }
    for p in new.difference(old) {
        let chain = port_chain(p.port);
        let rule = |r: &str| format!("add rule bridge {table} {chain} {r}\n");
        out.push_str(&format!("add chain bridge {table} {chain}\nflush chain bridge {table} {chain}\n"));
        out.push_str(&rule("ether type != { ip, arp } drop"));
        out.push_str(&rule(&format!("ether saddr != {} drop", p.mac)));
        out.push_str(&rule(&format!("arp saddr ether != {} drop", p.mac)));
        out.push_str(&rule(&format!("arp saddr ip != {} drop", p.ip)));
        out.push_str(&rule(&format!("ip saddr != {} drop", p.ip)));
        out.push_str(&rule("accept"));
        out.push_str(&format!("add element bridge {table} ports {{ \"{}\" : jump {chain} }}\n", p.port));
        out.push_str(&format!("add element bridge {table} macs {{ {} }}\n", p.mac));
        out.push_str(&format!("add element bridge {table} ips {{ {} }}\n", p.ip));
    }
    (!out.is_empty()).then_some(out)
}

/// The chain of a port.
pub(super) fn port_chain(port: &str) -> String {
    format!("p_{}", chain_hex(port))
}

/// A bridge table as `nft -j list` shows it, by item, handles left out (they change at every rewrite): `table`,
/// `chain <name>`, `rule <chain> <position>`, `set <name>` (a set or map without its elements) and
/// `elem <set> <element>`, each with its JSON. Empty when the listing is not a table.
pub(super) fn items(listing: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_str::<serde_json::Value>(listing) else {
        return out;
    };
    let Some(serde_json::Value::Array(objects)) = doc.remove("nftables") else { return out };
    let mut positions: BTreeMap<String, usize> = BTreeMap::new();
    for o in objects {
        let serde_json::Value::Object(o) = o else { continue };
        for (kind, v) in o {
            let serde_json::Value::Object(mut v) = v else { continue };
            v.remove("handle");
            let name = v.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_owned();
            let key = match kind.as_str() {
                "table" => "table".to_owned(),
                "chain" => format!("chain {name}"),
                "rule" => {
                    let chain = v.get("chain").and_then(|n| n.as_str()).unwrap_or_default().to_owned();
                    let n = positions.entry(chain.clone()).or_default();
                    *n += 1;
                    format!("rule {chain} {n}")
                }
                "set" | "map" => {
                    if let Some(serde_json::Value::Array(elems)) = v.remove("elem") {
                        for e in elems {
                            out.insert(format!("elem {name} {e}"), String::new());
                        }
                    }
                    format!("set {name}")
                }
                _ => continue,
            };
            out.insert(key, serde_json::Value::Object(v).to_string());
        }
    }
    out
}

/// A port a bridge table binds, with the address and MAC its chain allows (as [`render_change`] writes it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Claim {
    pub port: String,
    pub ip: std::net::Ipv4Addr,
    pub mac: String,
    /// The chain the port's element jumps to.
    pub chain: String,
}

/// The `nft -f` input that takes `claims` out of `table`: their elements and their chains.
pub(super) fn render_release(table: &str, claims: &BTreeSet<Claim>) -> Option<String> {
    let mut out = String::new();
    for c in claims {
        out.push_str(&format!("delete element bridge {table} ports {{ \"{}\" }}\n", c.port));
        out.push_str(&format!("delete element bridge {table} macs {{ {} }}\n", c.mac));
        out.push_str(&format!("delete element bridge {table} ips {{ {} }}\n", c.ip));
        out.push_str(&format!("flush chain bridge {table} {0}\ndelete chain bridge {table} {0}\n", c.chain));
    }
    (!out.is_empty()).then_some(out)
}

/// The ports a bridge table (`nft -j list table` output) binds: each element of its `ports` map with the address
/// and MAC its chain's `!=` rules name. A port whose chain names no address or no MAC is left out.
pub(super) fn claims(listing: &str) -> Vec<Claim> {
    use serde_json::Value;
    let Ok(doc) = serde_json::from_str::<Value>(listing) else { return Vec::new() };
    let Some(objects) = doc.get("nftables").and_then(Value::as_array) else { return Vec::new() };
    let mut chains: BTreeMap<String, (Option<std::net::Ipv4Addr>, Option<String>)> = BTreeMap::new();
    let mut ports: Vec<(String, String)> = Vec::new();
    for o in objects {
        if let Some(map) = o.get("map").filter(|m| m.get("name").and_then(Value::as_str) == Some("ports")) {
            for e in map.get("elem").and_then(Value::as_array).into_iter().flatten() {
                let port = e.get(0).and_then(Value::as_str);
                let chain = e.get(1).and_then(|v| v.pointer("/jump/target")).and_then(Value::as_str);
                if let (Some(port), Some(chain)) = (port, chain) {
                    ports.push((port.to_owned(), chain.to_owned()));
                }
            }
        }
        let Some(rule) = o.get("rule") else { continue };
        let Some(chain) = rule.get("chain").and_then(Value::as_str) else { continue };
        for m in rule.get("expr").and_then(Value::as_array).into_iter().flatten().filter_map(|x| x.get("match")) {
            if m.get("op").and_then(Value::as_str) != Some("!=")
                || m.pointer("/left/payload/field").and_then(Value::as_str) != Some("saddr")
            {
                continue;
            }
            let right = m.get("right").and_then(Value::as_str);
            let entry = chains.entry(chain.to_owned()).or_default();
            match m.pointer("/left/payload/protocol").and_then(Value::as_str) {
                Some("ip") => entry.0 = right.and_then(|r| r.parse().ok()),
                Some("ether") => entry.1 = right.map(str::to_owned),
                _ => {}
            }
        }
    }
    ports
        .into_iter()
        .filter_map(|(port, chain)| match chains.get(&chain) {
            Some((Some(ip), Some(mac))) => Some(Claim { port, ip: *ip, mac: mac.clone(), chain }),
            _ => None,
        })
        .collect()
}

/// The names of the tables in `nft -j list tables` output.
pub(super) fn table_names(listing: &str) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(listing) else { return Vec::new() };
    doc.get("nftables")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.pointer("/table/name").and_then(serde_json::Value::as_str).map(str::to_owned))
        .collect()
}

/// The items of a port's elements (as [`items`] names them): in `ports`, `macs` and `ips`.
pub(super) fn element_items(p: &Port<'_>) -> [String; 3] {
    let jump = serde_json::json!([p.port, {"jump": {"target": port_chain(p.port)}}]);
    [
        format!("elem ports {jump}"),
        format!("elem macs {}", serde_json::Value::from(p.mac)),
        format!("elem ips {}", serde_json::Value::from(p.ip.to_string())),
    ]
}

/// Removes a chain and its rules from `items`.
pub(super) fn remove_chain(items: &mut BTreeMap<String, String>, chain: &str) {
    items.remove(&format!("chain {chain}"));
    let rules = format!("rule {chain} ");
    items.retain(|k, _| !k.starts_with(&rules));
}

/// Port chains are named after the port, so a claim (same port, another sandbox) leaves the table as it is.
fn chain_hex(port: &str) -> String {
    hex(port, 5).to_ascii_lowercase()
}

/// Whether `s` is a MAC address as nft and `ip link` write it (six lowercase hex pairs).
pub(super) fn valid_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':').count() == 6
        && s.split(':').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
}

/// Whether `s` can be an interface name in an nft string (what the kernel allows, minus quotes).
pub(super) fn valid_port(s: &str) -> bool {
    !s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Runs `nft` with `args`, feeding `input` on stdin when given; returns stdout.
pub(super) async fn nft(args: &[&str], input: Option<&str>) -> Result<String, NetworkError> {
    let command = format!("nft {}", args.join(" "));
    let err = |reason: String| NetworkError::Command { command: command.clone(), reason };
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().await.map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host end of the veth of the container whose process is `pid`, and the container end's MAC: the interface
/// with `mac` (else `eth0`) in the container's namespace names its peer's ifindex (`eth0@if29`), which is a port of
/// a bridge on the host. `ip` runs in the container's network namespace only (no file of the container is read),
/// so this works for runc and for gVisor's `--network=host` mode alike.
pub(super) async fn host_port(pid: u32, mac: Option<&str>) -> Result<(String, String), NetworkError> {
    let pid_s = pid.to_string();
    let args = ["-t", pid_s.as_str(), "-n", "ip", "-o", "link", "show"];
    let command = format!("nsenter {}", args.join(" "));
    let err = |reason: String| NetworkError::Command { command: command.clone(), reason };
    let out = tokio::process::Command::new("nsenter")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let (peer, found_mac) = peer_of(&listing, mac)
        .ok_or_else(|| err(format!("no interface {} with a veth peer in the container", mac.unwrap_or("eth0"))))?;
    let port = port_with_index(Path::new("/sys/class/net"), peer)
        .ok_or_else(|| err(format!("no host interface has ifindex {peer} (the container's veth peer)")))?;
    if !Path::new("/sys/class/net").join(&port).join("brport").exists() {
        return Err(err(format!("{port}, the container's veth peer, is not a bridge port")));
    }
    Ok((port, found_mac))
}

/// From `ip -o link show` output: the peer ifindex and MAC of the interface with `mac` (else `eth0`).
fn peer_of(listing: &str, mac: Option<&str>) -> Option<(u32, String)> {
    listing.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let name = words.nth(1)?.trim_end_matches(':');
        let (dev, peer) = name.split_once("@if")?;
        let mut rest = line.split_whitespace().skip_while(|w| *w != "link/ether");
        let line_mac = rest.nth(1)?.to_ascii_lowercase();
        let wanted = match mac {
            Some(m) => m.eq_ignore_ascii_case(&line_mac),
            None => dev == "eth0",
        };
        wanted.then(|| Some((peer.parse().ok()?, line_mac))).flatten()
    })
}

fn port_with_index(class_net: &Path, index: u32) -> Option<String> {
    std::fs::read_dir(class_net).ok()?.flatten().find_map(|e| {
        let idx = std::fs::read_to_string(e.path().join("ifindex")).ok()?;
        (idx.trim().parse::<u32>().ok()? == index).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_read_back_what_render_writes() {
        // The JSON `nft -j list table` gives for a table `render` wrote (handles and metainfo left out).
        let c = chain_hex("vethgone");
        let listing = serde_json::json!({"nftables": [
            {"table": {"family": "bridge", "name": "t"}},
            {"map": {"family": "bridge", "name": "ports", "table": "t", "type": "ifname", "map": "verdict",
                     "elem": [["vethgone", {"jump": {"target": format!("p_{c}")}}], ["vethhalf", {"jump": {"target": "p_x"}}]]}},
            {"set": {"family": "bridge", "name": "ips", "table": "t", "type": "ipv4_addr", "elem": ["172.17.0.3"]}},
            {"rule": {"family": "bridge", "table": "t", "chain": format!("p_{c}"), "expr": [
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}}, "right": "02:42:ac:11:00:03"}},
                {"drop": null}]}},
            {"rule": {"family": "bridge", "table": "t", "chain": format!("p_{c}"), "expr": [
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "172.17.0.3"}},
                {"drop": null}]}},
            // A chain with an address but no MAC rule is not a claim this module wrote.
            {"rule": {"family": "bridge", "table": "t", "chain": "p_x", "expr": [
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "172.17.0.4"}},
                {"drop": null}]}}
        ]})
        .to_string();
        let got = claims(&listing);
        let want = Claim {
            port: "vethgone".into(),
            ip: "172.17.0.3".parse().unwrap(),
            mac: "02:42:ac:11:00:03".into(),
            chain: format!("p_{c}"),
        };
        assert_eq!(got, vec![want]);
        assert!(claims("not json").is_empty() && claims("{}").is_empty());
        let tables = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "bridge", "name": "sandbar_ab", "handle": 3}}]}"#;
        assert_eq!(table_names(tables), vec!["sandbar_ab".to_owned()]);
        // Releasing it takes its elements and its chain out.
        let text = render_release("t", &got.into_iter().collect()).unwrap();
        assert!(text.contains("delete element bridge t ips { 172.17.0.3 }\n"), "{text}");
        assert!(text.contains("delete element bridge t macs { 02:42:ac:11:00:03 }\n"), "{text}");
        assert!(text.contains(&format!("delete chain bridge t p_{c}\n")), "{text}");
        assert_eq!(render_release("t", &BTreeSet::new()), None);
    }

    #[test]
    fn finds_the_peer_by_mac_or_eth0() {
        let l = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n\
                 28: eth0@if29: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1400 qdisc noqueue state UP mode DEFAULT group default \\    link/ether 02:42:ac:11:00:03 brd ff:ff:ff:ff:ff:ff link-netnsid 0\n";
        assert_eq!(peer_of(l, None), Some((29, "02:42:ac:11:00:03".into())));
        assert_eq!(peer_of(l, Some("02:42:AC:11:00:03")), Some((29, "02:42:ac:11:00:03".into())));
        assert_eq!(peer_of(l, Some("02:42:ac:11:00:04")), None);
    }

    #[test]
    fn renders_one_table_with_a_chain_per_port() {
        let ports = [Port { port: "veth1234", ip: "172.17.0.2".parse().unwrap(), mac: "02:42:ac:11:00:02" }];
        let t = render("sandbar_abcd", &ports);
        assert!(t.starts_with("table bridge sandbar_abcd {}\ndelete table bridge sandbar_abcd\n"), "{t}");
        let c = chain_hex("veth1234");
        assert!(t.contains("iifname vmap @ports\n    ether saddr @macs drop\n    ip saddr @ips drop\n"), "{t}");
        assert!(t.contains(&format!("add element bridge sandbar_abcd ports {{ \"veth1234\" : jump p_{c} }}\n")), "{t}");
        assert!(t.contains("macs { 02:42:ac:11:00:02 }\n") && t.contains("ips { 172.17.0.2 }\n"), "{t}");
        assert!(t.contains(&format!("add rule bridge sandbar_abcd p_{c} ip saddr != 172.17.0.2 drop\n")), "{t}");
        assert!(t.contains("ether type != { ip, arp } drop") && t.contains(&format!("p_{c} accept\n")), "{t}");
        assert!(valid_mac("02:42:ac:11:00:02") && !valid_mac("02:42:ac:11:00:0g") && !valid_mac("02:42"));
        assert!(valid_port("veth1234") && !valid_port("a\"b") && !valid_port(""));
    }

    #[test]
    fn items_leave_out_handles_and_split_elements() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "bridge", "name": "t", "handle": 6}},
            {"map": {"family": "bridge", "name": "ports", "table": "t", "type": "ifname", "handle": 3, "map": "verdict",
              "elem": [["vetha", {"jump": {"target": "p_aa"}}]]}},
            {"set": {"family": "bridge", "name": "macs", "table": "t", "type": "ether_addr", "handle": 4, "elem": ["02:42:ac:11:00:02"]}},
            {"chain": {"family": "bridge", "table": "t", "name": "p_aa", "handle": 1}},
            {"rule": {"family": "bridge", "table": "t", "chain": "p_aa", "handle": 7, "expr": [{"drop": null}]}},
            {"rule": {"family": "bridge", "table": "t", "chain": "p_aa", "handle": 8, "expr": [{"accept": null}]}}]}"#;
        let mut it = items(listing);
        let p = Port { port: "vetha", ip: "172.17.0.2".parse().unwrap(), mac: "02:42:ac:11:00:02" };
        let [port, mac, ip] = element_items(&p);
        assert!(it.contains_key(&port.replace(&port_chain("vetha"), "p_aa")), "{it:#?}");
        assert!(it.contains_key(&mac) && !it.contains_key(&ip), "{it:#?}");
        assert_eq!(
            it.get("rule p_aa 2").map(String::as_str),
            Some(r#"{"chain":"p_aa","expr":[{"accept":null}],"family":"bridge","table":"t"}"#)
        );
        assert!(!it.values().any(|v| v.contains("handle")), "{it:#?}");
        remove_chain(&mut it, "p_aa");
        assert!(!it.keys().any(|k| k.contains("rule") || k == "chain p_aa"), "{it:#?}");
        assert!(items("").is_empty());
    }

    #[test]
    fn a_change_touches_only_the_ports_that_differ() {
        let a = Port { port: "vetha", ip: "172.17.0.2".parse().unwrap(), mac: "02:42:ac:11:00:02" };
        let b = Port { port: "vethb", ip: "172.17.0.3".parse().unwrap(), mac: "02:42:ac:11:00:03" };
        let b2 = Port { ip: "172.17.0.4".parse().unwrap(), ..b };
        let old = BTreeSet::from([a, b]);
        assert_eq!(render_change("t", &old, &old), None);
        let gone = render_change("t", &old, &BTreeSet::from([a])).unwrap();
        let cb = chain_hex("vethb");
        assert_eq!(
            gone,
            format!(
                "delete element bridge t ports {{ \"vethb\" }}\ndelete element bridge t macs {{ 02:42:ac:11:00:03 }}\n\
                 delete element bridge t ips {{ 172.17.0.3 }}\nflush chain bridge t p_{cb}\ndelete chain bridge t p_{cb}\n"
            )
        );
        // The same port with a new address: its chain is rewritten, not deleted.
        let moved = render_change("t", &old, &BTreeSet::from([a, b2])).unwrap();
        assert!(!moved.contains("delete chain") && !moved.contains("vetha"), "{moved}");
        assert!(moved.contains("delete element bridge t ips { 172.17.0.3 }\n"), "{moved}");
        assert!(moved.contains(&format!("p_{cb} ip saddr != 172.17.0.4 drop\n")), "{moved}");
    }
}
