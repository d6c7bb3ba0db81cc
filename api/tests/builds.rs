//! Dockerfile builds over HTTP with a fake runner: snapshot and sandbox states through a build, the build job, log
//! lines stored once and followed as they come, reuse of an identical build, failures with the build's reason,
//! pinning to the build's runner, and the 400s. SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_proto::runner::{BuildSnapshot, Job, JobErrorCode, JobKind, JobOutcome, JobResult};
use sandbar_testkit::api::{FakeRunner, Harness, config, databases};
use serde_json::{Value, json};

/// Reads a build log URL to its end.
async fn read_log(h: &Harness, url: &str, follow: bool) -> String {
    let (status, content_type, text) = h.get_text(&format!("{url}?follow={follow}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/plain; charset=utf-8");
    text
}

async fn log_lines(r: &FakeRunner, job: &str, attempt: &str, offset: u64, lines: &[&str]) -> StatusCode {
    r.post(&format!("jobs/{job}/log"), json!({"attempt": attempt, "offset": offset, "lines": lines})).await
}

fn build_of(job: &Job) -> &BuildSnapshot {
    match &job.kind {
        JobKind::BuildSnapshot(b) => b,
        other => panic!("not a build job: {other:?}"),
    }
}

async fn build_done(r: &FakeRunner, job: &Job) -> StatusCode {
    r.result(JobResult { job_id: job.id.clone(), outcome: JobOutcome::Succeeded { sandbox: None, snapshot: None } })
        .await
}

async fn logs_url(h: &Harness, what: &str, id: &str) -> String {
    let (s, v) = h.call(Method::GET, &format!("/{what}/{id}/build-logs-url"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let url = v["url"].as_str().unwrap_or_default().to_owned();
    assert!(url.starts_with(&format!("{}/{what}/", h.base)) && url.ends_with("/build-logs"), "{url}");
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_build_with_its_log_followed() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let r1 = h.runner("r1");
        r1.heartbeat(8, 16, 100).await;
        let df = "FROM sandbar-test-busybox:base1\nRUN echo hi\n";
        let body = json!({"name": "built", "buildInfo": {"dockerfileContent": df, "contextHashes": []}, "cpu": 2});
        let (s, v) = h.call(Method::POST, "/snapshots", Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["state"], "building", "queued on a runner at once, so the SDK follows the log from the start");
        let image = v["imageName"].as_str().unwrap().to_owned();
        assert!(image.starts_with("sandbar-build:"), "{image}");
        let snap_id = v["id"].as_str().unwrap().to_owned();
        let url = logs_url(&h, "snapshots", &snap_id).await;
        assert_eq!(url, format!("{}/snapshots/{snap_id}/build-logs", h.base));
        assert_eq!(logs_url(&h, "snapshots", "built").await, url, "by name too");

        // A follower that starts before the build does.
        let follower = tokio::spawn({
            let (http, key, url) = (h.http.clone(), h.key.clone(), url.clone());
            async move {
                let mut resp = http.get(format!("{url}?follow=true")).bearer_auth(key).send().await.unwrap();
                let mut chunks = Vec::new();
                while let Some(c) = resp.chunk().await.unwrap() {
                    chunks.push(String::from_utf8(c.to_vec()).unwrap());
                }
                chunks
            }
        });
        // Not usable before it is built.
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "built"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains("building"), "{v}");

        let jobs = r1.poll(0).await;
        let [job] = &jobs[..] else { panic!("one build job: {jobs:?}") };
        assert_eq!((build_of(job).image.as_str(), build_of(job).dockerfile.as_str()), (image.as_str(), df));
        assert_eq!(
            log_lines(&r1, &job.id, "a1", 0, &["Step 1/2 : FROM sandbar-test-busybox:base1", "hi"]).await,
            StatusCode::NO_CONTENT
        );
        // A retried batch (same attempt and offset) is stored once.
        assert_eq!(
            log_lines(&r1, &job.id, "a1", 0, &["Step 1/2 : FROM sandbar-test-busybox:base1", "hi"]).await,
            StatusCode::NO_CONTENT
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(log_lines(&r1, &job.id, "a1", 2, &["Successfully built x"]).await, StatusCode::NO_CONTENT);
        let so_far = "Step 1/2 : FROM sandbar-test-busybox:base1\nhi\nSuccessfully built x\n";
        // Without follow: what exists now, while the build still runs.
        assert_eq!(read_log(&h, &url, false).await, so_far);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!follower.is_finished(), "the follower waits for the build's end");
        assert_eq!(build_done(&r1, job).await, StatusCode::NO_CONTENT);
        let chunks = tokio::time::timeout(Duration::from_secs(5), follower).await.expect("stream ends").unwrap();
        assert_eq!(chunks.concat(), so_far);
        assert!(chunks.len() >= 2, "lines arrived as they came, not at the end: {chunks:?}");
        let v = h.call(Method::GET, "/snapshots/built", None).await.1;
        assert_eq!((v["state"].as_str(), v["cpu"].as_i64()), (Some("active"), Some(2)));
        // The log is closed: late lines are dropped.
        assert_eq!(log_lines(&r1, &job.id, "a1", 3, &["late"]).await, StatusCode::NO_CONTENT);
        assert_eq!(read_log(&h, &url, true).await, so_far);

        // The image lives on r1 only: a sandbox from the snapshot goes there even when r2 has more room.
        let r2 = h.runner("r2");
        r2.heartbeat(64, 256, 1000).await;
        let sb = h.create(json!({"snapshot": "built"})).await;
        assert_eq!(
            (sb["runnerId"].as_str(), sb["state"].as_str(), sb["cpu"].as_i64()),
            (Some("r1"), Some("creating"), Some(2))
        );
        let jobs = r1.poll(0).await;
        assert!(
            matches!(&jobs[..], [j] if matches!(&j.kind, JobKind::CreateSandbox(c) if c.image == image)),
            "{jobs:?}"
        );
        // ... and none there while r1 is unreachable.
        h.clock.advance_secs(30);
        r2.heartbeat(64, 256, 1000).await;
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "built"}))).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(v["message"].as_str().unwrap().contains("r1"), "{v}");
        h.stop().await;
    }
}

/// A create that waits for its build answers `pending_build` even when a runner, already long-polling, claims the
/// build before the create's answer is read: the SDK follows the build's log only after a `pending_build` answer (CI
/// once got `building_snapshot` back, and with it an empty log).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_answers_pending_build_when_its_build_is_claimed_at_once() {
    for db in databases().await {
        let mut c = config(&db.url);
        c.create_wait = Duration::from_secs(10);
        let h = Harness::start_with(&db, c, Arc::new(ManualClock::default())).await;
        let r = h.runner("r1");
        r.heartbeat(64, 256, 1000).await;
        for i in 0..5 {
            let df = format!("FROM sandbar-test-busybox:base1\nRUN echo {i}\n");
            let poll = async {
                let jobs = r.poll(10).await;
                assert!(matches!(&jobs[..], [j] if matches!(j.kind, JobKind::BuildSnapshot(_))), "{jobs:?}");
            };
            let create = async {
                // The runner's long-poll is waiting before the build is queued.
                tokio::time::sleep(Duration::from_millis(100)).await;
                h.create(json!({"buildInfo": {"dockerfileContent": df}})).await
            };
            let ((), v) = tokio::join!(poll, create);
            assert_eq!(v["state"], "pending_build", "{} {v}", db.label);
            assert_eq!(h.state(v["id"].as_str().unwrap()).await, "building_snapshot");
        }
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_build_states_reuse_and_failures() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let df = "FROM sandbar-test-busybox:base1\nRUN make\n";
        let v = h.create(json!({"buildInfo": {"dockerfileContent": df, "contextHashes": []}, "env": {"A": "1"}})).await;
        assert_eq!(v["state"], "pending_build");
        let id = v["id"].as_str().unwrap().to_owned();
        let image = v["snapshot"].as_str().unwrap().to_owned();
        let url = logs_url(&h, "sandbox", &id).await;
        // A runner's full report does not touch a sandbox that has no container yet.
        assert_eq!(r.post("sandboxes", json!([])).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "pending_build");

        let jobs = r.poll(0).await;
        let [build] = &jobs[..] else { panic!("one build job: {jobs:?}") };
        assert_eq!(build_of(build).image, image);
        assert_eq!(h.state(&id).await, "building_snapshot");
        // The same Dockerfile again while it builds: the build is shared, no second job.
        let v2 = h.create(json!({"buildInfo": {"dockerfileContent": df}})).await;
        assert_eq!(v2["state"], "building_snapshot");
        let id2 = v2["id"].as_str().unwrap().to_owned();
        assert!(r.poll(0).await.is_empty());

        assert_eq!(
            log_lines(&r, &build.id, "a1", 0, &["Step 1/2 : FROM sandbar-test-busybox:base1", "compiling"]).await,
            StatusCode::NO_CONTENT
        );
        // The runner restarted mid-build and builds again: a new attempt continues the log.
        assert_eq!(
            log_lines(&r, &build.id, "a2", 0, &["Step 1/2 : FROM sandbar-test-busybox:base1"]).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(build_done(&r, build).await, StatusCode::NO_CONTENT);
        assert_eq!(build_done(&r, build).await, StatusCode::NO_CONTENT, "results are idempotent");
        assert_eq!((h.state(&id).await, h.state(&id2).await), ("creating".into(), "creating".into()));
        let jobs = r.poll(0).await;
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        for j in &jobs {
            let JobKind::CreateSandbox(c) = &j.kind else { panic!("{j:?}") };
            assert_eq!(c.image, image);
            assert_eq!(r.succeed(j, &h.org).await, StatusCode::NO_CONTENT);
        }
        assert_eq!(h.state(&id).await, "started");
        let text = read_log(&h, &url, true).await;
        assert_eq!(
            text,
            "Step 1/2 : FROM sandbar-test-busybox:base1\ncompiling\n[sandbar: the runner restarted; building again]\nStep 1/2 : FROM sandbar-test-busybox:base1\n"
        );
        assert_eq!(read_log(&h, &logs_url(&h, "sandbox", &id2).await, false).await, text, "one shared build log");
        // Once built, the same Dockerfile creates at once: no build.
        let v3 = h.create(json!({"buildInfo": {"dockerfileContent": df}})).await;
        assert_eq!(v3["state"], "creating");
        let jobs = r.poll(0).await;
        assert!(matches!(&jobs[..], [j] if matches!(&j.kind, JobKind::CreateSandbox(_))), "{jobs:?}");

        // A failing build: the sandbox is build_failed with the build's reason.
        let bad = "FROM sandbar-test-busybox:base1\nRUN false\n";
        let v = h.create(json!({"buildInfo": {"dockerfileContent": bad}})).await;
        let bad_id = v["id"].as_str().unwrap().to_owned();
        let jobs = r.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        let reason = "build failed: The command '/bin/sh -c false' returned a non-zero code: 1";
        assert_eq!(r.fail(job, JobErrorCode::BuildFailed, reason).await, StatusCode::NO_CONTENT);
        let sb = h.get_sandbox(&bad_id).await;
        assert_eq!(sb["state"], "build_failed");
        assert!(sb["errorReason"].as_str().unwrap().contains("non-zero code: 1"), "{sb}");
        // A failed build is not reused: a snapshot of the same Dockerfile builds again, and fails with the reason.
        let (s, v) = h
            .call(Method::POST, "/snapshots", Some(json!({"name": "bad", "buildInfo": {"dockerfileContent": bad}})))
            .await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("building")), "{v}");
        let jobs = r.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        let missing =
            "base image \"sandbar-test-busybox:base1\" is not on this host (there is no registry to pull it from)";
        assert_eq!(r.fail(job, JobErrorCode::ImageNotFound, missing).await, StatusCode::NO_CONTENT);
        let v = h.call(Method::GET, "/snapshots/bad", None).await.1;
        assert_eq!((v["state"].as_str(), v["errorReason"].as_str()), (Some("build_failed"), Some(missing)));
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": "bad"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains("no registry"), "{v}");
        // A deleted sandbox that waited for a build is gone at once.
        let v =
            h.create(json!({"buildInfo": {"dockerfileContent": "FROM sandbar-test-busybox:base1\nRUN slow\n"}})).await;
        let (s, d) = h.call(Method::DELETE, &format!("/sandbox/{}", v["id"].as_str().unwrap()), None).await;
        assert_eq!((s, d["state"].as_str()), (StatusCode::OK, Some("destroyed")), "{d}");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn build_input_and_log_endpoints_refuse_what_they_cannot_do() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/sandbox",
                json!({"buildInfo": {"dockerfileContent": "FROM sandbar-test-busybox:a\nCOPY . /\n", "contextHashes": ["abc"]}}),
                "contextHashes",
            ),
            (
                "/snapshots",
                json!({"name": "s", "buildInfo": {"dockerfileContent": "FROM sandbar-test-busybox:a\nRUN b\n", "contextHashes": ["abc"]}}),
                "contextHashes",
            ),
            ("/sandbox", json!({"buildInfo": {"dockerfileContent": "RUN b\n"}}), "no FROM line"),
            ("/sandbox", json!({"buildInfo": {}}), "dockerfileContent is required"),
            (
                "/snapshots",
                json!({"name": "s", "buildInfo": {"dockerfileContent": ""}}),
                "dockerfileContent is required",
            ),
        ];
        for (path, body, needle) in cases {
            let (s, v) = h.call(Method::POST, path, Some(body.clone())).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert!(v["message"].as_str().unwrap().contains(needle), "{body}: {v}");
        }
        // The SDK asks for object storage before uploading a local context: it learns at once there is none.
        let (s, v) = h.call(Method::GET, "/object-storage/push-access", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(v["message"].as_str().unwrap().contains("not supported"), "{v}");

        // No build, no logs; other organizations see nothing.
        let plain = h.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let (s, v) = h.call(Method::GET, &format!("/sandbox/{plain}/build-logs-url"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["message"].as_str().unwrap().contains("not built from a Dockerfile"), "{v}");
        let built = h.create(json!({"buildInfo": {"dockerfileContent": "FROM sandbar-test-busybox:a\nRUN b\n"}})).await
            ["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = logs_url(&h, "sandbox", &built).await;
        let (_, other) = h.new_org("other").await;
        let path = format!("/sandbox/{built}/build-logs-url");
        assert_eq!(h.req(Method::GET, &path, Some(&other), None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(h.http.get(&url).bearer_auth(&other).send().await.unwrap().status(), StatusCode::NOT_FOUND);
        assert_eq!(h.http.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
        assert_eq!(h.call(Method::GET, "/sandbox/nope/build-logs-url", None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(h.call(Method::GET, "/snapshots/nope/build-logs", None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            h.call(Method::GET, &format!("/sandbox/{built}/build-logs?follow=maybe"), None).await.0,
            StatusCode::BAD_REQUEST
        );

        // The runner's log endpoint: its token only, its own build jobs only.
        let jobs = r.poll(0).await;
        let build = jobs.iter().find(|j| matches!(j.kind, JobKind::BuildSnapshot(_))).expect("build job");
        let create = jobs.iter().find(|j| matches!(j.kind, JobKind::CreateSandbox(_))).expect("create job");
        assert_eq!(log_lines(&r, &create.id, "a", 0, &["x"]).await, StatusCode::BAD_REQUEST);
        assert_eq!(log_lines(&r, "no-such-job", "a", 0, &["x"]).await, StatusCode::NOT_FOUND);
        assert_eq!(log_lines(&h.runner("r2"), &build.id, "a", 0, &["x"]).await, StatusCode::NOT_FOUND);
        assert_eq!(log_lines(&r, &build.id, "", 0, &["x"]).await, StatusCode::BAD_REQUEST);
        let resp = h
            .http
            .post(format!("{}/runners/r1/jobs/{}/log", h.base, build.id))
            .bearer_auth(&h.key)
            .json(&json!({"attempt": "a", "offset": 0, "lines": ["x"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "a user key is not a runner token");
        assert_eq!(read_log(&h, &url, false).await, "");
        h.stop().await;
    }
}
