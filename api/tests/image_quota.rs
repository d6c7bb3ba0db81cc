//! The per-organization image-bytes quota and the collection of unused build images, over HTTP with a fake runner
//! that reports image sizes: refusals before a snapshot, fork or build starts; an image that goes over removed
//! again with the operation failed; the ledger following deletes, destroys and removals; build images collected
//! after the grace period, and built again afterwards. SQLite and PostgreSQL.
#![cfg(test)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_api::store::image_bytes;
use sandbar_proto::runner::{Job, JobErrorCode, JobKind, JobOutcome, JobResult, SandboxState, SnapshotImage};
use sandbar_testkit::api::{FakeRunner, Harness, config, databases, started_sandbox};
use serde_json::{Value, json};

/// Reports `job` done with an image of `size` bytes (and, but for builds and removals, the sandbox started).
async fn made(r: &FakeRunner, job: &Job, org: &str, image: &str, size: u64) -> StatusCode {
    let sandbox = match &job.kind {
        JobKind::BuildSnapshot(_) | JobKind::RemoveSnapshot(_) => None,
        kind => Some(Box::new(r.info(kind.sandbox_id(), org, SandboxState::Started))),
    };
    let snapshot =
        Some(SnapshotImage { image: image.to_owned(), image_id: "sha256:0123".into(), size, ..Default::default() });
    r.result(JobResult { job_id: job.id.clone(), outcome: JobOutcome::Succeeded { sandbox, snapshot } }).await
}

/// The one job the runner has now.
async fn one_job(r: &FakeRunner) -> Job {
    let jobs = r.poll(0).await;
    let [job] = &jobs[..] else { panic!("one job: {jobs:?}") };
    job.clone()
}

async fn usage(h: &Harness, org: &str) -> i64 {
    let mut conn = h.app.db.pool.acquire().await.unwrap();
    image_bytes::usage(&mut conn, org).await.unwrap()
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

fn assert_refused(s: StatusCode, v: &Value) {
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!((v["statusCode"].as_u64(), v["code"].as_str()), (Some(403), Some("FORBIDDEN")), "{v}");
    let m = message(v);
    assert!(m.starts_with("Quota exceeded") && m.contains("limit is 900 bytes and 900 bytes is in use"), "{v}");
}

/// Asks for a snapshot of `sandbox`; the runner's job.
async fn snapshot_of(h: &Harness, r: &FakeRunner, sandbox: &str, name: &str) -> Job {
    let (s, v) = h.call(Method::POST, &format!("/sandbox/{sandbox}/snapshot"), Some(json!({"name": name}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    one_job(r).await
}

fn snapshot_image(job: &Job) -> String {
    match &job.kind {
        JobKind::SnapshotSandbox(s) => s.image.clone(),
        other => panic!("not a snapshot job: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_image_quota_refuses_before_and_removes_what_goes_over() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 16, 32, 1000).await;
        sandbar_api::auth::set_image_quota(&h.app.db, &h.org, Some(1000)).await.unwrap();
        let src = started_sandbox(&h, &r, json!({})).await;

        // A snapshot of 600 bytes fits.
        let job = snapshot_of(&h, &r, &src, "s1").await;
        assert_eq!(made(&r, &job, &h.org, &snapshot_image(&job), 600).await, StatusCode::NO_CONTENT);
        let s1 = h.call(Method::GET, "/snapshots/s1", None).await.1;
        assert_eq!((s1["state"].as_str(), s1["size"].as_f64().is_some()), (Some("active"), true), "{s1}");
        assert_eq!(usage(&h, &h.org).await, 600);

        // A fork of 500 more would be 1100: it ends in error with the reason (what the SDK waits for), and its
        // container and image go; it stays error, and the bytes no longer count once the runner removed them.
        let (s, f) = h.call(Method::POST, &format!("/sandbox/{src}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::OK, "{f}");
        let fork = f["id"].as_str().unwrap().to_owned();
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &h.org, &format!("sandbar-fork:{fork}"), 500).await, StatusCode::NO_CONTENT);
        let v = h.get_sandbox(&fork).await;
        assert_eq!(v["state"], "error", "{v}");
        assert!(v["errorReason"].as_str().unwrap().contains("Quota exceeded"), "{v}");
        let cleanup = one_job(&r).await;
        assert_eq!(cleanup.kind, JobKind::DestroySandbox { sandbox_id: fork.clone() });
        assert_eq!(usage(&h, &h.org).await, 1100, "counted until the runner removed it");
        assert_eq!(r.succeed(&cleanup, &h.org).await, StatusCode::NO_CONTENT);
        let v = h.get_sandbox(&fork).await;
        assert_eq!(v["state"], "error", "{v}");
        assert!(v["errorReason"].as_str().unwrap().contains("over its limit of 1000 bytes"), "{v}");
        assert_eq!(usage(&h, &h.org).await, 600);

        // A Dockerfile build of 300 fits (900); a snapshot of 200 more does not: error, and its image removed.
        let df = "FROM sandbar-test-busybox:base1\nRUN echo quota\n";
        let (s, v) = h
            .call(Method::POST, "/snapshots", Some(json!({"name": "b1", "buildInfo": {"dockerfileContent": df}})))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &h.org, v["imageName"].as_str().unwrap(), 300).await, StatusCode::NO_CONTENT);
        assert_eq!(h.call(Method::GET, "/snapshots/b1", None).await.1["state"], "active");
        let job = snapshot_of(&h, &r, &src, "s2").await;
        let s2_image = snapshot_image(&job);
        assert_eq!(made(&r, &job, &h.org, &s2_image, 200).await, StatusCode::NO_CONTENT);
        let s2 = h.call(Method::GET, "/snapshots/s2", None).await.1;
        assert_eq!(s2["state"], "error", "{s2}");
        assert!(s2["errorReason"].as_str().unwrap().contains("Quota exceeded"), "{s2}");
        assert_eq!(h.state(&src).await, "started", "the sandbox goes back to where it was");
        let removal = one_job(&r).await;
        assert!(matches!(&removal.kind, JobKind::RemoveSnapshot(x) if x.image == s2_image), "{removal:?}");
        assert_eq!(r.succeed(&removal, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(usage(&h, &h.org).await, 900);

        // At or over the limit, nothing that makes an image starts: 403 with the limit and the usage.
        sandbar_api::auth::set_image_quota(&h.app.db, &h.org, Some(900)).await.unwrap();
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{src}/snapshot"), Some(json!({"name": "s3"}))).await;
        assert_refused(s, &v);
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{src}/fork"), Some(json!({}))).await;
        assert_refused(s, &v);
        let other_df = json!({"dockerfileContent": "FROM sandbar-test-busybox:base1\nRUN echo other\n"});
        let (s, v) = h.call(Method::POST, "/snapshots", Some(json!({"name": "b2", "buildInfo": other_df}))).await;
        assert_refused(s, &v);
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"buildInfo": other_df}))).await;
        assert_refused(s, &v);
        assert!(r.poll(0).await.is_empty(), "nothing was queued");
        // Another organization has its own count.
        let (other_org, other_key) = h.new_org("other").await;
        let (s, v) = h
            .req(Method::POST, "/snapshots", Some(&other_key), Some(json!({"name": "b2", "buildInfo": other_df})))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &other_org, v["imageName"].as_str().unwrap(), 5000).await, StatusCode::NO_CONTENT);
        assert_eq!((usage(&h, &other_org).await, usage(&h, &h.org).await), (5000, 900), "the default is 100 GiB");

        // Deleting a snapshot gives its bytes back once its image is removed; then a snapshot starts again.
        let (s, v) = h.call(Method::DELETE, "/snapshots/s1", None).await;
        assert!(s.is_success(), "{v}");
        let removal = one_job(&r).await;
        assert_eq!(usage(&h, &h.org).await, 900);
        assert_eq!(r.succeed(&removal, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(usage(&h, &h.org).await, 300);
        let job = snapshot_of(&h, &r, &src, "s4").await;
        assert_eq!(made(&r, &job, &h.org, &snapshot_image(&job), 100).await, StatusCode::NO_CONTENT);

        // A fork within the limit counts until it is destroyed; the runner removes its image then.
        sandbar_api::auth::set_image_quota(&h.app.db, &h.org, None).await.unwrap();
        let (_, f) = h.call(Method::POST, &format!("/sandbox/{src}/fork"), Some(json!({}))).await;
        let fork = f["id"].as_str().unwrap().to_owned();
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &h.org, &format!("sandbar-fork:{fork}"), 50).await, StatusCode::NO_CONTENT);
        assert_eq!((h.state(&fork).await, usage(&h, &h.org).await), ("started".into(), 450));
        assert!(h.call(Method::DELETE, &format!("/sandbox/{fork}"), None).await.0.is_success());
        r.work(&h.org).await;
        assert_eq!((h.state(&fork).await, usage(&h, &h.org).await), ("destroyed".into(), 400));

        // A build that goes over fails with the reason, its image removed, its snapshot build_failed.
        sandbar_api::auth::set_image_quota(&h.app.db, &h.org, Some(450)).await.unwrap();
        let big = json!({"dockerfileContent": "FROM sandbar-test-busybox:base1\nRUN echo big\n"});
        let (s, v) = h.call(Method::POST, "/snapshots", Some(json!({"name": "big", "buildInfo": big}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let big_image = v["imageName"].as_str().unwrap().to_owned();
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &h.org, &big_image, 51).await, StatusCode::NO_CONTENT);
        let v = h.call(Method::GET, "/snapshots/big", None).await.1;
        assert_eq!(v["state"], "build_failed", "{v}");
        assert!(v["errorReason"].as_str().unwrap().contains("Quota exceeded"), "{v}");
        let removal = one_job(&r).await;
        assert!(matches!(&removal.kind, JobKind::RemoveSnapshot(x) if x.image == big_image), "{removal:?}");
        assert_eq!(r.succeed(&removal, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(usage(&h, &h.org).await, 400);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unused_build_images_are_collected_after_the_grace_period() {
    for db in databases().await {
        let mut c = config(&db.url);
        c.build_gc_grace = std::time::Duration::from_secs(60);
        let h = Harness::start_with(&db, c, Arc::new(ManualClock::default())).await;
        let r = h.runner("r1");
        r.heartbeat(16, 32, 1000).await;
        let collect = || sandbar_api::domain::builds::collect(&h.app);
        let later = |secs| {
            h.clock.advance_secs(secs);
            r.heartbeat(16, 32, 1000)
        };

        // A sandbox built from D1, and a snapshot built from D2 (which another organization builds too).
        let d1 = json!({"dockerfileContent": "FROM sandbar-test-busybox:base1\nRUN echo one\n"});
        let d2 = json!({"dockerfileContent": "FROM sandbar-test-busybox:base1\nRUN echo two\n"});
        let sb = h.create(json!({"buildInfo": d1})).await;
        let sb_id = sb["id"].as_str().unwrap().to_owned();
        let d1_image = sb["snapshot"].as_str().unwrap().to_owned();
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &h.org, &d1_image, 100).await, StatusCode::NO_CONTENT);
        r.work(&h.org).await;
        assert_eq!(h.state(&sb_id).await, "started");
        let (_, v) = h.call(Method::POST, "/snapshots", Some(json!({"name": "two", "buildInfo": d2}))).await;
        let d2_image = v["imageName"].as_str().unwrap().to_owned();
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &h.org, &d2_image, 50).await, StatusCode::NO_CONTENT);
        let (other_org, other_key) = h.new_org("other").await;
        let (s, v) =
            h.req(Method::POST, "/snapshots", Some(&other_key), Some(json!({"name": "two", "buildInfo": d2}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let job = one_job(&r).await;
        assert_eq!(made(&r, &job, &other_org, &d2_image, 50).await, StatusCode::NO_CONTENT);
        assert_eq!(usage(&h, &h.org).await, 150);

        // In use: nothing goes, however long.
        later(600).await;
        assert_eq!(collect().await.unwrap(), 0);
        // The sandbox is deleted: its image stays for the grace period, then goes.
        assert!(h.call(Method::DELETE, &format!("/sandbox/{sb_id}"), None).await.0.is_success());
        r.work(&h.org).await;
        assert_eq!(collect().await.unwrap(), 0, "within the grace period");
        later(61).await;
        assert_eq!(collect().await.unwrap(), 1);
        assert_eq!(collect().await.unwrap(), 0, "queued once");
        let removal = one_job(&r).await;
        assert!(matches!(&removal.kind, JobKind::RemoveSnapshot(x) if x.image == d1_image), "{removal:?}");
        assert_eq!(usage(&h, &h.org).await, 150, "counted until the runner removed it");
        assert_eq!(r.succeed(&removal, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(usage(&h, &h.org).await, 50);
        // The build is gone: the same Dockerfile builds again.
        let again = h.create(json!({"buildInfo": d1})).await;
        assert_eq!(again["state"], "pending_build", "{again}");
        let job = one_job(&r).await;
        assert!(matches!(job.kind, JobKind::BuildSnapshot(_)), "{job:?}");
        assert_eq!(made(&r, &job, &h.org, &d1_image, 100).await, StatusCode::NO_CONTENT);
        r.work(&h.org).await;
        assert_eq!(usage(&h, &h.org).await, 150);

        // D2's image is shared with the other organization: deleting one snapshot keeps it.
        assert!(h.call(Method::DELETE, "/snapshots/two", None).await.0.is_success());
        assert!(r.poll(0).await.is_empty(), "a built snapshot's image belongs to its build");
        later(61).await;
        assert_eq!(collect().await.unwrap(), 0, "the other organization's snapshot still uses it");
        let (s, _) = h.req(Method::DELETE, "/snapshots/two", Some(&other_key), None).await;
        assert!(s.is_success());
        later(61).await;
        assert_eq!(collect().await.unwrap(), 1);
        // The runner refuses (a container uses it): kept for another grace period, then asked again.
        let removal = one_job(&r).await;
        assert_eq!(r.fail(&removal, JobErrorCode::Conflict, "in use").await, StatusCode::NO_CONTENT);
        assert_eq!(collect().await.unwrap(), 0);
        later(61).await;
        assert_eq!(collect().await.unwrap(), 1);
        let removal = one_job(&r).await;
        assert_eq!(r.succeed(&removal, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!((usage(&h, &h.org).await, usage(&h, &other_org).await), (100, 0), "D1's new build stays");
        h.stop().await;
    }
}
