//! Snapshots on real Docker: commit a sandbox and start a new one from it; build from a Dockerfile through the build
//! API with the log streamed; list, inspect, remove; failures that say why.
#![cfg(test)]

mod common;

use common::*;
use sandbar_proto::network::NetworkPolicy;
use sandbar_proto::runner::SandboxState;
use sandbar_runner::SnapshotError;

#[tokio::test]
async fn commit_a_sandbox_and_create_from_the_snapshot() {
    let image = busybox_image();
    let snap = format!("sandbar-test-snap-{}:1", unique());
    let _images = Images(vec![snap.clone()]);
    let (t, runner) = TestRunner::start("commit").await;
    let src = format!("src-{}", unique());
    let mut req = create_req(&src, &image);
    req.name = Some("source".into());
    req.env.insert("KEEP".into(), "me".into());
    req.env.insert("API_SECRET".into(), "s3cr3t-value".into());
    // A caller's value for a variable the image sets is not kept either.
    req.env.insert("PATH".into(), "/caller/bin:/bin:/sbin:/usr/bin:/usr/sbin".into());
    req.entrypoint = Some(marker_entrypoint());
    let src_info = runner.create(req).await.unwrap();
    runner.exec(&src, &exec_req("echo data > /root/data")).await.unwrap();

    let snapshot = runner.commit_snapshot(&src, &snap).await.unwrap();
    assert_eq!(snapshot.reference, snap);
    // The sandbox's entrypoint survives; the daemon wrapper does not.
    assert_eq!(snapshot.argv(), marker_entrypoint());
    // The image's environment is the base image's: no value the creator set, no daemon token.
    let env: Vec<String> = serde_json::from_str(&docker_inspect(&snap, "{{json .Config.Env}}").unwrap()).unwrap();
    let base_env: Vec<String> = serde_json::from_str(&docker_inspect(&image, "{{json .Config.Env}}").unwrap()).unwrap();
    for kv in &env {
        let value = kv.split_once('=').map(|(_, v)| v).unwrap_or_default();
        assert!(base_env.contains(kv) || value.is_empty(), "{kv} is not the base image's: {env:?}");
        assert!(!value.contains(&src_info.daemon_token) && !value.contains("s3cr3t") && value != "me", "{env:?}");
    }
    assert!(env.iter().any(|kv| kv == "SANDBAR_DAEMON_TOKEN="), "{env:?}");
    assert_eq!(docker_inspect(&snap, "{{index .Config.Labels \"sandbar.sandbox.id\"}}").unwrap(), "");

    let names: Vec<String> = runner.list_snapshots().await.unwrap().into_iter().map(|i| i.reference).collect();
    assert!(names.contains(&snap), "{names:?}");
    assert_eq!(runner.inspect_snapshot(&snap).await.unwrap().unwrap().id, snapshot.id);

    let copy = format!("copy-{}", unique());
    let copy_info = runner.create(create_req(&copy, &snap)).await.unwrap();
    assert_ne!(copy_info.daemon_token, src_info.daemon_token);
    assert_eq!(copy_info.name, None);
    let out = runner
        .exec(
            &copy,
            &exec_req("cat /root/data; echo \"[$KEEP]\"; echo $SANDBAR_SANDBOX_ID; tr '\\0' ' ' < /proc/1/cmdline"),
        )
        .await
        .unwrap();
    let lines: Vec<&str> = out.result.lines().collect();
    assert_eq!(lines[..3], ["data", "[]", copy.as_str()]);
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
    let (_t, runner) = TestRunner::start("build").await;

    let dockerfile = format!("FROM {image}\nRUN echo hello-from-build && echo built > /built\nENV FLAVOUR=vanilla\n");
    let mut log = Vec::new();
    let built = runner.build_snapshot(&snap, &dockerfile, None, |line| log.push(line.to_owned())).await.unwrap();
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
        .build_snapshot(&bad, &format!("FROM {image}\nRUN exit 3\n"), None, |l| log.push(l.to_owned()))
        .await
        .unwrap_err();
    let SnapshotError::BuildFailed(msg) = &err else { panic!("{err:?}") };
    assert!(msg.contains("non-zero code: 3"), "{msg}");
    assert!(log.iter().any(|l| l.contains("non-zero code: 3")), "{log:?}");
    assert!(runner.inspect_snapshot(&bad).await.unwrap().is_none());

    // No registry: a base image that is not here is refused before Docker would try to pull it.
    let err = runner.build_snapshot(&bad, "FROM sandbar-no-such-base:0\nRUN true\n", None, |_| {}).await.unwrap_err();
    assert!(matches!(err, SnapshotError::BaseImageNotFound(ref b) if b == "sandbar-no-such-base:0"), "{err:?}");
    let err = runner.build_snapshot(&bad, "RUN true\n", None, |_| {}).await.unwrap_err();
    assert!(matches!(err, SnapshotError::InvalidDockerfile(_)), "{err:?}");
}

/// A control plane that hands out given jobs once and records what the runner sends back: build log batches and
/// results.
mod fake_api {
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use sandbar_proto::api::BuildLog;
    use sandbar_proto::runner::{Job, JobResult};
    use tokio::sync::Notify;

    #[derive(Default)]
    pub struct Recorded {
        pub jobs: Mutex<Vec<Job>>,
        pub logs: Mutex<Vec<(String, BuildLog)>>,
        pub results: Mutex<Vec<JobResult>>,
        pub changed: Notify,
        /// Log requests to fail with 503 before accepting (exercises the retry).
        pub fail_logs: Mutex<u32>,
    }

    pub async fn serve(rec: Arc<Recorded>) -> String {
        let app = Router::new()
            .route("/api/runners/{r}/sandboxes", post(|| async { StatusCode::NO_CONTENT }))
            .route("/api/runners/{r}/states", post(|| async { StatusCode::NO_CONTENT }))
            .route("/api/runners/{r}/register", post(|| async { Json(serde_json::json!({"credential": "c"})) }))
            .route("/api/runners/{r}/heartbeat", post(|| async { Json(serde_json::json!({"schedulable": true})) }))
            .route(
                "/api/runners/{r}/jobs",
                get(|State(rec): State<Arc<Recorded>>| async move {
                    let jobs: Vec<Job> = rec.jobs.lock().unwrap().drain(..).collect();
                    if jobs.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Json(jobs)
                }),
            )
            .route(
                "/api/runners/{r}/jobs/{j}/log",
                post(
                    |State(rec): State<Arc<Recorded>>,
                     Path((_, j)): Path<(String, String)>,
                     Json(b): Json<BuildLog>| async move {
                        {
                            let mut fail = rec.fail_logs.lock().unwrap();
                            if *fail > 0 {
                                *fail -= 1;
                                return StatusCode::SERVICE_UNAVAILABLE;
                            }
                        }
                        rec.logs.lock().unwrap().push((j, b));
                        rec.changed.notify_waiters();
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .route(
                "/api/runners/{r}/jobs/{j}/result",
                post(|State(rec): State<Arc<Recorded>>, Json(r): Json<JobResult>| async move {
                    rec.results.lock().unwrap().push(r);
                    rec.changed.notify_waiters();
                    StatusCode::NO_CONTENT
                }),
            )
            .with_state(rec);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/api")
    }
}

#[tokio::test]
async fn build_jobs_stream_their_log_to_the_control_plane_before_the_result() {
    use std::sync::Arc;
    use std::time::Duration;

    use sandbar_proto::runner::{BuildSnapshot, Job, JobErrorCode, JobKind, JobOutcome};

    let image = busybox_image();
    let good = format!("sandbar-test-job-{}:1", unique());
    let bad = format!("sandbar-test-jobbad-{}:1", unique());
    let _images = Images(vec![good.clone(), bad.clone()]);
    let (_t, runner) = TestRunner::start("buildjob").await;
    let rec = Arc::new(fake_api::Recorded::default());
    *rec.fail_logs.lock().unwrap() = 1;
    let base = fake_api::serve(rec.clone()).await;
    let job = |id: &str, image: &str, dockerfile: String| Job {
        id: id.into(),
        kind: JobKind::BuildSnapshot(BuildSnapshot {
            build_id: format!("b-{id}"),
            image: image.into(),
            dockerfile,
            pull: vec![],
            network: None,
        }),
        traceparent: None,
    };
    rec.jobs.lock().unwrap().extend([
        job(
            "ok",
            &good,
            format!("FROM {image}\nRUN for i in 1 2 3; do echo line-$i-$((6*7)); done; echo x > /built\n"),
        ),
        job("fail", &bad, format!("FROM {image}\nRUN echo about-to-fail && exit 3\n")),
        job("nobase", &bad, "FROM sandbar-no-such-base:0\nRUN true\n".into()),
    ]);
    let cp = sandbar_runner::control::ControlPlane::new(&base, "token").unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(sandbar_runner::control::run(
        runner.clone(),
        cp,
        shutdown.clone(),
        std::time::Duration::from_secs(10),
    ));

    let results = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let changed = rec.changed.notified();
            if rec.results.lock().unwrap().len() == 3 {
                return rec.results.lock().unwrap().clone();
            }
            changed.await;
        }
    })
    .await
    .expect("three results within 120 s");
    shutdown.cancel();
    agent.await.unwrap();

    let by_id = |id: &str| results.iter().find(|r| r.job_id == id).cloned().unwrap();
    let text_of = |id: &str| {
        let logs = rec.logs.lock().unwrap();
        let batches: Vec<_> = logs.iter().filter(|(j, _)| j == id).map(|(_, b)| b.clone()).collect();
        // One attempt, contiguous offsets from 0: nothing lost, nothing twice (the first send was refused and retried).
        let mut next = 0;
        for b in &batches {
            assert_eq!(b.attempt, batches[0].attempt);
            assert_eq!(b.offset, next, "{batches:?}");
            next += b.lines.len() as u64;
        }
        batches.into_iter().flat_map(|b| b.lines).collect::<Vec<_>>()
    };

    // A build reports the image it made (the API counts its bytes against the organization's image quota).
    match by_id("ok").outcome {
        JobOutcome::Succeeded { sandbox: None, snapshot: Some(img) } => {
            assert!(img.image_id.starts_with("sha256:") && img.size > 0, "{img:?}")
        }
        other => panic!("the build should succeed with its image: {other:?}"),
    }
    let lines = text_of("ok");
    assert!(lines.iter().any(|l| l.starts_with("Step 2/") && l.contains(" : RUN for i")), "{lines:?}");
    let run_output: Vec<&String> = lines.iter().filter(|l| l.starts_with("line-")).collect();
    assert_eq!(run_output, ["line-1-42", "line-2-42", "line-3-42"], "the RUN step's own output, in order");
    let id = format!("job-built-{}", unique());
    runner.create(create_req(&id, &good)).await.unwrap();
    assert_eq!(runner.exec(&id, &exec_req("cat /built")).await.unwrap().result, "x\n");
    runner.destroy(&id).await.unwrap();

    let JobOutcome::Failed { code, message } = by_id("fail").outcome else { panic!("the failing build succeeded") };
    assert_eq!(code, JobErrorCode::BuildFailed);
    assert!(message.contains("non-zero code: 3"), "{message}");
    let lines = text_of("fail");
    assert!(lines.iter().any(|l| l == "about-to-fail"), "{lines:?}");
    assert!(lines.last().unwrap().starts_with("sandbar: build failed"), "{lines:?}");

    let JobOutcome::Failed { code, message } = by_id("nobase").outcome else { panic!("built without a base") };
    assert_eq!(code, JobErrorCode::ImageNotFound);
    assert!(message.contains("sandbar-no-such-base:0") && message.contains("registry"), "{message}");
    assert_eq!(text_of("nobase"), [format!("sandbar: {message}")], "the reason is the log's last line");
}

#[tokio::test]
async fn steps_run_as_root_on_a_base_with_a_non_root_user() {
    let image = busybox_image();
    let base = format!("sandbar-test-userbase-{}:1", unique());
    let snap = format!("sandbar-test-rootsteps-{}:1", unique());
    let _images = Images(vec![snap.clone(), base.clone()]);
    let (_t, runner) = TestRunner::start("rootsteps").await;
    // A base like the default image: it runs as an unprivileged user.
    runner.build_snapshot(&base, &format!("FROM {image}\nUSER sandbar\n"), None, |_| {}).await.unwrap();
    assert_eq!(docker_inspect(&base, "{{.Config.User}}").unwrap(), "sandbar");

    let mut log = Vec::new();
    let df = format!("FROM {base}\nRUN echo hi > /built && id -u > /uid\n");
    let built = runner.build_snapshot(&snap, &df, None, |l| log.push(l.to_owned())).await.unwrap();
    assert_eq!(built.user.as_deref(), Some("sandbar"), "the base's user is back for the sandbox");
    assert!(log.iter().any(|l| l.contains(": USER root")), "{log:?}");
    let id = format!("rootsteps-{}", unique());
    runner.create(create_req(&id, &snap)).await.unwrap();
    let out = runner.exec(&id, &exec_req("cat /built /uid; id -un")).await.unwrap();
    assert_eq!(out.result, "hi\n0\nsandbar\n");
    runner.destroy(&id).await.unwrap();
}

/// Builds run without network, under a memory cap and a process cap: a RUN that reaches for the network, allocates
/// far more than the cap, or forks without end fails the build (build_failed), and the runner carries on.
#[tokio::test]
async fn builds_run_without_network_and_under_memory_and_process_caps() {
    let image = busybox_image();
    let name = |what: &str| format!("sandbar-test-limit-{what}-{}:1", unique());
    let (net, mem, bomb, ok) = (name("net"), name("mem"), name("bomb"), name("ok"));
    let _images = Images(vec![net.clone(), mem.clone(), bomb.clone(), ok.clone()]);
    let (_t, runner) = TestRunner::start("limits").await;

    // No interface but loopback, and no route out: a listener on the host is not reached (nc exits 0 on a
    // connect).
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let df = format!(
        "FROM {image}\nRUN ls /sys/class/net; ip route; nc -w 3 172.17.0.1 {} </dev/null && exit 0; exit 42\n",
        host.local_addr().unwrap().port()
    );
    let mut log = Vec::new();
    let err = runner.build_snapshot(&net, &df, None, |l| log.push(l.to_owned())).await.unwrap_err();
    let SnapshotError::BuildFailed(msg) = &err else { panic!("{err:?}") };
    assert!(msg.contains("non-zero code: 42"), "{msg}\n{log:?}");
    assert!(!log.iter().any(|l| l.trim() == "eth0"), "the build container has a network interface: {log:?}");

    // A 4 GiB string (6 GiB at the peak), twice the cap: killed by the OOM killer, exit 137.
    let df = format!(
        "FROM {image}\nRUN awk 'BEGIN {{ s = \"x\"; while (length(s) < 4294967296) s = s s; print \"allocated\" }}'\n"
    );
    let mut log = Vec::new();
    let err = runner.build_snapshot(&mem, &df, None, |l| log.push(l.to_owned())).await.unwrap_err();
    let SnapshotError::BuildFailed(msg) = &err else { panic!("{err:?}") };
    assert!(msg.contains("non-zero code: 137"), "{msg}\n{log:?}");
    assert!(!log.iter().any(|l| l == "allocated"), "{log:?}");

    // Forking without end meets the process cap: fork fails, the step fails, the build ends.
    let df =
        format!("FROM {image}\nRUN i=0; while [ $i -lt 2000 ]; do sleep 60 & i=$((i+1)); done; echo spawned-all\n");
    let mut log = Vec::new();
    let err = runner.build_snapshot(&bomb, &df, None, |l| log.push(l.to_owned())).await.unwrap_err();
    assert!(matches!(err, SnapshotError::BuildFailed(_)), "{err:?}\n{log:?}");
    assert!(!log.iter().any(|l| l == "spawned-all"), "{log:?}");
    assert!(log.iter().any(|l| l.contains("fork")), "{log:?}");

    // And an ordinary build still works afterwards.
    runner.build_snapshot(&ok, &format!("FROM {image}\nRUN echo fine > /fine\n"), None, |_| {}).await.unwrap();
}

/// A build of an organization with a build network runs its `RUN` steps under that egress policy, with a sandbox's
/// rules: an allow-listed address (a plain container on the bridge serving a file) is reached; an address off the
/// list and the host itself (the floor) are not; and the build's network container and its rules are gone after.
#[tokio::test]
async fn a_build_network_follows_the_egress_policy() {
    let image = busybox_image();
    let (open, closed) =
        (format!("sandbar-test-bnet-open-{}:1", unique()), format!("sandbar-test-bnet-closed-{}:1", unique()));
    let _images = Images(vec![open.clone(), closed.clone()]);
    let server = format!("sandbar-bnet-server-{}", unique());
    let out = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &server, "--label"])
        .arg(format!("{TEST_PID_LABEL}={}", std::process::id()))
        .args([&image, "sh", "-c", "mkdir -p /www && echo served > /www/f && exec httpd -f -p 8080 -h /www"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _server = Rm(server.clone());
    let ip = docker_inspect(&server, "{{.NetworkSettings.IPAddress}}").unwrap();
    // Something on the host the build must not reach, whatever the policy.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let (t, runner) = TestRunner::start("bnet").await;

    // busybox's static wget crashes on this image; nc it is. A connect that works ends nc with 0.
    let df = format!(
        "FROM {image}\nRUN printf 'GET /f HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 8080 > /got; grep served /got\n\
         RUN if nc -w 3 172.17.0.1 {host_port} </dev/null; then exit 43; fi; \
         if nc -w 3 169.254.169.254 80 </dev/null; then exit 44; fi\n"
    );
    let allowed = NetworkPolicy { network_block_all: false, network_allow_list: Some(vec![format!("{ip}/32")]) };
    let mut log = Vec::new();
    runner.build_snapshot(&open, &df, Some(("b-open", &allowed)), |l| log.push(l.to_owned())).await.unwrap();
    assert!(log.iter().any(|l| l.trim() == "served"), "{log:?}");

    let elsewhere = NetworkPolicy { network_block_all: false, network_allow_list: Some(vec!["10.99.0.0/16".into()]) };
    let mut log = Vec::new();
    let err = runner.build_snapshot(&closed, &df, Some(("b-closed", &elsewhere)), |l| log.push(l.to_owned())).await;
    assert!(matches!(err, Err(SnapshotError::BuildFailed(_))), "{err:?}\n{log:?}");
    assert!(!log.iter().any(|l| l.trim() == "served"), "{log:?}");

    // Nothing of either build's network is left: no container, no chain.
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=sandbar.build-net"])
        .args(["--filter", &format!("label=sandbar.runner={}", t.runner_id)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "{left:?}");
    drop(host);
}
