//! The bridge layer: each sandbox's bridge port (the host end of its veth) bound to its IPv4 address and MAC, in one
//! nftables table of family `bridge` per runner, written with `nft -f` in one transaction. Also finding that port
//! from the container's network namespace.
//!
//! ```text
//! table bridge sandbar_<runner hex>
//!   chain pre  (hook prerouting, priority -300: before the bridge learns a MAC or forwards/delivers a frame)
//!     iifname <port> jump p_<port hex> ; accept           one pair per sandbox
//!     ether saddr <sandbox MAC> drop                          its MAC, IP or ARP address from any other port
//!     ip saddr <sandbox IP> drop ; arp saddr ip <sandbox IP> drop
//!   chain p_<port hex>
//!     ether type != { ip, arp } drop                          IPv6 (link-local included), VLAN tags, everything else
//!     ether saddr != <MAC> drop ; arp saddr ether != <MAC> drop ; arp saddr ip != <IP> drop ; ip saddr != <IP> drop
//! ```
//!
//! Why here and not ebtables' shared chains: our own table is replaced whole in one transaction, nothing another
//! program owns is touched, and `nft list table` is the reconciler's read-back. The kernel objects are the ones the
//! nf_tables backend of `ebtables` makes. Prerouting rather than FORWARD/INPUT because learning happens between them:
//! a frame dropped in FORWARD has already taught the bridge its source MAC, which is how a forged MAC steals a
//! neighbour's frames.

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
pub(super) struct Port<'a> {
    pub port: &'a str,
    pub ip: std::net::Ipv4Addr,
    pub mac: &'a str,
}

/// The `nft -f` input that replaces the table with the rules of `ports` (creating it first, so the delete never
/// fails).
pub(super) fn render(table: &str, ports: &[Port<'_>]) -> String {
    let mut out = format!("table bridge {table} {{}}\ndelete table bridge {table}\ntable bridge {table} {{\n");
    // Port chains first: a jump names a chain already declared.
    for p in ports {
        out.push_str(&format!("  chain p_{} {{\n", chain_hex(p.port)));
        out.push_str("    ether type != { ip, arp } drop\n");
        out.push_str(&format!("    ether saddr != {} drop\n", p.mac));
        out.push_str(&format!("    arp saddr ether != {} drop\n", p.mac));
        out.push_str(&format!("    arp saddr ip != {} drop\n", p.ip));
        out.push_str(&format!("    ip saddr != {} drop\n", p.ip));
        out.push_str("  }\n");
    }
    out.push_str("  chain pre {\n    type filter hook prerouting priority -300; policy accept;\n");
    for p in ports {
        out.push_str(&format!("    iifname \"{}\" jump p_{}\n", p.port, chain_hex(p.port)));
        out.push_str(&format!("    iifname \"{}\" accept\n", p.port));
    }
    for p in ports {
        out.push_str(&format!(
            "    ether saddr {} drop\n    ip saddr {} drop\n    arp saddr ip {} drop\n",
            p.mac, p.ip, p.ip
        ));
    }
    out.push_str("  }\n");
    out.push_str("}\n");
    out
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
        assert!(t.contains(&format!("iifname \"veth1234\" jump p_{c}\n    iifname \"veth1234\" accept\n")), "{t}");
        assert!(t.contains("ether saddr 02:42:ac:11:00:02 drop\n    ip saddr 172.17.0.2 drop\n"), "{t}");
        assert!(t.contains("ip saddr != 172.17.0.2 drop") && t.contains("ether type != { ip, arp } drop"), "{t}");
        assert!(valid_mac("02:42:ac:11:00:02") && !valid_mac("02:42:ac:11:00:0g") && !valid_mac("02:42"));
        assert!(valid_port("veth1234") && !valid_port("a\"b") && !valid_port(""));
    }
}
