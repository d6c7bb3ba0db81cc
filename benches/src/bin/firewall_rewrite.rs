//! The runner's firewall: what one sandbox's change costs against the number of sandboxes with rules. For each
//! count (default 10, 50, 200) it attaches that many sandboxes, then times, `ROUNDS` times each: an attach (one
//! more sandbox), its detach, a policy change of one sandbox, and a full rewrite (every chain and the bridge table:
//! what the reconciler does when the kernel drifted, and what every change cost before changes were written as
//! differences); and the reconciler's steady check (`iptables -S` and `nft list table`, compared). Medians, in ms.
//!
//! Root, iptables with Docker's `DOCKER-USER` chain and nftables needed. The rules are the host's real ones, under
//! a runner id of its own (`bench-fw-<pid>`): bridge ports that do not exist, addresses in 198.18.0.0/15
//! (RFC 2544, benchmarking) and locally administered MACs, so they match no real traffic; they are removed at the
//! end and before each count, also after a failure.
//!
//! `cargo run --bin firewall_rewrite [-- COUNT...]` (release or dev with opt-level 3 for quotable figures).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sandbar_proto::network::NetworkPolicy;
use sandbar_runner::RunnerConfig;
use sandbar_runner::firewall::{Standalone, purge_blocking};

const ROUNDS: usize = 7;

/// Removes the runner's rules when dropped, so a failed run leaves nothing behind.
struct Purge(String);

impl Drop for Purge {
    fn drop(&mut self) {
        if let Err(e) = purge_blocking(&self.0) {
            eprintln!("firewall_rewrite: cleanup of {}: {e}", self.0);
        }
    }
}

fn endpoint(i: usize) -> (String, String, Ipv4Addr, String, String) {
    let (hi, lo) = ((i >> 8) as u8, (i & 0xff) as u8);
    (
        format!("c{i}"),
        format!("bench-sandbox-{i}"),
        Ipv4Addr::new(198, 18, hi, lo),
        format!("sbfw{i:06x}"),
        format!("02:00:c6:12:{hi:02x}:{lo:02x}"),
    )
}

fn median(mut xs: Vec<Duration>) -> f64 {
    xs.sort();
    xs.get(xs.len() / 2).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

async fn timed<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f.await?;
    Ok(t.elapsed())
}

/// The figures at `count` sandboxes: attach, detach, policy change, full rewrite, reconcile check.
async fn measure(runner_id: &str, state: &std::path::Path, count: usize) -> anyhow::Result<[f64; 5]> {
    let mut config = RunnerConfig::new("/nonexistent");
    config.runner_id = runner_id.to_owned();
    config.state_dir = Some(state.to_owned());
    config.firewall_recheck = Duration::from_secs(3600);
    let fw = Standalone::new(&config).await.context("firewall")?;
    for i in 0..count {
        let (c, s, ip, port, mac) = endpoint(i);
        fw.attach(&c, &s, ip, &port, &mac).await?;
    }
    let fw_ref = &fw;
    let settle = || async move {
        // The read-back runs in a task of its own after each write (a full one may take a while); the reconciler
        // would take a full write not read back yet for a drift.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if fw_ref.reconcile().await? {
            bail!("the reconciler found the rules differ from what was written");
        }
        Ok::<(), anyhow::Error>(())
    };
    settle().await?;
    let (mut attach, mut detach, mut policy, mut full, mut check) = (vec![], vec![], vec![], vec![], vec![]);
    let (c, s, ip, port, mac) = endpoint(count);
    let blocked = NetworkPolicy { network_block_all: true, ..Default::default() };
    for round in 0..ROUNDS {
        attach.push(timed(async { Ok(fw.attach(&c, &s, ip, &port, &mac).await?) }).await?);
        settle().await?;
        detach.push(
            timed(async {
                fw.detach(&c).await;
                Ok(())
            })
            .await?,
        );
        settle().await?;
        let p = if round % 2 == 0 { blocked.clone() } else { NetworkPolicy::default() };
        let (_, s0, ..) = endpoint(0);
        policy.push(timed(async { Ok(fw.update_policy(&s0, p).await?) }).await?);
        settle().await?;
        full.push(timed(async { Ok(fw.rewrite_all().await?) }).await?);
        settle().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        check.push(
            timed(async {
                if fw.reconcile().await? {
                    bail!("the rules drifted")
                }
                Ok(())
            })
            .await?,
        );
    }
    Ok([median(attach), median(detach), median(policy), median(full), median(check)])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let counts: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let counts = if counts.is_empty() { vec![10, 50, 200] } else { counts };
    if counts.iter().any(|c| *c > 60_000) {
        bail!("at most 60000 sandboxes (the addresses come from 198.18.0.0/16)");
    }
    let runner_id = format!("bench-fw-{}", std::process::id());
    let _purge = Purge(runner_id.clone());
    println!("| sandboxes | attach ms | detach ms | policy ms | full rewrite ms | reconciler check ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for count in counts {
        purge_blocking(&runner_id).map_err(anyhow::Error::msg)?;
        let state = tempfile::tempdir()?;
        let [a, d, p, f, c] = measure(&runner_id, state.path(), count).await?;
        println!("| {count} | {a:.1} | {d:.1} | {p:.1} | {f:.1} | {c:.1} |");
    }
    Ok(())
}
