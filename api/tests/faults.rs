//! What the API does when a part fails (issue 22): sandboxes the host stopped come back by themselves, with a
//! backoff and a limit; jobs without a result by their deadline fail with `TIMEOUT`, so no sandbox stays in a
//! transitional state; a result that arrives twice is applied once. A hand-moved clock, no sleeps.

// Test helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::{Method, StatusCode};
use sandbar_proto::api::Route;
use sandbar_proto::runner::{JobErrorCode, JobKind, SandboxState, StateChange};
use sandbar_testkit::api::{FakeRunner, Harness, databases, empty, started_sandbox};
use serde_json::json;

/// The runner reports, unasked, that `id` left `started` (Docker stopped it).
async fn host_stops(r: &FakeRunner, id: &str, state: SandboxState, exit_code: i64) {
    let change = StateChange {
        sandbox_id: id.to_owned(),
        state,
        reason: Some("sandbox daemon exited unexpectedly".into()),
        exit_code: Some(exit_code),
        oom_killed: false,
    };
    assert_eq!(r.post("states", serde_json::to_value(vec![change]).expect("json")).await, StatusCode::NO_CONTENT);
}

/// Moves the clock on and keeps the runner reachable.
async fn later(h: &Harness, r: &FakeRunner, secs: i64) {
    h.clock.advance_secs(secs);
    r.heartbeat(64, 64, 1000).await;
}

/// The start jobs the runner gets now.
async fn starts(r: &FakeRunner) -> Vec<sandbar_proto::runner::Job> {
    let jobs = r.poll(0).await;
    assert!(jobs.iter().all(|j| matches!(j.kind, JobKind::StartSandbox { .. })), "{jobs:?}");
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandboxes_the_host_stopped_come_back_by_themselves() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let a = started_sandbox(&h, &r, empty()).await;
        let ephemeral = started_sandbox(&h, &r, json!({"autoDeleteInterval": 0})).await;
        let stopped_by_user = started_sandbox(&h, &r, empty()).await;
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{stopped_by_user}/stop"), None).await.0, StatusCode::OK);
        r.work(&h.org).await;

        // Docker restarted: one daemon drained (exit 0, `stopped`), one was killed (`error`).
        host_stops(&r, &a, SandboxState::Stopped, 0).await;
        host_stops(&r, &ephemeral, SandboxState::Error, 137).await;
        assert_eq!(h.state(&a).await, "stopped", "{}", db.label);
        assert_eq!(h.state(&ephemeral).await, "error", "an ephemeral sandbox the host stopped is not deleted");
        // A request may wake it before the lifecycle does.
        let (_, route) = h.proxy_get::<Route>(&format!("/internal/routes/{a}")).await;
        assert!(route.expect("route").wake_on_request, "{}", db.label);

        // The first restart waits 2 s, then both are started again; the user's stop is left alone.
        assert!(h.tick().await.restarted.is_empty());
        later(&h, &r, 2).await;
        let mut restarted = h.tick().await.restarted;
        restarted.sort();
        let mut want = vec![a.clone(), ephemeral.clone()];
        want.sort();
        assert_eq!(restarted, want, "{}", db.label);
        assert_eq!(h.state(&a).await, "starting");
        assert_eq!(h.state(&stopped_by_user).await, "stopped");
        let v = h.get_sandbox(&a).await;
        assert_eq!(v["desiredState"], "started", "{v}");

        // Docker is still coming up: the starts fail, and the next try waits twice as long.
        for j in starts(&r).await {
            assert_eq!(r.fail(&j, JobErrorCode::Docker, "Docker is not answering").await, StatusCode::NO_CONTENT);
        }
        assert_eq!(h.state(&a).await, "error");
        later(&h, &r, 3).await;
        assert!(h.tick().await.restarted.is_empty(), "4 s have not passed");
        later(&h, &r, 1).await;
        assert_eq!(h.tick().await.restarted.len(), 2);
        r.work(&h.org).await;
        assert_eq!(h.state(&a).await, "started", "{}", db.label);
        assert_eq!(h.state(&ephemeral).await, "started");

        // A crash loop runs out of restarts and stays down with its reason.
        let mut tries = 0;
        host_stops(&r, &a, SandboxState::Error, 1).await;
        for _ in 0..12 {
            later(&h, &r, 301).await;
            if h.tick().await.restarted.is_empty() {
                break;
            }
            tries += 1;
            r.work(&h.org).await;
            host_stops(&r, &a, SandboxState::Error, 1).await;
        }
        // Two restarts were counted before this series: the daemon never ran 10 minutes in between.
        assert_eq!(tries, 8, "{}", db.label);
        later(&h, &r, 3600).await;
        assert!(h.tick().await.restarted.is_empty());
        let v = h.get_sandbox(&a).await;
        assert_eq!(v["state"], "error", "{v}");
        assert!(v["errorReason"].as_str().unwrap_or_default().contains("exited unexpectedly"), "{v}");

        // A user's recover starts a fresh series; one that ran for over 10 minutes does too.
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{a}/recover"), None).await.0, StatusCode::OK);
        r.work(&h.org).await;
        assert_eq!(h.state(&a).await, "started");
        later(&h, &r, 601).await;
        host_stops(&r, &a, SandboxState::Stopped, 0).await;
        later(&h, &r, 2).await;
        assert_eq!(h.tick().await.restarted, vec![a.clone()]);
        r.work(&h.org).await;

        // A stop the user asked for is never undone.
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{a}/stop"), None).await.0, StatusCode::OK);
        r.work(&h.org).await;
        later(&h, &r, 600).await;
        assert!(h.tick().await.restarted.is_empty());
        assert_eq!(h.state(&a).await, "stopped");
        let (_, route) = h.proxy_get::<Route>(&format!("/internal/routes/{a}")).await;
        assert!(!route.expect("route").wake_on_request, "a user's stop is not woken");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_without_a_result_by_their_deadline_fail_with_timeout() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let running = started_sandbox(&h, &r, empty()).await;
        // A create the runner claimed and never answered (it died, or hangs).
        let id = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        let jobs = r.poll(0).await;
        assert_eq!(jobs.len(), 1);
        // A stop it never even claimed.
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{running}/stop"), None).await.0, StatusCode::OK);

        later(&h, &r, 9 * 60).await;
        assert!(h.tick().await.expired.is_empty());
        later(&h, &r, 2 * 60).await;
        assert_eq!(h.tick().await.expired.len(), 1, "the stop's 10 minutes are over");
        let v = h.get_sandbox(&running).await;
        assert_ne!(v["state"], "stopping", "{v}");
        assert_eq!(h.state(&id).await, "creating", "the create has 30 minutes");

        later(&h, &r, 20 * 60).await;
        assert_eq!(h.tick().await.expired.len(), 1, "{}", db.label);
        let v = h.get_sandbox(&id).await;
        assert_eq!(v["state"], "error", "{v}");
        let reason = v["errorReason"].as_str().unwrap_or_default();
        assert!(reason.contains("no result from runner r1 within 30 minutes"), "{reason}");
        assert!(reason.contains("Timeout"), "{reason}");

        // The runner's late answer is accepted and changes nothing; the job is not handed out again.
        assert_eq!(r.succeed(&jobs[0], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "error");
        assert!(r.poll(0).await.iter().all(|j| j.id != jobs[0].id));
        // The sandbox can be deleted like any failed one.
        assert_eq!(h.call(Method::DELETE, &format!("/sandbox/{id}"), None).await.0, StatusCode::OK);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_sent_many_times_at_once_is_applied_once() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let id = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        let jobs = r.poll(0).await;
        let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM route_changes WHERE sandbox_id = $1")
            .bind(&id)
            .fetch_one(&h.app.db.pool)
            .await
            .unwrap();
        let sends = (0..8).map(|_| r.succeed(&jobs[0], &h.org));
        for status in futures_util::future::join_all(sends).await {
            assert_eq!(status, StatusCode::NO_CONTENT);
        }
        assert_eq!(h.state(&id).await, "started");
        let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM route_changes WHERE sandbox_id = $1")
            .bind(&id)
            .fetch_one(&h.app.db.pool)
            .await
            .unwrap();
        assert_eq!(after - before, 1, "one state change, once ({})", db.label);
        h.stop().await;
    }
}

/// `/healthz` and `/readyz` answer without a credential and say only whether the API serves and can place a
/// sandbox; they live beside `/api`, not under it, so the proxy (which forwards `/api/...`) never exposes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_readiness_answer_anyone_and_say_nothing_more() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let root = h.base.trim_end_matches("/api").to_owned();
        let get = |path: &str| h.http.get(format!("{root}{path}")).send();
        let r = get("/healthz").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", db.label);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"status": "ok"}));
        // No runner yet: not ready, with the reason and when to look again.
        let r = get("/readyz").await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", db.label);
        assert!(r.headers().contains_key("retry-after"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("no runner"), "{body}");
        let r1 = h.runner("r1");
        r1.heartbeat(4, 8, 100).await;
        let r = get("/readyz").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", db.label);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"status": "ready"}));
        // The runner falls silent past the deadline: not ready again.
        h.clock.advance_secs(60);
        assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE, "{}", db.label);
        // Not under /api (where the proxy forwards), and not a way to probe anything else.
        assert_eq!(get("/api/healthz").await.unwrap().status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/api/readyz").await.unwrap().status(), StatusCode::NOT_FOUND);
        h.stop().await;
    }
}
