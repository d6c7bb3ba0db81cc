//! What the API accepts it honours, or it refuses with a 400 naming the field: the create fields sandbar cannot
//! carry out (`secrets`, `autoPauseInterval`, `ttlMinutes`, ...), `outboundProxyUrl` as the proxy environment, and
//! every list filter, sort and order of `GET /sandbox` (with pages that follow the sort). SQLite and PostgreSQL.

// Under `cfg(test)` so clippy's `allow-*-in-tests` covers the helpers too (see runner/tests/common).
#![cfg(test)]

use reqwest::{Method, StatusCode};
use sandbar_testkit::api::{Harness, databases, empty, started_sandbox};
use serde_json::{Value, json};

fn body(extra: Value) -> Value {
    let mut b = empty();
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_fields_are_honoured_or_refused_by_name() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        for (field, value) in [
            ("secrets", json!([{"API_KEY": "my-secret"}])),
            ("autoPauseInterval", json!(30)),
            ("ttlMinutes", json!(60)),
            ("otelEndpointOverride", json!("http://otel:4318")),
            ("spot", json!(true)),
            ("gpuType", json!(["H100"])),
            ("queueTimeout", json!(0)),
            ("outboundProxyUrl", json!("ftp://proxy:21")),
        ] {
            let (s, e) = h.call(Method::POST, "/sandbox", Some(body(json!({ field: value })))).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{field}: {e}");
            assert!(e["message"].as_str().unwrap().contains(field), "{field}: {e}");
        }
        // Their neutral values are fine, and a proxy URL becomes the proxy environment (a variable set by the
        // caller wins).
        let b = body(json!({"secrets": [], "autoPauseInterval": 0, "ttlMinutes": 0, "otelEndpointOverride": "",
            "spot": false, "gpuType": [], "queueTimeout": 5, "outboundProxyUrl": "http://proxy.internal:3128",
            "env": {"https_proxy": "http://mine:1"}}));
        let id = started_sandbox(&h, &r, b).await;
        let env = &h.get_sandbox(&id).await["env"];
        assert_eq!(env["HTTP_PROXY"], "http://proxy.internal:3128", "{env}");
        assert_eq!(env["HTTPS_PROXY"], "http://proxy.internal:3128");
        assert_eq!(env["http_proxy"], "http://proxy.internal:3128");
        assert_eq!(env["https_proxy"], "http://mine:1");
        h.stop().await;
    }
}

async fn ids(h: &Harness, query: &str) -> Vec<String> {
    let (s, v) = h.call(Method::GET, &format!("/sandbox?{query}"), None).await;
    assert_eq!(s, StatusCode::OK, "{query}: {v}");
    v["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_list_filter_and_sort_is_honoured() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 256, 1000).await;
        let (s, v) =
            h.call(Method::POST, "/snapshots", Some(json!({"name": "py", "imageName": "sandbar-sandbox:py312"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let t0 = h.app.now();
        let mk = |name: &str, extra: Value| {
            let mut b = body(extra);
            b["name"] = json!(name);
            b
        };
        started_sandbox(&h, &r, mk("Alpha-1", json!({"cpu": 1, "memory": 1, "disk": 3, "public": true}))).await;
        h.clock.advance_secs(60);
        r.heartbeat(64, 256, 1000).await;
        started_sandbox(&h, &r, mk("alpha-2", json!({"cpu": 2, "memory": 4, "disk": 5, "snapshot": "py"}))).await;
        h.clock.advance_secs(60);
        r.heartbeat(64, 256, 1000).await;
        let t_mid = h.app.now() - 30_000;
        started_sandbox(&h, &r, mk("beta", json!({"cpu": 4, "memory": 8, "disk": 10, "target": "eu"}))).await;
        h.clock.advance_secs(60);
        r.heartbeat(64, 256, 1000).await;
        let stamp = |ms: i64| {
            let s = sandbar_api::clock::iso(ms);
            s.replace('+', "%2B")
        };

        let all = ids(&h, "").await;
        assert_eq!(all, ["beta", "alpha-2", "Alpha-1"], "newest first");
        // Prefixes, any case.
        assert_eq!(ids(&h, "name=ALPHA").await, ["alpha-2", "Alpha-1"]);
        let beta_id = h.get_sandbox("beta").await["id"].as_str().unwrap().to_owned();
        assert_eq!(ids(&h, &format!("id={}", &beta_id[..8].to_uppercase())).await, ["beta"]);
        assert_eq!(ids(&h, "name=%25").await, Vec::<String>::new(), "LIKE wildcards are literal");
        // Snapshots by name or image, targets, resources, public.
        assert_eq!(ids(&h, "snapshots=py").await, ["alpha-2"]);
        assert_eq!(ids(&h, "snapshots=sandbar-sandbox:py312&snapshots=nope").await, ["alpha-2"]);
        assert_eq!(ids(&h, "regionIds=eu").await, ["beta"]);
        assert_eq!(ids(&h, "minCpu=2").await, ["beta", "alpha-2"]);
        assert_eq!(ids(&h, "maxCpu=2.5").await, ["alpha-2", "Alpha-1"]);
        assert_eq!(ids(&h, "minMemoryGiB=2&maxMemoryGiB=4").await, ["alpha-2"]);
        assert_eq!(ids(&h, "minDiskGiB=6").await, ["beta"]);
        assert_eq!(ids(&h, "maxDiskGiB=3").await, ["Alpha-1"]);
        assert_eq!(ids(&h, "isPublic=true").await, ["Alpha-1"]);
        assert_eq!(ids(&h, "isPublic=false").await.len(), 2);
        assert_eq!(ids(&h, "isRecoverable=true").await, Vec::<String>::new());
        assert_eq!(ids(&h, "isRecoverable=false").await.len(), 3);
        // Times.
        assert_eq!(ids(&h, &format!("createdAtAfter={}", stamp(t_mid))).await, ["beta"]);
        assert_eq!(ids(&h, &format!("createdAtBefore={}", stamp(t_mid))).await, ["alpha-2", "Alpha-1"]);
        assert_eq!(
            ids(&h, &format!("createdAtAfter={}&createdAtBefore={}", stamp(t0 - 1000), stamp(t_mid))).await.len(),
            2
        );
        assert_eq!(ids(&h, "createdAtAfter=2000-01-01T00:00:00.000000%2B0000").await.len(), 3);
        assert_eq!(ids(&h, &format!("lastEventAfter={}", stamp(t_mid))).await, ["beta"]);
        assert_eq!(ids(&h, &format!("lastEventBefore={}", stamp(t_mid))).await.len(), 2);
        // Nothing of sandbar's has a GPU, a class other than container, or an auto-destroy time.
        assert_eq!(ids(&h, "minGpu=1").await, Vec::<String>::new());
        assert_eq!(ids(&h, "minGpu=0&maxGpu=0").await.len(), 3);
        assert_eq!(ids(&h, "sandboxClasses=container").await.len(), 3);
        assert_eq!(ids(&h, "sandboxClasses=linux-vm").await, Vec::<String>::new());
        assert_eq!(ids(&h, "autoDestroyAtAfter=2000-01-01T00:00:00Z").await, Vec::<String>::new());
        assert_eq!(ids(&h, "includeWarm=true&includeErroredDeleted=true").await.len(), 3);

        // Sorts and orders, with pages that follow them.
        assert_eq!(ids(&h, "sort=name&order=asc").await, ["Alpha-1", "alpha-2", "beta"]);
        assert_eq!(ids(&h, "sort=cpu&order=desc").await, ["beta", "alpha-2", "Alpha-1"]);
        assert_eq!(ids(&h, "sort=memoryGib&order=asc").await, ["Alpha-1", "alpha-2", "beta"]);
        assert_eq!(ids(&h, "sort=diskGib").await, ["beta", "alpha-2", "Alpha-1"]);
        assert_eq!(ids(&h, "sort=createdAt&order=asc").await, ["Alpha-1", "alpha-2", "beta"]);
        assert_eq!(ids(&h, "sort=lastActivityAt&order=asc").await, ["Alpha-1", "alpha-2", "beta"]);
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let (s, v) = h.call(Method::GET, &format!("/sandbox?sort=name&order=asc&limit=1{cursor}"), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            seen.extend(v["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_owned()));
            match v["nextCursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen, ["Alpha-1", "alpha-2", "beta"]);

        // What cannot be honoured is refused, naming it.
        for (q, needle) in [
            ("sort=size", "sort"),
            ("order=up", "order"),
            ("minCpu=lots", "minCpu"),
            ("createdAtAfter=yesterday", "createdAtAfter"),
            ("sandboxClasses=mainframe", "sandboxClasses"),
            ("isPublic=maybe", "isPublic"),
            ("includeWarm=2", "includeWarm"),
            ("colour=blue", "colour"),
            ("cursor=!!", "cursor"),
        ] {
            let (s, e) = h.call(Method::GET, &format!("/sandbox?{q}"), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {e}");
            assert!(e["message"].as_str().unwrap().contains(needle), "{q}: {e}");
        }
        h.stop().await;
    }
}
