//! The Daytona sandbox surface over real HTTP: auth and organization isolation, the Sandbox JSON's strict types,
//! list filters and paging, quotas, validation errors, preview URLs, SSH access, and the OpenAPI document.
//! Every test runs on SQLite and, when reachable, PostgreSQL.

// Under `cfg(test)` so clippy's `allow-*-in-tests` covers the helpers too (see runner/tests/common).
#![cfg(test)]

use reqwest::{Method, StatusCode};
use sandbar_testkit::api::{Harness, databases, empty, started_sandbox};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_and_cross_org_isolation() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let id = started_sandbox(&h, &r, empty()).await;

        // No key, a garbage key: 401 with Daytona's body.
        let (s, v) = h.req(Method::GET, &format!("/sandbox/{id}"), None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{}", db.label);
        assert_eq!(v["statusCode"], 401);
        assert!(v["message"].as_str().unwrap().contains("API key"));
        let (s, _) = h.req(Method::GET, "/sandbox", Some("sbk_nope"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // Another organization sees nothing and touches nothing: 404, not 403.
        let (_, other) = h.new_org("other").await;
        for (m, p) in [
            (Method::GET, format!("/sandbox/{id}")),
            (Method::POST, format!("/sandbox/{id}/stop")),
            (Method::DELETE, format!("/sandbox/{id}")),
            (Method::POST, format!("/sandbox/{id}/public/true")),
            (Method::GET, format!("/sandbox/{id}/ports/3000/preview-url")),
            (Method::POST, format!("/sandbox/{id}/ssh-access")),
            (Method::GET, format!("/sandbox/{id}/usage")),
        ] {
            let (s, v) = h.req(m.clone(), &p, Some(&other), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}: {v}");
        }
        let (s, v) = h.req(Method::GET, "/sandbox", Some(&other), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["items"].as_array().unwrap().len(), 0);
        assert_eq!(h.state(&id).await, "started", "the other org's stop must not have happened");

        // Expired and revoked keys.
        let now = h.app.now();
        let (kid, key) =
            sandbar_api::create_api_key(&h.app.db, &h.org, "short", Some(now + 60_000), now).await.unwrap();
        assert_eq!(h.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::OK);
        h.clock.advance_secs(61);
        assert_eq!(h.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::UNAUTHORIZED);
        let (kid2, key2) = sandbar_api::create_api_key(&h.app.db, &h.org, "revoked", None, now).await.unwrap();
        assert_eq!(h.req(Method::GET, "/sandbox", Some(&key2), None).await.0, StatusCode::OK);
        assert!(sandbar_api::revoke_api_key(&h.app.db, &kid2, now).await.unwrap());
        assert_eq!(h.req(Method::GET, "/sandbox", Some(&key2), None).await.0, StatusCode::UNAUTHORIZED);
        assert!(!sandbar_api::revoke_api_key(&h.app.db, &kid2, now).await.unwrap());
        let _ = kid;

        // Keys are stored hashed.
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT key_hash FROM api_keys").fetch_all(&h.app.db.pool).await.unwrap();
        assert!(stored.iter().all(|k| k.len() == 64 && !k.starts_with("sbk_")));
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_json_has_every_required_field_with_strict_types() {
    for db in databases().await {
        let (h, _) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let v = h
            .create(
                json!({"name": "box-1", "env": {"A": "1"}, "labels": {"code-toolbox-language": "python", "team": "x"},
                "volumes": [], "cpu": 2, "memory": 4, "disk": 5, "public": true, "autoStopInterval": 30}),
            )
            .await;
        assert_eq!(v["state"], "creating", "{}", db.label);
        for k in
            ["id", "organizationId", "name", "user", "target", "toolboxProxyUrl", "state", "createdAt", "updatedAt"]
        {
            assert!(v[k].is_string(), "{k} must be a string: {v}");
        }
        for k in ["cpu", "gpu", "memory", "disk", "autoStopInterval", "autoArchiveInterval", "autoDeleteInterval"] {
            assert!(v[k].is_i64(), "{k} must be an integer: {v}");
        }
        for k in ["public", "networkBlockAll", "kvm"] {
            assert!(v[k].is_boolean(), "{k} must be a bool: {v}");
        }
        assert_eq!(v["kvm"], false);
        assert_eq!((v["cpu"].as_i64(), v["memory"].as_i64(), v["disk"].as_i64()), (Some(2), Some(4), Some(5)));
        assert_eq!(v["env"], json!({"A": "1"}));
        assert_eq!(v["labels"]["team"], "x");
        assert_eq!(v["toolboxProxyUrl"], "http://proxy.test:4000/toolbox");
        assert_eq!(v["name"], "box-1");
        assert_eq!(v["snapshot"], "sandbar-sandbox:default");
        let id = v["id"].as_str().unwrap();
        assert_eq!(h.get_sandbox("box-1").await["id"], id, "get by name");

        // Defaults: 1/1/3, name = id.
        let d = h.create(empty()).await;
        assert_eq!((d["cpu"].as_i64(), d["memory"].as_i64(), d["disk"].as_i64()), (Some(1), Some(1), Some(3)));
        assert_eq!(d["name"], d["id"]);
        assert_eq!(d["autoStopInterval"], 15);
        assert_eq!(d["autoDeleteInterval"], -1);
        let e = h.create(json!({"ephemeral": true})).await;
        assert_eq!(e["autoDeleteInterval"], 0);
        let f = h.create(json!({"buildInfo": {"dockerfileContent": "FROM sandbar-test-busybox:latest\n"}})).await;
        assert_eq!(f["snapshot"], "sandbar-test-busybox:latest");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_a_clear_4xx() {
    for db in databases().await {
        let (h, _) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let cases: Vec<(Value, StatusCode, &str)> = vec![
            (json!({"cpu": 5}), StatusCode::BAD_REQUEST, "cpu must be between 1 and 4"),
            (json!({"memory": 0}), StatusCode::BAD_REQUEST, "memory must be between 1 and 8"),
            (json!({"disk": 11}), StatusCode::BAD_REQUEST, "disk must be between 1 and 10"),
            (json!({"cpu": 1.5}), StatusCode::BAD_REQUEST, "invalid JSON body"),
            (json!({"labels": {"a": 1}}), StatusCode::BAD_REQUEST, "invalid JSON body"),
            (json!({"name": "has space"}), StatusCode::BAD_REQUEST, "invalid sandbox name"),
            (json!({"gpu": 1}), StatusCode::BAD_REQUEST, "GPUs"),
            (json!({"volumes": [{"volumeId": "v", "mountPath": "m"}]}), StatusCode::BAD_REQUEST, "mountPath"),
            (
                json!({"buildInfo": {"dockerfileContent": "FROM a\nCOPY x /\n", "contextHashes": ["h"]}}),
                StatusCode::BAD_REQUEST,
                "contextHashes",
            ),
            (json!({"autoStopInterval": -1}), StatusCode::BAD_REQUEST, "autoStopInterval"),
        ];
        for (body, status, needle) in cases {
            let (s, v) = h.call(Method::POST, "/sandbox", Some(body.clone())).await;
            assert_eq!(s, status, "{body}: {v}");
            assert_eq!(v["statusCode"], status.as_u16());
            assert!(v["message"].as_str().unwrap().contains(needle), "{body}: {v}");
        }
        // Not JSON at all.
        let resp = h
            .http
            .post(format!("{}/sandbox", h.base))
            .bearer_auth(&h.key)
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let v: Value = resp.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().contains("invalid JSON"));
        // Unknown ids and endpoints, bad path values.
        let (s, v) = h.call(Method::GET, "/sandbox/does-not-exist", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["message"].as_str().unwrap().contains("does-not-exist"));
        assert_eq!(h.call(Method::GET, "/nope", None).await.0, StatusCode::NOT_FOUND);
        let id = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{id}/autostop/abc"), None).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(h.call(Method::POST, &format!("/sandbox/{id}/public/maybe"), None).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            h.call(Method::GET, &format!("/sandbox/{id}/ports/70000/preview-url"), None).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(h.call(Method::GET, "/sandbox?limit=0", None).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(h.call(Method::GET, "/sandbox?labels=notjson", None).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(h.call(Method::GET, "/sandbox?cursor=zzz", None).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(h.call(Method::GET, "/sandbox?states=flying", None).await.0, StatusCode::BAD_REQUEST);
        // Duplicate name: 409.
        h.create(json!({"name": "dup"})).await;
        assert_eq!(h.call(Method::POST, "/sandbox", Some(json!({"name": "dup"}))).await.0, StatusCode::CONFLICT);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_filters_and_pages() {
    for db in databases().await {
        let (h, _) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let mut ids = Vec::new();
        for i in 0..7 {
            let team = if i % 2 == 0 { "even" } else { "odd" };
            let v = h.create(json!({"labels": {"team": team, "n": i.to_string()}})).await;
            ids.push(v["id"].as_str().unwrap().to_owned());
            h.clock.advance_secs(1);
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("/sandbox?limit=3&cursor={c}"),
                None => "/sandbox?limit=3".into(),
            };
            let (s, v) = h.call(Method::GET, &q, None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            for it in v["items"].as_array().unwrap() {
                seen.push(it["id"].as_str().unwrap().to_owned());
            }
            match v["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => {
                    assert!(v["nextCursor"].is_null());
                    break;
                }
            }
        }
        ids.reverse();
        assert_eq!(seen, ids, "newest first, every sandbox once ({})", db.label);
        let labels = urlencode(r#"{"team":"odd"}"#);
        let (_, v) = h.call(Method::GET, &format!("/sandbox?labels={labels}"), None).await;
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
        let labels = urlencode(r#"{"team":"even","n":"4"}"#);
        let (_, v) = h.call(Method::GET, &format!("/sandbox?labels={labels}"), None).await;
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
        let (_, v) = h.call(Method::GET, "/sandbox?states=creating&states=started", None).await;
        assert_eq!(v["items"].as_array().unwrap().len(), 7);
        let (_, v) = h.call(Method::GET, "/sandbox?states=started", None).await;
        assert_eq!(v["items"].as_array().unwrap().len(), 0);
        // PUT labels replaces them and the filter follows.
        let (s, v) =
            h.call(Method::PUT, &format!("/sandbox/{}/labels", ids[0]), Some(json!({"labels": {"team": "new"}}))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({"labels": {"team": "new"}}));
        let labels = urlencode(r#"{"team":"new"}"#);
        let (_, v) = h.call(Method::GET, &format!("/sandbox?labels={labels}"), None).await;
        assert_eq!(v["items"][0]["id"], ids[0].as_str());
        h.stop().await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_are_enforced_at_create_start_and_resize() {
    for db in databases().await {
        let mut config = sandbar_testkit::api::config(&db.url);
        config.limits.quota_cpu = 4;
        config.limits.quota_memory = 8;
        config.limits.quota_disk = 20;
        config.limits.quota_sandboxes = 3;
        let h = Harness::start_with(&db, config, Default::default()).await;
        let r = h.runner("r1");
        r.heartbeat(64, 64, 1000).await;
        let a = started_sandbox(&h, &r, json!({"cpu": 3, "memory": 2})).await;
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"cpu": 2}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(v["message"].as_str().unwrap().contains("CPU limit is 4 vCPU, 3 vCPU in use"), "{v}");
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"disk": 10, "memory": 7}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(v["message"].as_str().unwrap().contains("memory"), "{v}");
        let b = started_sandbox(&h, &r, json!({"cpu": 1})).await;
        // Resize beyond the quota.
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{b}/resize"), Some(json!({"cpu": 2}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        // A stopped sandbox frees CPU and memory, not its slot or disk.
        h.call(Method::POST, &format!("/sandbox/{a}/stop?force=false"), None).await;
        r.work(&h.org).await;
        assert_eq!(h.state(&a).await, "stopped");
        let c = started_sandbox(&h, &r, json!({"cpu": 3})).await;
        let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(v["message"].as_str().unwrap().contains("sandbox count"), "{v}");
        // Starting `a` again would need 3 more vCPU.
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{a}/start"), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let _ = c;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preview_urls_ssh_access_and_settings() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let id = started_sandbox(&h, &r, empty()).await;
        let (s, v) = h.call(Method::GET, &format!("/sandbox/{id}/ports/3000/preview-url"), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["url"], format!("http://3000-{id}.proxy.test:4000"));
        assert_eq!(v["sandboxId"], id.as_str());
        assert!(v["token"].as_str().unwrap().len() >= 20);
        let (s, v) = h
            .call(Method::GET, &format!("/sandbox/{id}/ports/8080/signed-preview-url?expiresInSeconds=120"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["port"], 8080);
        // Daytona's signed form: the token in place of the sandbox id in the host.
        assert_eq!(v["url"], format!("http://8080-{}.proxy.test:4000", v["token"].as_str().unwrap()));
        let (s, v) = h.call(Method::GET, &format!("/sandbox/{id}/toolbox-proxy-url"), None).await;
        assert_eq!((s, v), (StatusCode::OK, json!({"url": "http://proxy.test:4000/toolbox"})));

        let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/ssh-access?expiresInMinutes=5"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = v["token"].as_str().unwrap().to_owned();
        assert_eq!(v["sshCommand"], format!("ssh -p 2222 {token}@proxy.test"));
        assert_eq!((&v["sshHost"], &v["sshPort"]), (&json!("proxy.test"), &json!(2222)));
        for k in ["id", "sandboxId", "expiresAt", "createdAt", "updatedAt"] {
            assert!(v[k].is_string(), "{k}: {v}");
        }
        let (s, v) = h.call(Method::GET, &format!("/sandbox/ssh-access/validate?token={token}"), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({"valid": true, "sandboxId": id}));
        let (s, v) = h.call(Method::DELETE, &format!("/sandbox/{id}/ssh-access?token={token}"), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["id"], id.as_str());
        let (_, v) = h.call(Method::GET, &format!("/sandbox/ssh-access/validate?token={token}"), None).await;
        assert_eq!(v["valid"], false);

        for (path, field, want) in [
            ("public/true", "public", json!(true)),
            ("autostop/0", "autoStopInterval", json!(0)),
            ("autoarchive/60", "autoArchiveInterval", json!(60)),
            ("autodelete/-1", "autoDeleteInterval", json!(-1)),
            ("autodelete/30", "autoDeleteInterval", json!(30)),
        ] {
            let (s, v) = h.call(Method::POST, &format!("/sandbox/{id}/{path}"), None).await;
            assert_eq!(s, StatusCode::OK, "{path}: {v}");
            assert_eq!(v[field], want, "{path}");
        }
        let (s, _) = h.call(Method::POST, &format!("/sandbox/{id}/last-activity"), None).await;
        assert_eq!(s, StatusCode::CREATED);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_document_parses_and_lists_every_routed_path() {
    let dbs = databases().await;
    let h = Harness::start(&dbs[0]).await;
    let resp = h.http.get(format!("{}/openapi.json", h.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/sandbox",
        "/api/sandbox/{sandboxIdOrName}",
        "/api/sandbox/{sandboxIdOrName}/ssh-access",
        "/api/internal/authorize",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let sandbox = &schemas["SandboxDto"];
    for f in ["kvm", "toolboxProxyUrl", "cpu", "labels", "networkBlockAll"] {
        assert!(sandbox["properties"].get(f).is_some(), "SandboxDto.{f}");
    }
    // The usage endpoint names its fields.
    let op = &paths["/api/sandbox/{sandboxIdOrName}/usage"]["get"];
    assert_eq!(
        op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SandboxUsageDto"
    );
    for f in [
        "sandboxId",
        "sampledAt",
        "cpuNanos",
        "cpuCores",
        "memoryBytes",
        "memoryLimitBytes",
        "memoryPeakBytes",
        "oomKills",
        "pids",
        "netRxBytes",
        "netTxBytes",
        "diskBytes",
        "history",
    ] {
        assert!(schemas["SandboxUsageDto"]["properties"].get(f).is_some(), "SandboxUsageDto.{f}");
    }
    assert!(schemas["UsagePointDto"]["properties"].get("cpuCores").is_some(), "{}", schemas["UsagePointDto"]);
    // Every documented operation is routed: no "no such endpoint" and no 405 for it.
    for (method, path, ..) in sandbar_api::http::openapi::OPERATIONS {
        let concrete: String =
            path.split('/').map(|s| if s.starts_with('{') { "1" } else { s }).collect::<Vec<_>>().join("/");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = h.http.request(m, format!("{}{concrete}", h.base)).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such endpoint"),
            "{method} {path}: {status} {body}"
        );
    }
    h.stop().await;
}

/// `(METHOD, path)` of every `.route("...", method(...)...)` call in the API's HTTP sources, path parameters
/// written `{}`. The dashboard (`http/dashboard.rs`, `http/dashboard/`) is left out on purpose: its pages live under
/// `/dashboard`, outside `/api`, and are HTML, not part of the REST API the document describes. Panics on a
/// `.route(` it cannot read, or a `.nest(` other than the one that puts the API under `/api`, so that a router
/// built another way fails here instead of escaping the check.
fn routes_in_source() -> std::collections::BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    // The dashboard, `/healthz`, `/readyz` and `/metrics` are served beside `/api`, not under it.
    let excluded = |p: &std::path::Path| {
        p == dir.join("dashboard.rs")
            || p.starts_with(dir.join("dashboard"))
            || p == dir.join("health.rs")
            || p == dir.join("metrics.rs")
    };
    let mut routes = std::collections::BTreeSet::new();
    for file in files.iter().filter(|p| !excluded(p)) {
        // Comments (`//`, `//!`, `///` lines) may name `.route(` without calling it, and a unit test's own router
        // (after `#[cfg(test)]`) is not the API's.
        let text: String = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        for (at, _) in text.match_indices(".nest(") {
            assert!(
                text[at..].starts_with(".nest(\"/api\", api)") && file.ends_with("http/mod.rs"),
                "{}: a nested router this check does not follow",
                file.display()
            );
        }
        for (at, _) in text.match_indices(".route(") {
            let rest = &text[at + ".route(".len()..];
            let lit = rest.trim_start();
            let path = lit
                .strip_prefix('"')
                .and_then(|l| l.split_once('"'))
                .map(|(p, _)| p)
                .unwrap_or_else(|| panic!("{}: a .route( without a literal path: {:.60}", file.display(), rest));
            // The method router: up to the `)` that closes `.route(`.
            let (mut depth, mut end) = (1, 0);
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let methods = &rest[..end];
            let mut found = 0;
            for m in ["get", "post", "put", "delete", "patch", "head", "options"] {
                for (i, _) in methods.match_indices(&format!("{m}(")) {
                    let before = methods[..i].chars().last();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    found += 1;
                    routes.insert((m.to_uppercase(), normalise(path)));
                }
            }
            assert!(found > 0, "{}: no method in .route({path:?}, {methods})", file.display());
        }
    }
    routes
}

/// A path with each `{parameter}` written `{}`.
fn normalise(path: &str) -> String {
    path.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect::<Vec<_>>().join("/")
}

/// The other direction: every route the API serves under `/api` is a documented operation (with the same method).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_routed_path_is_documented() {
    let routed = routes_in_source();
    assert!(routed.len() > 50, "the source walk found only {routed:?}");
    let documented: std::collections::BTreeSet<(String, String)> =
        sandbar_api::http::openapi::OPERATIONS.iter().map(|(m, p, ..)| ((*m).to_owned(), normalise(p))).collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routed but not in OPERATIONS: {undocumented:?}");
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(unrouted.is_empty(), "in OPERATIONS but no .route( found: {unrouted:?}");
    // The walk read real routes: each answers something other than "no such endpoint" or 405.
    let dbs = databases().await;
    let h = Harness::start(&dbs[0]).await;
    for (method, path) in &routed {
        let concrete = path.replace("{}", "1");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = h.http.request(m, format!("{}{concrete}", h.base)).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such endpoint"),
            "{method} {path}: {status} {body}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_name_local_images_with_default_resources() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let (s, v) = h
            .call(
                Method::POST,
                "/snapshots",
                Some(json!({"name": "py", "imageName": "sandbar-sandbox:py312", "cpu": 2, "disk": 5})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["state"], "active");
        assert_eq!(
            (v["cpu"].as_i64(), v["mem"].as_i64(), v["disk"].as_i64(), v["gpu"].as_i64()),
            (Some(2), Some(1), Some(5), Some(0))
        );
        assert_eq!(v["general"], false);
        let snap_id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(
            h.call(Method::POST, "/snapshots", Some(json!({"name": "py", "imageName": "x"}))).await.0,
            StatusCode::CONFLICT
        );
        assert_eq!(h.call(Method::POST, "/snapshots", Some(json!({"name": "nope"}))).await.0, StatusCode::BAD_REQUEST);
        let (s, v) = h
            .call(
                Method::POST,
                "/snapshots",
                Some(
                    json!({"name": "df", "buildInfo": {"dockerfileContent": "FROM a\nRUN b", "contextHashes": ["h"]}}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(h.call(Method::GET, "/snapshots/py", None).await.1["id"], snap_id.as_str());
        let (s, v) = h.call(Method::GET, "/snapshots?page=1&limit=10", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!((v["total"].as_i64(), v["page"].as_i64(), v["totalPages"].as_i64()), (Some(1), Some(1), Some(1)));
        assert_eq!(h.call(Method::POST, &format!("/snapshots/{snap_id}/activate"), None).await.0, StatusCode::OK);
        // Another organization does not see it.
        let (_, other) = h.new_org("other").await;
        assert_eq!(h.req(Method::GET, "/snapshots/py", Some(&other), None).await.0, StatusCode::NOT_FOUND);
        // A sandbox from the snapshot runs its image with its resources.
        let sb = h.create(json!({"snapshot": "py"})).await;
        assert_eq!(
            (sb["snapshot"].as_str(), sb["cpu"].as_i64(), sb["disk"].as_i64()),
            (Some("sandbar-sandbox:py312"), Some(2), Some(5))
        );
        let jobs = r.poll(0).await;
        assert!(
            matches!(&jobs[..], [j] if matches!(&j.kind, sandbar_proto::runner::JobKind::CreateSandbox(c) if c.image == "sandbar-sandbox:py312"))
        );
        assert_eq!(h.call(Method::DELETE, &format!("/snapshots/{snap_id}"), None).await.0, StatusCode::OK);
        assert_eq!(h.call(Method::GET, "/snapshots/py", None).await.0, StatusCode::NOT_FOUND);
        h.stop().await;
    }
}
