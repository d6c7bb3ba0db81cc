//! The default sandbox image (debootstrapped Debian): built by `scripts/build-sandbox-image` through the runner,
//! then a full lifecycle on it. Runs in the normal `cargo test`: the first run on a machine builds the image
//! (about two minutes), every later run finds the content tag and takes under a second.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sandbar_proto::runner::{ResizeSandbox, Resources, SandboxState, StopSandbox};
use sandbar_proto::toolbox::ExecuteRequest;

fn exec_req(cmd: &str) -> ExecuteRequest {
    ExecuteRequest { command: cmd.into(), timeout: Some(30), ..Default::default() }
}

#[tokio::test]
async fn default_image_create_exec_stop_start_destroy() {
    let (t, runner) = TestRunner::start("default").await;
    let image = runner.ensure_default_image().await.expect("default image builds or is cached");
    assert_eq!(image.reference, "sandbar-sandbox:default");
    assert_eq!(image.user.as_deref(), Some("sandbar"));

    // Cached: a second call only re-checks the content tag.
    let t0 = Instant::now();
    let again = runner.ensure_default_image().await.unwrap();
    assert_eq!(again.id, image.id);
    assert!(t0.elapsed() < Duration::from_secs(10), "cached image check took {:?}", t0.elapsed());

    let id = format!("deb-{}", unique());
    let mut req = create_req(&id, &image.reference);
    req.resources = Resources { cpu: 1, memory: 2, disk: 10 };
    let info = runner.create(req).await.unwrap();
    assert_eq!(info.state, SandboxState::Started);
    assert_eq!(info.user.as_deref(), Some("sandbar"));

    let checks = [
        ("id -un; id -u", "sandbar\n1000"),
        ("sudo -n id -un", "root"),
        ("python3 -c 'print(6*7)'", "42"),
        ("pwd", "/home/sandbar"),
        ("bash -c 'echo $BASH_VERSION' | cut -d. -f1", "5"),
    ];
    for (cmd, want) in checks {
        let out = runner.exec(&id, &exec_req(cmd)).await.unwrap();
        assert_eq!((out.exit_code, out.result.trim()), (0, want), "{cmd}");
    }
    let tools = "git --version && curl --version | head -n1 && ps -p 1 -o comm= && pylsp --version && \
                 test -f /etc/ssl/certs/ca-certificates.crt && ! command -v sshd";
    let out = runner.exec(&id, &exec_req(tools)).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.result);
    assert!(
        out.result.contains("git version") && out.result.contains("curl ") && out.result.contains("sandbar-daemon")
    );

    let l = runner.cgroup_limits(&id).await.unwrap();
    assert_eq!((l.cpus(), l.memory_bytes), (Some(1.0), Some(2 << 30)));
    runner.resize(ResizeSandbox { sandbox_id: id.clone(), cpu: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(runner.cgroup_limits(&id).await.unwrap().cpus(), Some(2.0));

    runner.exec(&id, &exec_req("echo persisted > ~/note && sudo touch /etc/sandbar-test")).await.unwrap();
    runner.stop(StopSandbox { sandbox_id: id.clone(), force: false, timeout_secs: Some(20) }).await.unwrap();
    assert_eq!(docker_inspect(&info.container_id, "{{.State.ExitCode}}").unwrap(), "0");
    let back = runner.start(&id).await.unwrap();
    assert_eq!(back.state, SandboxState::Started);
    let out = runner.exec(&id, &exec_req("cat ~/note && test -f /etc/sandbar-test && echo yes")).await.unwrap();
    assert_eq!(out.result.trim(), "persisted\nyes");

    runner.destroy(&id).await.unwrap();
    assert!(t.containers().is_empty());
}
