//! Network settings over real HTTP: CIDR validation at create and in `POST /sandbox/{id}/network-settings`
//! (Daytona's semantics for the three fields), the jobs that carry them to the runner, waiting for a running
//! sandbox's runner to apply them, a failure that shows, and `linkedSandbox`. SQLite and, when reachable,
//! PostgreSQL.

use reqwest::{Method, StatusCode};
use sandbar_proto::runner::{Job, JobErrorCode, JobKind};
use sandbar_testkit::api::{FakeRunner, Harness, databases, empty, started_sandbox};
use serde_json::{Value, json};

async fn settings(h: &Harness, id: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::POST, &format!("/sandbox/{id}/network-settings"), Some(body)).await
}

/// Completes (or fails) the next job of `r` while the API waits for it; returns the job.
fn runner_answers(r: &FakeRunner, org: &str, fail: Option<&'static str>) -> tokio::task::JoinHandle<Job> {
    let (r, org) = (r.clone(), org.to_owned());
    tokio::spawn(async move {
        loop {
            if let Some(job) = r.poll(5).await.into_iter().next() {
                match fail {
                    Some(m) => assert_eq!(r.fail(&job, JobErrorCode::Internal, m).await, StatusCode::NO_CONTENT),
                    None => assert_eq!(r.succeed(&job, &org).await, StatusCode::NO_CONTENT),
                }
                return job;
            }
        }
    })
}

fn policy_of(job: &Job) -> (bool, Option<Vec<String>>) {
    match &job.kind {
        JobKind::UpdateSandboxNetwork(n) => (n.policy.network_block_all, n.policy.network_allow_list.clone()),
        other => panic!("expected a network job, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_checks_cidrs_and_hands_the_policy_to_the_runner() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        for (body, needle) in [
            (json!({"networkAllowList": "10.0.0.0/8,bad-entry"}), "\"bad-entry\""),
            (json!({"networkAllowList": "10.0.0.0/40"}), "10.0.0.0/40"),
            (json!({"domainAllowList": "example.com"}), "domainAllowList"),
            (json!({"linkedSandbox": "nope"}), "linkedSandbox nope not found"),
        ] {
            let (s, v) = h.call(Method::POST, "/sandbox", Some(body.clone())).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert!(v["message"].as_str().unwrap().contains(needle), "{body}: {v}");
        }
        assert!(r.poll(0).await.is_empty(), "a refused create must not reach the runner");

        let v = h.create(json!({"networkBlockAll": true, "networkAllowList": " 10.1.2.3/16, 1.2.3.4/32"})).await;
        assert_eq!(
            (v["networkBlockAll"].as_bool(), v["networkAllowList"].as_str()),
            (Some(true), Some("10.1.0.0/16,1.2.3.4/32"))
        );
        let jobs = r.poll(0).await;
        match &jobs[..] {
            [Job { kind: JobKind::CreateSandbox(c), .. }] => {
                assert!(c.network.network_block_all);
                assert_eq!(
                    c.network.network_allow_list.as_deref(),
                    Some(&["10.1.0.0/16".into(), "1.2.3.4/32".into()][..])
                );
                assert_eq!(c.linked_sandbox, None);
            }
            other => panic!("{other:?}"),
        }
        let v = h.create(json!({"networkAllowList": ""})).await;
        assert_eq!((v["networkBlockAll"].as_bool(), &v["networkAllowList"]), (Some(false), &Value::Null));
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_settings_change_a_running_and_a_stopped_sandbox() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let id = started_sandbox(&h, &r, empty()).await;

        for (body, needle) in [
            (json!({}), "at least one of"),
            (json!({"domainAllowList": "example.com"}), "domainAllowList"),
            (json!({"networkAllowList": "1.2.3.4/32,nope"}), "\"nope\""),
            (json!({"networkBlockAll": "yes"}), "invalid JSON"),
        ] {
            let (s, v) = settings(&h, &id, body.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert!(v["message"].as_str().unwrap().contains(needle), "{body}: {v}");
        }
        assert!(r.poll(0).await.is_empty(), "a refused change must not reach the runner");

        // Started: the answer comes once the runner applied it.
        let answer = runner_answers(&r, &h.org, None);
        let (s, v) = settings(&h, &id, json!({"networkBlockAll": true})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!((v["networkBlockAll"].as_bool(), v["state"].as_str()), (Some(true), Some("started")));
        assert_eq!(policy_of(&answer.await.unwrap()), (true, None));

        // An allow list implies not blocking all.
        let answer = runner_answers(&r, &h.org, None);
        let (s, v) = settings(&h, &id, json!({"networkAllowList": "192.168.1.7/24"})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            (v["networkBlockAll"].as_bool(), v["networkAllowList"].as_str()),
            (Some(false), Some("192.168.1.0/24"))
        );
        assert_eq!(policy_of(&answer.await.unwrap()), (false, Some(vec!["192.168.1.0/24".into()])));
        // Blocking all keeps the list; unblocking clears it.
        let answer = runner_answers(&r, &h.org, None);
        let (_, v) = settings(&h, &id, json!({"networkBlockAll": true})).await;
        assert_eq!(
            (v["networkBlockAll"].as_bool(), v["networkAllowList"].as_str()),
            (Some(true), Some("192.168.1.0/24"))
        );
        answer.await.unwrap();
        let answer = runner_answers(&r, &h.org, None);
        let (_, v) = settings(&h, &id, json!({"networkBlockAll": false})).await;
        assert_eq!((v["networkBlockAll"].as_bool(), &v["networkAllowList"]), (Some(false), &Value::Null));
        assert_eq!(policy_of(&answer.await.unwrap()), (false, None));
        assert_eq!(h.get_sandbox(&id).await["networkBlockAll"], false);

        // The runner cannot apply it: the caller hears why and the sandbox shows it.
        let answer = runner_answers(&r, &h.org, Some("iptables-restore failed"));
        let (s, v) = settings(&h, &id, json!({"networkBlockAll": true})).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
        assert!(v["message"].as_str().unwrap().contains("iptables-restore failed"), "{v}");
        answer.await.unwrap();
        let v = h.get_sandbox(&id).await;
        assert_eq!(v["state"], "error");
        assert!(v["errorReason"].as_str().unwrap().contains("network settings could not be applied"), "{v}");

        // Stopped: recorded, answered at once, and queued for the runner (which keeps it for the next start).
        let s2 = started_sandbox(&h, &r, empty()).await;
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{s2}/stop?force=false"), None).await.0, StatusCode::OK);
        r.work(&h.org).await;
        let (s, v) = settings(&h, &s2, json!({"networkAllowList": "10.0.0.0/8"})).await;
        assert_eq!(
            (s, v["state"].as_str(), v["networkAllowList"].as_str()),
            (StatusCode::OK, Some("stopped"), Some("10.0.0.0/8"))
        );
        let jobs = r.work(&h.org).await;
        assert!(matches!(&jobs[..], [j] if policy_of(j) == (false, Some(vec!["10.0.0.0/8".into()]))), "{jobs:?}");
        assert_eq!(h.state(&s2).await, "stopped", "a network job moves no state");

        // Another organization: 404. Deleted: 400.
        let (_, other) = h.new_org("other").await;
        let (s, _) = h
            .req(
                Method::POST,
                &format!("/sandbox/{s2}/network-settings"),
                Some(&other),
                Some(json!({"networkBlockAll": true})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(h.call(Method::DELETE, &format!("/sandbox/{s2}"), None).await.0, StatusCode::OK);
        r.work(&h.org).await;
        let (s, v) = settings(&h, &s2, json!({"networkBlockAll": true})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains("deleted"), "{v}");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linked_sandboxes_are_ephemeral_and_go_to_the_parents_runner() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let small = h.runner("small");
        small.heartbeat(8, 16, 100).await;
        let parent = started_sandbox(&h, &small, json!({"name": "parent"})).await;
        // A much roomier runner would win placement, but a linked sandbox goes where its parent is.
        let big = h.runner("big");
        big.heartbeat(64, 256, 1000).await;

        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"linkedSandbox": parent}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains("ephemeral"), "{v}");

        let child = h.create(json!({"linkedSandbox": "parent", "ephemeral": true})).await;
        assert_eq!(
            (child["linkedSandboxId"].as_str(), child["runnerId"].as_str()),
            (Some(parent.as_str()), Some("small"))
        );
        let jobs = small.poll(0).await;
        assert!(
            matches!(&jobs[..], [Job { kind: JobKind::CreateSandbox(c), .. }] if c.linked_sandbox.as_deref() == Some(parent.as_str())),
            "{jobs:?}"
        );
        assert!(big.poll(0).await.is_empty());

        // A linked sandbox cannot be linked to.
        let (s, v) =
            h.call(Method::POST, "/sandbox", Some(json!({"linkedSandbox": child["id"], "ephemeral": true}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains("itself linked"), "{v}");
        assert!(h.get_sandbox(&parent).await["linkedSandboxId"].is_null());
        h.stop().await;
    }
}
