//! Forks and snapshots of sandboxes on real Docker (busybox test image): a fork keeps the files written before it
//! and diverges afterwards; its image goes when it is destroyed; a snapshot job commits a sandbox that keeps its
//! state, and a sandbox created from the snapshot has the files; build and fork jobs report their image's size.
#![cfg(test)]

mod common;

use common::*;
use sandbar_proto::runner::{
    BuildSnapshot, ForkSandbox, Job, JobErrorCode, JobKind, JobOutcome, SandboxState, SnapshotSandbox, StopSandbox,
    fork_image,
};

async fn run(runner: &sandbar_runner::Runner, id: &str, cmd: &str) -> (i32, String) {
    let out = runner.exec(id, &exec_req(cmd)).await.unwrap();
    (out.exit_code, out.result)
}

fn fork_req(source: &str, fork: &str, image: &str) -> ForkSandbox {
    let mut c = create_req(fork, image);
    c.image = fork_image(fork);
    c.name = Some(format!("{fork}-of-{source}"));
    c.env.insert("FORKED".into(), "yes".into());
    ForkSandbox { source_sandbox_id: source.into(), fork: c }
}

#[tokio::test]
async fn a_fork_keeps_the_files_and_diverges() {
    let image = busybox_image();
    let src = format!("src-{}", unique());
    let f1 = format!("fork-{}", unique());
    let f2 = format!("fork-{}", unique());
    // Declared before the runner guard, so it is dropped after the containers are gone.
    let _images = Images(vec![fork_image(&f1), fork_image(&f2)]);
    let (t, runner) = TestRunner::start("fork").await;
    let mut req = create_req(&src, &image);
    req.entrypoint = Some(marker_entrypoint());
    let src_info = runner.create(req).await.unwrap();
    // The marker goes, so that finding it in the fork shows the fork's entrypoint ran there.
    run(&runner, &src, "mkdir -p /work && echo before > /work/file && echo 1 > /tmp/counter && rm /tmp/marker").await;

    let fork = runner.fork(fork_req(&src, &f1, &image)).await.unwrap();
    assert_eq!(fork.state, SandboxState::Started);
    assert_eq!(fork.image, fork_image(&f1));
    assert_ne!(fork.daemon_token, src_info.daemon_token, "a fork has its own daemon token");
    assert_ne!(fork.container_id, src_info.container_id);
    assert_eq!(fork.name.as_deref(), Some(format!("{f1}-of-{src}").as_str()));
    assert!(image_exists(&fork_image(&f1)));
    // The source is still started, the same container, and untouched.
    assert_eq!(runner.get(&src).unwrap().state, SandboxState::Started);
    assert_eq!(run(&runner, &src, "cat /work/file").await, (0, "before\n".into()));

    // The fork has the files written before it, its own identity, and the entrypoint ran afresh in it.
    let (code, out) = run(&runner, &f1, "cat /work/file; echo $SANDBAR_SANDBOX_ID $FORKED; cat /tmp/marker").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("before\n{f1} yes\nfrom-entrypoint\n"));

    // Divergence both ways.
    run(&runner, &f1, "echo fork-only > /work/fork-only; echo 2 > /tmp/counter").await;
    run(&runner, &src, "echo source-only > /work/source-only").await;
    assert_eq!(run(&runner, &src, "test -e /work/fork-only; echo $?; cat /tmp/counter").await.1, "1\n1\n");
    assert_eq!(run(&runner, &f1, "test -e /work/source-only; echo $?; cat /tmp/counter").await.1, "1\n2\n");

    // A stopped source forks too; the fork of it is started.
    runner.stop(StopSandbox { sandbox_id: src.clone(), force: false, timeout_secs: Some(5) }).await.unwrap();
    let fork2 = runner.fork(fork_req(&src, &f2, &image)).await.unwrap();
    assert_eq!(fork2.state, SandboxState::Started);
    assert_eq!(runner.get(&src).unwrap().state, SandboxState::Stopped, "forking a stopped sandbox leaves it stopped");
    assert_eq!(run(&runner, &f2, "cat /work/source-only").await, (0, "source-only\n".into()));

    // A restarted runner sees the fork as itself (its own labels, not the source's).
    drop(runner);
    let runner = t.runner().await;
    assert_eq!(runner.get(&f1).unwrap(), fork);

    // Destroying a fork removes its image; destroying the source does not touch the forks.
    runner.destroy(&f1).await.unwrap();
    assert!(!image_exists(&fork_image(&f1)), "the fork's image is removed with it");
    runner.destroy(&src).await.unwrap();
    assert_eq!(run(&runner, &f2, "cat /work/file").await, (0, "before\n".into()));
    runner.destroy(&f2).await.unwrap();
    assert!(!image_exists(&fork_image(&f2)));
}

#[tokio::test]
async fn fork_failures_leave_nothing_behind() {
    let image = busybox_image();
    let f = format!("fork-{}", unique());
    let _images = Images(vec![fork_image(&f)]);
    let (t, runner) = TestRunner::start("forkfail").await;
    let src = format!("src-{}", unique());
    runner.create(create_req(&src, &image)).await.unwrap();

    // Unknown source: the job fails with SandboxNotFound and no image is made.
    let job =
        Job { id: "j1".into(), kind: JobKind::ForkSandbox(fork_req("no-such-sandbox", &f, &image)), traceparent: None };
    let result = sandbar_runner::jobs::run(&runner, None, job).await;
    assert!(
        matches!(result.outcome, JobOutcome::Failed { code: JobErrorCode::SandboxNotFound, .. }),
        "{:?}",
        result.outcome
    );
    assert!(!image_exists(&fork_image(&f)));
    assert!(runner.get(&f).is_none());

    // An image that is not the fork's own is refused before anything happens.
    let mut bad = fork_req(&src, &f, &image);
    bad.fork.image = image.clone();
    let err = runner.fork(bad).await.unwrap_err();
    assert!(err.to_string().contains("must be sandbar-fork:"), "{err}");

    // The create fails (an impossible resource request): the committed image is removed again.
    let mut big = fork_req(&src, &f, &image);
    big.fork.resources.cpu = 10_000;
    let err = runner.fork(big).await.unwrap_err();
    assert!(err.to_string().contains("cpu must be"), "{err}");
    assert!(!image_exists(&fork_image(&f)), "a failed fork leaves no image");
    assert!(runner.get(&f).is_none());
    assert_eq!(t.containers().len(), 1, "only the source's container exists");
}

#[tokio::test]
async fn a_snapshot_job_commits_and_a_new_sandbox_has_the_files() {
    let image = busybox_image();
    let snap = format!("sandbar-test-fsnap-{}:1", unique());
    let _images = Images(vec![snap.clone()]);
    let (_t, runner) = TestRunner::start("snapjob").await;
    let src = format!("src-{}", unique());
    runner.create(create_req(&src, &image)).await.unwrap();
    run(&runner, &src, "echo kept > /root/kept").await;

    let job = Job {
        id: "j-snap".into(),
        kind: JobKind::SnapshotSandbox(SnapshotSandbox { sandbox_id: src.clone(), image: snap.clone() }),
        traceparent: None,
    };
    let result = sandbar_runner::jobs::run(&runner, None, job.clone()).await;
    let JobOutcome::Succeeded { sandbox: Some(info), snapshot: Some(img) } = result.outcome else {
        panic!("{result:?}")
    };
    assert_eq!(info.state, SandboxState::Started, "the sandbox keeps its state");
    assert_eq!(img.image, snap);
    assert!(img.image_id.starts_with("sha256:") && img.size > 0, "{img:?}");
    // A repeated job (re-delivered after a runner restart) answers with the same image.
    let again = sandbar_runner::jobs::run(&runner, None, job).await;
    let JobOutcome::Succeeded { snapshot: Some(img2), .. } = again.outcome else { panic!("{again:?}") };
    assert_eq!(img2.image_id, img.image_id);
    // An image of that name from elsewhere is a conflict, not overwritten.
    let other = format!("src2-{}", unique());
    runner.create(create_req(&other, &image)).await.unwrap();
    let clash = Job {
        id: "j-clash".into(),
        kind: JobKind::SnapshotSandbox(SnapshotSandbox { sandbox_id: other.clone(), image: snap.clone() }),
        traceparent: None,
    };
    let r = sandbar_runner::jobs::run(&runner, None, clash).await;
    assert!(matches!(r.outcome, JobOutcome::Failed { code: JobErrorCode::Conflict, .. }), "{r:?}");

    let copy = format!("copy-{}", unique());
    runner.create(create_req(&copy, &snap)).await.unwrap();
    assert_eq!(run(&runner, &copy, "cat /root/kept").await, (0, "kept\n".into()));
    runner.destroy(&copy).await.unwrap();
    assert!(image_exists(&snap), "destroying a sandbox made from a snapshot keeps the snapshot");
}

#[tokio::test]
async fn build_and_fork_jobs_report_their_image_size() {
    let image = busybox_image();
    let built = format!("sandbar-test-bsize-{}:1", unique());
    let (src, fork) = (format!("src-{}", unique()), format!("fork-{}", unique()));
    let _images = Images(vec![built.clone(), fork_image(&fork)]);
    let (_t, runner) = TestRunner::start("sizes").await;
    // What the control plane counts against the organization's image quota: the size Docker reports.
    let dockerfile = format!("FROM {image}\nRUN head -c 300000 /dev/urandom > /big\n");
    let build = BuildSnapshot { build_id: "b1".into(), image: built.clone(), dockerfile, pull: vec![], network: None };
    let r = sandbar_runner::jobs::run(
        &runner,
        None,
        Job { id: "j-b".into(), kind: JobKind::BuildSnapshot(build), traceparent: None },
    )
    .await;
    let JobOutcome::Succeeded { snapshot: Some(img), .. } = r.outcome else { panic!("{r:?}") };
    assert_eq!(img.image, built);
    assert!(img.image_id.starts_with("sha256:") && img.size > 300_000, "{img:?}");

    runner.create(create_req(&src, &image)).await.unwrap();
    let job = Job { id: "j-f".into(), kind: JobKind::ForkSandbox(fork_req(&src, &fork, &image)), traceparent: None };
    let r = sandbar_runner::jobs::run(&runner, None, job).await;
    let JobOutcome::Succeeded { sandbox: Some(info), snapshot: Some(img) } = r.outcome else { panic!("{r:?}") };
    assert_eq!((info.id.as_str(), img.image.as_str()), (fork.as_str(), fork_image(&fork).as_str()));
    assert!(img.image_id.starts_with("sha256:") && img.size > 0, "{img:?}");
    runner.destroy(&fork).await.unwrap();
    assert!(!image_exists(&fork_image(&fork)), "the fork's image goes with it");
}

#[tokio::test]
async fn pause_freezes_and_resume_goes_on() {
    let image = busybox_image();
    let (t, runner) = TestRunner::start("pause").await;
    let id = format!("p-{}", unique());
    let info = runner.create(create_req(&id, &image)).await.unwrap();
    let (_, pid) = run(&runner, &id, "sleep 1000 > /dev/null 2>&1 & echo $!").await;
    let pid = pid.trim().to_owned();

    let paused = runner.pause(&id).await.unwrap();
    assert_eq!((paused.state, paused.daemon_addr.as_deref()), (SandboxState::Paused, None));
    assert_eq!(docker_inspect(&info.container_id, "{{.State.Paused}}").as_deref(), Some("true"));
    assert!(runner.exec(&id, &exec_req("true")).await.is_err(), "a paused sandbox's daemon is not reachable");
    assert_eq!(runner.pause(&id).await.unwrap().state, SandboxState::Paused, "pausing twice is a no-op");
    assert!(runner.fork(fork_req(&id, &format!("f-{}", unique()), &image)).await.is_err(), "no fork while paused");

    // A restarted runner sees it paused.
    drop(runner);
    let runner = t.runner().await;
    assert_eq!(runner.get(&id).unwrap().state, SandboxState::Paused);

    let resumed = runner.resume(&id).await.unwrap();
    assert_eq!(resumed.state, SandboxState::Started);
    assert_eq!(resumed.daemon_addr, info.daemon_addr);
    assert_eq!(docker_inspect(&info.container_id, "{{.State.Paused}}").as_deref(), Some("false"));
    // The same process, still there: nothing restarted.
    assert_eq!(run(&runner, &id, &format!("cat /proc/{pid}/cmdline | tr '\\0' ' '")).await.1.trim(), "sleep 1000");
    assert_eq!(runner.resume(&id).await.unwrap().state, SandboxState::Started, "resuming a started one is a no-op");

    // A paused sandbox stops (thawed first) and is destroyed like any other.
    runner.pause(&id).await.unwrap();
    let stopped =
        runner.stop(StopSandbox { sandbox_id: id.clone(), force: false, timeout_secs: Some(5) }).await.unwrap();
    assert_eq!(stopped.state, SandboxState::Stopped);
    let err = runner.pause(&id).await.unwrap_err();
    assert!(err.to_string().contains("cannot pause"), "{err}");
    runner.start(&id).await.unwrap();
    runner.pause(&id).await.unwrap();
    runner.destroy(&id).await.unwrap();
    assert!(t.containers().is_empty());
}
