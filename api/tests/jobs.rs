//! Runners and jobs over HTTP with fake runners: placement, atomic claiming under concurrent long-polls,
//! wake-ups, redelivery, idempotent results, reconciliation, unreachable runners, API restarts, and the proxy's
//! internal surface (routes, route changes, authorize, SSH resolve). SQLite and PostgreSQL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use sandbar_proto::api::{Route, RouteChanges};
use sandbar_proto::runner::{Job, SandboxState};
use sandbar_testkit::api::{
    FakeRunner, Harness, PROXY_TOKEN, RUNNER_TOKEN, databases, empty, fake_host_key, started_sandbox,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_long_polls_from_two_runners_never_share_a_job() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let runners = [h.runner("r1"), h.runner("r2")];
        for r in &runners {
            r.heartbeat(64, 64, 1000).await;
        }
        // Ten long-polls per runner wait before any job exists.
        let mut polls = Vec::new();
        for r in &runners {
            for _ in 0..10 {
                let r = r.clone();
                polls.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    for _ in 0..4 {
                        for j in r.poll(3).await {
                            got.push((r.id.clone(), j));
                        }
                    }
                    got
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut ids = Vec::new();
        let creates: Vec<_> = (0..40)
            .map(|_| {
                let h = (h.http.clone(), h.base.clone(), h.key.clone());
                tokio::spawn(async move {
                    let resp =
                        h.0.post(format!("{}/sandbox", h.1)).bearer_auth(&h.2).json(&json!({})).send().await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                    let v: Value = resp.json().await.unwrap();
                    (v["id"].as_str().unwrap().to_owned(), v["runnerId"].as_str().unwrap().to_owned())
                })
            })
            .collect();
        for c in creates {
            ids.push(c.await.unwrap());
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        for p in polls {
            for (runner, job) in p.await.unwrap() {
                let prev = seen.insert(job.id.clone(), runner.clone());
                assert!(prev.is_none(), "job {} handed out twice ({prev:?} and {runner}) on {}", job.id, db.label);
            }
        }
        assert_eq!(seen.len(), 40, "every create job handed out exactly once ({})", db.label);
        let placed: HashMap<String, String> = ids.into_iter().collect();
        let mut per_runner: HashMap<String, usize> = HashMap::new();
        for (job_id, runner) in &seen {
            let sandbox: String = sqlx::query_scalar("SELECT sandbox_id FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_one(&h.app.db.pool)
                .await
                .unwrap();
            assert_eq!(&placed[&sandbox], runner, "a job went to the runner its sandbox is placed on");
            *per_runner.entry(runner.clone()).or_default() += 1;
        }
        assert_eq!(per_runner.len(), 2, "placement used both runners: {per_runner:?}");
        h.stop().await;
    }
}

/// Creates a sandbox through `h` while `r` long-polls (up to 25 s): the sandbox's id, the jobs the poll got and
/// how long it waited.
async fn create_during_long_poll(h: &Harness, r: &FakeRunner) -> (String, Vec<Job>, Duration) {
    let t0 = Instant::now();
    let waiting = tokio::spawn({
        let r = r.clone();
        async move { r.poll(25).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = h.create(empty()).await["id"].as_str().unwrap_or_default().to_owned();
    let jobs = waiting.await.unwrap_or_default();
    (id, jobs, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_wakes_on_a_new_job_and_redelivers_unfinished_ones() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let (id, jobs, waited) = create_during_long_poll(&h, &r).await;
        assert!(waited < Duration::from_secs(10), "woken by the create, not by the 25 s deadline");
        assert!(matches!(&jobs[..], [j] if j.kind.sandbox_id() == id));
        // Claimed, not completed: not handed out again right away ...
        assert!(r.poll(0).await.is_empty());
        // ... but at once after the runner's full report (what it sends when it restarts) ...
        assert_eq!(r.post("sandboxes", json!([])).await, StatusCode::NO_CONTENT);
        let resumed = r.poll(0).await;
        assert_eq!(resumed.iter().map(|j| &j.id).collect::<Vec<_>>(), vec![&jobs[0].id]);
        assert_eq!(h.state(&id).await, "creating", "a sandbox with a job in flight is left alone by the report");
        assert!(r.poll(0).await.is_empty());
        // ... but after the redelivery delay (a runner that restarted resumes it).
        h.clock.advance_secs(11);
        r.heartbeat(8, 16, 100).await;
        let again = r.poll(0).await;
        assert_eq!(again.iter().map(|j| &j.id).collect::<Vec<_>>(), vec![&jobs[0].id]);
        // Results are idempotent.
        assert_eq!(r.succeed(&jobs[0], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(r.succeed(&jobs[0], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "started");
        h.clock.advance_secs(11);
        r.heartbeat(8, 16, 100).await;
        assert!(r.poll(0).await.is_empty(), "a completed job is never handed out again");
        // A result for an unknown job or from the wrong runner: 404; mismatched ids: 400.
        let other = h.runner("r2");
        assert_eq!(other.succeed(&jobs[0], &h.org).await, StatusCode::NOT_FOUND);
        let st = r.post("jobs/nope/result", json!({"jobId": "other", "status": "SUCCEEDED"})).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_restart_mid_flight_loses_nothing() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(h.create(json!({"labels": {"k": "v"}})).await["id"].as_str().unwrap().to_owned());
        }
        let ssh = h.call(Method::POST, &format!("/sandbox/{}/ssh-access", ids[0]), None).await.1["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let jobs = r.poll(0).await;
        assert_eq!(jobs.len(), 3);
        assert_eq!(r.succeed(&jobs[0], &h.org).await, StatusCode::NO_CONTENT);

        let h = h.restart().await;
        let r = h.runner("r1");
        r.heartbeat(8, 16, 100).await;
        // Job 2's result arrives at the new instance; job 3 is redelivered.
        assert_eq!(r.succeed(&jobs[1], &h.org).await, StatusCode::NO_CONTENT);
        h.clock.advance_secs(11);
        r.heartbeat(8, 16, 100).await;
        let again = r.poll(0).await;
        assert_eq!(again.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), vec![jobs[2].id.clone()]);
        r.succeed(&again[0], &h.org).await;
        for id in &ids {
            let v = h.get_sandbox(id).await;
            assert_eq!((v["state"].as_str(), v["labels"]["k"].as_str()), (Some("started"), Some("v")));
        }
        let (s, v) = h.call(Method::GET, &format!("/sandbox/ssh-access/validate?token={ssh}"), None).await;
        assert_eq!((s, v["valid"].as_bool()), (StatusCode::OK, Some(true)), "SSH tokens survive the restart");
        // Last activity survives too.
        let before = h.get_sandbox(&ids[0]).await["lastActivityAt"].clone();
        let h = h.restart().await;
        assert_eq!(h.get_sandbox(&ids[0]).await["lastActivityAt"], before);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_unreachable_runners_and_reconciliation() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        // No runner at all: a clear 503.
        let (s, v) = h.call(Method::POST, "/sandbox", Some(empty())).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(v["message"].as_str().unwrap().contains("no runner"));
        let small = h.runner("small");
        let big = h.runner("big");
        small.heartbeat(1, 1, 10).await;
        big.heartbeat(16, 32, 500).await;
        let v = h.create(json!({"disk": 10})).await;
        assert_eq!(v["runnerId"], "big", "most free room wins");
        // `big` falls silent: its sandboxes are reported unknown and it gets nothing new.
        h.clock.advance_secs(15);
        small.heartbeat(1, 1, 10).await;
        h.clock.advance_secs(6);
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(h.state(&id).await, "unknown");
        let v2 = h.create(json!({"disk": 3})).await;
        assert_eq!(v2["runnerId"], "small");
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"disk": 10}))).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        big.heartbeat(16, 32, 500).await;
        assert_eq!(h.state(&id).await, "creating");

        // Reconciliation after a runner restart: one sandbox is there (stopped), one is gone.
        let in_flight = big.poll(0).await;
        assert!(matches!(&in_flight[..], [j] if j.kind.sandbox_id() == id));
        let a = started_sandbox(&h, &big, json!({})).await;
        let b = started_sandbox(&h, &big, json!({})).await;
        let list = vec![big.info(&a, &h.org, SandboxState::Stopped)];
        // `id` still has its create job in flight: reconciliation leaves it alone.
        assert_eq!(big.post("sandboxes", serde_json::to_value(list).unwrap()).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&a).await, "stopped");
        let vb = h.get_sandbox(&b).await;
        assert_eq!(vb["state"], "error");
        assert!(vb["errorReason"].as_str().unwrap().contains("no longer has"), "{vb}");
        assert_eq!(h.state(&id).await, "creating");
        // An unrequested report: OOM kill.
        let st = big.post("states", json!([{"sandboxId": a, "state": "started"}])).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let st = big
            .post("states", json!([{"sandboxId": a, "state": "stopped", "reason": "killed", "oomKilled": true}]))
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let va = h.get_sandbox(&a).await;
        assert_eq!(va["state"], "stopped");
        assert!(va["errorReason"].as_str().unwrap().contains("out of memory"), "{va}");
        // Another runner cannot move a sandbox that is not its own.
        let st = small.post("states", json!([{"sandboxId": a, "state": "started"}])).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&a).await, "stopped");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_tokens_are_distinct_from_user_keys() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let key = h.key.clone();
        for (path, method) in [("/runners/r1/jobs", Method::GET), ("/internal/routes/x", Method::GET)] {
            assert_eq!(h.req(method.clone(), path, None, None).await.0, StatusCode::UNAUTHORIZED);
            assert_eq!(h.req(method.clone(), path, Some(&key), None).await.0, StatusCode::UNAUTHORIZED);
        }
        // Runner routes take only a runner's own credential (see tests/isolation.rs): not the proxy token, and
        // not the join token, which only registers.
        assert_eq!(h.req(Method::GET, "/runners/r1/jobs", Some(PROXY_TOKEN), None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(h.req(Method::GET, "/runners/r1/jobs", Some(RUNNER_TOKEN), None).await.0, StatusCode::UNAUTHORIZED);
        // Each service's token opens its own endpoints only, and another's reads as unknown (the same 401 and
        // message as a wrong string), so an answer never tells that a token is valid elsewhere.
        for (method, path, other) in
            [(Method::POST, "/runners/r1/register", PROXY_TOKEN), (Method::GET, "/internal/routes/x", RUNNER_TOKEN)]
        {
            let (s, wrong) = h.req(method.clone(), path, Some("not-a-token"), None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
            let (s, body) = h.req(method, path, Some(other), None).await;
            assert_eq!((s, &body["message"]), (StatusCode::UNAUTHORIZED, &wrong["message"]), "{path}");
        }
        assert_eq!(h.req(Method::GET, "/sandbox", Some(RUNNER_TOKEN), None).await.0, StatusCode::UNAUTHORIZED);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_routes_changes_authorize_and_ssh() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let id = started_sandbox(&h, &r, json!({})).await;
        let (s, route) = h.proxy_get::<Route>(&format!("/internal/routes/{id}")).await;
        assert_eq!(s, StatusCode::OK);
        let route = route.unwrap();
        assert_eq!(route.state, SandboxState::Started);
        assert_eq!(route.daemon_addr.as_deref(), Some("172.17.0.9:2280"));
        assert_eq!(route.ssh_addr.as_deref(), Some("172.17.0.9:22220"));
        assert_eq!(route.sandbox_ip.as_deref(), Some("172.17.0.9"));
        assert_eq!(route.daemon_token, format!("daemon-token-{id}"));
        assert_eq!(route.organization_id, h.org);
        assert_eq!(h.proxy_get::<Route>("/internal/routes/nope").await.0, StatusCode::NOT_FOUND);

        // Route changes: a long-poll from the current head wakes on the next change.
        let (_, head) = h.proxy_get::<RouteChanges>("/internal/routes/changes?since=0").await;
        let head = head.unwrap();
        assert!(head.sandbox_ids.contains(&id));
        let t0 = Instant::now();
        let waiter = tokio::spawn({
            let (http, base, since) = (h.http.clone(), h.base.clone(), head.seq);
            async move {
                let resp = http
                    .get(format!("{base}/internal/routes/changes?since={since}&wait=25"))
                    .bearer_auth(PROXY_TOKEN)
                    .send()
                    .await
                    .unwrap();
                resp.json::<RouteChanges>().await.unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (s, _) = h.call(Method::POST, &format!("/sandbox/{id}/public/true"), None).await;
        assert_eq!(s, StatusCode::OK);
        let changed = waiter.await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(changed.sandbox_ids, vec![id.clone()]);
        assert!(changed.seq > head.seq);
        let (_, route2) = h.proxy_get::<Route>(&format!("/internal/routes/{id}")).await;
        let route2 = route2.unwrap();
        assert!(route2.version > route.version && route2.public);

        // Authorize: own key, another org's key, bad key, preview tokens, public ports.
        let auth = |body: Value| h.proxy_post("/internal/authorize", body);
        let (s, v) = auth(json!({"sandboxId": id, "port": 2280, "apiKey": h.key})).await;
        assert_eq!((s, v["organizationId"].as_str()), (StatusCode::OK, Some(h.org.as_str())));
        let (_, other) = h.new_org("other").await;
        assert_eq!(auth(json!({"sandboxId": id, "port": 2280, "apiKey": other})).await.0, StatusCode::NOT_FOUND);
        assert_eq!(auth(json!({"sandboxId": id, "port": 2280, "apiKey": "sbk_bad"})).await.0, StatusCode::UNAUTHORIZED);
        let preview = h.call(Method::GET, &format!("/sandbox/{id}/ports/3000/preview-url"), None).await.1;
        let tok = preview["token"].as_str().unwrap();
        assert_eq!(auth(json!({"sandboxId": id, "port": 3000, "previewToken": tok})).await.0, StatusCode::OK);
        // Preview tokens (plain or signed) never open the daemon's own ports: only an API key does.
        for port in [2280, 22220, 22222] {
            let (s, v) = auth(json!({"sandboxId": id, "port": port, "previewToken": tok})).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "preview token on {port}: {v}");
            let signed = h
                .call(Method::GET, &format!("/sandbox/{id}/ports/{port}/signed-preview-url?expiresInSeconds=60"), None)
                .await
                .1;
            if let Some(st) = signed["token"].as_str() {
                let (s, v) = auth(json!({"sandboxId": id, "port": port, "previewToken": st})).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "signed token on {port}: {v}");
                let (s, v) = h.proxy_post("/internal/preview/resolve", json!({"token": st, "port": port})).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "signed URL resolved for {port}: {v}");
            }
        }
        let signed = h
            .call(Method::GET, &format!("/sandbox/{id}/ports/8080/signed-preview-url?expiresInSeconds=60"), None)
            .await
            .1;
        let st = signed["token"].as_str().unwrap();
        let (s, v) = auth(json!({"sandboxId": id, "port": 8080, "previewToken": st})).await;
        assert_eq!(s, StatusCode::OK);
        assert!(v["ttlSecs"].as_u64().unwrap() <= 60);
        assert_eq!(auth(json!({"sandboxId": id, "port": 8081, "previewToken": st})).await.0, StatusCode::UNAUTHORIZED);
        let (s, _) =
            h.call(Method::POST, &format!("/sandbox/{id}/ports/8080/signed-preview-url/{st}/expire"), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(auth(json!({"sandboxId": id, "port": 8080, "previewToken": st})).await.0, StatusCode::UNAUTHORIZED);
        // Public: any port but the daemon's own without a credential.
        assert_eq!(auth(json!({"sandboxId": id, "port": 3000})).await.0, StatusCode::OK);
        assert_eq!(auth(json!({"sandboxId": id, "port": 2280})).await.0, StatusCode::UNAUTHORIZED);
        // The preview token rotates on start.
        h.call(Method::POST, &format!("/sandbox/{id}/stop"), None).await;
        r.work(&h.org).await;
        h.call(Method::POST, &format!("/sandbox/{id}/start"), None).await;
        r.work(&h.org).await;
        assert_eq!(auth(json!({"sandboxId": id, "port": 3000, "previewToken": tok})).await.0, StatusCode::UNAUTHORIZED);

        // SSH resolve.
        let ssh = h.call(Method::POST, &format!("/sandbox/{id}/ssh-access?expiresInMinutes=1"), None).await.1;
        let token = ssh["token"].as_str().unwrap().to_owned();
        let (s, v) = h.proxy_post("/internal/ssh/resolve", json!({"token": token})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!((v["sandboxId"].as_str(), v["sshAddr"].as_str()), (Some(id.as_str()), Some("172.17.0.9:22220")));
        // The host key the runner reported for the daemon, for the gateway to pin.
        assert_eq!(v["daemonHostKey"].as_str(), Some(fake_host_key(&id).as_str()), "{v}");
        let (s, v) = h.proxy_post("/internal/ssh/resolve", json!({"token": "nope"})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(v["message"].as_str().unwrap().contains("unknown"));
        h.call(Method::POST, &format!("/sandbox/{id}/stop"), None).await;
        r.work(&h.org).await;
        let (s, v) = h.proxy_post("/internal/ssh/resolve", json!({"token": token})).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        h.clock.advance_secs(61);
        r.heartbeat(8, 16, 100).await;
        let (s, v) = h.proxy_post("/internal/ssh/resolve", json!({"token": token})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(v["message"].as_str().unwrap().contains("expired"));
        // A stopped sandbox's route has no daemon address.
        let (_, route3) = h.proxy_get::<Route>(&format!("/internal/routes/{id}")).await;
        let route3 = route3.unwrap();
        assert_eq!(route3.state, SandboxState::Stopped);
        assert!(route3.daemon_addr.is_none());
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_instances_on_postgres_share_jobs_and_route_changes() {
    for db in databases().await.into_iter().filter(|d| d.label == "postgres") {
        let a = Harness::start(&db).await;
        let b = Harness::start(&db).await;
        assert_eq!(a.org, b.org, "one organization, a key from each instance");
        let r = a.runner("r1");
        r.heartbeat(8, 16, 100).await;
        // A runner long-polls instance A; the sandbox is created through instance B.
        let (id, jobs, waited) = create_during_long_poll(&b, &r).await;
        assert!(waited < Duration::from_secs(10), "picked up by the database poll, not the 25 s deadline");
        assert!(matches!(&jobs[..], [j] if j.kind.sandbox_id() == id));
        r.succeed(&jobs[0], &a.org).await;
        assert_eq!(b.state(&id).await, "started");
        // Route changes made through B reach a proxy long-polling A.
        let (_, head) = a.proxy_get::<RouteChanges>("/internal/routes/changes?since=0").await;
        let since = head.unwrap().seq;
        let waiter = tokio::spawn({
            let (http, base) = (a.http.clone(), a.base.clone());
            async move {
                http.get(format!("{base}/internal/routes/changes?since={since}&wait=25"))
                    .bearer_auth(PROXY_TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .json::<RouteChanges>()
                    .await
                    .unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.call(Method::POST, &format!("/sandbox/{id}/public/true"), None).await;
        assert_eq!(waiter.await.unwrap().sandbox_ids, vec![id]);
        a.stop().await;
        b.stop().await;
    }
}

/// `PING_SANDBOX`, the demonstration job kind: queued for a started sandbox of the caller's organization only,
/// handed to its runner like any job, and its result (either way) recorded on the job without moving the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_jobs_reach_the_runner_and_change_nothing() {
    use sandbar_api::error::ApiError;
    use sandbar_proto::runner::{JobErrorCode, JobKind};
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let id = started_sandbox(&h, &r, empty()).await;
        let job_row = |job: String| {
            let pool = h.app.db.pool.clone();
            async move {
                sqlx::query_as::<_, (String, Option<String>)>("SELECT state, error FROM jobs WHERE id = $1")
                    .bind(job)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };

        // Another organization's key does not see the sandbox; an unknown sandbox is not found either.
        let (other_org, _) = h.new_org("other").await;
        let not_found = |e: ApiError| assert_eq!(e.status.as_u16(), 404, "{e:?}");
        not_found(sandbar_api::jobs::ping::enqueue(&h.app, &other_org, &id).await.unwrap_err());
        not_found(sandbar_api::jobs::ping::enqueue(&h.app, &h.org, "no-such-sandbox").await.unwrap_err());

        // A ping that succeeds.
        let job = sandbar_api::jobs::ping::enqueue(&h.app, &h.org, &id).await.unwrap();
        let got = r.poll(2).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].id, job);
        assert_eq!(got[0].kind, JobKind::PingSandbox { sandbox_id: id.clone() });
        assert!(r.succeed(&got[0], &h.org).await.is_success());
        assert_eq!(job_row(job).await, ("done".to_owned(), None));
        assert_eq!(h.state(&id).await, "started");

        // A ping the daemon did not answer: recorded on the job, the sandbox is left alone.
        let job = sandbar_api::jobs::ping::enqueue(&h.app, &h.org, &id).await.unwrap();
        let got = r.poll(2).await;
        assert_eq!(got.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), vec![job.clone()]);
        assert!(r.fail(&got[0], JobErrorCode::DaemonNotReady, "no answer").await.is_success());
        let (state, error) = job_row(job).await;
        assert_eq!(state, "failed");
        assert!(error.as_deref().is_some_and(|e| e.contains("no answer")), "{error:?}");
        assert_eq!(h.state(&id).await, "started");
        assert!(r.poll(0).await.is_empty(), "a finished ping is not handed out again");

        // A stopped sandbox has no daemon to ask.
        let (status, body) = h.call(Method::POST, &format!("/sandbox/{id}/stop"), None).await;
        assert!(status.is_success(), "{status} {body}");
        r.work(&h.org).await;
        assert_eq!(h.state(&id).await, "stopped");
        let e = sandbar_api::jobs::ping::enqueue(&h.app, &h.org, &id).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 400, "{e:?}");
        assert!(r.poll(0).await.is_empty());
        h.stop().await;
    }
}

/// A create's job carries the `traceparent` of the API's request span: the caller's trace, a span of the API's own
/// as parent. A create without one starts a trace of its own; the runner continues either.
#[tokio::test]
async fn a_create_job_continues_the_callers_trace() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller = format!("00-{trace}-00f067aa0ba902b7-01");
        let resp = h
            .http
            .post(format!("{}/sandbox", h.base))
            .bearer_auth(&h.key)
            .header("traceparent", &caller)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let jobs: Vec<Job> = r.poll(5).await;
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let stored = sandbar_support::trace::TraceParent::parse(jobs[0].traceparent.as_deref().unwrap()).unwrap();
        assert_eq!(stored.trace_id, trace);
        assert_ne!(stored.span_id, "00f067aa0ba902b7", "the parent is the API's span, not the caller's");

        h.create(json!({})).await;
        let jobs: Vec<Job> = r.poll(5).await;
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let own = sandbar_support::trace::TraceParent::parse(jobs[0].traceparent.as_deref().unwrap()).unwrap();
        assert_ne!(own.trace_id, trace);
        h.stop().await;
    }
}
