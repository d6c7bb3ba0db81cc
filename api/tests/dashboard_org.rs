//! The dashboard's organization pages (volumes, registries, organization) and `GET
//! /organizations/{id}/usage`, over real HTTP on SQLite and PostgreSQL: each page needs a session and shows only
//! the caller's organization, escaped; creates and deletes through the session cookie need the CSRF token, and a
//! refused delete answers the API's reason; the usage endpoint counts what the sandboxes hold and answers 404 for
//! another organization's id and 401 without a credential.

// The browser stand-in's helpers live outside the test functions (where clippy's test allowance applies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_testkit::api::{FakeRunner, Harness, TestDb, config, databases, empty, started_sandbox};
use serde_json::{Value, json};

const REGISTRY: &str = "127.0.0.1:5000";
const HOSTILE: &str = "<script>alert(1)</script>";

struct Browser {
    http: reqwest::Client,
    root: String,
}

impl Browser {
    fn new(h: &Harness) -> Self {
        let root = h.base.trim_end_matches("/api").to_owned();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, root }
    }

    /// Signs in with `key`: `(session cookie value, CSRF token)`.
    async fn sign_in(&self, key: &str) -> (String, String) {
        let resp = self.http.post(format!("{}/dashboard/login", self.root)).form(&[("key", key)]).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let set = resp.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
        let session = set.split(';').next().unwrap().trim_start_matches("sandbar_session=").to_owned();
        let (s, _, page) = self.page(Some(&session), "/dashboard/volumes").await;
        assert_eq!(s, StatusCode::OK);
        let csrf = csrf_of(&page);
        assert!(!csrf.is_empty());
        (session, csrf)
    }

    /// A page: `(status, Location, body)`.
    async fn page(&self, cookie: Option<&str>, path: &str) -> (StatusCode, Option<String>, String) {
        let mut r = self.http.get(format!("{}{path}", self.root));
        if let Some(c) = cookie {
            r = r.header(COOKIE, format!("sandbar_session={c}"));
        }
        let resp = r.send().await.unwrap();
        let location = resp.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
        (resp.status(), location, resp.text().await.unwrap())
    }

    /// A REST call with the session cookie and, when given, the CSRF header.
    async fn call(
        &self,
        cookie: &str,
        method: Method,
        path: &str,
        csrf: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}/api{path}", self.root))
            .header(COOKIE, format!("sandbar_session={cookie}"));
        if let Some(t) = csrf {
            r = r.header("x-sandbar-csrf", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf-token" content=""#).expect("csrf meta") + r#"name="csrf-token" content=""#.len();
    page[at..].split('"').next().unwrap().to_owned()
}

/// A harness whose operator allows the test registry, with runner `r1`.
async fn harness(db: &TestDb) -> (Harness, FakeRunner) {
    let mut c = config(&db.url);
    c.allowed_registries = vec!["*".into(), REGISTRY.into()];
    let h = Harness::start_with(db, c, Arc::new(ManualClock::default())).await;
    let r = h.runner("r1");
    r.heartbeat(16, 32, 200).await;
    (h, r)
}

fn registry(name: &str, username: &str, project: &str) -> Value {
    json!({"name": name, "url": format!("http://{REGISTRY}/"), "username": username, "password": "s3cret-pw",
           "project": project})
}

/// The `<tr data-quota="{key}" …>` row of the organization page: `(data-used, data-limit)`.
fn quota_of(page: &str, key: &str) -> (String, String) {
    let at = page.find(&format!(r#"data-quota="{key}""#)).unwrap_or_else(|| panic!("no {key} row"));
    let attr = |name: &str| {
        let tail = &page[at..];
        let i = tail.find(&format!(r#"{name}=""#)).unwrap() + name.len() + 2;
        tail[i..].split('"').next().unwrap().to_owned()
    };
    (attr("data-used"), attr("data-limit"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_need_a_session_and_show_only_the_callers_organization() {
    for db in databases().await {
        let (h, r) = harness(&db).await;
        let b = Browser::new(&h);
        let pages = ["/dashboard/volumes", "/dashboard/registries", "/dashboard/organization"];
        for p in pages {
            for cookie in [None, Some("nope")] {
                let (s, loc, _) = b.page(cookie, p).await;
                assert_eq!((s, loc.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard/login")), "{}: {p}", db.label);
            }
        }

        // Ours: a volume a sandbox mounts, one with a hostile name (refused by the API, so written to the store as
        // an older row could hold it), registry credentials with hostile fields.
        let (s, vol) = h.call(Method::POST, "/volumes", Some(json!({"name": "ours-vol"}))).await;
        assert_eq!(s, StatusCode::OK, "{vol}");
        let vol_id = vol["id"].as_str().unwrap().to_owned();
        let mut body = empty();
        body["name"] = json!("mounter");
        body["volumes"] = json!([{"volumeId": vol_id, "mountPath": "/data"}]);
        let mounter = started_sandbox(&h, &r, body).await;
        {
            let mut conn = h.app.db.pool.acquire().await.unwrap();
            sandbar_api::store::volumes::insert(&mut conn, "hostile-vol-id", &h.org, HOSTILE, h.app.now())
                .await
                .unwrap();
        }
        let (s, reg) = h.call(Method::POST, "/docker-registry", Some(registry("ours-reg", HOSTILE, HOSTILE))).await;
        assert_eq!(s, StatusCode::CREATED, "{reg}");
        let (s, v) = h.call(Method::POST, "/docker-registry", Some(registry(HOSTILE, "u", ""))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");

        // Theirs, which our pages must not show.
        let (other_org, other) = h.new_org("other").await;
        let (s, v) = h.req(Method::POST, "/volumes", Some(&other), Some(json!({"name": "theirs-vol"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) =
            h.req(Method::POST, "/docker-registry", Some(&other), Some(registry("theirs-reg", "their-user", ""))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");

        let (session, _) = b.sign_in(&h.key).await;
        let mut seen = Vec::new();
        for p in pages {
            let (s, _, page) = b.page(Some(&session), p).await;
            assert_eq!(s, StatusCode::OK, "{p}");
            for gone in ["theirs-vol", "theirs-reg", "their-user", &other_org, HOSTILE, "s3cret-pw", &h.key] {
                assert!(!page.contains(gone), "{p} shows {gone:?}");
            }
            for nav in ["/dashboard/volumes", "/dashboard/registries", "/dashboard/organization"] {
                assert!(page.contains(&format!(r#"href="{nav}""#)), "{p}: no link to {nav}");
            }
            seen.push(page);
        }
        let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
        let [volumes, registries, organization] = &seen[..] else { unreachable!() };
        assert!(volumes.contains("ours-vol") && volumes.contains(escaped), "{volumes}");
        assert!(volumes.contains(&format!(r#"<a href="/dashboard/sandboxes/{mounter}">mounter</a>"#)), "{volumes}");
        assert!(volumes.contains(r#"aria-current="page""#) && volumes.contains("/dashboard/assets/org.js"));
        assert!(registries.contains("ours-reg") && registries.contains(escaped), "{registries}");
        assert!(registries.contains(&format!("http://{REGISTRY}/")), "{registries}");
        assert!(organization.contains(&h.org), "the organization page shows its id");
        assert!(!organization.contains("/dashboard/assets/org.js"), "the script only where it is used");

        // The other organization sees its own and none of ours; a hostile organization name is escaped.
        let (their_session, _) = b.sign_in(&other).await;
        let (_, _, page) = b.page(Some(&their_session), "/dashboard/volumes").await;
        assert!(page.contains("theirs-vol") && !page.contains("ours-vol") && !page.contains(escaped), "{page}");
        let (_, _, page) = b.page(Some(&their_session), "/dashboard/registries").await;
        assert!(page.contains("theirs-reg") && !page.contains("ours-reg"), "{page}");
        let (_, hostile_key) = h.new_org(HOSTILE).await;
        let (hostile_session, _) = b.sign_in(&hostile_key).await;
        let (s, _, page) = b.page(Some(&hostile_session), "/dashboard/organization").await;
        assert_eq!(s, StatusCode::OK);
        assert!(page.contains(escaped) && !page.contains(HOSTILE), "{page}");

        // The script is served.
        let resp = b.http.get(format!("{}/dashboard/assets/org.js", b.root)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
        assert!(resp.text().await.unwrap().contains("/docker-registry"));
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_and_registry_changes_need_the_csrf_token() {
    for db in databases().await {
        let (h, r) = harness(&db).await;
        let b = Browser::new(&h);
        let (session, csrf) = b.sign_in(&h.key).await;

        // Volumes: no token, a wrong one: nothing made; with it: made, listed on the page.
        let body = json!({"name": "from-page"});
        for token in [None, Some("wrong")] {
            let (s, v) = b.call(&session, Method::POST, "/volumes", token, Some(body.clone())).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{}: {v}", db.label);
        }
        assert_eq!(h.call(Method::GET, "/volumes", None).await.1, json!([]), "nothing was made");
        let (s, v) = b.call(&session, Method::POST, "/volumes", Some(&csrf), Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let vol = v["id"].as_str().unwrap().to_owned();
        assert!(b.page(Some(&session), "/dashboard/volumes").await.2.contains("from-page"));

        // A mounted volume's delete is refused with the API's reason (what the page shows), the token or not.
        let mut sb = empty();
        sb["name"] = json!("holder");
        sb["volumes"] = json!([{"volumeId": vol, "mountPath": "/data"}]);
        let holder = started_sandbox(&h, &r, sb).await;
        let (s, _) = b.call(&session, Method::DELETE, &format!("/volumes/{vol}"), None, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, v) = b.call(&session, Method::DELETE, &format!("/volumes/{vol}"), Some(&csrf), None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(v["message"].as_str().unwrap().contains("holder"), "{v}");
        let (s, v) = b.call(&session, Method::DELETE, &format!("/sandbox/{holder}"), Some(&csrf), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        r.work(&h.org).await;
        let (s, _) = b.call(&session, Method::DELETE, &format!("/volumes/{vol}"), None, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(h.call(Method::GET, &format!("/volumes/{vol}"), None).await.0, StatusCode::OK, "still there");
        let (s, v) = b.call(&session, Method::DELETE, &format!("/volumes/{vol}"), Some(&csrf), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        // The volume held data on r1: it goes once the runner removed it.
        r.work(&h.org).await;
        assert_eq!(h.call(Method::GET, &format!("/volumes/{vol}"), None).await.0, StatusCode::NOT_FOUND);
        assert!(!b.page(Some(&session), "/dashboard/volumes").await.2.contains("from-page"));

        // Registries: the same rules.
        let body = registry("page-reg", "u", "p");
        for token in [None, Some("wrong")] {
            let (s, _) = b.call(&session, Method::POST, "/docker-registry", token, Some(body.clone())).await;
            assert_eq!(s, StatusCode::FORBIDDEN);
        }
        assert_eq!(h.call(Method::GET, "/docker-registry", None).await.1, json!([]), "nothing was made");
        let (s, v) = b.call(&session, Method::POST, "/docker-registry", Some(&csrf), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(!v.to_string().contains("s3cret-pw"), "{v}");
        let reg = v["id"].as_str().unwrap().to_owned();
        assert!(b.page(Some(&session), "/dashboard/registries").await.2.contains("page-reg"));
        let (s, _) = b.call(&session, Method::DELETE, &format!("/docker-registry/{reg}"), None, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(b.page(Some(&session), "/dashboard/registries").await.2.contains("page-reg"), "not deleted");
        let (s, _) = b.call(&session, Method::DELETE, &format!("/docker-registry/{reg}"), Some(&csrf), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(!b.page(Some(&session), "/dashboard/registries").await.2.contains("page-reg"));

        // Another organization's session cannot delete ours.
        let (s, v) = h.call(Method::POST, "/volumes", Some(json!({"name": "mine"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mine = v["id"].as_str().unwrap().to_owned();
        let (_, other) = h.new_org("other").await;
        let (their_session, their_csrf) = b.sign_in(&other).await;
        let (s, _) = b.call(&their_session, Method::DELETE, &format!("/volumes/{mine}"), Some(&their_csrf), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(h.call(Method::GET, &format!("/volumes/{mine}"), None).await.0, StatusCode::OK);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn organization_usage_counts_what_the_sandboxes_hold() {
    for db in databases().await {
        let (h, r) = harness(&db).await;
        let b = Browser::new(&h);
        let usage = format!("/organizations/{}/usage", h.org);

        // The caller's organization id is where a page or script can find it.
        let (s, cur) = h.call(Method::GET, "/api-keys/current", None).await;
        assert_eq!((s, cur["organizationId"].as_str()), (StatusCode::OK, Some(h.org.as_str())), "{}", db.label);

        let (s, v) = h.call(Method::GET, &usage, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let l = &h.app.config.limits;
        let expect = |cpu: i64, mem: i64, disk: i64, count: i64| {
            json!({
                "totalCpuQuota": l.quota_cpu, "totalGpuQuota": 0, "totalMemoryQuota": l.quota_memory,
                "totalDiskQuota": l.quota_disk, "currentCpuUsage": cpu, "currentMemoryUsage": mem,
                "currentDiskUsage": disk, "totalSandboxQuota": l.quota_sandboxes, "currentSandboxUsage": count,
                "totalImageBytesQuota": l.quota_image_gib << 30, "currentImageBytesUsage": 0,
                "totalVolumeQuota": l.quota_volumes, "currentVolumeUsage": 1,
                "totalVolumeBytesQuota": l.quota_volume_gib << 30, "currentVolumeBytesUsage": 0,
            })
        };
        let (s, _) = h.call(Method::POST, "/volumes", Some(json!({"name": "v1"}))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h.call(Method::GET, &usage, None).await.1, expect(0, 0, 0, 0));

        // Two started sandboxes count with everything; a stopped one keeps only its disk.
        let mut big = empty();
        (big["cpu"], big["memory"], big["disk"]) = (json!(3), json!(5), json!(7));
        let a = started_sandbox(&h, &r, big).await;
        let _b = started_sandbox(&h, &r, empty()).await;
        let (dc, dm, dd) = (l.default_cpu, l.default_memory, l.default_disk);
        assert_eq!(h.call(Method::GET, &usage, None).await.1, expect(3 + dc, 5 + dm, 7 + dd, 2));
        let (s, v) = h.call(Method::POST, &format!("/sandbox/{a}/stop"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        r.work(&h.org).await;
        assert_eq!(h.state(&a).await, "stopped");
        assert_eq!(h.call(Method::GET, &usage, None).await.1, expect(dc, dm, 7 + dd, 2));

        // The organization's own image limit replaces the default; 0 is no limit (null).
        sandbar_api::store::orgs::set_image_quota(&h.app.db, &h.org, Some(0)).await.unwrap();
        let (_, v) = h.call(Method::GET, &usage, None).await;
        assert!(v["totalImageBytesQuota"].is_null(), "{v}");

        // The page shows the same numbers.
        let (session, _) = b.sign_in(&h.key).await;
        let (s, _, page) = b.page(Some(&session), "/dashboard/organization").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(quota_of(&page, "cpu"), (dc.to_string(), l.quota_cpu.to_string()));
        assert_eq!(quota_of(&page, "memory"), (dm.to_string(), l.quota_memory.to_string()));
        assert_eq!(quota_of(&page, "disk"), ((7 + dd).to_string(), l.quota_disk.to_string()));
        assert_eq!(quota_of(&page, "sandboxes"), ("2".to_owned(), l.quota_sandboxes.to_string()));
        assert_eq!(quota_of(&page, "volumes"), ("1".to_owned(), l.quota_volumes.to_string()));
        assert_eq!(quota_of(&page, "image-bytes"), ("0".to_owned(), String::new()));
        assert!(page.contains("no limit") && page.contains("<meter"), "{page}");

        // The session reads it too; another organization's id is a 404 like an unknown one; no credential: 401.
        let (s, v) = b.call(&session, Method::GET, &usage, None, None).await;
        assert_eq!((s, v["currentSandboxUsage"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
        let (other_org, other) = h.new_org("other").await;
        let (s, v) = h.req(Method::GET, &usage, Some(&other), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, v) = h.req(Method::GET, &format!("/organizations/{other_org}/usage"), Some(&other), None).await;
        assert_eq!(
            (s, v["currentSandboxUsage"].as_i64(), v["currentVolumeUsage"].as_i64()),
            (StatusCode::OK, Some(0), Some(0))
        );
        let (s, _) = h.call(Method::GET, &format!("/organizations/{other_org}/usage"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = h.call(Method::GET, "/organizations/no-such-org/usage", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = h.req(Method::GET, &usage, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = h.req(Method::GET, &usage, Some("sbk_wrong"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // The operation is in the OpenAPI document.
        let (_, doc) = h.call(Method::GET, "/openapi.json", None).await;
        assert_eq!(
            doc["paths"]["/api/organizations/{organizationId}/usage"]["get"]["operationId"],
            "getOrganizationUsageOverview"
        );
        h.stop().await;
    }
}
