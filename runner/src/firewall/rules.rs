//! The iptables rules: chain names, each sandbox's share of the rules (a [`Fragment`]), the `iptables-restore` input
//! that rewrites every chain of a runner for the running sandboxes, their ports and their policies, with the floor
//! every sandbox has ([`render`]), and the input that changes only some sandboxes' shares ([`render_change`]). Pure
//! functions, no process is run here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use sandbar_proto::network::Ipv4Cidr;
use sandbar_proto::ports;
use sha2::{Digest, Sha256};

use super::{Attached, NetworkError, Stored};

/// The top chain of a runner: `SANDBAR-` and 8 hex digits of the SHA-256 of its ID (chain names are at most 28
/// characters, so IDs cannot appear whole).
pub fn chain_prefix(runner_id: &str) -> String {
    format!("SANDBAR-{}", hex(runner_id, 4))
}

/// The chain of one sandbox of a runner (its egress).
pub fn sandbox_chain(runner_id: &str, sandbox_id: &str) -> String {
    format!("{}-{}", chain_prefix(runner_id), hex(sandbox_id, 5))
}

/// The chain of what may come in to one sandbox from other containers and hosts (the host's own connections to
/// it leave through OUTPUT and are not filtered).
fn inbound_chain(prefix: &str, sandbox_id: &str) -> String {
    format!("{prefix}-{}", hex(&format!("in:{sandbox_id}"), 5))
}

/// Destinations no sandbox reaches: the floor, then every running sandbox of this runner.
pub(super) fn isolation_chain(prefix: &str) -> String {
    format!("{prefix}-ISO")
}

/// Where refused packets go: TCP gets a reset (a new connection is refused, an open one is cut at once: an ICMP
/// error alone would only be a soft error to an established connection), anything else "administratively
/// prohibited".
pub(super) fn deny_chain(prefix: &str) -> String {
    format!("{prefix}-DENY")
}

pub(super) fn hex(s: &str, bytes: usize) -> String {
    Sha256::digest(s.as_bytes()).iter().take(bytes).map(|b| format!("{b:02X}")).collect()
}

/// What every sandbox is denied before its own policy: link-local (cloud metadata), loopback, the host's own
/// addresses (`addrtype LOCAL`, and its broadcast and multicast), and the operator's ranges; DNS to the resolvers
/// Docker hands containers stays open even inside those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Floor {
    pub deny: Vec<Ipv4Cidr>,
    pub resolvers: Vec<Ipv4Addr>,
    /// The runner's advertise address, where each sandbox's daemon ports are published: connections Docker
    /// forwarded from it to those ports that did not come from a bridge port (a proxy on another host) may open
    /// connections to the sandbox. Sandboxes reaching it are stopped earlier, by their own egress chain.
    pub published: Option<Ipv4Addr>,
}

/// One sandbox's share of this runner's rules: its lines in the top chain (egress jump by port, its address from
/// any other port dropped, inbound jump by address), its line in the isolation chain, and its two chains whole.
/// Lines are the arguments after `-A <chain> `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fragment {
    pub top: [String; 3],
    pub iso: String,
    /// The egress chain, then the inbound chain: (name, rules).
    pub chains: [(String, Vec<String>); 2],
}

/// The sandboxes with rules, one entry each (a sandbox ID is served by one container at a time).
pub(super) fn members(attached: &BTreeMap<String, Attached>) -> BTreeMap<&str, &Attached> {
    let mut members: BTreeMap<&str, &Attached> = BTreeMap::new();
    for a in attached.values() {
        if let Some(old) = members.insert(&a.sandbox_id, a) {
            tracing::warn!(sandbox_id = %a.sandbox_id, old = %old.ip, new = %a.ip, "two containers for one sandbox");
        }
    }
    members
}

/// The fragment of `sandbox` (one of `members`): its links are to members only, both ways (its own link, and every
/// member linked to it).
pub(super) fn fragment(
    prefix: &str,
    sandbox: &str,
    a: &Attached,
    members: &BTreeMap<&str, &Attached>,
    policies: &BTreeMap<String, Stored>,
    floor: &Floor,
) -> Result<Fragment, NetworkError> {
    let iso = isolation_chain(prefix);
    let deny = deny_chain(prefix);
    let chain = format!("{prefix}-{}", hex(sandbox, 5));
    let inbound = inbound_chain(prefix, sandbox);
    let ip = format!("{}/32", a.ip);
    let line = |args: &[&str]| args.join(" ");
    let comment = format!("\"sandbar {}\"", comment_safe(sandbox));
    let top = [
        // Egress, by the port a packet came in on (never by its source address alone, which the sender chooses).
        line(&["-m", "physdev", "--physdev-in", &a.port, "-m", "comment", "--comment", &comment, "-j", &chain]),
        // Its address from anywhere but its port is forged.
        line(&["-s", &ip, "-m", "physdev", "!", "--physdev-in", &a.port, "-j", "DROP"]),
        line(&["-d", &ip, "-j", &inbound]),
    ];
    let stored = policies.get(sandbox).cloned().unwrap_or_default();
    let mut out = vec![
        line(&["!", "-s", &ip, "-j", "DROP"]),
        line(&["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "--ctdir", "REPLY", "-j", "RETURN"]),
    ];
    let peers: Vec<Ipv4Addr> = members
        .iter()
        .filter(|(other, _)| {
            **other != sandbox
                && (stored.linked_sandbox.as_deref() == Some(**other)
                    || policies.get(**other).is_some_and(|p| p.linked_sandbox.as_deref() == Some(sandbox)))
        })
        .map(|(_, p)| p.ip)
        .collect();
    for peer_ip in &peers {
        out.push(line(&["-d", &format!("{peer_ip}/32"), "-j", "RETURN"]));
    }
    out.push(line(&["-j", &iso]));
    let policy = &stored.policy;
    if policy.network_block_all {
        out.push(line(&["-j", &deny]));
    } else if policy.network_allow_list.is_some() {
        let allowed: Vec<Ipv4Cidr> = policy.allowed().map_err(NetworkError::Invalid)?;
        for cidr in allowed {
            out.push(line(&["-d", &cidr.to_string(), "-j", "RETURN"]));
        }
        out.push(line(&["-j", &deny]));
    }
    // In: replies to its own connections, and its linked sandboxes (whose sources are bound to their ports).
    let mut inb =
        vec![line(&["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "--ctdir", "REPLY", "-j", "RETURN"])];
    for peer_ip in &peers {
        inb.push(line(&["-s", &format!("{peer_ip}/32"), "-j", "RETURN"]));
    }
    if let Some(adv) = floor.published {
        // The daemon's published ports, reached through the advertise address from outside this host's bridges
        // (the daemon authenticates every request itself). A sandbox's hairpin to the same address comes in
        // through a bridge port and is refused here too, besides by its egress chain.
        let ports = format!("{},{}", ports::TOOLBOX, ports::SSH);
        let orig = format!("{adv}/32");
        inb.push(line(&[
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "--ctorigdst",
            &orig,
            "-m",
            "physdev",
            "!",
            "--physdev-is-in",
            "-j",
            "RETURN",
        ]));
    }
    inb.push(line(&["-j", &deny]));
    Ok(Fragment { top, iso: line(&["-d", &ip, "-j", &deny]), chains: [(chain, out), (inbound, inb)] })
}

/// The `iptables-restore` input that rewrites every chain of this runner, and the sandbox chains it leaves in the
/// kernel: `installed` chains no sandbox has any more are removed.
pub(super) fn render(
    prefix: &str,
    policies: &BTreeMap<String, Stored>,
    attached: &BTreeMap<String, Attached>,
    installed: &BTreeSet<String>,
    floor: &Floor,
) -> Result<(String, BTreeSet<String>), NetworkError> {
    let iso = isolation_chain(prefix);
    let deny = deny_chain(prefix);
    let members = members(attached);
    let mut frags = Vec::with_capacity(members.len());
    let mut chains = BTreeSet::new();
    for (sandbox, a) in &members {
        let f = fragment(prefix, sandbox, a, &members, policies, floor)?;
        for (name, _) in &f.chains {
            if !chains.insert(name.clone()) {
                return Err(NetworkError::Invalid(format!("chain name collision for sandbox {sandbox}")));
            }
        }
        frags.push(f);
    }
    let mut out = String::from("*filter\n");
    for c in [prefix, iso.as_str(), deny.as_str()].into_iter().chain(chains.iter().map(String::as_str)) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    let stale: Vec<&String> = installed.iter().filter(|c| !chains.contains(*c)).collect();
    for c in &stale {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    let mut rule = |chain: &str, args: &str| {
        out.push_str(&format!("-A {chain} {args}\n"));
    };
    rule(&deny, "-p tcp -j REJECT --reject-with tcp-reset");
    rule(&deny, "-j REJECT --reject-with icmp-admin-prohibited");
    // The egress jumps first, then the anti-spoofing drops, then the inbound jumps: the order of the top chain
    // does not change a verdict (every rule there drops or jumps to a chain that drops or returns), so a change
    // appends a sandbox's three lines at the end and the chain is grouped again at the next full rewrite.
    for i in 0..3 {
        for f in &frags {
            if let Some(l) = f.top.get(i) {
                rule(prefix, l);
            }
        }
    }
    // The floor, then the other sandboxes.
    for ns in &floor.resolvers {
        for proto in ["udp", "tcp"] {
            rule(&iso, &format!("-d {ns}/32 -p {proto} -m {proto} --dport 53 -j RETURN"));
        }
    }
    rule(&iso, &format!("-d 169.254.0.0/16 -j {deny}"));
    rule(&iso, &format!("-d 127.0.0.0/8 -j {deny}"));
    for t in ["LOCAL", "BROADCAST", "MULTICAST"] {
        rule(&iso, &format!("-m addrtype --dst-type {t} -j {deny}"));
    }
    for cidr in &floor.deny {
        rule(&iso, &format!("-d {cidr} -j {deny}"));
    }
    for f in &frags {
        rule(&iso, &f.iso);
    }
    for f in &frags {
        for (name, lines) in &f.chains {
            for l in lines {
                rule(name, l);
            }
        }
    }
    for c in stale {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    Ok((out, chains))
}

/// The `iptables-restore --noflush` input that turns the fragments `old` into `new` (keyed by sandbox; a sandbox
/// missing on one side is added or removed) and touches nothing else: the shared chains lose the old lines
/// (`-D`, which fails the whole transaction when a line is not there, so a kernel that drifted is caught) and get
/// the new ones appended, the sandbox chains that differ are rewritten whole, those no sandbox has are removed.
/// `None` when nothing differs. The floor and the hooks are the full rewrite's.
pub(super) fn render_change(
    prefix: &str,
    old: &BTreeMap<String, Fragment>,
    new: &BTreeMap<String, Fragment>,
) -> Option<String> {
    let iso = isolation_chain(prefix);
    let old_chains: BTreeMap<&str, &Vec<String>> =
        old.values().flat_map(|f| f.chains.iter().map(|(n, l)| (n.as_str(), l))).collect();
    let new_chains: BTreeMap<&str, &Vec<String>> =
        new.values().flat_map(|f| f.chains.iter().map(|(n, l)| (n.as_str(), l))).collect();
    let mut decl = String::new();
    let mut body = String::new();
    let mut tail = String::new();
    for (name, lines) in &new_chains {
        if old_chains.get(name) != Some(lines) {
            decl.push_str(&format!(":{name} - [0:0]\n"));
            for l in *lines {
                body.push_str(&format!("-A {name} {l}\n"));
            }
        }
    }
    for name in old_chains.keys().filter(|n| !new_chains.contains_key(*n)) {
        decl.push_str(&format!(":{name} - [0:0]\n"));
        tail.push_str(&format!("-X {name}\n"));
    }
    let mut shared = String::new();
    for (sandbox, f) in old {
        let same = new.get(sandbox).is_some_and(|n| n.top == f.top && n.iso == f.iso);
        if !same {
            for l in &f.top {
                shared.push_str(&format!("-D {prefix} {l}\n"));
            }
            shared.push_str(&format!("-D {iso} {}\n", f.iso));
        }
    }
    // Declared (so created) chains come before the lines that jump to them.
    let mut appended = String::new();
    for (sandbox, f) in new {
        let same = old.get(sandbox).is_some_and(|o| o.top == f.top && o.iso == f.iso);
        if !same {
            for l in &f.top {
                appended.push_str(&format!("-A {prefix} {l}\n"));
            }
            appended.push_str(&format!("-A {iso} {}\n", f.iso));
        }
    }
    if decl.is_empty() && shared.is_empty() && appended.is_empty() {
        return None;
    }
    Some(format!("*filter\n{decl}{shared}{body}{appended}{tail}COMMIT\n"))
}

/// Rule comments hold sandbox IDs for people reading `iptables -S`; only harmless characters go in.
fn comment_safe(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbar_proto::network::NetworkPolicy;

    fn att(sandbox: &str, ip: &str) -> Attached {
        let last = ip.rsplit('.').next().unwrap();
        Attached {
            sandbox_id: sandbox.into(),
            ip: ip.parse().unwrap(),
            port: format!("veth{last}"),
            mac: String::new(),
        }
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
        let floor = Floor {
            deny: vec!["192.168.0.0/16".parse().unwrap()],
            resolvers: vec!["10.0.0.53".parse().unwrap()],
            published: None,
        };
        let (text, chains) = render(&p, &policies, &attached, &stale, &floor).unwrap();
        assert_eq!(chains.len(), 8, "an egress and an inbound chain per sandbox");
        let ch = |s: &str| sandbox_chain("r", s);
        let has = |line: String| assert!(text.contains(&line), "missing {line:?} in\n{text}");
        // Bound to the port, and the address bound to the port.
        has(format!(
            "-A {p} -m physdev --physdev-in veth2 -m comment --comment \"sandbar blocked\" -j {}\n",
            ch("blocked")
        ));
        has(format!("-A {p} -s 172.17.0.2/32 -m physdev ! --physdev-in veth2 -j DROP\n"));
        has(format!("-A {} ! -s 172.17.0.2/32 -j DROP\n-A {} -m conntrack", ch("blocked"), ch("blocked")));
        // The floor before the other sandboxes, DNS to the resolver first.
        has(format!("-A {p}-ISO -d 10.0.0.53/32 -p udp -m udp --dport 53 -j RETURN\n"));
        has(format!("-A {p}-ISO -d 169.254.0.0/16 -j {p}-DENY\n-A {p}-ISO -d 127.0.0.0/8 -j {p}-DENY\n"));
        has(format!("-A {p}-ISO -m addrtype --dst-type LOCAL -j {p}-DENY\n"));
        has(format!("-A {p}-ISO -d 192.168.0.0/16 -j {p}-DENY\n"));
        has(format!("-A {p}-ISO -d 172.17.0.5/32 -j {p}-DENY\n"));
        has(format!("-A {p}-DENY -p tcp -j REJECT --reject-with tcp-reset\n"));
        has(format!("-A {} -j {p}-DENY\n", ch("blocked")));
        has(format!("-A {} -d 10.0.0.0/8 -j RETURN\n-A {} -j {p}-DENY", ch("listed"), ch("listed")));
        // The link, both ways, before the isolation jump.
        has(format!("-A {} -d 172.17.0.4/32 -j RETURN\n-A {} -j {p}-ISO\n", ch("child"), ch("child")));
        has(format!("-A {} -d 172.17.0.5/32 -j RETURN\n-A {} -j {p}-ISO\n", ch("parent"), ch("parent")));
        // In: replies, then the linked sandbox, then nothing.
        let inp = inbound_chain(&p, "parent");
        has(format!("-A {p} -d 172.17.0.4/32 -j {inp}\n"));
        has(format!("-A {inp} -s 172.17.0.5/32 -j RETURN\n-A {inp} -j {p}-DENY\n"));
        has(format!("-A {} -j {p}-DENY\n", inbound_chain(&p, "blocked")));
        // Unrestricted: nothing after isolation.
        assert!(!text.contains(&format!("-A {} -j {p}-DENY", ch("parent"))));
        has(format!(":{p}-DEADBEEF00 - [0:0]\n"));
        assert!(text.ends_with(&format!("-X {p}-DEADBEEF00\nCOMMIT\n")), "{text}");
        assert!(!chains.contains(&format!("{p}-DEADBEEF00")));
    }

    #[test]
    fn published_daemon_ports_open_only_from_outside_the_bridges() {
        let p = chain_prefix("r");
        let attached = BTreeMap::from([("c".to_owned(), att("s", "10.214.3.2"))]);
        let inp = inbound_chain(&p, "s");
        let (plain, _) = render(&p, &BTreeMap::new(), &attached, &BTreeSet::new(), &Floor::default()).unwrap();
        assert!(!plain.contains("--ctorigdst"), "{plain}");
        let floor = Floor { published: Some("10.213.3.2".parse().unwrap()), ..Floor::default() };
        let (text, _) = render(&p, &BTreeMap::new(), &attached, &BTreeSet::new(), &floor).unwrap();
        // Only the daemon's toolbox and SSH ports, only forwarded from the advertise address, never from a bridge
        // port (another sandbox's hairpin), and before the inbound chain's refusal.
        let open = format!(
            "-A {inp} -p tcp -m multiport --dports 2280,22220 -m conntrack --ctstate DNAT --ctorigdst 10.213.3.2/32 \
             -m physdev ! --physdev-is-in -j RETURN\n-A {inp} -j {p}-DENY\n"
        );
        assert!(text.contains(&open), "missing {open:?} in\n{text}");
        // A sandbox's egress still meets the floor (the host's own addresses, the advertise address among them).
        assert!(text.contains(&format!("-A {p}-ISO -m addrtype --dst-type LOCAL -j {p}-DENY\n")), "{text}");
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
        let (text, _) = render(&p, &policies, &attached, &BTreeSet::new(), &Floor::default()).unwrap();
        assert!(text.contains(&format!("-A {} -j {p}-DENY", sandbox_chain("r", "s"))), "{text}");
    }

    #[test]
    fn comments_keep_only_safe_characters() {
        assert_eq!(comment_safe("a\"b c;d-1"), "abcd-1");
    }
}
