//! Fork and snapshot-from-sandbox over real HTTP with fake runners: the fork's spec, placement on the source's
//! runner, names, quotas, refusals by state, runner failures; the snapshot row's life (pending, active with size and
//! sourceSandboxId, error), the sandbox's round trip through `snapshotting`, and sandboxes created from such a
//! snapshot landing on the runner that holds it. SQLite and PostgreSQL.

use reqwest::{Method, StatusCode};
use sandbar_proto::runner::{
    Job, JobErrorCode, JobKind, JobOutcome, JobResult, SandboxState, SnapshotImage, fork_image,
};
use sandbar_testkit::api::{FakeRunner, Harness, databases, started_sandbox};
use serde_json::{Value, json};

/// The runner a sandbox is placed on, among `runners`.
fn runner_of<'a>(v: &Value, runners: &'a [FakeRunner]) -> &'a FakeRunner {
    let id = v["runnerId"].as_str().unwrap_or_default();
    runners.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("placed on no runner of the test: {v}"))
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fork_copies_the_spec_and_lands_on_the_source_runner() {
    for db in databases().await {
        let mut config = sandbar_testkit::api::config(&db.url);
        config.limits.quota_sandboxes = 4;
        let h = Harness::start_with(&db, config, Default::default()).await;
        let runners = [h.runner("r1"), h.runner("r2")];
        for r in &runners {
            r.heartbeat(16, 32, 1000).await;
        }
        let body = json!({"name": "src", "env": {"A": "1"}, "labels": {"code-toolbox-language": "python", "team": "x"},
            "cpu": 2, "memory": 3, "disk": 4, "public": true, "autoStopInterval": 30});
        let src = h.create(body).await;
        let src_id = src["id"].as_str().unwrap().to_owned();
        let home = runner_of(&src, &runners);
        let other = runners.iter().find(|r| r.id != home.id).unwrap();
        home.work(&h.org).await;
        assert_eq!(h.state(&src_id).await, "started");

        let (s, f) = h.call(Method::POST, &format!("/sandbox/{src_id}/fork"), Some(json!({"name": "my-fork"}))).await;
        assert_eq!(s, StatusCode::OK, "{} {f}", db.label);
        let fork_id = f["id"].as_str().unwrap().to_owned();
        assert_ne!(fork_id, src_id);
        assert_eq!(f["state"], "creating");
        assert_eq!(f["name"], "my-fork");
        assert_eq!(f["runnerId"], home.id.as_str(), "a fork lands on its source's runner");
        assert_eq!(f["snapshot"], fork_image(&fork_id).as_str());
        for k in ["env", "labels", "cpu", "memory", "disk", "public", "autoStopInterval", "user", "target"] {
            assert_eq!(f[k], src[k], "{k} is copied from the source");
        }
        assert_eq!(h.get_sandbox("my-fork").await["id"], fork_id.as_str(), "the fork's name resolves");
        // The labels are filterable like any sandbox's.
        let (_, listed) = h.call(Method::GET, "/sandbox?labels=%7B%22team%22%3A%22x%22%7D", None).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");

        // Only the source's runner gets work: one FORK_SANDBOX job naming both sandboxes.
        assert!(other.poll(0).await.is_empty());
        let jobs = home.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        let JobKind::ForkSandbox(fj) = &job.kind else { panic!("{job:?}") };
        assert_eq!(fj.source_sandbox_id, src_id);
        assert_eq!((fj.fork.id.as_str(), fj.fork.image.as_str()), (fork_id.as_str(), fork_image(&fork_id).as_str()));
        assert_eq!(fj.fork.name.as_deref(), Some("my-fork"));
        assert_eq!(fj.fork.env.get("A").map(String::as_str), Some("1"));
        assert_eq!((fj.fork.resources.cpu, fj.fork.resources.memory, fj.fork.resources.disk), (2, 3, 4));
        assert_eq!(fj.fork.auto.auto_stop_interval, Some(30));
        assert_eq!(home.succeed(job, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&fork_id).await, "started");
        assert_eq!(h.state(&src_id).await, "started", "forking leaves the source as it was");

        // Names: taken, invalid; a fork without a name is named by its id.
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{src_id}/fork"), Some(json!({"name": "my-fork"}))).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(message(&v).contains("my-fork already exists"), "{v}");
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{src_id}/fork"), Some(json!({"name": "bad name"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        // A stopped source forks too (by name), and the fork of a fork works.
        h.call(Method::POST, &format!("/sandbox/{src_id}/stop?force=false"), None).await;
        home.work(&h.org).await;
        let (s, f2) = h.call(Method::POST, "/sandbox/src/fork", Some(json!({}))).await;
        assert_eq!(s, StatusCode::OK, "{f2}");
        assert_eq!(f2["name"], f2["id"]);
        assert_eq!(h.state(&src_id).await, "stopped");

        // Quota: the organization may hold 4 sandboxes; this would be the fifth.
        let (s, f3) = h.call(Method::POST, &format!("/sandbox/{fork_id}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::OK, "{f3}");
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{fork_id}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(message(&v).contains("sandbox count"), "{v}");

        // A runner failure puts the fork (not the source) in error, with the reason.
        let jobs = home.poll(0).await;
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        let failed = &jobs[0];
        assert_eq!(failed.kind.sandbox_id(), f2["id"].as_str().unwrap());
        home.fail(failed, JobErrorCode::Docker, "commit failed: disk full").await;
        let v = h.get_sandbox(failed.kind.sandbox_id()).await;
        assert_eq!(v["state"], "error");
        assert!(v["errorReason"].as_str().unwrap().contains("disk full"), "{v}");
        assert_eq!(h.state(&src_id).await, "stopped");
        assert_eq!(home.succeed(&jobs[1], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(f3["id"].as_str().unwrap()).await, "started");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forks_are_refused_with_reasons() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 16, 32, 1000).await;
        // Still creating.
        let c = h.create(json!({})).await;
        let (s, v) =
            h.call(Method::POST, &format!("/sandbox/{}/fork", c["id"].as_str().unwrap()), Some(json!({}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("creating and cannot be forked"), "{v}");
        r.work(&h.org).await;
        let id = c["id"].as_str().unwrap().to_owned();
        // Unknown, another organization's, bad JSON.
        assert_eq!(h.call(Method::POST, "/sandbox/nope/fork", Some(json!({}))).await.0, StatusCode::NOT_FOUND);
        let (_, other) = h.new_org("other").await;
        let (s, _) = h.req(Method::POST, &format!("/sandbox/{id}/fork"), Some(&other), Some(json!({}))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/fork"), Some(json!({"name": 5}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        // Error state.
        h.call(Method::POST, &format!("/sandbox/{id}/stop?force=false"), None).await;
        let jobs = r.poll(0).await;
        r.fail(&jobs[0], JobErrorCode::Docker, "boom").await;
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("recover it first"), "{v}");
        // The source's runner is unreachable.
        let ok = started_sandbox(&h, &r, json!({})).await;
        h.clock.advance_secs(60);
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{ok}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("unreachable"), "{v}");
        // The source's runner is reachable but full: no other runner can take a fork.
        r.heartbeat(1, 0, 1000).await;
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{ok}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(message(&v).contains("no room"), "{v}");
        h.stop().await;
    }
}

fn snapshot_done(job: &Job, info: sandbar_proto::runner::SandboxInfo, size: u64) -> JobResult {
    let JobKind::SnapshotSandbox(s) = &job.kind else { panic!("{job:?}") };
    JobResult {
        job_id: job.id.clone(),
        outcome: JobOutcome::Succeeded {
            sandbox: Some(Box::new(info)),
            snapshot: Some(SnapshotImage {
                image: s.image.clone(),
                image_id: "sha256:abc".into(),
                size,
                ..Default::default()
            }),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_from_a_sandbox_records_a_snapshot_and_returns_the_sandbox_to_its_state() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let runners = [h.runner("r1"), h.runner("r2")];
        for r in &runners {
            r.heartbeat(16, 32, 1000).await;
        }
        let src = h.create(json!({"cpu": 2, "disk": 5})).await;
        let id = src["id"].as_str().unwrap().to_owned();
        let home = runner_of(&src, &runners);
        let other = runners.iter().find(|r| r.id != home.id).unwrap();
        home.work(&h.org).await;

        let path = format!("/sandbox/{id}/snapshot");
        let (s, v) = h.call(Method::POST, &path, Some(json!({"name": "snap-1", "includeMemory": true}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("memory") && message(&v).contains("not copied"), "{v}");
        let (s, v) = h.call(Method::POST, &path, Some(json!({"name": "bad name"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, v) = h.call(Method::POST, &path, Some(json!({"includeMemory": false}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "name is required: {v}");

        let (s, v) = h.call(Method::POST, &path, Some(json!({"name": "snap-1", "includeMemory": false}))).await;
        assert_eq!(s, StatusCode::OK, "{} {v}", db.label);
        assert_eq!(v["state"], "snapshotting");
        assert_eq!(v["id"], id.as_str());
        let (s, snap) = h.call(Method::GET, "/snapshots/snap-1", None).await;
        assert_eq!(s, StatusCode::OK, "{snap}");
        assert_eq!((snap["state"].as_str(), snap["sourceSandboxId"].as_str()), (Some("pending"), Some(id.as_str())));
        assert_eq!((snap["cpu"].as_i64(), snap["disk"].as_i64()), (Some(2), Some(5)));
        // The name is taken from the start; the sandbox is busy.
        let (s, v) = h.call(Method::POST, &path, Some(json!({"name": "snap-1"}))).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(message(&v).contains("Snapshot with name snap-1 already exists"), "{v}");
        let (s, v) = h.call(Method::POST, &path, Some(json!({"name": "snap-2"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("snapshotting"), "{v}");
        // A pending snapshot cannot be used yet.
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "snap-1"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("pending"), "{v}");

        let jobs = home.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        let JobKind::SnapshotSandbox(sj) = &job.kind else { panic!("{job:?}") };
        assert_eq!(sj.sandbox_id, id);
        assert!(sj.image.starts_with("sandbar-snapshot:"), "{sj:?}");
        assert_eq!(sj.image, format!("sandbar-snapshot:{}", snap["id"].as_str().unwrap()));
        let info = home.info(&id, &h.org, SandboxState::Started);
        assert_eq!(home.result(snapshot_done(job, info, 3 << 29)).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "started", "back to its previous state");
        let snap = h.call(Method::GET, "/snapshots/snap-1", None).await.1;
        assert_eq!(snap["state"], "active");
        assert_eq!(snap["size"].as_f64(), Some(1.5), "size in GiB: {snap}");
        assert!(snap["errorReason"].is_null());

        let (_, page) = h.call(Method::GET, &format!("/snapshots?sourceSandboxId={id}"), None).await;
        assert_eq!((page["total"].as_i64(), page["items"][0]["name"].as_str()), (Some(1), Some("snap-1")));
        let (_, page) = h.call(Method::GET, "/snapshots?sourceSandboxId=someone-else", None).await;
        assert_eq!(page["total"], 0);

        // A sandbox from it runs the committed image, on the runner that has it, with the source's size.
        let made = h.create(json!({"snapshot": "snap-1"})).await;
        assert_eq!(made["runnerId"], home.id.as_str());
        assert_eq!((made["cpu"].as_i64(), made["disk"].as_i64()), (Some(2), Some(5)));
        assert!(other.poll(0).await.is_empty());
        let jobs = home.poll(0).await;
        assert!(matches!(&jobs[..], [j] if matches!(&j.kind, JobKind::CreateSandbox(c) if c.image == sj.image)));
        home.succeed(&jobs[0], &h.org).await;

        // A stopped sandbox returns to stopped; a failed snapshot leaves the sandbox as it was and says why.
        h.call(Method::POST, &format!("/sandbox/{id}/stop?force=false"), None).await;
        home.work(&h.org).await;
        let (s, v) = h.call(Method::POST, &path, Some(json!({"name": "snap-2"}))).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("snapshotting")));
        let jobs = home.poll(0).await;
        home.fail(&jobs[0], JobErrorCode::Docker, "no space left on device").await;
        assert_eq!(h.state(&id).await, "stopped");
        let snap2 = h.call(Method::GET, "/snapshots/snap-2", None).await.1;
        assert_eq!(snap2["state"], "error");
        assert!(snap2["errorReason"].as_str().unwrap().contains("no space left"), "{snap2}");
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "snap-2"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("no space left"), "{v}");

        // The runner holding the image is gone: creating from the snapshot says so.
        h.clock.advance_secs(60);
        other.heartbeat(16, 32, 1000).await;
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "snap-1"}))).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(message(&v).contains("unreachable"), "{v}");

        // Deleting a snapshot: refused while a sandbox runs its image; then the row goes and the runner that holds
        // the image is told to remove it. A failed snapshot has no image to remove.
        let (s, v) = h.call(Method::DELETE, "/snapshots/snap-1", None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(message(&v).contains(made["name"].as_str().unwrap()), "{v}");
        h.call(Method::DELETE, &format!("/sandbox/{}", made["id"].as_str().unwrap()), None).await;
        home.work(&h.org).await;
        let snap_id = snap["id"].as_str().unwrap();
        assert_eq!(h.call(Method::DELETE, "/snapshots/snap-1", None).await.0, StatusCode::OK);
        assert_eq!(h.call(Method::GET, "/snapshots/snap-1", None).await.0, StatusCode::NOT_FOUND);
        let jobs = home.poll(0).await;
        assert!(
            matches!(&jobs[..], [j] if matches!(&j.kind, JobKind::RemoveSnapshot(r)
                if r.snapshot_id == snap_id && r.image == sj.image)),
            "{jobs:?}"
        );
        assert_eq!(home.succeed(&jobs[0], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.call(Method::DELETE, "/snapshots/snap-2", None).await.0, StatusCode::OK);
        assert!(home.poll(0).await.is_empty());
        h.stop().await;
    }
}

/// Completes `job` with the sandbox reported in `state`.
async fn finish(r: &FakeRunner, job: &Job, org: &str, state: SandboxState) {
    let info = r.info(job.kind.sandbox_id(), org, state);
    let res = JobResult {
        job_id: job.id.clone(),
        outcome: JobOutcome::Succeeded { sandbox: Some(Box::new(info)), snapshot: None },
    };
    assert_eq!(r.result(res).await, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_then_start_resumes() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 16, 32, 1000).await;
        let id = started_sandbox(&h, &r, json!({})).await;
        let pause = format!("/sandbox/{id}/pause");

        let (s, v) = h.call(Method::POST, &pause, None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("pausing")), "{} {v}", db.label);
        assert_eq!(v["desiredState"], "paused");
        let jobs = r.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        assert_eq!(job.kind, JobKind::PauseSandbox { sandbox_id: id.clone() });
        finish(&r, job, &h.org, SandboxState::Paused).await;
        assert_eq!(h.state(&id).await, "paused");
        // The proxy gets no address for a paused sandbox.
        let route = h
            .req(Method::GET, &format!("/internal/routes/{id}"), Some(sandbar_testkit::api::PROXY_TOKEN), None)
            .await
            .1;
        assert_eq!((route["state"].as_str(), route["daemonAddr"].as_str()), (Some("paused"), None), "{route}");

        // Pausing again is a no-op; forking a paused sandbox is refused.
        let (s, v) = h.call(Method::POST, &pause, None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("paused")));
        assert!(r.poll(0).await.is_empty());
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("resume it first"), "{v}");

        // Start resumes it.
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/start"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("resuming")), "{v}");
        let jobs = r.poll(0).await;
        assert!(matches!(&jobs[..], [j] if j.kind == JobKind::ResumeSandbox { sandbox_id: id.clone() }), "{jobs:?}");
        finish(&r, &jobs[0], &h.org, SandboxState::Started).await;
        assert_eq!(h.state(&id).await, "started");

        // A failed pause leaves it started; a paused sandbox can be stopped.
        h.call(Method::POST, &pause, None).await;
        let jobs = r.poll(0).await;
        r.fail(&jobs[0], JobErrorCode::Docker, "cgroup freezer busy").await;
        assert_eq!(h.state(&id).await, "started");
        h.call(Method::POST, &pause, None).await;
        finish(&r, &r.poll(0).await[0], &h.org, SandboxState::Paused).await;
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/stop?force=false"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("stopping")), "{v}");
        r.work(&h.org).await;
        assert_eq!(h.state(&id).await, "stopped");
        // Only a started sandbox pauses.
        let (s, v) = h.call(Method::POST, &pause, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("only a started sandbox"), "{v}");
        h.stop().await;
    }
}
