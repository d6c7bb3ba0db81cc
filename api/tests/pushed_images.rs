//! Images that travel, over real HTTP with fake runners: a snapshot taken from a sandbox, or a Dockerfile build,
//! that its runner pushed to the internal registry (`SnapshotImage::pushed`) starts sandboxes on another runner
//! (here: its own runner cordoned), whose create job carries the pushed reference to pull (`pull_from`), which the
//! sandbox keeps for a restore elsewhere; one whose push failed (`push_error`) stays pinned to its runner, as one
//! made without a registry, and a create is refused while that runner is cordoned. Deleting a pushed snapshot
//! removes its image from its runner (with the registry copy named) and from the other runners. SQLite and
//! PostgreSQL.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_proto::runner::{CreateSandbox, Job, JobKind, JobOutcome, JobResult, SandboxState, SnapshotImage};
use sandbar_testkit::api::{FakeRunner, Harness, config, databases, empty};
use serde_json::{Value, json};

const ADMIN: &str = "operator-admin-token";
const REGISTRY: &str = "10.0.0.9:5000/sandbar";

async fn harness(db: &sandbar_testkit::api::TestDb) -> Harness {
    let mut c = config(&db.url);
    c.admin_token = Some(ADMIN.into());
    Harness::start_with(db, c, Arc::new(ManualClock::default())).await
}

async fn schedule(h: &Harness, runner: &str, what: &str) {
    let (s, v) = h.req(Method::POST, &format!("/admin/runners/{runner}/{what}"), Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK, "{what} {runner}: {v}");
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

/// The one create job `r` gets now.
async fn create_job(r: &FakeRunner) -> (Job, CreateSandbox) {
    let jobs = r.poll(0).await;
    match &jobs[..] {
        [j] => match &j.kind {
            JobKind::CreateSandbox(c) => (j.clone(), c.clone()),
            other => panic!("not a create: {other:?}"),
        },
        other => panic!("one job expected on {}: {other:?}", r.id),
    }
}

/// The runner's answer to an image-making job: the image, and where it was pushed or why not.
fn made(
    job: &Job,
    image: &str,
    info: Option<sandbar_proto::runner::SandboxInfo>,
    push: Result<&str, &str>,
) -> JobResult {
    let (pushed, push_error) = match push {
        Ok(to) => (Some(to.to_owned()), None),
        Err(why) => (None, Some(why.to_owned())),
    };
    let snapshot =
        SnapshotImage { image: image.to_owned(), image_id: "sha256:ab".into(), size: 1 << 20, pushed, push_error };
    JobResult {
        job_id: job.id.clone(),
        outcome: JobOutcome::Succeeded { sandbox: info.map(Box::new), snapshot: Some(snapshot) },
    }
}

/// Takes snapshot `name` of a started sandbox on `home`, which answers with `push`; returns its image name.
async fn snapshot_of(h: &Harness, home: &FakeRunner, sandbox: &str, name: &str, push: Result<&str, &str>) -> String {
    let (s, v) = h.call(Method::POST, &format!("/sandbox/{sandbox}/snapshot"), Some(json!({"name": name}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let jobs = home.poll(0).await;
    let [job] = &jobs[..] else { panic!("{jobs:?}") };
    let JobKind::SnapshotSandbox(sj) = &job.kind else { panic!("{job:?}") };
    let info = home.info(sandbox, &h.org, SandboxState::Started);
    let push = push.map(|_| format!("{REGISTRY}/{}", sj.image));
    let push = push.as_deref().map_err(|e| *e);
    assert_eq!(home.result(made(job, &sj.image, Some(info), push)).await, StatusCode::NO_CONTENT);
    let (_, snap) = h.call(Method::GET, &format!("/snapshots/{name}"), None).await;
    assert_eq!(snap["state"], "active", "{snap}");
    sj.image.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_snapshots_go_to_any_runner_and_unpushed_ones_stay_home() {
    for db in databases().await {
        let h = harness(&db).await;
        let (r1, r2) = (h.runner("r1"), h.runner("r2"));
        r1.heartbeat(64, 64, 1000).await;
        r2.heartbeat(8, 8, 100).await;
        // The source sandbox goes to r1 (more room).
        let src = h.create(empty()).await;
        let src_id = src["id"].as_str().unwrap().to_owned();
        assert_eq!(src["runnerId"], "r1", "{src}");
        r1.work(&h.org).await;

        let pushed_image = snapshot_of(&h, &r1, &src_id, "pushed", Ok("")).await;
        let pinned_image = snapshot_of(&h, &r1, &src_id, "pinned", Err("registry unreachable")).await;
        let pushed_ref = format!("{REGISTRY}/{pushed_image}");

        // r1 cordoned: the pushed snapshot starts on r2, which is told where to pull it from.
        schedule(&h, "r1", "cordon").await;
        let v = h.create(json!({"snapshot": "pushed"})).await;
        assert_eq!(v["runnerId"], "r2", "{} {v}", db.label);
        let (job, c) = create_job(&r2).await;
        assert_eq!((c.image.as_str(), c.pull_from.as_deref()), (pushed_image.as_str(), Some(pushed_ref.as_str())));
        assert!(!c.pull, "not a tenant registry image: no organization credentials");
        assert_eq!(r2.succeed(&job, &h.org).await, StatusCode::NO_CONTENT);
        let on_b = v["id"].as_str().unwrap().to_owned();
        assert_eq!(h.state(&on_b).await, "started");

        // The pinned one (its push failed) is refused with the reason while its runner is cordoned.
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "pinned"}))).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(message(&v).contains("r1") && message(&v).contains("cordoned"), "{v}");
        assert!(r2.poll(0).await.is_empty(), "nothing was queued for the refused create");

        // Uncordoned, it goes home with nothing to pull, though r2 has more room now.
        schedule(&h, "r1", "uncordon").await;
        r1.heartbeat(8, 8, 100).await;
        r2.heartbeat(64, 64, 1000).await;
        let v = h.create(json!({"snapshot": "pinned"})).await;
        assert_eq!(v["runnerId"], "r1", "{v}");
        let (job, c) = create_job(&r1).await;
        assert_eq!((c.image.as_str(), c.pull_from.as_deref()), (pinned_image.as_str(), None));
        r1.succeed(&job, &h.org).await;

        // A stop and start on r2 still knows the pushed copy (a restore elsewhere pulls the base with it).
        h.call(Method::POST, &format!("/sandbox/{on_b}/stop?force=false"), None).await;
        r2.work(&h.org).await;
        h.call(Method::POST, &format!("/sandbox/{on_b}/archive"), None).await;
        r2.work(&h.org).await;
        assert_eq!(h.state(&on_b).await, "archived");
        schedule(&h, "r2", "cordon").await;
        r1.heartbeat(64, 64, 1000).await;
        h.call(Method::POST, &format!("/sandbox/{on_b}/start"), None).await;
        let jobs = r1.poll(0).await;
        let [job] = &jobs[..] else { panic!("a restore on r1: {jobs:?}") };
        let JobKind::RestoreSandbox(spec) = &job.kind else { panic!("{job:?}") };
        assert_eq!(spec.pull_from.as_deref(), Some(pushed_ref.as_str()));
        r1.succeed(job, &h.org).await;
        schedule(&h, "r2", "uncordon").await;

        // Deleting the pushed snapshot: its runner removes the image and the registry copy, every other reachable
        // runner (r2 pulled it) its copy.
        h.call(Method::DELETE, &format!("/sandbox/{on_b}"), None).await;
        r1.work(&h.org).await;
        assert_eq!(h.call(Method::DELETE, "/snapshots/pushed", None).await.0, StatusCode::OK);
        let removal = |r: &[Job]| match r {
            [j] => match &j.kind {
                JobKind::RemoveSnapshot(rs) => (rs.image.clone(), rs.pushed.clone()),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let jobs = r1.poll(0).await;
        assert_eq!(removal(&jobs), (pushed_image.clone(), Some(pushed_ref.clone())));
        // Jobs of one owner run one after the other: r2's comes once r1's is done.
        assert_eq!(r1.succeed(&jobs[0], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(removal(&r2.poll(0).await), (pushed_image.clone(), None));
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_builds_go_to_any_runner() {
    for db in databases().await {
        let h = harness(&db).await;
        let (r1, r2) = (h.runner("r1"), h.runner("r2"));
        r1.heartbeat(64, 64, 1000).await;
        r2.heartbeat(8, 8, 100).await;
        let df = "FROM sandbar-test-busybox:base1\nRUN echo travel\n";
        let body = json!({"name": "built", "buildInfo": {"dockerfileContent": df}});
        let (s, v) = h.call(Method::POST, "/snapshots", Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let jobs = r1.poll(0).await;
        let [job] = &jobs[..] else { panic!("a build on r1: {jobs:?}") };
        let JobKind::BuildSnapshot(b) = &job.kind else { panic!("{job:?}") };
        let pushed_ref = format!("{REGISTRY}/sandbar-build:{}", b.build_id);
        assert_eq!(r1.result(made(job, &b.image, None, Ok(&pushed_ref))).await, StatusCode::NO_CONTENT);

        schedule(&h, "r1", "cordon").await;
        let v = h.create(json!({"snapshot": "built"})).await;
        assert_eq!(v["runnerId"], "r2", "{} {v}", db.label);
        let (_, c) = create_job(&r2).await;
        assert_eq!((c.image.as_str(), c.pull_from.as_deref()), (b.image.as_str(), Some(pushed_ref.as_str())));
        // The same Dockerfile in a create reuses the done, pushed build: any runner too.
        let v = h.create(json!({"buildInfo": {"dockerfileContent": df}})).await;
        assert_eq!((v["runnerId"].as_str(), v["state"].as_str()), (Some("r2"), Some("creating")), "{v}");
        let (_, c) = create_job(&r2).await;
        assert_eq!(c.pull_from.as_deref(), Some(pushed_ref.as_str()));

        // A build whose push failed pins its sandboxes to its runner (cordoned: refused).
        schedule(&h, "r1", "uncordon").await;
        let df2 = "FROM sandbar-test-busybox:base1\nRUN echo stay\n";
        let body = json!({"name": "built-2", "buildInfo": {"dockerfileContent": df2}});
        assert_eq!(h.call(Method::POST, "/snapshots", Some(body)).await.0, StatusCode::OK);
        let jobs = r1.poll(0).await;
        let [job] = &jobs[..] else { panic!("a build on r1: {jobs:?}") };
        let JobKind::BuildSnapshot(b2) = &job.kind else { panic!("{job:?}") };
        assert_eq!(r1.result(made(job, &b2.image, None, Err("denied"))).await, StatusCode::NO_CONTENT);
        schedule(&h, "r1", "cordon").await;
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "built-2"}))).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(message(&v).contains("cordoned"), "{v}");
        h.stop().await;
    }
}
