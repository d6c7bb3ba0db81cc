//! Per-sandbox usage through the API (SQLite and PostgreSQL): what a runner's heartbeat samples is served at
//! `GET /sandbox/{id}/usage` as the latest figures plus history, a sandbox not sampled yet answers zeros with
//! `sampledAt: null`, a runner cannot report for another runner's sandbox, another organization gets a 404, and
//! old samples are pruned.

// Under `cfg(test)` so clippy's `allow-*-in-tests` covers the helpers too (see runner/tests/common).
#![cfg(test)]

use reqwest::{Method, StatusCode};
use sandbar_testkit::api::{FakeRunner, Harness, databases, empty, started_sandbox};
use serde_json::{Value, json};

/// A heartbeat of `runner` carrying `usage`.
async fn heartbeat(r: &FakeRunner, usage: Value) -> StatusCode {
    let status = json!({"runnerId": r.id, "version": "t", "capacity": {"cpu": 8, "memory": 16, "disk": 100},
        "allocated": {"cpu": 0, "memory": 0, "disk": 0}, "sandboxes": 1, "started": 1,
        "storageDriver": "overlay2", "diskEnforced": false, "cgroupVersion": 1, "usage": usage});
    r.post("heartbeat", status).await
}

fn sample(id: &str, cpu_nanos: u64, millicores: Option<u64>, memory: u64, rx: u64) -> Value {
    let mut v = json!({"sandboxId": id, "cpuNanos": cpu_nanos, "memoryBytes": memory,
        "memoryLimitBytes": 1u64 << 30, "memoryPeakBytes": memory + 1000, "oomKills": 1, "pids": 4,
        "netRxBytes": rx, "netTxBytes": 2 * rx, "diskBytes": 5u64 << 20});
    if let Some(m) = millicores {
        v["cpuMillicores"] = json!(m);
    }
    v
}

async fn usage(h: &Harness, id: &str) -> Value {
    let (s, v) = h.call(Method::GET, &format!("/sandbox/{id}/usage"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeat_usage_is_served_with_history() {
    for db in databases().await {
        let (h, r1) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let id = started_sandbox(&h, &r1, empty()).await;
        let name = h.get_sandbox(&id).await["name"].as_str().unwrap().to_owned();

        // Not sampled yet: zeros, nulls, no history, and no error.
        let v = usage(&h, &id).await;
        assert_eq!(
            v,
            json!({"sandboxId": id, "sampledAt": null, "cpuNanos": 0, "cpuCores": null, "memoryBytes": 0,
                "memoryLimitBytes": null, "memoryPeakBytes": null, "oomKills": null, "pids": null,
                "netRxBytes": null, "netTxBytes": null, "diskBytes": null, "history": []}),
            "{}",
            db.label
        );

        // A heartbeat from before usage existed changes nothing.
        r1.heartbeat(8, 16, 100).await;
        assert!(usage(&h, &id).await["sampledAt"].is_null());

        assert_eq!(heartbeat(&r1, json!([sample(&id, 1_000_000_000, None, 50 << 20, 100)])).await, StatusCode::OK);
        let v = usage(&h, &id).await;
        assert!(v["sampledAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
        assert_eq!((v["cpuNanos"].as_i64(), v["cpuCores"].as_f64()), (Some(1_000_000_000), None), "{v}");
        assert_eq!(v["memoryBytes"], 50 << 20);
        assert_eq!(
            (v["memoryLimitBytes"].as_i64(), v["memoryPeakBytes"].as_i64()),
            (Some(1 << 30), Some((50 << 20) + 1000))
        );
        assert_eq!((v["oomKills"].as_i64(), v["pids"].as_i64()), (Some(1), Some(4)));
        assert_eq!((v["netRxBytes"].as_i64(), v["netTxBytes"].as_i64()), (Some(100), Some(200)));
        assert_eq!(v["diskBytes"], 5 << 20);
        assert_eq!(v["history"].as_array().map(Vec::len), Some(1), "{v}");

        // Five seconds on: a new latest, no new history point (they are half a minute apart); by name too.
        h.clock.advance_secs(5);
        heartbeat(&r1, json!([sample(&id, 3_000_000_000, Some(400), 60 << 20, 300)])).await;
        let v = usage(&h, &name).await;
        assert_eq!((v["cpuNanos"].as_i64(), v["cpuCores"].as_f64()), (Some(3_000_000_000), Some(0.4)), "{v}");
        assert_eq!(v["memoryBytes"], 60 << 20);
        assert_eq!(v["history"].as_array().map(Vec::len), Some(1), "{v}");

        // Forty seconds on: a second point, oldest first, with the fields the history keeps.
        h.clock.advance_secs(40);
        heartbeat(&r1, json!([sample(&id, 9_000_000_000, Some(1500), 70 << 20, 900)])).await;
        let v = usage(&h, &id).await;
        let history = v["history"].as_array().unwrap();
        assert_eq!(history.len(), 2, "{v}");
        assert_eq!(
            (history[0]["cpuNanos"].as_i64(), history[1]["cpuNanos"].as_i64()),
            (Some(1_000_000_000), Some(9_000_000_000))
        );
        assert_eq!(history[1]["cpuCores"].as_f64(), Some(1.5));
        assert_eq!(history[1]["netTxBytes"], 1800);
        assert!(history[0]["sampledAt"].as_str() < history[1]["sampledAt"].as_str());
        assert_eq!(history[1]["sampledAt"], v["sampledAt"]);

        // A runner reports only its own sandboxes: r2's word about r1's sandbox is ignored.
        let r2 = h.runner("r2");
        r2.heartbeat(8, 16, 100).await;
        assert_eq!(heartbeat(&r2, json!([sample(&id, 1, Some(1), 1, 1)])).await, StatusCode::OK);
        assert_eq!(usage(&h, &id).await["cpuNanos"], 9_000_000_000i64);
        // Nor does a sample of an unknown sandbox fail the heartbeat.
        assert_eq!(heartbeat(&r1, json!([sample("nope", 1, None, 1, 1)])).await, StatusCode::OK);
        // A heartbeat naming a sandbox twice is stored in order: the later sample is the latest.
        let twice = json!([
            sample(&id, 5, None, 1, 1),
            sample("nope", 1, None, 1, 1),
            sample(&id, 9_000_000_000, Some(1500), 70 << 20, 900)
        ]);
        assert_eq!(heartbeat(&r1, twice).await, StatusCode::OK);
        let v = usage(&h, &id).await;
        assert_eq!(
            (v["cpuNanos"].as_i64(), v["history"].as_array().map(Vec::len)),
            (Some(9_000_000_000), Some(2)),
            "{v}"
        );

        // Another organization cannot see it (404 like an unknown sandbox), nor can a caller without a key.
        let (_, other_key) = h.new_org("other").await;
        let (s, e) = h.req(Method::GET, &format!("/sandbox/{id}/usage"), Some(&other_key), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
        assert!(e["message"].as_str().unwrap().contains("not found"), "{e}");
        let (s, _) = h.req(Method::GET, &format!("/sandbox/{name}/usage"), Some(&other_key), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = h.req(Method::GET, &format!("/sandbox/{id}/usage"), None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = h.call(Method::GET, "/sandbox/nope/usage", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // An hour on, the old points are pruned; a day on, the latest sample too.
        h.clock.advance_secs(3600 - 30);
        sandbar_api::lifecycle::prune(&h.app).await.unwrap();
        let v = usage(&h, &id).await;
        assert_eq!(v["history"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["cpuNanos"], 9_000_000_000i64);
        h.clock.advance_secs(24 * 3600);
        sandbar_api::lifecycle::prune(&h.app).await.unwrap();
        let v = usage(&h, &id).await;
        assert!(v["sampledAt"].is_null() && v["history"] == json!([]), "{v}");
        h.stop().await;
    }
}
