//! The state machine over HTTP (every allowed and refused transition), runner results moving sandboxes, and the
//! lifecycle timers driven by a hand-moved clock (no sleeps).

use reqwest::{Method, StatusCode};
use sandbar_proto::api::Route;
use sandbar_proto::runner::{JobErrorCode, JobKind, SandboxState};
use sandbar_testkit::api::{FakeRunner, Harness, databases, empty, started_sandbox};
use serde_json::{Value, json};

async fn post(h: &Harness, id: &str, action: &str, body: Option<Value>) -> (StatusCode, Value) {
    h.call(Method::POST, &format!("/sandbox/{id}/{action}"), body).await
}

async fn stopped_sandbox(h: &Harness, r: &FakeRunner, body: Value) -> String {
    let id = started_sandbox(h, r, body).await;
    assert_eq!(post(h, &id, "stop?force=false", None).await.0, StatusCode::OK);
    r.work(&h.org).await;
    assert_eq!(h.state(&id).await, "stopped");
    id
}

/// Asserts `action` is refused with 400 and a message naming the state, and that nothing changed.
async fn refused(h: &Harness, id: &str, action: &str, body: Option<Value>, state: &str) {
    let (s, v) = post(h, id, action, body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{action} on {state}: {v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("Sandbox is {state}")), "{action} on {state}: {v}");
    assert_eq!(h.state(id).await, state, "{action} on {state} must not change the state");
}

async fn allowed(h: &Harness, id: &str, action: &str, body: Option<Value>, to: &str) {
    let (s, v) = post(h, id, action, body).await;
    assert_eq!(s, StatusCode::OK, "{action}: {v}");
    assert_eq!(v["state"], to, "{action}: {v}");
    assert_eq!(h.state(id).await, to);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_transition_allowed_and_refused() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;

        // creating
        let c = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        for a in ["start", "stop", "archive", "recover"] {
            refused(&h, &c, a, None, "creating").await;
        }
        refused(&h, &c, "resize", Some(json!({"cpu": 2})), "creating").await;
        // Deleting a sandbox whose create job was never handed out: gone at once, and the job is withdrawn.
        let (s, v) = h.call(Method::DELETE, &format!("/sandbox/{c}"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("destroyed")), "{v}");
        assert!(r.poll(0).await.is_empty(), "the cancelled create must not reach the runner");

        // started
        let s1 = started_sandbox(&h, &r, empty()).await;
        allowed(&h, &s1, "start", None, "started").await;
        refused(&h, &s1, "archive", None, "started").await;
        refused(&h, &s1, "recover", None, "started").await;
        refused(&h, &s1, "resize", Some(json!({"disk": 5})), "started").await;
        allowed(&h, &s1, "resize", Some(json!({"cpu": 2, "memory": 2})), "resizing").await;
        for a in ["start", "archive", "recover"] {
            refused(&h, &s1, a, None, "resizing").await;
        }
        let jobs = r.work(&h.org).await;
        assert!(
            matches!(&jobs[..], [j] if matches!(&j.kind, JobKind::ResizeSandbox(x) if x.cpu == Some(2) && x.memory == Some(2) && x.disk.is_none()))
        );
        let v = h.get_sandbox(&s1).await;
        assert_eq!((v["state"].as_str(), v["cpu"].as_i64(), v["memory"].as_i64()), (Some("started"), Some(2), Some(2)));
        allowed(&h, &s1, "stop?force=false", None, "stopping").await;
        allowed(&h, &s1, "stop?force=false", None, "stopping").await;
        for a in ["start", "archive", "recover"] {
            refused(&h, &s1, a, None, "stopping").await;
        }
        let jobs = r.work(&h.org).await;
        assert_eq!(jobs.len(), 1, "one stop job: {jobs:?}");

        // stopped
        assert_eq!(h.state(&s1).await, "stopped");
        allowed(&h, &s1, "stop?force=true", None, "stopped").await;
        refused(&h, &s1, "recover", None, "stopped").await;
        allowed(&h, &s1, "resize", Some(json!({"disk": 6})), "resizing").await;
        r.work(&h.org).await;
        assert_eq!(h.get_sandbox(&s1).await["disk"], 6);
        assert_eq!(h.state(&s1).await, "stopped");
        let (s, v) = post(&h, &s1, "resize", Some(json!({"disk": 4}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "disk shrink: {v}");
        allowed(&h, &s1, "archive", None, "archiving").await;

        // archiving (a job for the runner)
        allowed(&h, &s1, "archive", None, "archiving").await;
        for a in ["start", "stop", "recover"] {
            refused(&h, &s1, a, None, "archiving").await;
        }
        refused(&h, &s1, "resize", Some(json!({"cpu": 1})), "archiving").await;
        let jobs = r.work(&h.org).await;
        assert!(matches!(&jobs[..], [j] if matches!(j.kind, JobKind::ArchiveSandbox { .. })), "{jobs:?}");

        // archived
        assert_eq!(h.state(&s1).await, "archived");
        allowed(&h, &s1, "archive", None, "archived").await;
        refused(&h, &s1, "stop", None, "archived").await;
        refused(&h, &s1, "recover", None, "archived").await;
        refused(&h, &s1, "resize", Some(json!({"cpu": 1})), "archived").await;
        allowed(&h, &s1, "start", None, "restoring").await;
        let jobs = r.work(&h.org).await;
        assert!(matches!(&jobs[..], [j] if matches!(j.kind, JobKind::RestoreSandbox(_))), "{jobs:?}");
        assert_eq!(h.state(&s1).await, "started");

        // error (a create that failed: recover creates again; a start that failed: recover starts again)
        let e = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        let jobs = r.poll(0).await;
        assert_eq!(
            r.fail(&jobs[0], JobErrorCode::ImageNotFound, "no image sandbar-sandbox:default").await,
            StatusCode::NO_CONTENT
        );
        let v = h.get_sandbox(&e).await;
        assert_eq!(v["state"], "error");
        assert!(v["errorReason"].as_str().unwrap().contains("no image"), "{v}");
        assert_eq!(v["recoverable"], true);
        refused(&h, &e, "start", None, "error").await;
        refused(&h, &e, "stop", None, "error").await;
        refused(&h, &e, "archive", None, "error").await;
        refused(&h, &e, "resize", Some(json!({"cpu": 1})), "error").await;
        allowed(&h, &e, "recover", None, "creating").await;
        let jobs = r.work(&h.org).await;
        assert!(matches!(&jobs[..], [j] if matches!(j.kind, JobKind::CreateSandbox(_))));
        assert_eq!(h.state(&e).await, "started");
        allowed(&h, &e, "stop?force=false", None, "stopping").await;
        let jobs = r.poll(0).await;
        r.fail(&jobs[0], JobErrorCode::Docker, "docker said no").await;
        assert_eq!(h.state(&e).await, "error");
        allowed(&h, &e, "stop?force=true", None, "stopping").await;
        r.work(&h.org).await;
        assert_eq!(h.state(&e).await, "stopped");

        // A failed resize goes back where it was, with the reason.
        allowed(&h, &e, "resize", Some(json!({"memory": 3})), "resizing").await;
        let jobs = r.poll(0).await;
        r.fail(&jobs[0], JobErrorCode::InsufficientCapacity, "host is full").await;
        let v = h.get_sandbox(&e).await;
        assert_eq!((v["state"].as_str(), v["memory"].as_i64()), (Some("stopped"), Some(1)));
        assert!(v["errorReason"].as_str().unwrap().contains("host is full"));

        // destroyed
        let (s, v) = h.call(Method::DELETE, &format!("/sandbox/{e}"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("destroying")));
        for a in ["start", "archive", "recover"] {
            refused(&h, &e, a, None, "destroying").await;
        }
        let (s, v) = h.call(Method::DELETE, &format!("/sandbox/{e}"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("destroying")), "delete is idempotent");
        let jobs = r.work(&h.org).await;
        assert!(matches!(&jobs[..], [j] if matches!(j.kind, JobKind::DestroySandbox { .. })));
        assert_eq!(h.state(&e).await, "destroyed");
        for a in ["start", "stop", "archive", "recover"] {
            refused(&h, &e, a, None, "destroyed").await;
        }
        let (s, _) = h.call(Method::DELETE, &format!("/sandbox/{e}"), None).await;
        assert_eq!(s, StatusCode::OK);
        let (_, list) = h.call(Method::GET, "/sandbox", None).await;
        assert!(
            list["items"].as_array().unwrap().iter().all(|i| i["id"] != e.as_str()),
            "destroyed sandboxes leave the list"
        );

        // unknown: the runner went silent.
        h.clock.advance_secs(21);
        assert_eq!(h.state(&s1).await, "unknown");
        assert!(h.get_sandbox(&s1).await["errorReason"].as_str().unwrap().contains("unreachable"));
        let (s, v) = post(&h, &s1, "stop", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(v["message"].as_str().unwrap().contains("unreachable"));
        // The proxy keeps its way to the daemon: the runner is not in the data path.
        let (_, route) = h.proxy_get::<Route>(&format!("/internal/routes/{s1}")).await;
        let route = route.expect("route");
        assert_eq!(route.state, SandboxState::Unknown);
        assert!(route.serves().is_some(), "{route:?}");
        r.heartbeat(64, 64, 1000).await;
        assert_eq!(h.state(&s1).await, "started", "back when the runner is");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_during_create_waits_for_the_create() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let id = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        let create = r.poll(0).await;
        assert_eq!(create.len(), 1);
        let (_, v) = h.call(Method::DELETE, &format!("/sandbox/{id}"), None).await;
        assert_eq!(v["state"], "destroying");
        assert!(r.poll(0).await.is_empty(), "the destroy must wait for the create in flight");
        r.succeed(&create[0], &h.org).await;
        assert_eq!(h.state(&id).await, "destroying", "a late create result does not resurrect it");
        let jobs = r.work(&h.org).await;
        assert!(matches!(&jobs[..], [j] if matches!(j.kind, JobKind::DestroySandbox { .. })));
        assert_eq!(h.state(&id).await, "destroyed");
        h.stop().await;
    }
}

/// Moves the clock and keeps the runner reachable.
async fn advance(h: &Harness, r: &FakeRunner, secs: i64) {
    h.clock.advance_secs(secs);
    r.heartbeat(64, 64, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_stop_archive_and_delete_with_a_fake_clock() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;

        // Auto-stop after 15 idle minutes; activity (proxy report, SSH, explicit refresh) pushes it back.
        let a = started_sandbox(&h, &r, json!({"autoStopInterval": 15, "autoArchiveInterval": 60})).await;
        let never = started_sandbox(&h, &r, json!({"autoStopInterval": 0})).await;
        advance(&h, &r, 14 * 60).await;
        assert!(h.tick().await.stopped.is_empty());
        let resp = h
            .http
            .post(format!("{}/internal/activity", h.base))
            .bearer_auth(sandbar_testkit::api::PROXY_TOKEN)
            .json(&json!({"sandboxIds": [a]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        advance(&h, &r, 14 * 60).await;
        assert!(h.tick().await.stopped.is_empty(), "activity reset the idle time");
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{a}/last-activity"), None).await.0, StatusCode::CREATED);
        advance(&h, &r, 14 * 60).await;
        assert!(h.tick().await.stopped.is_empty(), "explicit refresh reset the idle time");
        advance(&h, &r, 2 * 60).await;
        assert_eq!(h.tick().await.stopped, vec![a.clone()]);
        assert_eq!(h.state(&a).await, "stopping");
        assert_eq!(h.state(&never).await, "started", "autoStopInterval 0 never stops");
        r.work(&h.org).await;
        assert_eq!(h.state(&a).await, "stopped");

        // Auto-archive 60 minutes after stopping.
        advance(&h, &r, 59 * 60).await;
        assert!(h.tick().await.archived.is_empty());
        advance(&h, &r, 2 * 60).await;
        assert_eq!(h.tick().await.archived, vec![a.clone()]);
        assert_eq!(h.state(&a).await, "archiving");
        let jobs = r.work(&h.org).await;
        assert!(matches!(&jobs[..], [j] if matches!(j.kind, JobKind::ArchiveSandbox { .. })), "{jobs:?}");
        assert_eq!(h.state(&a).await, "archived");

        // Auto-delete 30 minutes after stopping; negative = never.
        let d = stopped_sandbox(&h, &r, json!({"autoDeleteInterval": 30, "autoArchiveInterval": 100000})).await;
        let keep = stopped_sandbox(&h, &r, json!({"autoDeleteInterval": -1, "autoArchiveInterval": 100000})).await;
        advance(&h, &r, 29 * 60).await;
        assert!(h.tick().await.deleted.is_empty());
        advance(&h, &r, 2 * 60).await;
        assert_eq!(h.tick().await.deleted, vec![d.clone()]);
        assert_eq!(h.state(&d).await, "destroying");
        r.work(&h.org).await;
        assert_eq!(h.state(&d).await, "destroyed");
        assert_eq!(h.state(&keep).await, "stopped");

        // Ephemeral (autoDeleteInterval 0): deleted as soon as it stops.
        let e = started_sandbox(&h, &r, json!({"ephemeral": true})).await;
        post(&h, &e, "stop?force=false", None).await;
        r.work(&h.org).await;
        assert_eq!(h.state(&e).await, "destroying", "ephemeral goes straight to destroy");
        r.work(&h.org).await;
        assert_eq!(h.state(&e).await, "destroyed");
        // Not when the host stopped it (Docker restarted): nobody asked it to end, so it is started again
        // (tests/faults.rs has the rest of that rule).
        let e2 = started_sandbox(&h, &r, json!({"autoDeleteInterval": 0})).await;
        let st =
            r.post("states", json!([{"sandboxId": e2, "state": "stopped", "reason": "exited", "exitCode": 0}])).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&e2).await, "stopped");
        advance(&h, &r, 2).await;
        assert_eq!(h.tick().await.restarted, vec![e2.clone()]);
        h.stop().await;
    }
}

/// Rows in every table that names `id` as its sandbox (the sandbox's own row included).
async fn rows_naming(h: &Harness, id: &str) -> Result<i64, sqlx::Error> {
    let mut n = 0;
    for q in [
        "SELECT COUNT(*) FROM sandbox_labels WHERE sandbox_id = $1",
        "SELECT COUNT(*) FROM ssh_access WHERE sandbox_id = $1",
        "SELECT COUNT(*) FROM preview_tokens WHERE sandbox_id = $1",
        "SELECT COUNT(*) FROM sandbox_usage WHERE sandbox_id = $1",
        "SELECT COUNT(*) FROM sandbox_usage_history WHERE sandbox_id = $1",
        "SELECT COUNT(*) FROM sandboxes WHERE id = $1",
    ] {
        n += sqlx::query_scalar::<_, i64>(q).bind(id).fetch_one(&h.app.db.pool).await?;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandboxes_destroyed_long_ago_and_expired_tokens_are_pruned() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let kept = started_sandbox(&h, &r, json!({"labels": {"team": "a"}})).await;
        let gone = started_sandbox(&h, &r, json!({"labels": {"team": "b"}})).await;
        for id in [&kept, &gone] {
            let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/ssh-access?expiresInMinutes=60"), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let (s, v) = h.call(Method::GET, &format!("/sandbox/{id}/ports/3000/signed-preview-url"), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        assert!(rows_naming(&h, &gone).await.unwrap() >= 4, "labels, two tokens and the row itself");
        assert_eq!(h.call(Method::DELETE, &format!("/sandbox/{gone}"), None).await.0, StatusCode::OK);
        r.work(&h.org).await;
        assert_eq!(h.state(&gone).await, "destroyed");

        // Six days on: the destroyed sandbox still answers as destroyed; only the expired tokens went.
        h.clock.advance_secs(6 * 24 * 3600);
        r.heartbeat(8, 16, 100).await;
        sandbar_api::lifecycle::prune(&h.app).await.unwrap();
        let (s, v) = h.call(Method::GET, &format!("/sandbox/{gone}"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("destroyed")), "{v}");
        let tokens: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM ssh_access").fetch_one(&h.app.db.pool).await.unwrap();
        assert_eq!(tokens, 0, "SSH tokens that expired five days ago are gone");

        // Eight days on: its row and everything naming it are gone, and it is a 404; the live sandbox is whole.
        h.clock.advance_secs(2 * 24 * 3600);
        r.heartbeat(8, 16, 100).await;
        assert!(sandbar_api::lifecycle::prune(&h.app).await.unwrap() >= 1);
        assert_eq!(rows_naming(&h, &gone).await.unwrap(), 0);
        let (s, v) = h.call(Method::GET, &format!("/sandbox/{gone}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        assert!(v["message"].is_string(), "{v}");
        let (s, v) = h.call(Method::GET, &format!("/sandbox/{kept}"), None).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("started")), "{v}");
        assert_eq!(v["labels"]["team"], "a", "{v}");
        let (s, v) = h.call(Method::GET, "/sandbox", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_route_changes_and_finished_jobs_are_pruned() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let id = started_sandbox(&h, &r, empty()).await;
        assert_eq!(sandbar_api::lifecycle::prune(&h.app).await.unwrap(), 0, "nothing is old yet");
        h.clock.advance_secs(8 * 24 * 3600);
        assert!(sandbar_api::lifecycle::prune(&h.app).await.unwrap() >= 2);
        let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs").fetch_one(&h.app.db.pool).await.unwrap();
        assert_eq!(jobs, 0);
        r.heartbeat(8, 16, 100).await;
        assert_eq!(h.state(&id).await, "started", "the sandbox itself stays");
        h.stop().await;
    }
}
