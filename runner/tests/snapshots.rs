//! Snapshots on real Docker: commit a sandbox and start a new one from it; build from a Dockerfile through the build
//! API with the log streamed; list, inspect, remove; failures that say why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use sandbar_proto::runner::SandboxState;
use sandbar_proto::toolbox::ExecuteRequest;
use sandbar_runner::SnapshotError;

fn exec_req(cmd: &str) -> ExecuteRequest {
    ExecuteRequest { command: cmd.into(), timeout: Some(20), ..Default::default() }
}

/// Removes the test's images even when it panics (after the TestRunner removed the containers using them).
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker").args(["rmi", "-f", name]).output();
        }
    }
}

#[tokio::test]
async fn commit_a_sandbox_and_create_from_the_snapshot() {
    let image = busybox_image();
    let snap = format!("sandbar-test-snap-{}:1", unique());
    let _images = Images(vec![snap.clone()]);
    let t = TestRunner::new("commit");
    let runner = t.runner().await;
    let src = format!("src-{}", unique());
    let mut req = create_req(&src, &image);
    req.name = Some("source".into());
    req.env.insert("KEEP".into(), "me".into());
    req.entrypoint = Some(marker_entrypoint());
    let src_info = runner.create(req).await.unwrap();
    runner.exec(&src, &exec_req("echo data > /root/data")).await.unwrap();

    let snapshot = runner.commit_snapshot(&src, &snap).await.unwrap();
    assert_eq!(snapshot.reference, snap);
    // The sandbox's entrypoint survives; the daemon wrapper does not.
    assert_eq!(snapshot.argv(), marker_entrypoint());
    let env = docker_inspect(&snap, "{{json .Config.Env}}").unwrap();
    assert!(!env.contains(&src_info.daemon_token), "the source's daemon token leaked into the snapshot: {env}");
    assert!(env.contains("\"SANDBAR_DAEMON_TOKEN=\"") && env.contains("KEEP=me"), "{env}");
    assert_eq!(docker_inspect(&snap, "{{index .Config.Labels \"sandbar.sandbox.id\"}}").unwrap(), "");

    let names: Vec<String> = runner.list_snapshots().await.unwrap().into_iter().map(|i| i.reference).collect();
    assert!(names.contains(&snap), "{names:?}");
    assert_eq!(runner.inspect_snapshot(&snap).await.unwrap().unwrap().id, snapshot.id);

    let copy = format!("copy-{}", unique());
    let copy_info = runner.create(create_req(&copy, &snap)).await.unwrap();
    assert_ne!(copy_info.daemon_token, src_info.daemon_token);
    assert_eq!(copy_info.name, None);
    let out = runner
        .exec(&copy, &exec_req("cat /root/data; echo $KEEP; echo $SANDBAR_SANDBOX_ID; tr '\\0' ' ' < /proc/1/cmdline"))
        .await
        .unwrap();
    let lines: Vec<&str> = out.result.lines().collect();
    assert_eq!(lines[..3], ["data", "me", copy.as_str()]);
    assert!(lines[3].starts_with("/usr/local/bin/sandbar-daemon -- sh -c echo from-entrypoint"), "{}", lines[3]);

    // A restarted runner sees the copy as itself, not as the source it was committed from.
    drop(runner);
    let runner = t.runner().await;
    let rebuilt = runner.get(&copy).unwrap();
    assert_eq!(rebuilt, copy_info);
    assert_eq!(runner.get(&src).unwrap().name.as_deref(), Some("source"));

    assert!(matches!(runner.remove_snapshot(&snap).await.unwrap_err(), SnapshotError::InUse(_)));
    runner.destroy(&copy).await.unwrap();
    runner.remove_snapshot(&snap).await.unwrap();
    assert!(runner.inspect_snapshot(&snap).await.unwrap().is_none());
    assert!(matches!(runner.remove_snapshot(&snap).await.unwrap_err(), SnapshotError::NotFound(_)));
    assert!(matches!(runner.commit_snapshot(&src, "Bad Name").await.unwrap_err(), SnapshotError::InvalidName(_)));
}

#[tokio::test]
async fn build_a_snapshot_from_a_dockerfile_with_the_log_streamed() {
    let image = busybox_image();
    let snap = format!("sandbar-test-build-{}:1", unique());
    let bad = format!("sandbar-test-bad-{}:1", unique());
    let _images = Images(vec![snap.clone(), bad.clone()]);
    let t = TestRunner::new("build");
    let runner = t.runner().await;

    let dockerfile = format!("FROM {image}\nRUN echo hello-from-build && echo built > /built\nENV FLAVOUR=vanilla\n");
    let mut log = Vec::new();
    let built = runner.build_snapshot(&snap, &dockerfile, |line| log.push(line.to_owned())).await.unwrap();
    assert!(log.iter().any(|l| l.starts_with("Step 1/") && l.contains(" : FROM ")), "{log:?}");
    assert!(log.iter().any(|l| l == "hello-from-build"), "{log:?}");
    assert_eq!(built.argv(), image_argv(&image), "the base image's command is inherited");
    assert!(runner.list_snapshots().await.unwrap().iter().any(|i| i.reference == snap));

    let id = format!("built-{}", unique());
    let info = runner.create(create_req(&id, &snap)).await.unwrap();
    assert_eq!(info.state, SandboxState::Started);
    let out = runner.exec(&id, &exec_req("cat /built; echo $FLAVOUR")).await.unwrap();
    assert_eq!(out.result, "built\nvanilla\n");
    runner.destroy(&id).await.unwrap();

    // A failing step fails the build with Docker's reason, streamed like the rest.
    let mut log = Vec::new();
    let err = runner
        .build_snapshot(&bad, &format!("FROM {image}\nRUN exit 3\n"), |l| log.push(l.to_owned()))
        .await
        .unwrap_err();
    let SnapshotError::BuildFailed(msg) = &err else { panic!("{err:?}") };
    assert!(msg.contains("non-zero code: 3"), "{msg}");
    assert!(log.iter().any(|l| l.contains("non-zero code: 3")), "{log:?}");
    assert!(runner.inspect_snapshot(&bad).await.unwrap().is_none());

    // No registry: a base image that is not here is refused before Docker would try to pull it.
    let err = runner.build_snapshot(&bad, "FROM sandbar-no-such-base:0\nRUN true\n", |_| {}).await.unwrap_err();
    assert!(matches!(err, SnapshotError::BaseImageNotFound(ref b) if b == "sandbar-no-such-base:0"), "{err:?}");
    let err = runner.build_snapshot(&bad, "RUN true\n", |_| {}).await.unwrap_err();
    assert!(matches!(err, SnapshotError::InvalidDockerfile(_)), "{err:?}");
}
