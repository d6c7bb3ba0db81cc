//! Archive and restore through the API: both are runner jobs (`archiving` -> `archived`, `restoring` ->
//! `started`), the restore job carries the sandbox's whole spec, failures (and jobs past their deadline) keep the
//! data reachable and the sandbox in `stopped` or `archived` with the reason, a runner's full
//! report does not turn an archived sandbox (which has no container) into an error, and delete reaches the runner
//! so it deletes the archive. SQLite and PostgreSQL.

use reqwest::{Method, StatusCode};
use sandbar_proto::runner::{Job, JobErrorCode, JobKind, Resources};
use sandbar_testkit::api::{FakeRunner, Harness, databases, started_sandbox};
use serde_json::{Value, json};

async fn post(h: &Harness, id: &str, action: &str) -> (StatusCode, Value) {
    h.call(Method::POST, &format!("/sandbox/{id}/{action}"), None).await
}

/// The one job the runner gets now.
async fn one_job(r: &FakeRunner) -> Job {
    let mut jobs = r.poll(0).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs.remove(0)
}

async fn stopped(h: &Harness, r: &FakeRunner, body: Value) -> String {
    let id = started_sandbox(h, r, body).await;
    assert_eq!(post(h, &id, "stop?force=false").await.0, StatusCode::OK);
    r.work(&h.org).await;
    assert_eq!(h.state(&id).await, "stopped");
    id
}

async fn archived(h: &Harness, r: &FakeRunner, body: Value) -> String {
    let id = stopped(h, r, body).await;
    let (s, v) = post(h, &id, "archive").await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("archiving")), "{v}");
    let job = one_job(r).await;
    assert_eq!(job.kind, JobKind::ArchiveSandbox { sandbox_id: id.clone() });
    assert_eq!(r.succeed(&job, &h.org).await, StatusCode::NO_CONTENT);
    assert_eq!(h.state(&id).await, "archived");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_then_restore_with_the_whole_spec() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let body = json!({"env": {"K": "v w"}, "labels": {"team": "a"}, "cpu": 2, "memory": 3, "disk": 4,
            "autoStopInterval": 30, "autoArchiveInterval": 60, "autoDeleteInterval": -1, "user": "sandbar"});
        let id = archived(&h, &r, body).await;
        let v = h.get_sandbox(&id).await;
        assert_eq!((v["desiredState"].as_str(), v["errorReason"].as_null()), (Some("archived"), Some(())), "{v}");

        // A runner that restarts reports what it has: no container for an archived sandbox, and that is fine.
        assert_eq!(r.post("sandboxes", json!([])).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "archived", "an archived sandbox has no container by design");
        // A stale report of the container it had does not move it either.
        assert_eq!(r.post("states", json!([{"sandboxId": id, "state": "stopped"}])).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "archived");

        let before = h.call(Method::GET, &format!("/sandbox/{id}/ports/3000/preview-url"), None).await.1;
        let (s, v) = post(&h, &id, "start").await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("restoring")), "{v}");
        assert_eq!(post(&h, &id, "start").await.1["state"], "restoring", "start while restoring is a no-op");
        let job = one_job(&r).await;
        let JobKind::RestoreSandbox(spec) = &job.kind else { panic!("not a restore: {job:?}") };
        assert_eq!(spec.id, id);
        assert_eq!(spec.organization_id, h.org);
        assert_eq!(spec.env.get("K").map(String::as_str), Some("v w"));
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(spec.resources, Resources { cpu: 2, memory: 3, disk: 4 });
        assert_eq!(spec.user.as_deref(), Some("sandbar"));
        assert_eq!(
            (spec.auto.auto_stop_interval, spec.auto.auto_archive_interval, spec.auto.auto_delete_interval),
            (Some(30), Some(60), None),
            "negative intervals (never) are not sent"
        );
        assert_eq!(r.succeed(&job, &h.org).await, StatusCode::NO_CONTENT);
        let v = h.get_sandbox(&id).await;
        assert_eq!((v["state"].as_str(), v["desiredState"].as_str()), (Some("started"), Some("started")), "{v}");
        let after = h.call(Method::GET, &format!("/sandbox/{id}/ports/3000/preview-url"), None).await.1;
        assert_ne!(before["token"], after["token"], "preview tokens rotate on a restore as on any start");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_archive_stays_stopped_and_failed_restore_stays_archived() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;

        // The store failed past the runner's retries: the container is intact and stopped.
        let id = stopped(&h, &r, json!({})).await;
        post(&h, &id, "archive").await;
        let job = one_job(&r).await;
        r.fail(&job, JobErrorCode::Internal, "archive store: Generic S3 error: Error performing PUT ... 500").await;
        let v = h.get_sandbox(&id).await;
        assert_eq!((v["state"].as_str(), v["desiredState"].as_str()), (Some("stopped"), Some("archived")), "{v}");
        let reason = v["errorReason"].as_str().unwrap();
        assert!(reason.contains("archive failed") && reason.contains("archive store: Generic S3 error"), "{reason}");
        // A stale report of the runner's own picture (stopped, with the same reason) changes nothing.
        let report = json!([{"sandboxId": id, "state": "stopped", "reason": "archive failed: archive store: 500"}]);
        assert_eq!(r.post("states", report).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "stopped");
        // Archived again once the store is back; the reason goes with the success.
        let (s, v) = post(&h, &id, "archive").await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("archiving")), "{v}");
        let job = one_job(&r).await;
        assert_eq!(job.kind, JobKind::ArchiveSandbox { sandbox_id: id.clone() });
        r.succeed(&job, &h.org).await;
        let v = h.get_sandbox(&id).await;
        assert_eq!((v["state"].as_str(), v["errorReason"].as_null()), (Some("archived"), Some(())), "{v}");

        let id = archived(&h, &r, json!({})).await;
        post(&h, &id, "start").await;
        let job = one_job(&r).await;
        r.fail(&job, JobErrorCode::Docker, "Docker: no space left on device").await;
        let v = h.get_sandbox(&id).await;
        assert_eq!(v["state"], "archived", "the archive is still there: {v}");
        let reason = v["errorReason"].as_str().unwrap();
        assert!(reason.contains("restore failed") && reason.contains("no space left"), "{reason}");
        let (_, v) = post(&h, &id, "start").await;
        assert_eq!((v["state"].as_str(), v["errorReason"].as_null()), (Some("restoring"), Some(())), "{v}");
        let job = one_job(&r).await;
        assert!(matches!(job.kind, JobKind::RestoreSandbox(_)), "a second start restores again: {job:?}");
        r.succeed(&job, &h.org).await;
        assert_eq!(h.state(&id).await, "started");
        h.stop().await;
    }
}

/// An archive or a restore whose runner never answers (it hangs on a store that never answers, or died) fails at
/// the job's deadline and lands where a failure of its kind does, with the reason: never stuck in `archiving` or
/// `restoring`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_and_restore_without_a_result_end_at_their_deadline() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let a = stopped(&h, &r, json!({})).await;
        let b = archived(&h, &r, json!({})).await;
        post(&h, &a, "archive").await;
        post(&h, &b, "start").await;
        let jobs = r.poll(0).await;
        assert_eq!(jobs.len(), 2, "{jobs:?}");

        h.clock.advance_secs(59 * 60);
        r.heartbeat(64, 64, 1000).await;
        assert!(h.tick().await.expired.is_empty(), "archive and restore have 60 minutes");
        assert_eq!((h.state(&a).await, h.state(&b).await), ("archiving".into(), "restoring".into()));
        h.clock.advance_secs(2 * 60);
        r.heartbeat(64, 64, 1000).await;
        assert_eq!(h.tick().await.expired.len(), 2, "{}", db.label);
        for (id, state, what) in [(&a, "stopped", "archive failed"), (&b, "archived", "restore failed")] {
            let v = h.get_sandbox(id).await;
            assert_eq!(v["state"], state, "{v}");
            let reason = v["errorReason"].as_str().unwrap_or_default();
            assert!(reason.contains(what) && reason.contains("Timeout"), "{reason}");
        }
        // Both can be asked again.
        assert_eq!(post(&h, &a, "archive").await.1["state"], "archiving");
        assert_eq!(post(&h, &b, "start").await.1["state"], "restoring");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_of_archived_and_archiving_reaches_the_runner() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;

        let id = archived(&h, &r, json!({})).await;
        let (s, v) = h.call(Method::DELETE, &format!("/sandbox/{id}"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("destroying")), "{v}");
        let job = one_job(&r).await;
        assert_eq!(job.kind, JobKind::DestroySandbox { sandbox_id: id.clone() }, "the runner deletes the archive");
        r.succeed(&job, &h.org).await;
        assert_eq!(h.state(&id).await, "destroyed");

        // Delete during the archive: the destroy waits for the archive job, whose late result changes nothing.
        let id = stopped(&h, &r, json!({})).await;
        post(&h, &id, "archive").await;
        let archive = one_job(&r).await;
        h.call(Method::DELETE, &format!("/sandbox/{id}"), None).await;
        assert!(r.poll(0).await.is_empty(), "the destroy waits for the archive in flight");
        r.succeed(&archive, &h.org).await;
        assert_eq!(h.state(&id).await, "destroying");
        let destroy = one_job(&r).await;
        assert!(matches!(destroy.kind, JobKind::DestroySandbox { .. }));
        r.succeed(&destroy, &h.org).await;
        assert_eq!(h.state(&id).await, "destroyed");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archived_sandboxes_hold_no_compute_and_restore_checks_the_quota() {
    for db in databases().await {
        let mut config = sandbar_testkit::api::config(&db.url);
        config.limits.quota_cpu = 4;
        let h = Harness::start_with(&db, config, Default::default()).await;
        let r = h.runner("r1");
        r.heartbeat(64, 64, 1000).await;
        let a = archived(&h, &r, json!({"cpu": 3})).await;
        let b = started_sandbox(&h, &r, json!({"cpu": 3})).await;
        let (s, v) = post(&h, &a, "start").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "restoring needs 3 more vCPU: {v}");
        assert_eq!(h.state(&a).await, "archived");
        post(&h, &b, "stop?force=false").await;
        r.work(&h.org).await;
        // While archiving, a sandbox holds no CPU either.
        post(&h, &b, "archive").await;
        assert_eq!(h.state(&b).await, "archiving");
        let (s, v) = post(&h, &a, "start").await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("restoring")), "{v}");
        h.stop().await;
    }
}
