//! Draining a host through the API: only the operator's admin token opens `/api/admin/runners` (an organization's
//! key, the proxy's token and no token are refused with a JSON message; without a configured token the endpoints
//! are off); placement skips cordoned and draining runners (creates, restores) and says why when nothing is left;
//! a drain leaves running sandboxes alone unless asked to move them, and then a started sandbox ends started on
//! another runner by stop, archive and restore, a stopped one archived; uncordon stops a move. SQLite and
//! PostgreSQL.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_proto::runner::{Job, JobKind};
use sandbar_testkit::api::{FakeRunner, Harness, PROXY_TOKEN, config, databases, empty, started_sandbox};
use serde_json::Value;

const ADMIN: &str = "operator-admin-token";

async fn harness(db: &sandbar_testkit::api::TestDb) -> Harness {
    let mut c = config(&db.url);
    c.admin_token = Some(ADMIN.into());
    Harness::start_with(db, c, Arc::new(ManualClock::default())).await
}

async fn admin(h: &Harness, method: Method, path: &str) -> (StatusCode, Value) {
    h.req(method, path, Some(ADMIN), None).await
}

async fn post(h: &Harness, id: &str, action: &str) -> (StatusCode, Value) {
    h.call(Method::POST, &format!("/sandbox/{id}/{action}"), None).await
}

fn runner_of(v: &Value) -> String {
    v["runnerId"].as_str().unwrap_or_default().to_owned()
}

/// The jobs `r` gets now (claimed).
async fn jobs(r: &FakeRunner) -> Vec<Job> {
    r.poll(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_admin_token_opens_runner_administration() {
    for db in databases().await {
        let h = harness(&db).await;
        h.runner("r1").heartbeat(8, 8, 100).await;
        let path = "/admin/runners";
        for (token, want) in [
            (Some(h.key.clone()), StatusCode::FORBIDDEN),
            (Some(PROXY_TOKEN.to_owned()), StatusCode::FORBIDDEN),
            (Some("not-the-token".to_owned()), StatusCode::FORBIDDEN),
            (None, StatusCode::UNAUTHORIZED),
        ] {
            for (method, p) in [(Method::GET, path), (Method::POST, "/admin/runners/r1/cordon")] {
                let (s, v) = h.req(method, p, token.as_deref(), None).await;
                assert_eq!(s, want, "{p} with {token:?}: {v}");
                assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "a JSON message: {v}");
            }
        }
        let (s, v) = admin(&h, Method::GET, path).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v[0]["schedule"], "active", "refused calls changed nothing: {v}");
        assert_eq!((v[0]["id"].as_str(), v[0]["reachable"].as_bool()), (Some("r1"), Some(true)), "{v}");
        let (s, v) = admin(&h, Method::POST, "/admin/runners/nope/cordon").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, v) = admin(&h, Method::POST, "/admin/runners/r1/drain?move=perhaps").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        h.stop().await;

        // Without --admin-token the endpoints are off, whatever the caller sends.
        let h = Harness::start(&db).await;
        let (s, v) = h.req(Method::GET, path, Some(ADMIN), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains("--admin-token")), "{v}");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_skips_cordoned_and_draining_runners() {
    for db in databases().await {
        let h = harness(&db).await;
        let (r1, r2) = (h.runner("r1"), h.runner("r2"));
        // r1 has far more room: placement would pick it.
        r1.heartbeat(64, 64, 1000).await;
        r2.heartbeat(8, 8, 100).await;
        let (s, v) = admin(&h, Method::POST, "/admin/runners/r1/cordon").await;
        assert_eq!((s, v["schedule"].as_str()), (StatusCode::OK, Some("cordoned")), "{v}");
        for _ in 0..3 {
            let id = started_sandbox(&h, &r2, empty()).await;
            assert_eq!(runner_of(&h.get_sandbox(&id).await), "r2");
        }
        assert!(jobs(&r1).await.is_empty(), "a cordoned runner gets no create");

        let (s, v) = admin(&h, Method::POST, "/admin/runners/r2/drain").await;
        assert_eq!((s, v["schedule"].as_str(), v["moving"].as_bool()), (StatusCode::OK, Some("draining"), Some(false)));
        let (s, v) = h.call(Method::POST, "/sandbox", Some(empty())).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains("cordoned or draining")), "{v}");
        // A drain without --move leaves what runs alone.
        h.tick().await;
        assert!(jobs(&r2).await.is_empty(), "a drain without move stops nothing");

        let (_, v) = admin(&h, Method::GET, "/admin/runners").await;
        let schedules: Vec<_> =
            v.as_array().into_iter().flatten().map(|r| (r["id"].clone(), r["schedule"].clone())).collect();
        assert_eq!(schedules, [("r1".into(), "cordoned".into()), ("r2".into(), "draining".into())], "{v}");
        assert_eq!(v[1]["sandboxes"], 3, "{v}");

        let (s, v) = admin(&h, Method::POST, "/admin/runners/r1/uncordon").await;
        assert_eq!((s, v["schedule"].as_str()), (StatusCode::OK, Some("active")), "{v}");
        let id = started_sandbox(&h, &r1, empty()).await;
        assert_eq!(runner_of(&h.get_sandbox(&id).await), "r1");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_with_move_restores_sandboxes_on_another_runner() {
    for db in databases().await {
        let h = harness(&db).await;
        let (r1, r2) = (h.runner("r1"), h.runner("r2"));
        r1.heartbeat(64, 64, 1000).await;
        let started = started_sandbox(&h, &r1, empty()).await;
        let stopped = started_sandbox(&h, &r1, empty()).await;
        assert_eq!(post(&h, &stopped, "stop").await.0, StatusCode::OK);
        r1.work(&h.org).await;
        assert_eq!(h.state(&stopped).await, "stopped");
        r2.heartbeat(8, 8, 100).await;

        let (s, v) = admin(&h, Method::POST, "/admin/runners/r1/drain?move=true").await;
        assert_eq!((s, v["moving"].as_bool()), (StatusCode::OK, Some(true)), "{v}");

        // First pass: the started one stops, the stopped one archives, both on r1.
        let moved = h.tick().await.moved;
        assert_eq!(moved.len(), 2, "{moved:?}");
        let first = jobs(&r1).await;
        let mut kinds: Vec<_> = first.iter().map(|j| (j.kind.tag(), j.kind.sandbox_id().to_owned())).collect();
        kinds.sort();
        let mut want = vec![("ARCHIVE_SANDBOX", stopped.clone()), ("STOP_SANDBOX", started.clone())];
        want.sort();
        assert_eq!(kinds, want);
        for j in &first {
            assert_eq!(r1.succeed(j, &h.org).await, StatusCode::NO_CONTENT);
        }
        assert_eq!(h.state(&started).await, "stopped");
        assert_eq!(h.state(&stopped).await, "archived");

        // Second pass: the once-started one archives; the other stays archived.
        h.tick().await;
        let j = jobs(&r1).await;
        assert_eq!(j.len(), 1, "{j:?}");
        assert_eq!(j[0].kind, JobKind::ArchiveSandbox { sandbox_id: started.clone() });
        assert_eq!(r1.succeed(&j[0], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&started).await, "archived");

        // Third pass: it restores on r2, the only runner that takes sandboxes.
        h.tick().await;
        assert!(jobs(&r1).await.is_empty());
        let j = jobs(&r2).await;
        assert_eq!(j.len(), 1, "{j:?}");
        assert!(matches!(&j[0].kind, JobKind::RestoreSandbox(spec) if spec.id == started), "{j:?}");
        let v = h.get_sandbox(&started).await;
        assert_eq!((v["state"].as_str(), runner_of(&v)), (Some("restoring"), "r2".to_owned()), "{v}");
        assert_eq!(r2.succeed(&j[0], &h.org).await, StatusCode::NO_CONTENT);
        let v = h.get_sandbox(&started).await;
        assert_eq!((v["state"].as_str(), runner_of(&v)), (Some("started"), "r2".to_owned()), "{v}");
        // r1's report of what it still has (nothing) does not touch the sandbox that moved.
        assert_eq!(r1.post("sandboxes", serde_json::json!([])).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&started).await, "started");
        h.tick().await;
        assert!(jobs(&r1).await.is_empty() && jobs(&r2).await.is_empty(), "the move is over");
        assert_eq!(h.state(&stopped).await, "archived", "a stopped sandbox is moved as far as its archive");

        // The archived one restores elsewhere when its user starts it.
        let (s, v) = post(&h, &stopped, "start").await;
        assert_eq!((s, runner_of(&v)), (StatusCode::OK, "r2".to_owned()), "{v}");
        let j = jobs(&r2).await;
        assert!(matches!(&j[..], [job] if matches!(&job.kind, JobKind::RestoreSandbox(s) if s.id == stopped)), "{j:?}");

        let (_, v) = admin(&h, Method::GET, "/admin/runners").await;
        assert_eq!((v[0]["id"].as_str(), v[0]["sandboxes"].as_i64()), (Some("r1"), Some(0)), "r1 is empty: {v}");
        h.stop().await;
    }
}
