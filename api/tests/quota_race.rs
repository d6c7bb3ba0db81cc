//! The quota under concurrency: 64 creates race against a quota of 10 sandboxes; exactly 10 succeed, the others
//! get a 403 with a JSON message, and the per-organization and per-runner totals (`store::totals`) equal what the
//! sandboxes add up to, after the race, after stops, a resize and deletes, and after an API restart that finds
//! them tampered with. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sandbar_api::store::totals;
use sandbar_testkit::api::{Harness, TestDb, config, databases, empty};
use serde_json::{Value, json};

const RACERS: usize = 64;
const QUOTA: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_creates_race_a_quota_of_ten() {
    for db in databases().await {
        run(&db).await;
    }
}

/// Sends `n` creates at once (all released together); returns each `(status, body)`.
async fn race(h: &Harness, n: usize) -> Vec<(StatusCode, Value)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (http, url, key, barrier) = (h.http.clone(), format!("{}/sandbox", h.base), h.key.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let r = http.post(url).bearer_auth(key).json(&empty()).send().await.expect("send");
            let status = r.status();
            (status, r.json::<Value>().await.expect("a JSON body"))
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.expect("join"));
    }
    out
}

/// Checks that exactly `ok` creates succeeded and every other one was refused by the sandbox-count quota; returns
/// the new sandboxes' ids.
fn tally(label: &str, results: &[(StatusCode, Value)], ok: usize) -> Vec<String> {
    let created: Vec<String> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, v)| v["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(created.len(), ok, "{label}: exactly {ok} creates must succeed: {results:?}");
    for (s, v) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*s, StatusCode::FORBIDDEN, "{label}: {v}");
        let m = v["message"].as_str().unwrap_or_default();
        assert!(m.contains("Quota exceeded") && m.contains("sandbox count limit is 10"), "{label}: {m}");
    }
    created
}

async fn assert_exact(h: &Harness, when: &str, sandboxes: i64) {
    let label = h.label;
    let mut conn = h.app.db.pool.acquire().await.unwrap();
    let drift = totals::drift(&mut conn).await.unwrap();
    drop(conn);
    assert!(drift.is_empty(), "{label}: {when}: the totals drifted from the sandboxes: {drift:?}");
    let (s, v) = h.call(Method::GET, &format!("/organizations/{}/usage", h.org), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["currentSandboxUsage"], json!(sandboxes), "{label}: {when}: {v}");
}

async fn run(db: &TestDb) {
    let mut c = config(&db.url);
    c.limits.quota_sandboxes = QUOTA;
    let h = Harness::start_with(db, c, Arc::new(sandbar_api::ManualClock::default())).await;
    let label = h.label;
    let r = h.runner("r1");
    r.heartbeat(1 << 10, 1 << 10, 1 << 16).await;

    let created = tally(label, &race(&h, RACERS).await, QUOTA as usize);
    assert_exact(&h, "after the race", QUOTA).await;

    // Started, one stopped (its CPU and memory leave the totals), one resized.
    r.work(&h.org).await;
    r.work(&h.org).await;
    let (s, v) = h.call(Method::POST, &format!("/sandbox/{}/stop", created[0]), None).await;
    assert_eq!(s, StatusCode::OK, "{label}: {v}");
    r.work(&h.org).await;
    assert_eq!(h.state(&created[0]).await, "stopped", "{label}");
    let (s, v) = h.call(Method::POST, &format!("/sandbox/{}/resize", created[1]), Some(json!({"cpu": 2}))).await;
    assert_eq!(s, StatusCode::OK, "{label}: {v}");
    r.work(&h.org).await;
    assert_eq!(h.get_sandbox(&created[1]).await["cpu"], json!(2), "{label}");
    assert_exact(&h, "after a stop and a resize", QUOTA).await;

    // Four deleted: four more fit, exactly.
    for id in &created[2..6] {
        let (s, v) = h.call(Method::DELETE, &format!("/sandbox/{id}"), None).await;
        assert_eq!(s, StatusCode::OK, "{label}: {v}");
    }
    r.work(&h.org).await;
    for id in &created[2..6] {
        assert_eq!(h.state(id).await, "destroyed", "{label}");
    }
    assert_exact(&h, "after deletes", QUOTA - 4).await;
    tally(label, &race(&h, 16).await, 4);
    assert_exact(&h, "after the second race", QUOTA).await;

    // Totals moved behind the API's back are recomputed when it starts.
    sqlx::query("UPDATE organization_totals SET sandboxes = 99, cpu = 0 WHERE organization_id = $1")
        .bind(&h.org)
        .execute(&h.app.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE runner_totals SET disk = disk + 5").execute(&h.app.db.pool).await.unwrap();
    let h = h.restart().await;
    assert_exact(&h, "after a restart", QUOTA).await;
    // Another organization has its own quota: the first one being full refuses nothing of it.
    let (_, other_key) = h.new_org("other").await;
    let (s, v) = h.req(Method::POST, "/sandbox", Some(&other_key), Some(empty())).await;
    assert_eq!(s, StatusCode::OK, "{}: {v}", h.label);
    h.stop().await;
}
