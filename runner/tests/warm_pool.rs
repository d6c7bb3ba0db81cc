//! The warm pool on real Docker: a matching create claims a started container and hands its daemon the new
//! identity; the pool refills; claims survive a runner restart; a claimed sandbox restarts with its identity.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use sandbar_proto::runner::{Resources, SandboxState, StopSandbox};
use sandbar_runner::config::WarmPoolConfig;
use sandbar_runner::{Runner, RunnerConfig};

const POOL_RES: Resources = Resources { cpu: 1, memory: 1, disk: 3 };

fn pool_config(t: &TestRunner, state: &std::path::Path, image: &str, size: usize) -> RunnerConfig {
    let mut c = t.config();
    c.state_dir = Some(state.to_owned());
    c.warm_pool = Some(WarmPoolConfig { size, image: image.to_owned(), resources: POOL_RES });
    c
}

async fn wait_pool(runner: &Runner, n: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while runner.pool_ready() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("pool did not reach {n} (has {})", runner.pool_ready()));
}

#[tokio::test]
async fn warm_pool_claim_refill_restart() {
    let image = busybox_image();
    let t = TestRunner::new("pool");
    let state = tempfile::tempdir().unwrap();
    let runner = Runner::new(pool_config(&t, state.path(), &image, 1)).await.unwrap();
    wait_pool(&runner, 1).await;
    assert!(runner.list().is_empty(), "pool members are not sandboxes");
    let pool_container = t.containers();
    assert_eq!(pool_container.len(), 1);

    let id = format!("claim-{}", unique());
    let mut req = create_req(&id, &image);
    req.resources = POOL_RES;
    req.name = Some("pooled".into());
    req.env = BTreeMap::from([("GREETING".into(), "hi pool".into())]);
    let t0 = Instant::now();
    let info = runner.create(req).await.unwrap();
    let out = runner.exec(&id, &exec_req("echo $SANDBAR_SANDBOX_ID $GREETING")).await.unwrap();
    let claim_to_exec = t0.elapsed();
    assert_eq!(out.result.trim(), format!("{id} hi pool"));
    assert!(claim_to_exec < Duration::from_millis(250), "claim to first exec took {claim_to_exec:?}");
    assert_eq!(info.container_id, pool_container[0], "the pool's container was claimed");
    assert_eq!(info.state, SandboxState::Started);
    assert_eq!(runner.get(&id).unwrap().name.as_deref(), Some("pooled"));
    let claims = std::fs::read_to_string(state.path().join("claims.json")).unwrap();
    assert!(claims.contains(&id) && claims.contains(&info.container_id));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.path().join("claims.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The pool refills in the background with a new container.
    wait_pool(&runner, 1).await;
    assert_eq!(t.containers().len(), 2);

    // A create that does not match the pool starts cold.
    let cold = format!("cold-{}", unique());
    let mut req = create_req(&cold, &image);
    req.resources = Resources { cpu: 2, ..POOL_RES };
    let cold_info = runner.create(req).await.unwrap();
    assert_eq!(docker_inspect(&cold_info.container_id, "{{.Name}}").unwrap(), format!("/sandbar-{cold}"));
    assert_eq!(runner.pool_ready(), 1);

    // Restart: the claim, the pool member and the cold sandbox are all recognised; nothing is duplicated.
    drop(runner);
    let runner = Runner::new(pool_config(&t, state.path(), &image, 1)).await.unwrap();
    assert_eq!(runner.pool_ready(), 1, "the unclaimed member is adopted again");
    let rebuilt = runner.get(&id).unwrap();
    assert_eq!(rebuilt, info);
    assert_eq!(runner.list().len(), 2);
    assert_eq!(t.containers().len(), 3);

    // A claimed sandbox keeps its identity across a stop and start (the daemon is initialised again).
    runner.stop(StopSandbox { sandbox_id: id.clone(), force: false, timeout_secs: None }).await.unwrap();
    runner.start(&id).await.unwrap();
    let out = runner.exec(&id, &exec_req("echo $SANDBAR_SANDBOX_ID $GREETING")).await.unwrap();
    assert_eq!(out.result.trim(), format!("{id} hi pool"));

    // Its death is reported under its own ID, not the pool's.
    let mut changes = runner.subscribe();
    kill_9_daemon(&info.container_id);
    wait_for_state(&mut changes, &id, SandboxState::Error, Duration::from_secs(5)).await;

    runner.destroy(&id).await.unwrap();
    let claims = std::fs::read_to_string(state.path().join("claims.json")).unwrap();
    assert!(!claims.contains(&id), "{claims}");
    runner.destroy(&cold).await.unwrap();

    // A pool member that dies is replaced.
    let member = t.containers();
    assert_eq!(member.len(), 1);
    std::process::Command::new("docker").args(["rm", "-f", &member[0]]).output().unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let now = t.containers();
            if runner.pool_ready() == 1 && now.len() == 1 && now[0] != member[0] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the pool replaced its dead member");
}
