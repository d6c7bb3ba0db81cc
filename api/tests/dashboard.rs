//! The dashboard's sign-in and the REST endpoints it shares with scripts, over real HTTP on SQLite and
//! PostgreSQL: a wrong key gets the sign-in page and no cookie; the session cookie's flags; the key never in the
//! page; a cookie without the CSRF token, or from another origin, changes nothing; a cross-site sign-in is refused;
//! an expired or signed-out session is sent back to sign in; `/api-keys` creates (shown once), lists masked,
//! refuses a duplicate name, revokes (the key and the sessions it made stop working), and another organization
//! sees none of it.

// The browser stand-in's helpers live outside the test functions (where clippy's test allowance applies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use sandbar_testkit::api::{Harness, databases};
use serde_json::{Value, json};

struct Browser {
    http: reqwest::Client,
    root: String,
    host: String,
}

impl Browser {
    fn new(h: &Harness) -> Self {
        let root = h.base.trim_end_matches("/api").to_owned();
        let host = root.trim_start_matches("http://").to_owned();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, root, host }
    }

    /// Signs in with `key`: `(status, session cookie value, body)`.
    async fn sign_in(
        &self,
        key: &str,
        origin: Option<&str>,
        forwarded_https: bool,
    ) -> (StatusCode, Option<String>, String) {
        let mut r = self.http.post(format!("{}/dashboard/login", self.root)).form(&[("key", key)]);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if forwarded_https {
            r = r.header("x-forwarded-proto", "https");
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let cookie = resp.headers().get(SET_COOKIE).map(|v| v.to_str().unwrap().to_owned());
        (status, cookie, resp.text().await.unwrap())
    }

    async fn page(&self, cookie: &str, path: &str) -> (StatusCode, Option<String>, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.root))
            .header(COOKIE, format!("sandbar_session={cookie}"))
            .send()
            .await
            .unwrap();
        let location = resp.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
        (resp.status(), location, resp.text().await.unwrap())
    }

    /// A REST call made with the session cookie, a CSRF header and an Origin as given.
    async fn call(
        &self,
        cookie: &str,
        method: Method,
        path: &str,
        csrf: Option<&str>,
        origin: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}/api{path}", self.root))
            .header(COOKIE, format!("sandbar_session={cookie}"));
        if let Some(t) = csrf {
            r = r.header("x-sandbar-csrf", t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
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

fn cookie_value(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim_start_matches("sandbar_session=").to_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf-token" content=""#).expect("csrf meta") + r#"name="csrf-token" content=""#.len();
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_in_sessions_and_csrf() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let b = Browser::new(&h);
        let own = format!("http://{}", b.host);

        // The sign-in page is public; a wrong key gets it again, with 401 and no cookie.
        let (s, _, page) = b.page("", "/dashboard/login").await;
        assert_eq!(s, StatusCode::OK, "{}", db.label);
        assert!(page.contains(r#"name="key""#));
        let (s, cookie, page) = b.sign_in("sbk_wrong", Some(&own), false).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(cookie.is_none());
        assert!(page.contains("unknown, expired or revoked") && page.contains(r#"name="key""#));

        // A form on another site cannot sign anyone in.
        let (s, cookie, _) = b.sign_in(&h.key, Some("http://evil.example"), false).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(cookie.is_none());

        // Signing in: a 303 to the sandboxes and a strict, HttpOnly cookie (Secure behind HTTPS).
        let (s, cookie, _) = b.sign_in(&h.key, Some(&own), false).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        let set = cookie.expect("a session cookie");
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(!set.contains("Secure"), "{set}");
        let (_, secure, _) = b.sign_in(&h.key, None, true).await;
        assert!(secure.unwrap().contains("; Secure"));
        let session = cookie_value(&set);
        assert!(!session.contains(&h.key) && !h.key.contains(&session));

        // Pages need the session; the key is in none of them.
        let (s, loc, _) = b.page("nope", "/dashboard/sandboxes").await;
        assert_eq!((s, loc.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard/login")));
        let mut csrf = String::new();
        for p in ["/dashboard/sandboxes", "/dashboard/keys", "/dashboard/snapshots"] {
            let (s, _, page) = b.page(&session, p).await;
            assert_eq!(s, StatusCode::OK, "{p}");
            assert!(!page.contains(&h.key), "{p} shows the key");
            csrf = csrf_of(&page);
        }
        assert!(!csrf.is_empty());

        // Reads with the cookie alone; changes need the CSRF token and no foreign Origin.
        let (s, v) = b.call(&session, Method::GET, "/sandbox", None, None, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let body = json!({"name": "from-a-form"});
        let (s, v) = b.call(&session, Method::POST, "/api-keys", None, Some(&own), Some(body.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let (s, _) = b.call(&session, Method::POST, "/api-keys", Some("wrong"), None, Some(body.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = b
            .call(&session, Method::POST, "/api-keys", Some(&csrf), Some("http://evil.example"), Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(h.call(Method::GET, "/api-keys", None).await.1.as_array().unwrap().len(), 1, "nothing was made");
        let (s, v) = b.call(&session, Method::POST, "/api-keys", Some(&csrf), Some(&own), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");

        // Signing out ends the session (it needs the CSRF token too).
        let out = |token: &str| {
            b.http
                .post(format!("{}/dashboard/logout", b.root))
                .header(COOKIE, format!("sandbar_session={session}"))
                .form(&[("csrf", token.to_owned())])
                .send()
        };
        assert_eq!(out("wrong").await.unwrap().status(), StatusCode::FORBIDDEN);
        let resp = out(&csrf).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert!(resp.headers().get(SET_COOKIE).unwrap().to_str().unwrap().contains("Max-Age=0"));
        let (s, loc, _) = b.page(&session, "/dashboard/sandboxes").await;
        assert_eq!((s, loc.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard/login")));
        assert_eq!(b.call(&session, Method::GET, "/sandbox", None, None, None).await.0, StatusCode::UNAUTHORIZED);

        // A session expires after 12 hours.
        let (_, cookie, _) = b.sign_in(&h.key, None, false).await;
        let session = cookie_value(&cookie.unwrap());
        assert_eq!(b.page(&session, "/dashboard/sandboxes").await.0, StatusCode::OK);
        h.clock.advance_secs(12 * 3600 + 1);
        let (s, loc, _) = b.page(&session, "/dashboard/sandboxes").await;
        assert_eq!((s, loc.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard/login")));
        let (s, _, _) = b.page(&session, "/dashboard/sandboxes/events").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_create_list_revoke() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let b = Browser::new(&h);

        let expires = sandbar_api::clock::iso(h.app.now() + 3_600_000);
        let (s, v) = h
            .call(Method::POST, "/api-keys", Some(json!({"name": "ci", "permissions": [], "expiresAt": expires})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}: {v}", db.label);
        let key = v["value"].as_str().unwrap().to_owned();
        assert!(key.starts_with("sbk_"));
        assert_eq!(v["expiresAt"], expires.as_str());
        assert!(v["createdAt"].is_string());

        // Listed masked; one name once; bad input is a 400.
        let (s, list) = h.call(Method::GET, "/api-keys", None).await;
        assert_eq!(s, StatusCode::OK);
        let ci = list.as_array().unwrap().iter().find(|k| k["name"] == "ci").expect("listed").clone();
        assert_eq!(ci["value"], format!("sbk_…{}", &key[key.len() - 4..]));
        assert!(!list.to_string().contains(&key));
        assert_eq!(h.call(Method::POST, "/api-keys", Some(json!({"name": "ci"}))).await.0, StatusCode::CONFLICT);
        for bad in [
            json!({"name": ""}),
            json!({"name": "x", "expiresAt": "tomorrow"}),
            json!({"name": "x", "expiresAt": "2001-01-01T00:00:00Z"}),
            json!({"name": "x", "permissions": ["write:sandboxes"]}),
        ] {
            let (s, v) = h.call(Method::POST, "/api-keys", Some(bad.clone())).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        }
        let (s, cur) = h.req(Method::GET, "/api-keys/current", Some(&key), None).await;
        assert_eq!((s, cur["name"].as_str()), (StatusCode::OK, Some("ci")));

        // The new key works, signs in; another organization cannot see or revoke it.
        assert_eq!(h.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::OK);
        let (_, cookie, _) = b.sign_in(&key, None, false).await;
        let session = cookie_value(&cookie.expect("signed in with the new key"));
        let (_, other) = h.new_org("other").await;
        let (s, v) = h.req(Method::GET, "/api-keys", Some(&other), None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(v.as_array().unwrap().iter().all(|k| k["name"] != "ci"), "{v}");
        assert_eq!(h.req(Method::GET, "/api-keys/ci", Some(&other), None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(h.req(Method::DELETE, "/api-keys/ci", Some(&other), None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(h.req(Method::GET, "/api-keys", None, None).await.0, StatusCode::UNAUTHORIZED);

        // Revoked: the key stops working at the API, and so does the session it made.
        assert_eq!(h.call(Method::DELETE, "/api-keys/ci", None).await.0, StatusCode::NO_CONTENT);
        assert_eq!(h.req(Method::GET, "/sandbox", Some(&key), None).await.0, StatusCode::UNAUTHORIZED);
        let (s, loc, _) = b.page(&session, "/dashboard/keys").await;
        assert_eq!((s, loc.as_deref()), (StatusCode::SEE_OTHER, Some("/dashboard/login")));
        assert_eq!(h.call(Method::DELETE, "/api-keys/ci", None).await.0, StatusCode::NOT_FOUND);

        // A key that expires ends its sessions with it.
        let soon = sandbar_api::clock::iso(h.app.now() + 60_000);
        let (_, v) = h.call(Method::POST, "/api-keys", Some(json!({"name": "short", "expiresAt": soon}))).await;
        let (_, cookie, _) = b.sign_in(v["value"].as_str().unwrap(), None, false).await;
        let set = cookie.unwrap();
        assert!(set.contains("Max-Age=60"), "{set}");
        h.clock.advance_secs(61);
        let (s, _, _) = b.page(&cookie_value(&set), "/dashboard/sandboxes").await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        h.stop().await;
    }
}

/// The sandbox page lays out its workbench (terminal, files, logs, ports, usage) with its scripts, and says where
/// the proxy's dashboard is when reached on the API's own listener; the proxy's `authorize` takes a session as a
/// credential for the toolbox of its own organization's sandboxes only, and only while it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sandbox_workbench_and_sessions_at_the_toolbox() {
    for db in databases().await {
        let (h, _runner) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let b = Browser::new(&h);
        let id = h.create(json!({"name": "wb"})).await["id"].as_str().unwrap().to_owned();
        let (_, cookie, _) = b.sign_in(&h.key, None, false).await;
        let session = cookie_value(&cookie.unwrap());

        let resp = b
            .http
            .get(format!("{}/dashboard/sandboxes/{id}", b.root))
            .header(COOKIE, format!("sandbar_session={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{}", db.label);
        let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"), "{csp}");
        let page = resp.text().await.unwrap();
        for part in [r#"id="terminal""#, r#"id="files-drop""#, r#"id="entry-logs""#, r#"id="ports""#, r#"id="usage""#] {
            assert!(page.contains(part), "{part} missing");
        }
        assert!(page.contains("/dashboard/assets/sandbox.js") && page.contains("/dashboard/assets/xterm.js"));
        // Straight at the API (no proxy request id): the hint to the proxy's dashboard shows.
        assert!(page.contains(r#"data-via-proxy="false""#) && !page.contains(r#"class="hint" hidden"#));
        let via = b
            .http
            .get(format!("{}/dashboard/sandboxes/{id}", b.root))
            .header(COOKIE, format!("sandbar_session={session}"))
            .header("x-sandbar-request-id", "r-1")
            .send()
            .await
            .unwrap();
        assert!(via.text().await.unwrap().contains(r#"data-via-proxy="true""#));
        let js = b.http.get(format!("{}/dashboard/assets/sandbox.js", b.root)).send().await.unwrap();
        assert_eq!(js.status(), StatusCode::OK);
        assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
        let xterm = b.http.get(format!("{}/dashboard/assets/xterm.js", b.root)).send().await.unwrap();
        assert!(matches!(xterm.status(), StatusCode::OK | StatusCode::NOT_FOUND), "{}", xterm.status());
        assert_eq!(b.http.get(format!("{}/dashboard/assets/x.js", b.root)).send().await.unwrap().status(), 404);

        // The proxy's question for a toolbox request that brought the dashboard's cookie.
        let ask = |port: u16, session: String| {
            h.proxy_post("/internal/authorize", json!({"sandboxId": id, "port": port, "session": session}))
        };
        let (s, v) = ask(2280, session.clone()).await;
        assert_eq!((s, v["organizationId"].as_str()), (StatusCode::OK, Some(h.org.as_str())), "{v}");
        assert!(v["ttlSecs"].as_u64().unwrap() <= 30);
        for port in [22220, 22222, 8080] {
            assert_eq!(ask(port, session.clone()).await.0, StatusCode::UNAUTHORIZED, "port {port}");
        }
        assert_eq!(ask(2280, "made-up".into()).await.0, StatusCode::UNAUTHORIZED);
        let (_, other_key) = h.new_org("org-other").await;
        let (_, other_cookie, _) = b.sign_in(&other_key, None, false).await;
        assert_eq!(ask(2280, cookie_value(&other_cookie.unwrap())).await.0, StatusCode::NOT_FOUND);
        // Signed out (the key revoked ends its sessions the same way): refused.
        let page = b.page(&session, "/dashboard/sandboxes").await.2;
        let out = b
            .http
            .post(format!("{}/dashboard/logout", b.root))
            .header(COOKIE, format!("sandbar_session={session}"))
            .form(&[("csrf", csrf_of(&page))])
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), StatusCode::SEE_OTHER);
        assert_eq!(ask(2280, session.clone()).await.0, StatusCode::UNAUTHORIZED);
        h.stop().await;
    }
}
