//! Sandboxes on real Docker with the busybox test image: lifecycle, limits in cgroup files, a killed daemon as a
//! state change, state rebuilt by a restarted runner, and bad input that leaves nothing behind.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use common::*;
use sandbar_proto::runner::{
    Job, JobErrorCode, JobKind, JobOutcome, ResizeSandbox, Resources, SandboxState, StopSandbox, labels,
};
use sandbar_proto::{DAEMON_AUTH_HEADER, DAEMON_TOKEN_HEADER};
use sandbar_runner::SandboxError;

#[tokio::test]
async fn busybox_create_exec_stop_start_destroy() {
    let image = busybox_image();
    let (_t, runner) = TestRunner::start("life").await;
    let mut changes = runner.subscribe();
    let id = format!("life-{}", unique());
    let mut req = create_req(&id, &image);
    req.env = BTreeMap::from([("GREETING".into(), "hello world".into())]);
    req.labels = BTreeMap::from([("team".into(), "runners".into())]);
    req.name = Some("my-box".into());
    req.auto.auto_stop_interval = Some(15);
    req.entrypoint = Some(marker_entrypoint());

    let info = runner.create(req).await.unwrap();
    assert_eq!(info.state, SandboxState::Started);
    assert!(!info.disk_enforced, "fuse-overlayfs cannot cap disk");
    assert_eq!(info.auto.auto_stop_interval, Some(15));
    let addr = info.daemon_addr.clone().expect("daemon address");
    assert!(addr.ends_with(":2280"), "{addr}");
    let ip = docker_inspect(&info.container_id, "{{.NetworkSettings.IPAddress}}").unwrap();
    assert_eq!(addr, format!("{ip}:2280"));
    assert_eq!(info.daemon_token.len(), 64);

    // The daemon is PID 1 from the read-only mount, with the requested entrypoint after `--`.
    assert_eq!(
        docker_inspect(&info.container_id, "{{json .Config.Entrypoint}}").unwrap(),
        r#"["/usr/local/bin/sandbar-daemon","--","sh","-c","echo from-entrypoint > /tmp/marker; exec sleep 1000000"]"#
    );
    assert_eq!(
        docker_inspect(&info.container_id, "{{range .Mounts}}{{.Destination}} {{.RW}}{{end}}").unwrap(),
        "/usr/local/bin/sandbar-daemon false"
    );
    for (k, v) in [(labels::SANDBOX_ID, id.as_str()), (labels::ORG, "org-test"), (labels::NAME, "my-box")] {
        assert_eq!(docker_inspect(&info.container_id, &format!("{{{{index .Config.Labels \"{k}\"}}}}")).unwrap(), v);
    }

    let out = runner
        .exec(&id, &exec_req("echo $GREETING; echo $SANDBAR_SANDBOX_ID; cat /proc/1/cmdline | tr '\\0' ' '"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.result);
    let lines: Vec<&str> = out.result.lines().collect();
    assert_eq!(lines[0], "hello world");
    assert_eq!(lines[1], id);
    assert!(lines[2].starts_with("/usr/local/bin/sandbar-daemon -- sh -c"), "{}", lines[2]);
    let marker = runner.exec(&id, &exec_req("cat /tmp/marker")).await.unwrap();
    assert_eq!(marker.result.trim(), "from-entrypoint");

    // The daemon needs a credential signed with the token (the runner's calls above carried one); the token itself
    // on the wire opens nothing.
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/process/execute");
    let no_token = http.post(&url).json(&exec_req("true")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let static_token =
        http.post(&url).header(DAEMON_TOKEN_HEADER, &info.daemon_token).json(&exec_req("true")).send().await.unwrap();
    assert_eq!(static_token.status(), 401);
    let signed = sandbar_support::daemon_auth::sign(&info.daemon_token, "POST", "/process/execute");
    let right = http.post(&url).header(DAEMON_AUTH_HEADER, &signed).json(&exec_req("true")).send().await.unwrap();
    assert_eq!(right.status(), 200);
    let replayed = http.post(&url).header(DAEMON_AUTH_HEADER, &signed).json(&exec_req("true")).send().await.unwrap();
    assert_eq!(replayed.status(), 401);

    // The daemon's SSH server shows the host key the runner made for it and reported; the private key is in no
    // process's environment inside the sandbox.
    let host_key = info.daemon_host_key.clone().expect("the runner reports the daemon's host key");
    let scan = std::process::Command::new("ssh-keyscan").args(["-t", "ed25519", "-p", "22220", &ip]).output().unwrap();
    let served = String::from_utf8_lossy(&scan.stdout).split_whitespace().nth(2).unwrap_or_default().to_owned();
    assert_eq!(Some(served.as_str()), host_key.split_whitespace().nth(1), "keyscan: {scan:?}");
    let env = runner
        .exec(&id, &exec_req("cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'; env"))
        .await
        .unwrap()
        .result;
    // (PID 1's environ names the pipe the key came through, SANDBAR_SSH_HOST_KEY_FD, and nothing more.)
    assert!(!env.contains("SANDBAR_SSH_HOST_KEY=") && !env.contains("PRIVATE KEY"), "{env}");
    assert!(env.contains("SANDBAR_SANDBOX_ID="), "environ was readable: {env}");

    // PING_SANDBOX: the daemon answers an authenticated call; nothing changes.
    let ping = |n: u32| Job {
        id: format!("ping-{n}"),
        kind: JobKind::PingSandbox { sandbox_id: id.clone() },
        traceparent: None,
    };
    match sandbar_runner::jobs::run(&runner, None, ping(1)).await.outcome {
        JobOutcome::Succeeded { sandbox: Some(s), .. } => {
            assert_eq!((s.id.as_str(), s.state), (id.as_str(), SandboxState::Started))
        }
        other => panic!("ping of a started sandbox: {other:?}"),
    }

    // Graceful stop: the daemon drains on SIGTERM and exits well before the deadline.
    runner.exec(&id, &exec_req("echo kept > /root/file")).await.unwrap();
    let t0 = Instant::now();
    let stopped =
        runner.stop(StopSandbox { sandbox_id: id.clone(), force: false, timeout_secs: Some(20) }).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(15), "graceful stop took {:?}", t0.elapsed());
    assert_eq!(stopped.state, SandboxState::Stopped);
    assert_eq!(stopped.daemon_addr, None);
    assert_eq!(docker_inspect(&info.container_id, "{{.State.Running}}").unwrap(), "false");
    assert_eq!(docker_inspect(&info.container_id, "{{.State.ExitCode}}").unwrap(), "0", "daemon drained and exited 0");
    let err = runner.exec(&id, &exec_req("true")).await.unwrap_err();
    assert!(matches!(err, SandboxError::InvalidState { state: SandboxState::Stopped, .. }), "{err}");
    let pinged = sandbar_runner::jobs::run(&runner, None, ping(2)).await.outcome;
    assert!(matches!(pinged, JobOutcome::Failed { code: JobErrorCode::InvalidState, .. }), "{pinged:?}");

    let started = runner.start(&id).await.unwrap();
    assert_eq!(started.state, SandboxState::Started);
    assert_eq!(started.daemon_token, info.daemon_token, "the token survives a restart of the container");
    assert_eq!(started.daemon_host_key, info.daemon_host_key, "so does the host key");
    let out = runner.exec(&id, &exec_req("cat /root/file")).await.unwrap();
    assert_eq!(out.result.trim(), "kept");

    // Force stop kills at once.
    let t0 = Instant::now();
    runner.stop(StopSandbox { sandbox_id: id.clone(), force: true, timeout_secs: None }).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "force stop took {:?}", t0.elapsed());
    assert_eq!(docker_inspect(&info.container_id, "{{.State.ExitCode}}").unwrap(), "137");
    assert_eq!(runner.get(&id).unwrap().state, SandboxState::Stopped, "a requested kill is a stop, not an error");

    runner.destroy(&id).await.unwrap();
    assert!(runner.get(&id).is_none());
    assert!(docker_inspect(&info.container_id, "{{.Id}}").is_none(), "container removed");
    assert!(matches!(runner.destroy(&id).await.unwrap_err(), SandboxError::NotFound(_)));
    let pinged = sandbar_runner::jobs::run(&runner, None, ping(3)).await.outcome;
    assert!(matches!(pinged, JobOutcome::Failed { code: JobErrorCode::SandboxNotFound, .. }), "{pinged:?}");

    let mut seen = Vec::new();
    while let Ok(c) = changes.try_recv() {
        if c.sandbox_id == id {
            seen.push(c.state);
        }
    }
    use SandboxState::*;
    assert_eq!(seen, [Started, Stopping, Stopped, Starting, Started, Stopping, Stopped, Destroying, Destroyed]);
}

#[tokio::test]
async fn cpu_and_memory_limits_are_visible_in_cgroup_files_and_resize_live() {
    let image = busybox_image();
    let (_t, runner) = TestRunner::start("limits").await;
    let id = format!("lim-{}", unique());
    let mut req = create_req(&id, &image);
    req.resources = Resources { cpu: 1, memory: 1, disk: 7 };
    let info = runner.create(req).await.unwrap();
    assert_eq!(info.resources, Resources { cpu: 1, memory: 1, disk: 7 });

    let l = runner.cgroup_limits(&id).await.unwrap();
    assert_eq!(l.version, runner.host().cgroup_version);
    assert_eq!(l.cpus(), Some(1.0), "{l:?}");
    assert_eq!(l.memory_bytes, Some(1 << 30), "{l:?}");

    // Independent of the runner's parser: the raw file as a shell in the sandbox sees it.
    let raw = runner
        .exec(
            &id,
            &exec_req("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"),
        )
        .await
        .unwrap();
    assert_eq!(raw.result.trim(), "1073741824");

    let resized = runner
        .resize(ResizeSandbox { sandbox_id: id.clone(), cpu: Some(2), memory: Some(2), disk: None })
        .await
        .unwrap();
    assert_eq!(resized.resources, Resources { cpu: 2, memory: 2, disk: 7 });
    assert_eq!(resized.state, SandboxState::Started);
    let l = runner.cgroup_limits(&id).await.unwrap();
    assert_eq!(l.cpus(), Some(2.0), "{l:?}");
    assert_eq!(l.memory_bytes, Some(2 << 30), "{l:?}");

    // Disk is recorded, not enforced, on this storage driver: no resize of a limit that does not exist.
    let err = runner
        .resize(ResizeSandbox { sandbox_id: id.clone(), disk: Some(10), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), JobErrorCode::InvalidRequest, "{err}");
    assert!(err.to_string().contains("not enforced"), "{err}");
    let err =
        runner.resize(ResizeSandbox { sandbox_id: id.clone(), cpu: Some(64), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), JobErrorCode::InvalidRequest, "{err}");
    assert_eq!(runner.get(&id).unwrap().resources, Resources { cpu: 2, memory: 2, disk: 7 });

    runner.resize(ResizeSandbox { sandbox_id: id.clone(), memory: Some(1), ..Default::default() }).await.unwrap();
    let status = runner.status();
    assert_eq!(status.allocated, sandbar_proto::runner::Capacity { cpu: 2, memory: 1, disk: 7 });
    assert_eq!(status.storage_driver, runner.host().storage_driver);
    runner.destroy(&id).await.unwrap();
}

#[tokio::test]
async fn kill_9_of_the_daemon_becomes_an_error_state_change() {
    let image = busybox_image();
    let (_t, runner) = TestRunner::start("kill").await;
    let id = format!("kill-{}", unique());
    let info = runner.create(create_req(&id, &image)).await.unwrap();
    let mut changes = runner.subscribe();
    // Without an entrypoint of its own, the daemon runs the image's entrypoint + cmd.
    let mut want = vec!["/usr/local/bin/sandbar-daemon".to_owned(), "--".to_owned()];
    want.extend(image_argv(&image));
    let got: Vec<String> =
        serde_json::from_str(&docker_inspect(&info.container_id, "{{json .Config.Entrypoint}}").unwrap()).unwrap();
    assert_eq!(got, want);

    let t0 = Instant::now();
    kill_9_daemon(&info.container_id);
    let change = wait_for_state(&mut changes, &id, SandboxState::Error, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "state change took {took:?}");
    assert_eq!(change.exit_code, Some(137));
    assert!(!change.oom_killed);
    let reason = change.reason.unwrap();
    assert!(reason.contains("SIGKILL"), "{reason}");
    let now = runner.get(&id).unwrap();
    assert_eq!((now.state, now.daemon_addr.as_deref()), (SandboxState::Error, None));
    assert!(runner.exec(&id, &exec_req("true")).await.is_err());

    // Recover from error: start brings it back.
    let back = runner.start(&id).await.unwrap();
    assert_eq!(back.state, SandboxState::Started);
    assert_eq!(runner.exec(&id, &exec_req("echo ok")).await.unwrap().result.trim(), "ok");

    // A container removed behind the runner's back is reported destroyed.
    std::process::Command::new("docker").args(["rm", "-f", &info.container_id]).output().unwrap();
    let change = wait_for_state(&mut changes, &id, SandboxState::Destroyed, Duration::from_secs(5)).await;
    assert!(change.reason.unwrap().contains("outside"));
    assert!(runner.get(&id).is_none());
}

#[tokio::test]
async fn restarted_runner_rebuilds_state_from_labels_and_removes_half_created_containers() {
    let image = busybox_image();
    let t = TestRunner::new("restart");
    let (a, b) = (format!("ra-{}", unique()), format!("rb-{}", unique()));
    let before = {
        let runner = t.runner().await;
        let mut req = create_req(&a, &image);
        req.name = Some("alpha".into());
        req.env = BTreeMap::from([("K".into(), "v=1".into())]);
        req.labels = BTreeMap::from([("x".into(), "y".into())]);
        req.resources = Resources { cpu: 2, memory: 1, disk: 4 };
        req.auto.auto_archive_interval = Some(60);
        let ia = runner.create(req).await.unwrap();
        runner.create(create_req(&b, &image)).await.unwrap();
        let ib = runner.stop(StopSandbox { sandbox_id: b.clone(), force: false, timeout_secs: None }).await.unwrap();
        (ia, ib)
    }; // the runner is gone; its containers stay.

    // A container an interrupted create left behind: labelled, created, never started.
    let docker = bollard::Docker::connect_with_defaults().unwrap().negotiate_version().await.unwrap();
    let orphan_id = format!("orphan-{}", unique());
    let orphan = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&format!("sandbar-{orphan_id}")).build()),
            ContainerCreateBody {
                image: Some(image.clone()),
                labels: Some(HashMap::from([
                    (labels::RUNNER.to_owned(), t.runner_id.clone()),
                    (labels::SANDBOX_ID.to_owned(), orphan_id.clone()),
                    (TEST_PID_LABEL.to_owned(), std::process::id().to_string()),
                ])),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let runner = t.runner().await;
    let list = runner.list();
    assert_eq!(list.len(), 2, "{list:?}");
    let ra = runner.get(&a).unwrap();
    assert_eq!(ra, before.0, "sandbox {a} rebuilt exactly");
    assert!(ra.daemon_host_key.is_some(), "the daemon's host key is recovered from the container");
    let rb = runner.get(&b).unwrap();
    assert_eq!(rb, before.1, "stopped sandbox {b} rebuilt exactly");
    assert!(docker_inspect(&orphan.id, "{{.Id}}").is_none(), "half-created container removed");
    assert!(runner.get(&orphan_id).is_none());

    // The rebuilt runner drives them: exec with the recovered token, start the stopped one, follow events.
    assert_eq!(runner.exec(&a, &exec_req("echo $K")).await.unwrap().result.trim(), "v=1");
    runner.start(&b).await.unwrap();
    let mut changes = runner.subscribe();
    kill_9_daemon(&ra.container_id);
    wait_for_state(&mut changes, &a, SandboxState::Error, Duration::from_secs(5)).await;
    assert_eq!(runner.status().sandboxes, 2);
}

#[tokio::test]
async fn bad_requests_fail_clearly_and_leave_nothing_behind() {
    let image = busybox_image();
    let (t, runner) = TestRunner::start("bad").await;

    let err = runner.create(create_req(&format!("noimg-{}", unique()), "sandbar-no-such-image:0")).await.unwrap_err();
    assert_eq!(err.code(), JobErrorCode::ImageNotFound, "{err}");

    let mut too_big = create_req(&format!("big-{}", unique()), &image);
    too_big.resources.cpu = runner.host().ncpu + 1;
    assert_eq!(runner.create(too_big).await.unwrap_err().code(), JobErrorCode::InvalidRequest);
    let mut huge_mem = create_req(&format!("mem-{}", unique()), &image);
    huge_mem.resources.memory = 100_000;
    assert_eq!(runner.create(huge_mem).await.unwrap_err().code(), JobErrorCode::InvalidRequest);

    let mut reserved = create_req(&format!("env-{}", unique()), &image);
    reserved.env.insert("SANDBAR_DAEMON_TOKEN".into(), "mine".into());
    assert_eq!(runner.create(reserved).await.unwrap_err().code(), JobErrorCode::InvalidRequest);
    assert_eq!(runner.create(create_req("bad id!", &image)).await.unwrap_err().code(), JobErrorCode::InvalidRequest);

    // Docker accepts the container but it cannot start: nothing may remain.
    let mut bad_user = create_req(&format!("user-{}", unique()), &image);
    bad_user.user = Some("no-such-user".into());
    let err = runner.create(bad_user).await.unwrap_err();
    assert_eq!(err.code(), JobErrorCode::Docker, "{err}");
    assert!(t.containers().is_empty(), "failed creates left containers: {:?}", t.containers());
    assert!(runner.list().is_empty());

    // ID and name clashes.
    let id = format!("dup-{}", unique());
    let mut first = create_req(&id, &image);
    first.name = Some("same".into());
    runner.create(first.clone()).await.unwrap();
    assert_eq!(runner.create(first.clone()).await.unwrap_err().code(), JobErrorCode::Conflict);
    first.id = format!("dup2-{}", unique());
    assert_eq!(runner.create(first).await.unwrap_err().code(), JobErrorCode::Conflict);
    assert_eq!(t.containers().len(), 1);

    // The same through jobs, as the control plane will send them.
    let result = sandbar_runner::jobs::run(
        &runner,
        None,
        Job { id: "j1".into(), kind: JobKind::DestroySandbox { sandbox_id: "nope".into() }, traceparent: None },
    )
    .await;
    assert!(matches!(result.outcome, JobOutcome::Failed { code: JobErrorCode::SandboxNotFound, .. }), "{result:?}");
    let stop = Job {
        id: "j2".into(),
        kind: JobKind::StopSandbox(StopSandbox { sandbox_id: id.clone(), force: true, timeout_secs: None }),
        traceparent: None,
    };
    let result = sandbar_runner::jobs::run(&runner, None, stop).await;
    let JobOutcome::Succeeded { sandbox: Some(s), .. } = result.outcome else { panic!("{result:?}") };
    assert_eq!(s.state, SandboxState::Stopped);
    let err =
        runner.resize(ResizeSandbox { sandbox_id: id.clone(), cpu: Some(0), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), JobErrorCode::InvalidRequest);
    let result = sandbar_runner::jobs::run(
        &runner,
        None,
        Job { id: "j3".into(), kind: JobKind::DestroySandbox { sandbox_id: id.clone() }, traceparent: None },
    )
    .await;
    assert_eq!(result.outcome, JobOutcome::Succeeded { sandbox: None, snapshot: None });
    assert!(t.containers().is_empty());
}

#[tokio::test]
async fn a_dropped_create_still_finishes_or_cleans_up() {
    let image = busybox_image();
    let (t, runner) = TestRunner::start("cancel").await;
    let id = format!("cancel-{}", unique());
    // Give up on the create almost at once; the operation runs on by itself.
    let quick = tokio::time::timeout(Duration::from_millis(20), runner.create(create_req(&id, &image))).await;
    assert!(quick.is_err(), "create cannot finish in 20 ms");
    let mut changes = runner.subscribe();
    if runner.get(&id).map(|s| s.state) != Some(SandboxState::Started) {
        wait_for_state(&mut changes, &id, SandboxState::Started, Duration::from_secs(20)).await;
    }
    assert_eq!(runner.exec(&id, &exec_req("echo up")).await.unwrap().result.trim(), "up");
    assert_eq!(t.containers().len(), 1);
}

#[tokio::test]
async fn graceful_stop_is_cut_off_at_its_deadline() {
    let image = busybox_image();
    let (_t, runner) = TestRunner::start("deadline").await;
    let id = format!("dl-{}", unique());
    let info = runner.create(create_req(&id, &image)).await.unwrap();
    // A command that ignores SIGTERM keeps the daemon draining (up to its own 5 s grace) after SIGTERM.
    let busy = {
        let (runner, id) = (runner.clone(), id.clone());
        tokio::spawn(async move { runner.exec(&id, &exec_req("trap '' TERM; sleep 30")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let stopped =
        runner.stop(StopSandbox { sandbox_id: id.clone(), force: false, timeout_secs: Some(1) }).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(stopped.state, SandboxState::Stopped);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "stop took {took:?}");
    assert_eq!(docker_inspect(&info.container_id, "{{.State.ExitCode}}").unwrap(), "137", "killed at the deadline");
    let _ = busy.await;
}
