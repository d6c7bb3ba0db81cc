//! Network isolation under attack, on real Docker and the host's real iptables and nftables: root in a sandbox (here
//! played by scapy run from the host inside the sandbox's network namespace with `nsenter -n`, which is what root
//! with NET_RAW inside can do) sends from spoofed addresses, poisons ARP and the bridge's MAC table, speaks IPv6,
//! and tries every address of the reachability matrix (cloud metadata, the host's own services, PostgreSQL, the LAN,
//! another runner's sandboxes). Everything must fail, while normal egress and DNS still work. "Outside" is a network
//! namespace each test makes, routed from the host (198.51.100.0/24 and friends); every namespace, route,
//! container and chain is removed by guards, also when a test fails.
#![cfg(test)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::SandboxState;
use sandbar_proto::toolbox::ExecuteRequest;
use sandbar_runner::{Runner, RunnerConfig};

/// Debian's Python, which has scapy (`python3` on PATH may be another one).
const PYTHON: &str = "/usr/bin/python3";
/// Operator-listed private ranges the tests deny: the LAN of this machine kind and the usual private ranges
/// (Docker's own 172.17.0.0/16 is left out: other containers are not the LAN).
const LAN: [&str; 3] = ["10.0.0.0/8", "192.168.0.0/16", "192.0.2.0/24"];

fn sh(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(cmd: &mut Command) -> String {
    let (ok, text) = sh(cmd);
    assert!(ok, "{cmd:?} failed: {text}");
    text
}

fn ip(args: &[&str]) -> String {
    must(Command::new("ip").args(args))
}

/// A network namespace routed from the host: the host end of its veth is `host_addr`, its own end `addr`, and
/// extra addresses on its loopback (routed to it from the host) stand for the metadata service or the LAN.
/// Listeners in it log `tcp <payload>` / `udp <payload>` lines to a file.
struct Outside {
    ns: String,
    host_if: String,
    addr: String,
    routes: Vec<String>,
    listener: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Listens on every TCP port given (answering `ok`) and one UDP port, on all addresses; logs what arrives.
const LISTENER: &str = r#"
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
udp_port = int(sys.argv[2])
def tcp(port, fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, peer = s.accept()
        c.settimeout(2)
        try: data = c.recv(200)
        except Exception: data = b""
        log.write("tcp %s %s\n" % (port, data.decode(errors="replace").strip()))
        try: c.sendall(b"ok\n")
        except Exception: pass
        c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", udp_port))
    while True:
        data, peer = s.recvfrom(2000)
        log.write("udp %s\n" % data.decode(errors="replace").strip())
for p in sys.argv[3:]:
    threading.Thread(target=tcp, args=(int(p), socket.AF_INET, "0.0.0.0"), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

impl Outside {
    /// `slot` (1..=60) picks the test's own /30 in 198.51.100.0/24 and its interface names.
    fn new(slot: u8) -> Self {
        let pid = std::process::id() % 100_000;
        let ns = format!("sbar-out-{pid}-{slot}");
        let host_if = format!("sbo{slot}h{pid}");
        let ns_if = format!("sbo{slot}n{pid}");
        let base = u32::from(slot) * 4;
        let host_addr = format!("198.51.100.{}", base + 1);
        let addr = format!("198.51.100.{}", base + 2);
        let _ = sh(Command::new("ip").args(["netns", "del", &ns]));
        let _ = sh(Command::new("ip").args(["link", "del", &host_if]));
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/30"), "dev", &ns_if]);
        ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &host_addr]);
        let dir = tempfile::tempdir().unwrap();
        Self { ns, host_if, addr, routes: Vec::new(), listener: None, log: dir.path().join("log"), _dir: dir }
    }

    /// Gives the namespace `extra` (a /32) too, routed to it from the host.
    fn add_address(&mut self, extra: &str) {
        ip(&["-n", &self.ns, "addr", "add", &format!("{extra}/32"), "dev", "lo"]);
        ip(&["route", "replace", &format!("{extra}/32"), "via", &self.addr, "dev", &self.host_if]);
        self.routes.push(extra.to_owned());
    }

    fn listen(&mut self, udp_port: u16, tcp_ports: &[u16]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, PYTHON, "-c", LISTENER]).arg(&self.log).arg(udp_port.to_string());
        cmd.args(tcp_ports.iter().map(u16::to_string));
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the outside listener did not start");
        self.listener = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut c) = self.listener.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in &self.routes {
            let _ = sh(Command::new("ip").args(["route", "del", &format!("{r}/32"), "via", &self.addr]));
        }
        let _ = sh(Command::new("ip").args(["link", "del", &self.host_if]));
        let _ = sh(Command::new("ip").args(["netns", "del", &self.ns]));
    }
}

/// The PID of a sandbox's container (its daemon), for `nsenter`.
fn pid_of(runner: &Runner, id: &str) -> String {
    let cid = runner.get(id).unwrap().container_id;
    let pid = docker_inspect(&cid, "{{.State.Pid}}").unwrap();
    assert_ne!(pid, "0", "{id} is not running");
    pid
}

fn ip_of(runner: &Runner, id: &str) -> String {
    let addr = runner.get(id).unwrap().daemon_addr.unwrap();
    addr.rsplit_once(':').unwrap().0.to_owned()
}

fn mac_of(runner: &Runner, id: &str) -> String {
    let cid = runner.get(id).unwrap().container_id;
    docker_inspect(&cid, "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}").unwrap()
}

/// Runs a Python script (scapy imported as `*`) in the network namespace of a sandbox, as root with NET_RAW there.
fn scapy(runner: &Runner, id: &str, script: &str) -> String {
    let pid = pid_of(runner, id);
    let script = format!(
        "import logging\nlogging.getLogger('scapy').setLevel(logging.ERROR)\nfrom scapy.all import *\nconf.verb = 0\n{script}"
    );
    must(Command::new("nsenter").args(["-t", &pid, "-n", PYTHON, "-c", &script]))
}

/// Whether sandbox `id` can open a TCP connection to `host:port` (busybox nc), sending `payload`.
async fn connects(runner: &Runner, id: &str, host: &str, port: u16, payload: &str) -> bool {
    let req = ExecuteRequest {
        command: format!("echo {payload} | nc -w 3 {host} {port}"),
        timeout: Some(15),
        ..Default::default()
    };
    runner.exec(id, &req).await.unwrap().exit_code == 0
}

fn bridge_gateway() -> String {
    docker_inspect_network("{{range .IPAM.Config}}{{.Gateway}}{{end}}")
}

fn docker_inspect_network(format: &str) -> String {
    must(Command::new("docker").args(["network", "inspect", "bridge", "-f", format])).trim().to_owned()
}

fn host_mac(dev: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).unwrap().trim().to_owned()
}

fn host_link_local(dev: &str) -> String {
    let out = ip(&["-6", "-o", "addr", "show", "dev", dev, "scope", "link"]);
    let word = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1).expect("a link-local address");
    word.split('/').next().unwrap().to_owned()
}

/// A host address that is not on the Docker bridge (the machine's own LAN address).
fn host_lan_address() -> String {
    let out = ip(&["-4", "-o", "route", "get", "1.1.1.1"]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "src");
    words.next().expect("a source address").to_owned()
}

fn busybox_sandbox(id: &str, network: NetworkPolicy) -> sandbar_proto::runner::CreateSandbox {
    let mut req = create_req(id, &busybox_image());
    req.network = network;
    req.entrypoint = Some(["httpd", "-f", "-p", "8080", "-h", "/tmp"].map(String::from).to_vec());
    req
}

fn block_all() -> NetworkPolicy {
    NetworkPolicy { network_block_all: true, ..Default::default() }
}

fn config_with_floor(t: &TestRunner) -> RunnerConfig {
    let mut c = t.config();
    c.deny_cidrs = LAN.iter().map(|s| s.to_string()).collect();
    c.firewall_recheck = Duration::from_secs(1);
    c
}

/// Attack 1: packets from a spoofed source (an unregistered address, and another sandbox's address) sent by a
/// block-all sandbox must reach neither a listener outside nor one on another sandbox.
#[tokio::test]
async fn spoofed_sources_get_nowhere() {
    let t = TestRunner::new("netspoof");
    let runner = Runner::new(config_with_floor(&t)).await.unwrap();
    let mut out = Outside::new(1);
    out.listen(9999, &[]);
    let (a, b, c) = (format!("a-{}", unique()), format!("b-{}", unique()), format!("c-{}", unique()));
    runner.create(busybox_sandbox(&a, block_all())).await.unwrap();
    runner.create(busybox_sandbox(&b, NetworkPolicy::default())).await.unwrap();
    runner.create(busybox_sandbox(&c, NetworkPolicy::default())).await.unwrap();
    let (bip, cip) = (ip_of(&runner, &b), ip_of(&runner, &c));

    // A UDP listener on sandbox C (run from the host in C's namespace), until the host sends it "end".
    let cpid = pid_of(&runner, &c);
    let mut c_listener = Command::new("nsenter")
        .args(["-t", &cpid, "-n", PYTHON, "-c"])
        .arg(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9999))\n\
             s.settimeout(60)\nprint('ready',flush=True)\ngot=[]\nwhile True:\n    d=s.recvfrom(2000)[0].decode()\n    \
             if d=='end': break\n    got.append(d)\nprint(' '.join(got),flush=True)",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c_out = BufReader::new(c_listener.stdout.take().unwrap());
    let mut line = String::new();
    c_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    // The controls: an honest packet from B gets out, and one from the host reaches C, so the listeners work.
    scapy(&runner, &b, &format!("send(IP(dst='{}')/UDP(sport=40000,dport=9999)/b'honest-b', count=3)", out.addr));
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.send_to(b"honest-host", format!("{cip}:9999")).unwrap();
    let spoofs = [("unregistered", "172.17.250.250".to_owned()), ("neighbour", bip.clone())];
    let mut script = String::new();
    for (name, src) in &spoofs {
        script.push_str(&format!(
            "for i in range(3):\n    send(IP(src='{src}',dst='{o}')/UDP(sport=40000,dport=9999)/b'spoof-{name}-out')\n    \
             send(IP(src='{src}',dst='{cip}')/UDP(sport=40000,dport=9999)/b'spoof-{name}-sandbox')\n",
            o = out.addr
        ));
    }
    scapy(&runner, &a, &script);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        udp.send_to(b"end", format!("{cip}:9999")).unwrap();
    }
    let mut c_got = String::new();
    c_out.read_to_string(&mut c_got).unwrap();
    let _ = c_listener.wait();
    let outside = out.log();
    assert!(outside.contains("honest-b"), "the control packet did not get out: {outside:?}");
    assert!(c_got.contains("honest-host"), "the control packet did not reach C: {c_got:?}");
    let leaks: Vec<&str> = outside.lines().chain(c_got.split_whitespace()).filter(|l| l.contains("spoof")).collect();
    assert!(
        leaks.is_empty(),
        "spoofed packets from a block-all sandbox got through (-out: outside, -sandbox: C): {leaks:?}"
    );
}

/// Attack 2: ARP replies and gratuitous ARP claiming sandbox B's address, and frames with B's MAC, from sandbox A:
/// the host's neighbour entry for B must keep B's MAC, A must capture none of the host's packets to B's daemon,
/// and the host still reaches B.
#[tokio::test]
async fn arp_and_mac_spoofing_capture_nothing() {
    let t = TestRunner::new("netarp");
    let runner = Runner::new(config_with_floor(&t)).await.unwrap();
    let (a, b) = (format!("a-{}", unique()), format!("b-{}", unique()));
    runner.create(busybox_sandbox(&a, NetworkPolicy::default())).await.unwrap();
    runner.create(busybox_sandbox(&b, NetworkPolicy::default())).await.unwrap();
    let (bip, amac, bmac) = (ip_of(&runner, &b), mac_of(&runner, &a), mac_of(&runner, &b));
    let (gw, gwmac) = (bridge_gateway(), host_mac("docker0"));
    assert_eq!(runner.exec(&b, &exec_req("true")).await.unwrap().exit_code, 0);

    // A poisons for 6 s in the background and sniffs for the host's packets to B's daemon.
    let apid = pid_of(&runner, &a);
    let script = format!(
        "import logging\nlogging.getLogger('scapy').setLevel(logging.ERROR)\nfrom scapy.all import *\nconf.verb=0\n\
         import threading, time\n\
         seen=[]\n\
         sn=AsyncSniffer(iface='eth0', lfilter=lambda p: p.haslayer(TCP) and p[IP].dst=='{bip}' and p[TCP].dport==2280, prn=lambda p: seen.append(1), store=False)\n\
         sn.start()\n\
         end=time.time()+6\n\
         while time.time()<end:\n\
         \x20   sendp(Ether(src='{amac}',dst='{gwmac}')/ARP(op=2,hwsrc='{amac}',psrc='{bip}',hwdst='{gwmac}',pdst='{gw}'),iface='eth0')\n\
         \x20   sendp(Ether(src='{amac}',dst='ff:ff:ff:ff:ff:ff')/ARP(op=1,hwsrc='{amac}',psrc='{bip}',hwdst='00:00:00:00:00:00',pdst='{bip}'),iface='eth0')\n\
         \x20   sendp(Ether(src='{bmac}',dst='{gwmac}')/IP(src='{bip}',dst='{gw}')/ICMP(),iface='eth0')\n\
         \x20   time.sleep(0.1)\n\
         time.sleep(1)\n\
         sn.stop()\n\
         print('captured', len(seen), flush=True)\n"
    );
    let attacker = Command::new("nsenter")
        .args(["-t", &apid, "-n", PYTHON, "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut poisoned = Vec::new();
    let mut exec_ok = true;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let neigh = ip(&["neigh", "show", &bip, "dev", "docker0"]);
        if neigh.contains(&amac) {
            poisoned.push(neigh.trim().to_owned());
        }
        let req = ExecuteRequest { command: "true".into(), timeout: Some(2), ..Default::default() };
        let r = tokio::time::timeout(Duration::from_secs(3), runner.exec(&b, &req)).await;
        exec_ok &= matches!(r, Ok(Ok(ref x)) if x.exit_code == 0);
    }
    let out = attacker.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the attack script failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(poisoned.is_empty(), "the host's neighbour entry for B pointed at A: {poisoned:?}");
    assert!(said.contains("captured 0"), "A captured the host's packets to B's daemon: {said}");
    assert!(exec_ok, "the host lost B's daemon during the attack");
}

/// Attack 3 and the reachability matrix: from a default sandbox, the metadata address, the host's own services
/// (on the bridge gateway, on 0.0.0.0, on the LAN address), PostgreSQL, an operator-denied LAN range, another
/// runner's sandbox and the host's IPv6 link-local address are all closed; an outside address still answers, and
/// so does Docker's resolver.
#[tokio::test]
async fn reachability_matrix_from_a_default_sandbox() {
    let t = TestRunner::new("netmatrix");
    let runner = Runner::new(config_with_floor(&t)).await.unwrap();
    let t2 = TestRunner::new("netmatrix2");
    let runner2 = Runner::new(config_with_floor(&t2)).await.unwrap();
    let mut out = Outside::new(2);
    out.add_address("169.254.169.254");
    out.add_address("10.250.0.2");
    out.listen(9999, &[80, 8000]);

    let gw = bridge_gateway();
    let lan = host_lan_address();
    // Stand-ins for the API (0.0.0.0), the runner (the bridge gateway), proxy metrics (0.0.0.0 and the gateway).
    let api_port = serve("0.0.0.0:0");
    let runner_port = serve(&format!("{gw}:0"));
    let metrics_port = serve("0.0.0.0:0");
    let v6_port = serve("[::]:0");

    let (a, other) = (format!("a-{}", unique()), format!("o-{}", unique()));
    runner.create(busybox_sandbox(&a, NetworkPolicy::default())).await.unwrap();
    runner2.create(busybox_sandbox(&other, NetworkPolicy::default())).await.unwrap();
    let other_ip = ip_of(&runner2, &other);

    let closed: Vec<(String, String, u16)> = vec![
        ("metadata".into(), "169.254.169.254".into(), 80),
        ("API on 0.0.0.0 via the gateway".into(), gw.clone(), api_port),
        ("API on 0.0.0.0 via the LAN address".into(), lan.clone(), api_port),
        ("runner on the gateway".into(), gw.clone(), runner_port),
        ("proxy metrics on 0.0.0.0".into(), gw.clone(), metrics_port),
        ("PostgreSQL via the gateway".into(), gw.clone(), 5432),
        ("PostgreSQL via the LAN address".into(), lan.clone(), 5432),
        ("a denied LAN range".into(), "10.250.0.2".into(), 8000),
        ("another runner's sandbox".into(), other_ip.clone(), 8080),
    ];
    let mut open = Vec::new();
    for (what, host, port) in &closed {
        if connects(&runner, &a, host, *port, "matrix").await {
            open.push(format!("{what} ({host}:{port})"));
        }
    }
    // IPv6 link-local: the host's docker0 address, from raw frames (the sandbox's own IPv6 is off).
    let (ll, gwmac, amac) = (host_link_local("docker0"), host_mac("docker0"), mac_of(&runner, &a));
    let said = scapy(
        &runner,
        &a,
        &format!(
            "me='fe80::42:acff:fe11:99'\n\
             ns=srp1(Ether(src='{amac}',dst='{gwmac}')/IPv6(src=me,dst='{ll}',hlim=255)/ICMPv6ND_NS(tgt='{ll}')\
             /ICMPv6NDOptSrcLLAddr(lladdr='{amac}'), iface='eth0', timeout=2)\n\
             e=Ether(src='{amac}',dst='{gwmac}')/IPv6(src=me,dst='{ll}')\n\
             r1=srp1(e/ICMPv6EchoRequest(), iface='eth0', timeout=2)\n\
             r2=srp1(e/TCP(sport=40001,dport={v6_port},flags='S'), iface='eth0', timeout=2)\n\
             print('nd', ns is not None, 'echo', r1 is not None, 'syn', r2 is not None and r2.haslayer(TCP) and r2[TCP].flags.SA)"
        ),
    );
    if !said.contains("nd False echo False syn False") {
        open.push(format!("the host's IPv6 link-local {ll}: {}", said.trim()));
    }
    assert!(open.is_empty(), "reachable from a default sandbox: {open:#?}");

    // Normal egress and DNS still work.
    assert!(connects(&runner, &a, &out.addr, 8000, "egress").await, "a default sandbox cannot reach the outside");
    assert!(out.log().contains("tcp 8000 egress"), "{}", out.log());
    let resolvers = resolvers();
    if let Some(ns) = resolvers.first() {
        let said = scapy(
            &runner,
            &a,
            &format!(
                "r=sr1(IP(dst='{ns}')/UDP(dport=53)/DNS(rd=1,qd=DNSQR(qname='localhost')),timeout=3)\nprint('dns', r is not None)"
            ),
        );
        assert!(said.contains("dns True"), "DNS to Docker's resolver {ns} stopped working: {said}");
    }
}

/// A TCP listener on `addr` that accepts and closes every connection (for the life of the test process); its port.
fn serve(addr: &str) -> u16 {
    let l = TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}

/// The resolvers Docker gives containers on the default bridge (the host's, minus loopback ones).
fn resolvers() -> Vec<String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|s| s.trim().to_owned())
        .filter(|s| s.parse::<std::net::Ipv4Addr>().is_ok_and(|a| !a.is_loopback()))
        .collect()
}

/// A sandbox's rules are in place before its entrypoint runs: an entrypoint that connects out at once from a
/// block-all sandbox never gets through.
#[tokio::test]
async fn rules_are_in_place_before_the_entrypoint_runs() {
    let t = TestRunner::new("netearly");
    let runner = Runner::new(config_with_floor(&t)).await.unwrap();
    let mut out = Outside::new(3);
    out.listen(9999, &[8000]);
    let id = format!("e-{}", unique());
    let mut req = create_req(&id, &busybox_image());
    req.network = block_all();
    let script = format!(
        "rm -f /tmp/done; i=0; while [ $i -lt 20 ]; do echo early-$i | nc -w 1 {} 8000; i=$((i+1)); done; \
         touch /tmp/done; exec sleep 1000000",
        out.addr
    );
    req.entrypoint = Some(vec!["sh".into(), "-c".into(), script]);
    runner.create(req).await.unwrap();
    wait_for_entrypoint(&runner, &id).await;
    let log = out.log();
    assert!(!log.contains("early"), "the entrypoint of a block-all sandbox got out before its rules: {log:?}");

    // Stopped and started again from outside the runner: the rules come back only when the runner sees the start
    // event, and the entrypoint waits for them again.
    let cid = runner.get(&id).unwrap().container_id;
    must(Command::new("docker").args(["stop", "-t", "1", &cid]));
    for _ in 0..150 {
        if runner.get(&id).unwrap().state != SandboxState::Started {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    must(Command::new("docker").args(["start", &cid]));
    for _ in 0..300 {
        if runner.get(&id).unwrap().state == SandboxState::Started {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runner.get(&id).unwrap().state, SandboxState::Started, "the runner did not adopt the restart");
    wait_for_entrypoint(&runner, &id).await;
    let log = out.log();
    assert!(!log.contains("early"), "a block-all sandbox restarted from outside got out before its rules: {log:?}");

    // Restarted from outside while the runner is down, with its old address taken by another container meanwhile:
    // nothing puts rules on its new address until a runner is back, and the entrypoint waits for that.
    let config = config_with_floor(&t);
    drop(runner);
    must(Command::new("docker").args(["stop", "-t", "1", &cid]));
    let filler = Plain::start();
    must(Command::new("docker").args(["start", &cid]));
    let runner = Runner::new(config).await.unwrap();
    assert_eq!(runner.get(&id).unwrap().state, SandboxState::Started);
    wait_for_entrypoint(&runner, &id).await;
    let log = out.log();
    assert!(!log.contains("early"), "a block-all sandbox restarted while its runner was down got out: {log:?}");
    drop(filler);
}

/// A plain busybox container (not a sandbox), removed on drop.
struct Plain(String);

impl Plain {
    fn start() -> Self {
        let name = format!("sandbar-netplain-{}", unique());
        must(
            Command::new("docker")
                .args(["run", "-d", "--name", &name, "--label"])
                .arg(format!("{TEST_PID_LABEL}={}", std::process::id()))
                .args([&busybox_image(), "sleep", "1000000"]),
        );
        Self(name)
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Waits until the entrypoint of `rules_are_in_place_before_the_entrypoint_runs` is through its tries.
async fn wait_for_entrypoint(runner: &Runner, id: &str) {
    let done = ExecuteRequest { command: "test -f /tmp/done".into(), timeout: Some(5), ..Default::default() };
    for _ in 0..150 {
        if runner.exec(id, &done).await.is_ok_and(|r| r.exit_code == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the entrypoint did not finish its tries");
}

/// The runner's own chain flushed, its DOCKER-USER hook removed and its bridge table deleted (only this runner's:
/// others share the host): the reconciler puts everything back within seconds, and block-all holds again.
#[tokio::test]
async fn tampered_rules_are_repaired() {
    let t = TestRunner::new("netrepair");
    let runner = Runner::new(config_with_floor(&t)).await.unwrap();
    let mut out = Outside::new(4);
    out.listen(9999, &[8000]);
    let id = format!("r-{}", unique());
    runner.create(busybox_sandbox(&id, block_all())).await.unwrap();
    assert!(!connects(&runner, &id, &out.addr, 8000, "before").await, "block-all let a connection out");

    let top = sandbar_runner::firewall::chain_prefix(&t.runner_id);
    let table = sandbar_runner::firewall::bridge_table(&t.runner_id);
    let hook = format!("-A DOCKER-USER -j {top}\n");
    let rules = || must(Command::new("iptables").args(["-w", "5", "-S"]));
    let sandbox_jump = |r: &str| r.lines().any(|l| l.starts_with(&format!("-A {top} ")));
    assert!(rules().contains(&hook) && sandbox_jump(&rules()), "{}", rules());
    must(Command::new("iptables").args(["-w", "5", "-F", &top]));
    must(Command::new("iptables").args(["-w", "5", "-D", "DOCKER-USER", "-j", &top]));
    let _ = sh(Command::new("nft").args(["delete", "table", "bridge", &table]));

    let mut repaired = false;
    for _ in 0..120 {
        let r = rules();
        let nft = sh(Command::new("nft").args(["list", "table", "bridge", &table])).0;
        if r.contains(&hook) && sandbox_jump(&r) && nft {
            repaired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(repaired, "the rules were not repaired:\n{}", rules());
    assert!(!connects(&runner, &id, &out.addr, 8000, "after").await, "block-all did not hold after the repair");
    assert!(!out.log().contains("after"), "{}", out.log());
}
