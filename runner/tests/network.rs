//! Network isolation and egress rules on real Docker and the host's real iptables: sandboxes cannot reach each
//! other unless linked, block-all and allow lists hold and change while a sandbox runs, survive stops, restarts
//! from outside and runner restarts, and their chains go with the sandbox. Targets are busybox httpd containers
//! the tests start; every container and chain is removed by guards, also when a test fails.
#![cfg(test)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::{Resources, SandboxState, UpdateSandboxNetwork};
use sandbar_proto::toolbox::ExecuteRequest;
use sandbar_runner::config::WarmPoolConfig;
use sandbar_runner::firewall::{chain_prefix, sandbox_chain};
use sandbar_runner::{Runner, SandboxError};

const PORT: u16 = 8080;

fn httpd() -> Vec<String> {
    ["httpd", "-f", "-p", "8080", "-h", "/tmp"].map(String::from).to_vec()
}

/// Plain containers (not sandboxes) that serve HTTP on 8080 and swallow whatever a client sends to 9000 (for a
/// connection that stays open); removed on drop.
struct Targets(Vec<String>);

impl Targets {
    fn start(&mut self, image: &str) -> String {
        let name = format!("sandbar-nettarget-{}", unique());
        let out = Command::new("docker")
            .args(["run", "-d", "--name", &name, "--label"])
            .arg(format!("{TEST_PID_LABEL}={}", std::process::id()))
            .arg(image)
            .args([
                "sh",
                "-c",
                "httpd -p 8080 -h /tmp && while true; do sleep 1000000 | nc -l -p 9000 >/dev/null; done",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "docker run: {}", String::from_utf8_lossy(&out.stderr));
        self.0.push(name.clone());
        docker_inspect(&name, "{{.NetworkSettings.IPAddress}}").unwrap()
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&self.0).output();
        }
    }
}

/// The filter table as the backend Docker uses shows it.
fn rules() -> String {
    let out = Command::new("iptables").args(["-w", "5", "-S"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether sandbox `id` can open a TCP connection to `ip:8080`.
async fn reaches(runner: &Runner, id: &str, ip: &str) -> bool {
    let req =
        ExecuteRequest { command: format!("nc -w 3 {ip} {PORT} </dev/null"), timeout: Some(10), ..Default::default() };
    runner.exec(id, &req).await.unwrap().exit_code == 0
}

/// Polls `cond` every 100 ms for up to 30 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

fn ip_of(runner: &Runner, id: &str) -> String {
    let addr = runner.get(id).unwrap().daemon_addr.unwrap();
    addr.rsplit_once(':').unwrap().0.to_owned()
}

fn policy(block_all: bool, allow: Option<&[&str]>) -> NetworkPolicy {
    NetworkPolicy {
        network_block_all: block_all,
        network_allow_list: allow.map(|l| l.iter().map(|s| s.to_string()).collect()),
    }
}

async fn set(runner: &Runner, id: &str, p: NetworkPolicy) {
    runner.update_network(UpdateSandboxNetwork { sandbox_id: id.into(), policy: p }).await.unwrap();
}

#[tokio::test]
async fn sandboxes_are_isolated_unless_linked() {
    let image = busybox_image();
    let t = TestRunner::new("netiso");
    let mut targets = Targets(Vec::new());
    let target = targets.start(&image);
    let runner = t.runner().await;

    let mk = |id: &str, linked: Option<&str>| {
        let mut req = create_req(id, &image);
        req.entrypoint = Some(httpd());
        req.linked_sandbox = linked.map(str::to_owned);
        req
    };
    let (p, q, c) = (format!("p-{}", unique()), format!("q-{}", unique()), format!("c-{}", unique()));
    runner.create(mk(&p, None)).await.unwrap();
    runner.create(mk(&q, None)).await.unwrap();
    runner.create(mk(&c, Some(&p))).await.unwrap();
    let (pip, qip, cip) = (ip_of(&runner, &p), ip_of(&runner, &q), ip_of(&runner, &c));

    // Unlinked sandboxes cannot reach each other; the linked pair can, both ways.
    assert!(!reaches(&runner, &q, &pip).await, "an unlinked sandbox reached another");
    assert!(!reaches(&runner, &p, &qip).await);
    assert!(!reaches(&runner, &q, &cip).await);
    assert!(reaches(&runner, &c, &pip).await, "a linked sandbox cannot reach its parent");
    assert!(reaches(&runner, &p, &cip).await, "the parent cannot reach its linked sandbox");
    // Isolation is not an egress policy: other containers stay reachable.
    assert!(reaches(&runner, &q, &target).await);
    assert_eq!(runner.network_policy(&c).await.unwrap().1.as_deref(), Some(p.as_str()));

    let r = rules();
    let top = chain_prefix(&t.runner_id);
    for hook in ["DOCKER-USER", "INPUT"] {
        assert!(r.contains(&format!("-A {hook} -j {top}\n")), "no {hook} hook in\n{r}");
    }
    for id in [&p, &q, &c] {
        assert!(r.contains(&format!("-N {}\n", sandbox_chain(&t.runner_id, id))), "no chain for {id}");
    }

    // A destroyed sandbox's chain goes with it, and its address leaves the isolation list.
    runner.destroy(&p).await.unwrap();
    let r = rules();
    assert!(!r.contains(&sandbox_chain(&t.runner_id, &p)), "chain of a destroyed sandbox left:\n{r}");
    assert!(!r.contains(&format!("-d {pip}/32")), "{r}");
    for id in [&q, &c] {
        runner.destroy(id).await.unwrap();
    }
    let left: Vec<String> = rules()
        .lines()
        .filter(|l| l.starts_with(&format!("-N {top}-")) && !l.ends_with("-ISO") && !l.ends_with("-DENY"))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "sandbox chains left after every sandbox was destroyed: {left:?}");
}

#[tokio::test]
async fn egress_policies_hold_change_live_and_survive_restarts() {
    let image = busybox_image();
    let t = TestRunner::new("netegress");
    let state = tempfile::tempdir().unwrap();
    let mut config = t.config();
    config.state_dir = Some(state.path().to_owned());
    let mut targets = Targets(Vec::new());
    let (t1, t2) = (targets.start(&image), targets.start(&image));
    let runner = Runner::new(config.clone()).await.unwrap();

    // Created with block-all: nothing goes out, yet the host still reaches its daemon (every exec here).
    let a = format!("a-{}", unique());
    let mut req = create_req(&a, &image);
    req.network = policy(true, None);
    runner.create(req).await.unwrap();
    assert!(!reaches(&runner, &a, &t1).await, "block-all let a connection out");

    // Changed while running, each change effective at once.
    let took = std::time::Instant::now();
    set(&runner, &a, policy(false, Some(&[&format!("{t1}/32")]))).await;
    eprintln!("figure: a policy change on a running sandbox took {:?}", took.elapsed());
    assert!(reaches(&runner, &a, &t1).await, "the target's /32 is allowed");
    assert!(!reaches(&runner, &a, &t2).await, "an address outside the allow list was reached");
    set(&runner, &a, policy(false, Some(&["203.0.113.0/24"]))).await;
    assert!(!reaches(&runner, &a, &t1).await, "a different CIDR allowed the target");
    set(&runner, &a, NetworkPolicy::default()).await;
    assert!(reaches(&runner, &a, &t1).await && reaches(&runner, &a, &t2).await);
    set(&runner, &a, policy(true, None)).await;
    assert!(!reaches(&runner, &a, &t1).await);

    // A connection opened while allowed is cut when the policy tightens, not only new ones refused.
    set(&runner, &a, NetworkPolicy::default()).await;
    let hold = ExecuteRequest {
        command: format!("((while true; do echo x; sleep 0.2; done) | nc {t1} 9000) </dev/null >/dev/null 2>&1 &"),
        timeout: Some(10),
        ..Default::default()
    };
    runner.exec(&a, &hold).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = ExecuteRequest { command: "pidof nc >/dev/null".into(), timeout: Some(5), ..Default::default() };
    assert_eq!(runner.exec(&a, &alive).await.unwrap().exit_code, 0, "the held connection did not start");
    set(&runner, &a, policy(true, None)).await;
    let mut cut = false;
    for _ in 0..40 {
        if runner.exec(&a, &alive).await.unwrap().exit_code != 0 {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(cut, "a connection opened before block-all kept going");

    // Created with an allow list.
    let b = format!("b-{}", unique());
    let mut req = create_req(&b, &image);
    req.network = policy(false, Some(&[&format!("{t2}/32")]));
    runner.create(req).await.unwrap();
    assert!(reaches(&runner, &b, &t2).await && !reaches(&runner, &b, &t1).await);

    // Stop and start: the policy is kept, and the rules follow the (possibly new) address.
    set(&runner, &a, policy(false, Some(&[&format!("{t1}/32")]))).await;
    runner
        .stop(sandbar_proto::runner::StopSandbox { sandbox_id: a.clone(), force: true, timeout_secs: None })
        .await
        .unwrap();
    assert!(!rules().contains(&format!("-N {}\n", sandbox_chain(&t.runner_id, &a))), "a stopped sandbox kept rules");
    runner.start(&a).await.unwrap();
    let aip = ip_of(&runner, &a);
    assert!(rules().contains(&format!("-s {aip}/32 ")), "not re-hooked at {aip}");
    assert!(reaches(&runner, &a, &t1).await && !reaches(&runner, &a, &t2).await);

    // Stopped and started from outside the runner, with another container taking its old address meanwhile (the
    // bridge hands out the lowest free one): the freed address keeps no rules and the new one gets them.
    let cid = runner.get(&a).unwrap().container_id;
    assert!(Command::new("docker").args(["stop", "-t", "5", &cid]).output().unwrap().status.success());
    wait_until("the runner sees the stop", || runner.get(&a).unwrap().state != SandboxState::Started).await;
    assert!(!rules().contains(&format!("-s {aip}/32 ")), "rules kept for the freed address {aip}");
    let filler = targets.start(&image);
    assert!(Command::new("docker").args(["start", &cid]).output().unwrap().status.success());
    let new_ip = docker_inspect(&cid, "{{.NetworkSettings.IPAddress}}").unwrap();
    if filler == aip {
        assert_ne!(new_ip, aip);
    } else {
        eprintln!("note: the old address {aip} went to another container than the filler ({filler})");
    }
    wait_until("the runner adopts the restarted sandbox", || {
        let i = runner.get(&a).unwrap();
        i.state == SandboxState::Started && i.daemon_addr == Some(format!("{new_ip}:2280"))
    })
    .await;
    assert!(rules().contains(&format!("-s {new_ip}/32 ")), "not re-hooked at {new_ip} after a restart");
    assert!(reaches(&runner, &a, &t1).await && !reaches(&runner, &a, &t2).await);
    let filler_name = targets.0.last().unwrap().clone();
    let filler_reach = Command::new("docker")
        .args(["exec", &filler_name, "sh", "-c", &format!("nc -w 3 {t2} {PORT} </dev/null")])
        .status()
        .unwrap();
    assert!(filler_reach.success(), "the container on the sandbox's old address inherited its rules");

    // A runner restart rebuilds the same rules from the label and the state dir, and drops chains of
    // sandboxes that went while it was down.
    drop(runner);
    let bcid = docker_inspect(&format!("sandbar-{b}"), "{{.Id}}").unwrap();
    assert!(Command::new("docker").args(["rm", "-f", &bcid]).output().unwrap().status.success());
    let runner = Runner::new(config).await.unwrap();
    let (p, _) = runner.network_policy(&a).await.unwrap();
    assert_eq!(p, policy(false, Some(&[&format!("{t1}/32")])), "policy lost over a runner restart");
    assert!(reaches(&runner, &a, &t1).await && !reaches(&runner, &a, &t2).await);
    assert!(!rules().contains(&sandbox_chain(&t.runner_id, &b)), "chain of a removed container survived a restart");

    runner.destroy(&a).await.unwrap();
    assert!(!rules().contains(&sandbox_chain(&t.runner_id, &a)));
}

#[tokio::test]
async fn bad_policies_fail_with_a_reason_and_leave_nothing() {
    let image = busybox_image();
    let (t, runner) = TestRunner::start("netbad").await;

    let id = format!("bad-{}", unique());
    let mut req = create_req(&id, &image);
    req.network = policy(false, Some(&["10.0.0.0/8", "nope"]));
    match runner.create(req).await {
        Err(SandboxError::InvalidRequest(m)) => assert!(m.contains("\"nope\""), "{m}"),
        other => panic!("expected an invalid request, got {other:?}"),
    }
    let mut req = create_req(&id, &image);
    req.linked_sandbox = Some("no-such-sandbox".into());
    match runner.create(req).await {
        Err(SandboxError::InvalidRequest(m)) => assert!(m.contains("no-such-sandbox"), "{m}"),
        other => panic!("expected an invalid request, got {other:?}"),
    }
    assert!(t.containers().is_empty(), "a refused create left a container");
    assert!(runner.get(&id).is_none());

    // Without a state dir a change could not survive a restart: refused with the reason.
    let ok = format!("ok-{}", unique());
    runner.create(create_req(&ok, &image)).await.unwrap();
    let err = runner
        .update_network(UpdateSandboxNetwork { sandbox_id: ok.clone(), policy: policy(true, None) })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("state dir"), "{err}");
    let err = runner
        .update_network(UpdateSandboxNetwork { sandbox_id: "missing".into(), policy: policy(true, None) })
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::NotFound(_)), "{err}");
    runner.destroy(&ok).await.unwrap();
}

/// This runner's lines of `iptables -S` (its chains, their rules, the hooks) and of its bridge table, sorted, with
/// the elements of sets and maps one per line: what a change and a full rewrite must agree on (the order of the top
/// chain's lines is not a verdict, see `firewall.rs`).
fn kernel_rules(runner_id: &str) -> Vec<String> {
    let prefix = chain_prefix(runner_id);
    let mut lines: Vec<String> = rules()
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == prefix || w.starts_with(&format!("{prefix}-"))))
        .map(str::to_owned)
        .collect();
    let table = sandbar_runner::firewall::bridge_table(runner_id);
    let out = Command::new("nft").args(["list", "table", "bridge", &table]).output().unwrap();
    assert!(out.status.success(), "nft list table: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).replace("elements = {", "elements = {\n");
    for l in text.lines() {
        for part in l.split(", ") {
            let part = part.trim().trim_end_matches('}').trim();
            if !part.is_empty() {
                lines.push(part.to_owned());
            }
        }
    }
    lines.sort();
    lines
}

/// Changes are written as differences (only the sandbox concerned and its links); a series of them leaves exactly
/// the rules one full rewrite of the same state writes, the reconciler sees nothing to do, and a line removed
/// behind the runner's back is caught: by the next change touching it (which then rewrites everything) or by the
/// reconciler. Ports here do not exist and the addresses are in 198.18.0.0/15, so no traffic matches.
#[tokio::test]
async fn changes_leave_what_a_full_rewrite_writes() {
    use sandbar_runner::firewall::Standalone;
    let t = TestRunner::new("fwdiff");
    let state = tempfile::tempdir().unwrap();
    // No container: the static daemon is never needed.
    let mut config = sandbar_runner::RunnerConfig::new("/nonexistent");
    config.runner_id = t.runner_id.clone();
    config.state_dir = Some(state.path().to_owned());
    config.firewall_recheck = Duration::from_secs(3600);
    let fw = Standalone::new(&config).await.unwrap();
    let fw_ref = &fw;
    let attach = move |c: &'static str, s: &'static str, i: u8| async move {
        let ip: std::net::Ipv4Addr = format!("198.18.9.{i}").parse().unwrap();
        fw_ref.attach(c, s, ip, &format!("sbtest{i}"), &format!("02:00:c6:12:09:{i:02x}")).await.unwrap();
    };
    fw.set_policy("child", NetworkPolicy::default(), Some("parent".into())).await.unwrap();
    attach("c1", "parent", 1).await;
    attach("c2", "child", 2).await;
    attach("c3", "other", 3).await;
    attach("c4", "pool-member", 4).await;
    fw.update_policy("other", policy(false, Some(&["10.1.0.0/16"]))).await.unwrap();
    fw.reassign("c4", "claimed").await.unwrap();
    attach("c1", "parent", 5).await; // a restart: a new address and port
    fw.detach("c3").await;
    attach("c3", "other", 6).await;
    let changed = kernel_rules(&t.runner_id);
    // The read-back after a write runs in a task of its own: let it run before the reconciler looks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!fw.reconcile().await.unwrap(), "the reconciler found a difference after the changes");
    fw.rewrite_all().await.unwrap();
    assert_eq!(changed, kernel_rules(&t.runner_id), "changes and a full rewrite disagree");
    let child = sandbox_chain(&t.runner_id, "child");
    assert!(changed.iter().any(|l| *l == format!("-A {child} -d 198.18.9.5/32 -j RETURN")), "{changed:#?}");

    // A line gone behind the runner's back: the change that would delete it rewrites everything instead.
    let iso = format!("{}-ISO", chain_prefix(&t.runner_id));
    let deny = format!("{}-DENY", chain_prefix(&t.runner_id));
    let out = Command::new("iptables").args(["-w", "5", "-D", &iso, "-d", "198.18.9.6/32", "-j", &deny]).output();
    assert!(out.unwrap().status.success());
    fw.detach("c3").await;
    let after = kernel_rules(&t.runner_id);
    assert!(!after.iter().any(|l| l.contains("198.18.9.6")), "{after:#?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!fw.reconcile().await.unwrap());
    fw.rewrite_all().await.unwrap();
    assert_eq!(after, kernel_rules(&t.runner_id));
    // And one the reconciler finds.
    let out = Command::new("iptables").args(["-w", "5", "-D", &iso, "-d", "198.18.9.2/32", "-j", &deny]).output();
    assert!(out.unwrap().status.success());
    assert!(fw.reconcile().await.unwrap(), "the reconciler missed a deleted line");
    assert_eq!(after, kernel_rules(&t.runner_id));
}

/// A bridge table left by a runner that is gone (here written by hand, as a runner writes it): it claims the first
/// addresses of Docker's default bridge (with Docker's MACs for them) on ports that no longer exist, and one far
/// address. Deleted on drop.
struct DeadRunnerTable(String);

impl DeadRunnerTable {
    fn write(claimed: &[std::net::Ipv4Addr]) -> Self {
        let table = format!("sandbar_gone{}", std::process::id());
        let mut text = format!(
            "table bridge {table} {{\n  map ports {{ type ifname : verdict; }}\n  set macs {{ type ether_addr; }}\n  \
             set ips {{ type ipv4_addr; }}\n  chain pre {{\n    type filter hook prerouting priority -300; policy \
             accept;\n    iifname vmap @ports\n    ether saddr @macs drop\n    ip saddr @ips drop\n    arp saddr ip \
             @ips drop\n  }}\n}}\n"
        );
        for (i, ip) in claimed.iter().enumerate() {
            let o = ip.octets();
            let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
            let (chain, port) = (format!("p_gone{i}"), format!("sbgone{i}"));
            text.push_str(&format!("add chain bridge {table} {chain}\n"));
            for rule in [format!("ether saddr != {mac} drop"), format!("ip saddr != {ip} drop"), "accept".to_owned()] {
                text.push_str(&format!("add rule bridge {table} {chain} {rule}\n"));
            }
            text.push_str(&format!("add element bridge {table} ports {{ \"{port}\" : jump {chain} }}\n"));
            text.push_str(&format!(
                "add element bridge {table} macs {{ {mac} }}\nadd element bridge {table} ips {{ {ip} }}\n"
            ));
        }
        let mut child = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "nft -f of the dead runner's table");
        Self(table)
    }

    fn listing(&self) -> String {
        let out = Command::new("nft").args(["list", "table", "bridge", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for DeadRunnerTable {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "bridge", &self.0]).output();
    }
}

#[tokio::test]
async fn a_gone_runners_claim_on_an_address_is_taken_back() {
    // Docker's default bridge, where the test runner's sandboxes go.
    let subnet =
        run(Command::new("docker").args(["network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Subnet}}"]));
    let base: std::net::Ipv4Addr = subnet.trim().split('/').next().unwrap().parse().unwrap();
    let at = |n: u32| std::net::Ipv4Addr::from(u32::from(base) + n);
    // Every address the next container can get while other tests run beside this one, and one none gets.
    let far = at(250);
    let claimed: Vec<_> = (2..=60).map(at).chain([far]).collect();
    let dead = DeadRunnerTable::write(&claimed);

    let (_t, runner) = TestRunner::start("stale-claim").await;
    let id = format!("sc-{}", unique());
    runner.create(create_req(&id, &busybox_image())).await.expect("the daemon answers once the stale claim is gone");
    let out = runner.exec(&id, &exec_req("echo reached")).await.unwrap();
    assert_eq!(out.result.trim(), "reached");
    let ip = ip_of(&runner, &id);
    let listing = dead.listing();
    assert!(
        !listing.contains(&format!("{ip} ")) && !listing.contains(&format!("{ip}\n")),
        "{ip} still claimed:\n{listing}"
    );
    assert!(listing.contains(&far.to_string()), "a claim on an address nobody got was removed:\n{listing}");
}

/// Waits (30 s at most) until the warm pool has a member ready.
async fn pool_filled(runner: &Runner) {
    for _ in 0..300 {
        if runner.pool_ready() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the warm pool did not fill");
}

/// A warm-pool claim with the default policy keeps the member's rules (the same but for their names) and renames
/// them after it answers: a policy change made the moment the claim answers still holds, and the rules end up
/// named for the sandbox. A claim with a policy of its own has it before it answers.
#[tokio::test]
async fn claimed_pool_sandboxes_get_their_own_rules() {
    const POOL: Resources = Resources { cpu: 1, memory: 1, disk: 3 };
    let image = busybox_image();
    let t = TestRunner::new("netpool");
    let mut targets = Targets(Vec::new());
    let target = targets.start(&image);
    let state = tempfile::tempdir().unwrap();
    let mut config = t.config();
    config.state_dir = Some(state.path().to_owned());
    config.warm_pool = Some(WarmPoolConfig { size: 1, image: image.clone(), resources: POOL });
    let runner = Runner::new(config).await.unwrap();
    let claim = |id: &str, p: NetworkPolicy| {
        let mut req = create_req(id, &image);
        req.resources = POOL;
        req.network = p;
        req
    };

    pool_filled(&runner).await;
    let open = format!("open-{}", unique());
    let info = runner.create(claim(&open, NetworkPolicy::default())).await.unwrap();
    let member = docker_inspect(&info.container_id, "{{.Name}}").unwrap();
    let member = member.trim().trim_start_matches("/sandbar-").to_owned();
    assert_ne!(member, open, "the create did not claim the pool's container");
    set(&runner, &open, policy(true, None)).await;
    assert!(!reaches(&runner, &open, &target).await, "a block-all made right after a claim did not hold");
    wait_until("the claimed sandbox's rules carry its name", || {
        let r = rules();
        r.contains(&format!("-N {}\n", sandbox_chain(&t.runner_id, &open)))
            && !r.contains(&format!("-N {}\n", sandbox_chain(&t.runner_id, &member)))
    })
    .await;
    set(&runner, &open, NetworkPolicy::default()).await;
    assert!(reaches(&runner, &open, &target).await, "lifting the block did not hold");

    pool_filled(&runner).await;
    let closed = format!("closed-{}", unique());
    let info = runner.create(claim(&closed, policy(true, None))).await.unwrap();
    assert!(!docker_inspect(&info.container_id, "{{.Name}}").unwrap().contains(&closed), "not a claim");
    assert!(!reaches(&runner, &closed, &target).await, "a claim with block-all could reach out");

    for id in [&open, &closed] {
        runner.destroy(id).await.unwrap();
    }
    let r = rules();
    for id in [&open, &closed] {
        assert!(!r.contains(&sandbox_chain(&t.runner_id, id)), "chain of a destroyed sandbox left:\n{r}");
    }
}
