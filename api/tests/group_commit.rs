//! Creates and forks that commit together (`sandbar_api::domain::group_commit`, PostgreSQL; SQLite runs each
//! alone): 32 released at once, some refused inside a group (a name taken by another member, the sandbox quota
//! reached, which takes the member back and runs it alone), the others created. Each gets the answer it would get
//! alone, exactly as many as the quota allows are created, each with one job, and the totals equal what the
//! sandboxes add up to. SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sandbar_api::metrics::OutcomeLabel;
use sandbar_api::store::totals;
use sandbar_testkit::api::{Harness, config, databases, empty, started_sandbox};
use serde_json::{Value, json};

const QUOTA: i64 = 20;
const UNIQUE: usize = 20;
const SAME_NAME: usize = 6;
const FORKS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_and_forks_get_their_own_answers() {
    for db in databases().await {
        let mut c = config(&db.url);
        c.limits.quota_sandboxes = QUOTA;
        let h = Harness::start_with(&db, c, Arc::new(sandbar_api::ManualClock::default())).await;
        let label = h.label;
        let r = h.runner("r1");
        r.heartbeat(1 << 10, 1 << 10, 1 << 16).await;
        let src = started_sandbox(&h, &r, json!({"name": "src", "env": {}, "labels": {}})).await;

        // 32 requests released together: creates with names of their own, creates that all ask for "dup", forks.
        let mut asks: Vec<(String, Value)> = Vec::new();
        for i in 0..UNIQUE {
            let mut body = empty();
            body["name"] = json!(format!("c-{i}"));
            asks.push(("/sandbox".into(), body));
        }
        for _ in 0..SAME_NAME {
            let mut body = empty();
            body["name"] = json!("dup");
            asks.push(("/sandbox".into(), body));
        }
        for _ in 0..FORKS {
            asks.push((format!("/sandbox/{src}/fork"), json!({})));
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(asks.len()));
        let mut tasks = tokio::task::JoinSet::new();
        for (path, body) in asks {
            let (http, url, key, barrier) =
                (h.http.clone(), format!("{}{path}", h.base), h.key.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                let resp = http.post(url).bearer_auth(key).json(&body).send().await.expect("send");
                let status = resp.status();
                (status, body, resp.json::<Value>().await.expect("a JSON body"))
            });
        }
        let mut created = Vec::new();
        let mut dups = 0;
        while let Some(result) = tasks.join_next().await {
            let (status, body, v) = result.expect("join");
            let m = v["message"].as_str().unwrap_or_default();
            match status {
                StatusCode::OK => {
                    dups += usize::from(v["name"] == "dup");
                    created.push(v["id"].as_str().expect("id").to_owned());
                }
                StatusCode::CONFLICT => {
                    assert_eq!(body["name"], "dup", "{label}: only a taken name is a 409: {v}");
                    assert_eq!(m, "Sandbox with name dup already exists", "{label}");
                }
                StatusCode::FORBIDDEN => {
                    assert!(m.contains("Quota exceeded") && m.contains("sandbox count limit is 20"), "{label}: {m}");
                }
                _ => panic!("{label}: {status} for {body}: {v}"),
            }
        }
        assert!(dups <= 1, "{label}: {dups} sandboxes named dup were created");
        // The source and QUOTA - 1 new ones: more asked for than fit, so exactly as many as fit.
        assert_eq!(created.len(), QUOTA as usize - 1, "{label}: {created:?}");

        let mut conn = h.app.db.pool.acquire().await.unwrap();
        let drift = totals::drift(&mut conn).await.unwrap();
        drop(conn);
        assert!(drift.is_empty(), "{label}: the totals drifted from the sandboxes: {drift:?}");
        let (s, v) = h.call(Method::GET, &format!("/organizations/{}/usage", h.org), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["currentSandboxUsage"], json!(QUOTA), "{label}: {v}");

        // On PostgreSQL every one that was created (the source too) went through a group: committed there, or run
        // again alone after a limit refused it there. (Some refused requests never queue: the reads before the
        // writes refuse them.)
        let m = &h.app.metrics;
        let count = |outcome| m.create_group_members.get_or_create(&OutcomeLabel { outcome }).get();
        let (committed, alone) = (count("committed"), count("alone"));
        match label {
            "postgres" => {
                assert!(m.create_groups.get() >= 1, "{label}: no group committed");
                assert!(committed + alone > created.len() as u64, "{label}: {committed} + {alone} group members");
            }
            _ => assert_eq!((m.create_groups.get(), committed + alone), (0, 0), "{label}: SQLite commits alone"),
        }

        // Each new sandbox has its one job (create or fork), and starts.
        let mut jobs = Vec::new();
        loop {
            let done = r.work(&h.org).await;
            if done.is_empty() {
                break;
            }
            jobs.extend(done.iter().map(|j| j.kind.sandbox_id().to_owned()));
        }
        jobs.sort();
        created.sort();
        assert_eq!(jobs, created, "{label}: one job per new sandbox");
        for id in &created {
            assert_eq!(h.state(id).await, "started", "{label}: {id}");
        }
        h.stop().await;
    }
}
