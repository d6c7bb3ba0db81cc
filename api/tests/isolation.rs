//! Tenant isolation at the API, with two organizations and fake runners (SQLite and PostgreSQL): images belong to
//! organizations (org 2 cannot create, snapshot or build from org 1's forks, archives, snapshots or builds, nor
//! name an image by ID, ID prefix or digest), Dockerfile rules, reserved environment names, interval limits and
//! timers that a huge value cannot stop, snapshot deletion that names no other organization's sandboxes, runner
//! credentials bound to their runner, and daemon addresses only inside the networks their runner registered.

use reqwest::{Method, StatusCode};
use sandbar_proto::runner::{JobErrorCode, JobKind, JobOutcome, JobResult, SandboxState, SnapshotImage, fork_image};
use sandbar_testkit::api::{FakeRunner, Harness, RUNNER_TOKEN, databases, empty, started_sandbox};
use serde_json::{Value, json};

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

/// Org 1's images: a fork, a snapshot taken from a sandbox, a built snapshot; `(sandbox, fork, snapshot id, build
/// image)`.
async fn org1_images(h: &Harness, r: &FakeRunner) -> (String, String, String, String) {
    let src = started_sandbox(h, r, empty()).await;
    let (s, f) = h.call(Method::POST, &format!("/sandbox/{src}/fork"), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{f}");
    let fork = f["id"].as_str().unwrap_or_default().to_owned();
    r.work(&h.org).await;

    let (s, v) = h.call(Method::POST, &format!("/sandbox/{src}/snapshot"), Some(json!({"name": "snap-a"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let jobs = r.poll(0).await;
    let [job] = &jobs[..] else { panic!("{jobs:?}") };
    let JobKind::SnapshotSandbox(sj) = &job.kind else { panic!("{job:?}") };
    let info = r.info(&src, &h.org, SandboxState::Started);
    let snapshot = Some(SnapshotImage {
        image: sj.image.clone(),
        image_id: "sha256:abc".into(),
        size: 1 << 20,
        ..Default::default()
    });
    let done = JobResult {
        job_id: job.id.clone(),
        outcome: JobOutcome::Succeeded { sandbox: Some(Box::new(info)), snapshot },
    };
    assert_eq!(r.result(done).await, StatusCode::NO_CONTENT);
    let snap = h.call(Method::GET, "/snapshots/snap-a", None).await.1;
    assert_eq!(snap["state"], "active", "{snap}");

    let df = "FROM sandbar-sandbox:default\nRUN echo org1 > /secret\n";
    let body = json!({"name": "built-a", "buildInfo": {"dockerfileContent": df}});
    let (s, v) = h.call(Method::POST, "/snapshots", Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let build_image = v["imageName"].as_str().unwrap_or_default().to_owned();
    (src, fork, snap["id"].as_str().unwrap_or_default().to_owned(), build_image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn org2_cannot_use_or_guess_org1_images() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let (src, fork, snap_id, build_image) = org1_images(&h, &r).await;
        r.work(&h.org).await;
        let (org2, key2) = h.new_org("org-2").await;
        let org1_names = [
            fork_image(&fork),
            format!("docker.io/library/{}", fork_image(&fork)),
            format!("sandbar-archive:{src}"),
            format!("sandbar-snapshot:{snap_id}"),
            build_image.clone(),
            "sandbar-archive:x.rootfs".to_owned(),
        ];
        let guesses = ["sha256:0123abcd", "0123abcd", "abc", "busybox@sha256:0123", "SHA256:ab"];
        for name in org1_names.iter().map(String::as_str).chain(guesses) {
            for body in [
                json!({"snapshot": name}),
                json!({"image": name}),
                json!({"buildInfo": {"dockerfileContent": format!("FROM {name}\n")}}),
                json!({"buildInfo": {"dockerfileContent": format!("FROM {name}\nRUN true\n")}}),
                json!({"buildInfo": {"dockerfileContent": format!("FROM sandbar-sandbox:default\nCOPY --from={name} / /stolen\n")}}),
            ] {
                let (s, v) = h.req(Method::POST, "/sandbox", Some(&key2), Some(body.clone())).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{} org 2 create {body}: {v}", db.label);
                assert!(!message(&v).is_empty(), "{v}");
            }
            for body in [
                json!({"name": "stolen", "imageName": name}),
                json!({"name": "stolen", "buildInfo": {"dockerfileContent": format!("FROM {name}\nRUN true\n")}}),
            ] {
                let (s, v) = h.req(Method::POST, "/snapshots", Some(&key2), Some(body.clone())).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{} org 2 snapshot {body}: {v}", db.label);
            }
        }
        assert!(r.poll(0).await.is_empty(), "nothing of org 2 reached the runner");
        // Org 1's snapshot name means nothing to org 2: a bare name is a Docker Hub image, pulled (with org 2's
        // credentials) under that name, never org 1's `sandbar-snapshot:` image.
        let (s, v) = h.req(Method::POST, "/sandbox", Some(&key2), Some(json!({"snapshot": "snap-a"}))).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("pulling_snapshot")), "{v}");
        let jobs = r.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        let JobKind::CreateSandbox(c) = &job.kind else { panic!("{job:?}") };
        assert_eq!((c.image.as_str(), c.pull, c.organization_id.as_str()), ("snap-a", true, org2.as_str()));
        r.fail(job, JobErrorCode::PullFailed, "registry docker.io cannot be reached").await;

        // Org 1 uses its own; org 2 the operator's images.
        for body in [json!({"image": fork_image(&fork)}), json!({"snapshot": "snap-a"}), json!({"image": build_image})]
        {
            let (s, v) = h.call(Method::POST, "/sandbox", Some(body.clone())).await;
            assert_eq!(s, StatusCode::OK, "org 1 {body}: {v}");
        }
        for body in
            [json!({"image": "sandbar-test-busybox:abc"}), json!({"snapshot": "sandbar-sandbox:default"}), empty()]
        {
            let (s, v) = h.req(Method::POST, "/sandbox", Some(&key2), Some(body.clone())).await;
            assert_eq!(s, StatusCode::OK, "org 2 {body}: {v}");
        }
        let (s, v) = h.req(Method::POST, "/sandbox", Some(&key2), Some(json!({"image": "10.1.2.3/team/x:1"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "not a registry the operator allows: {v}");
        assert!(message(&v).contains("--allowed-registry"), "{v}");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerfile_rules_are_checked_before_a_build() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let base = "FROM sandbar-sandbox:default";
        for (df, says) in [
            (format!("{base}\nADD http://169.254.169.254/latest/meta-data/ /m\n"), "URL"),
            (format!("{base}\nadd \\\n  https://example.com/x /x\n"), "URL"),
            (format!("{base}\nADD git@github.com:a/b.git /b\n"), "URL"),
            (format!("{base}\nARG U=http://169.254.169.254/\nADD $U /m\n"), "variable"),
            (format!("{base}\nRUN --network=host wget x\n"), "--network"),
            (format!("# syntax=evil/frontend\n{base}\nRUN true\n"), "directive"),
            (format!("{base}\nCOPY --from=127.0.0.1:5000/busybox:latest /bin/busybox /b\n"), "--allowed-registry"),
            ("from \\\n  10.0.0.1/debian:12\nRUN true\n".to_owned(), "--allowed-registry"),
            (format!("{base}\nCOPY --from=sandbar-build:0123x /x /b\n"), "not allowed"),
        ] {
            let body = json!({"name": "x", "buildInfo": {"dockerfileContent": df}});
            let (s, v) = h.call(Method::POST, "/snapshots", Some(body)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{df}: {v}");
            assert!(message(&v).contains(says), "{df}: {v}");
        }
        // Stages, and COPY --from an earlier stage, are fine.
        let df = format!("{base} AS one\nRUN echo 1 > /one\nFROM sandbar-test-busybox:x\nCOPY --from=one /one /one\n");
        let (s, v) = h
            .call(Method::POST, "/snapshots", Some(json!({"name": "ok", "buildInfo": {"dockerfileContent": df}})))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(r.poll(0).await.len(), 1, "one build job");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserved_env_names_are_refused() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        for k in [
            "SANDBAR_DAEMON_TOKEN",
            "SANDBAR_SSH_AUTHORIZED_KEYS",
            "sandbar_toolbox_addr",
            "RUST_LOG",
            "RUST_BACKTRACE",
        ] {
            let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"env": {k: "x"}}))).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{k}: {v}");
            assert!(message(&v).contains("reserved"), "{v}");
        }
        assert!(r.poll(0).await.is_empty());
        h.create(json!({"env": {"SANDBARX": "ok", "MY_SANDBAR_VAR": "ok"}})).await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_intervals_are_refused_and_cannot_stop_other_tenants_timers() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let big = i64::MAX;
        for field in ["autoStopInterval", "autoArchiveInterval", "autoDeleteInterval"] {
            for v in [big, 10 * 366 * 24 * 60 + 1] {
                let (s, body) = h.call(Method::POST, "/sandbox", Some(json!({field: v}))).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{field}={v}: {body}");
                assert!(message(&body).contains(field), "{body}");
            }
        }
        let mine = started_sandbox(&h, &r, json!({"autoStopInterval": 60})).await;
        for action in ["autostop", "autoarchive", "autodelete"] {
            let (s, v) = h.call(Method::POST, &format!("/sandbox/{mine}/{action}/{big}"), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{action}: {v}");
        }
        // A row that holds a huge value anyway (written before the limit existed) must not fail the timers.
        sqlx::query("UPDATE sandboxes SET auto_stop = $1, auto_archive = $1, auto_delete = $1 WHERE id = $2")
            .bind(big)
            .bind(&mine)
            .execute(&h.app.db.pool)
            .await
            .unwrap();
        let (org2, key2) = h.new_org("org-2").await;
        let (s, v) = h.req(Method::POST, "/sandbox", Some(&key2), Some(json!({"autoStopInterval": 15}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let theirs = v["id"].as_str().unwrap().to_owned();
        r.work(&org2).await;
        h.clock.advance_secs(16 * 60);
        r.heartbeat(64, 64, 1000).await;
        let report = sandbar_api::lifecycle::tick(&h.app).await;
        let report = report.unwrap_or_else(|e| panic!("{}: the tick failed: {e}", db.label));
        assert_eq!(report.stopped, [theirs], "{}", db.label);
        assert_eq!(h.state(&mine).await, "started");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_deletion_names_no_other_organizations_sandboxes() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let (_, _, snap_id, _) = org1_images(&h, &r).await;
        r.work(&h.org).await;
        let (org2, key2) = h.new_org("org-2").await;
        let (s, v) = h.req(Method::POST, "/sandbox", Some(&key2), Some(json!({"name": "org2-private-name"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let theirs = v["id"].as_str().unwrap().to_owned();
        r.work(&org2).await;
        // Org 2's sandbox runs org 1's snapshot image (as one made before images belonged to organizations could).
        sqlx::query("UPDATE sandboxes SET snapshot = $1 WHERE id = $2")
            .bind(format!("sandbar-snapshot:{snap_id}"))
            .bind(&theirs)
            .execute(&h.app.db.pool)
            .await
            .unwrap();
        let (s, v) = h.call(Method::DELETE, "/snapshots/snap-a", None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        let m = message(&v);
        assert!(!m.contains("org2-private-name") && !m.contains(&theirs), "{m}");
        assert!(m.contains("in use"), "{m}");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_credential_opens_only_its_own_runner() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let (x, y) = (h.runner("rx"), h.runner("ry"));
        x.heartbeat(1, 1, 1).await;
        y.heartbeat(64, 64, 1000).await;
        let id = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        assert_eq!(h.get_sandbox(&id).await["runnerId"], "ry");
        let x_cred = x.credential().await;
        let (s, v) = h.req(Method::GET, "/runners/ry/jobs?wait=0", Some(&x_cred), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "X reads Y's jobs: {v}");
        let (s, _) = h.req(Method::GET, "/runners/ry/jobs?wait=0", Some(RUNNER_TOKEN), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "the join token only registers");
        let info = serde_json::to_value(vec![y.info(&id, &h.org, SandboxState::Started)]).unwrap();
        for (path, body) in [
            ("/runners/ry/sandboxes", info.clone()),
            ("/runners/ry/states", json!([{"sandboxId": id, "state": "started"}])),
            ("/runners/ry/heartbeat", json!({})),
            ("/runners/ry/jobs/j/result", json!({"jobId": "j", "outcome": {"status": "SUCCEEDED"}})),
            ("/runners/ry/jobs/j/log", json!({"attempt": "a", "offset": 0, "lines": ["x"]})),
        ] {
            let (s, v) = h.req(Method::POST, path, Some(&x_cred), Some(body)).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "X posts {path}: {v}");
        }
        // Y's job is still Y's, and Y's result is taken.
        let jobs = y.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        let (s, v) =
            h.req(Method::POST, &format!("/runners/ry/jobs/{}/result", job.id), Some(&x_cred), Some(json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(y.succeed(job, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "started");
        // A new registration replaces the old credential.
        let old = y.credential().await;
        let new = sandbar_testkit::api::register_runner(&h.http, &h.base, "ry", RUNNER_TOKEN).await;
        assert_ne!(old, new);
        assert_eq!(h.req(Method::GET, "/runners/ry/jobs", Some(&old), None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(h.req(Method::GET, "/runners/ry/jobs", Some(&new), None).await.0, StatusCode::OK);
        h.stop().await;
    }
}

/// Registers `r` declaring `networks` as its daemon networks; its credential is kept for its later calls.
async fn register_with(h: &Harness, r: &FakeRunner, networks: Value) -> (StatusCode, Value) {
    let path = format!("/runners/{}/register", r.id);
    let (s, v) = h.req(Method::POST, &path, Some(RUNNER_TOKEN), Some(json!({"daemonNetworks": networks}))).await;
    if s == StatusCode::OK
        && let (Ok(mut kept), Some(credential)) = (r.credential.lock(), v["credential"].as_str())
    {
        *kept = Some(credential.to_owned());
    }
    (s, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_reports_only_daemon_addresses_in_the_networks_it_registered() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let (x, y) = (h.runner("rx"), h.runner("ry"));
        // Each advertises one host address (issue #21: daemons published on it); a bad network is refused.
        let (s, v) = register_with(&h, &y, json!(["192.0.2.7/33"])).await;
        assert_eq!((s, message(&v).contains("192.0.2.7/33")), (StatusCode::BAD_REQUEST, true), "{v}");
        assert_eq!(register_with(&h, &x, json!(["198.51.100.7/32"])).await.0, StatusCode::OK);
        assert_eq!(register_with(&h, &y, json!(["192.0.2.7/32"])).await.0, StatusCode::OK);
        x.heartbeat(1, 1, 1).await;
        y.heartbeat(64, 64, 1000).await;
        let id = h.create(empty()).await["id"].as_str().unwrap().to_owned();
        assert_eq!(h.get_sandbox(&id).await["runnerId"], "ry");
        let jobs = y.poll(0).await;
        let [job] = &jobs[..] else { panic!("{jobs:?}") };
        let result = |daemon: &str, ssh: Option<&str>| {
            let mut info = y.info(&id, &h.org, SandboxState::Started);
            info.daemon_addr = Some(daemon.to_owned());
            info.ssh_addr = ssh.map(str::to_owned);
            JobResult {
                job_id: job.id.clone(),
                outcome: JobOutcome::Succeeded { sandbox: Some(Box::new(info)), snapshot: None },
            }
        };
        // Y pointing its sandbox at X's host (or at its bridge, which it did not declare) is refused, with why.
        for (daemon, ssh) in
            [("198.51.100.7:40001", None), ("172.17.0.9:2280", None), ("192.0.2.7:40001", Some("198.51.100.7:40002"))]
        {
            let r = result(daemon, ssh);
            let (s, v) = h
                .req(
                    Method::POST,
                    &format!("/runners/ry/jobs/{}/result", job.id),
                    Some(&y.credential().await),
                    Some(serde_json::to_value(&r).unwrap()),
                )
                .await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{daemon} {ssh:?}: {v}");
            assert!(message(&v).contains("outside the networks it registered (192.0.2.7/32)"), "{v}");
            assert_eq!(h.state(&id).await, "creating", "a refused result moves nothing");
        }
        // Its own published ports are taken, and are what the proxy and the SSH gateway get.
        assert_eq!(y.result(result("192.0.2.7:40001", Some("192.0.2.7:40002"))).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&id).await, "started");
        let (_, route) = h.proxy_get::<sandbar_proto::api::Route>(&format!("/internal/routes/{id}")).await;
        let route = route.unwrap();
        assert_eq!(route.daemon_addr.as_deref(), Some("192.0.2.7:40001"));
        assert_eq!(route.ssh_addr.as_deref(), Some("192.0.2.7:40002"));
        // Its full picture naming another address is refused whole, and the route stays.
        let mut moved = y.info(&id, &h.org, SandboxState::Started);
        moved.daemon_addr = Some("198.51.100.7:40009".into());
        let (s, v) = h
            .req(
                Method::POST,
                "/runners/ry/sandboxes",
                Some(&y.credential().await),
                Some(serde_json::to_value(vec![moved]).unwrap()),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let (_, route) = h.proxy_get::<sandbar_proto::api::Route>(&format!("/internal/routes/{id}")).await;
        assert_eq!(route.unwrap().daemon_addr.as_deref(), Some("192.0.2.7:40001"));
        // A runner that declared nothing may report no address at all.
        let z = h.runner("rz");
        let (s, v) = h.req(Method::POST, "/runners/rz/register", Some(RUNNER_TOKEN), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        *z.credential.lock().unwrap() = Some(v["credential"].as_str().unwrap().to_owned());
        let status =
            z.post("sandboxes", serde_json::to_value(vec![z.info(&id, &h.org, SandboxState::Started)]).unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_get_the_organizations_build_network_and_none_by_default() {
    for db in databases().await {
        let (h, r) = Harness::start_with_runner(&db, 64, 64, 1000).await;
        let (org2, key2) = h.new_org("org-2").await;
        let build = |tag: &str| json!({"buildInfo": {"dockerfileContent": format!("FROM sandbar-sandbox:default\nRUN echo {tag}\n")}});
        let network_of = |jobs: Vec<sandbar_proto::runner::Job>| match &jobs[..] {
            [job] => match &job.kind {
                JobKind::BuildSnapshot(b) => b.network.clone(),
                other => panic!("{other:?}"),
            },
            _ => panic!("{jobs:?}"),
        };
        assert_eq!(h.call(Method::POST, "/sandbox", Some(build("a"))).await.0, StatusCode::OK);
        assert_eq!(network_of(r.poll(0).await), None, "no network unless the operator set one");

        assert!(
            sandbar_api::auth::set_build_network(&h.app.db, &h.org, Some("10.9.0.0/16, 192.0.2.1/32")).await.unwrap()
        );
        assert_eq!(h.call(Method::POST, "/sandbox", Some(build("b"))).await.0, StatusCode::OK);
        let list = network_of(r.poll(0).await).expect("a policy").network_allow_list;
        assert_eq!(list, Some(vec!["10.9.0.0/16".to_owned(), "192.0.2.1/32".to_owned()]));
        // Another organization's builds are not affected.
        assert_eq!(h.req(Method::POST, "/sandbox", Some(&key2), Some(build("c"))).await.0, StatusCode::OK);
        assert_eq!(network_of(r.poll(0).await), None);

        assert!(sandbar_api::auth::set_build_network(&h.app.db, &org2, Some("open")).await.unwrap());
        assert_eq!(h.req(Method::POST, "/sandbox", Some(&key2), Some(build("d"))).await.0, StatusCode::OK);
        let open = network_of(r.poll(0).await).expect("a policy");
        assert!(open.is_unrestricted(), "{open:?}");
        assert!(sandbar_api::domain::builds::parse_network(Some("10.0.0.0/33")).is_err());
        assert!(!sandbar_api::auth::set_build_network(&h.app.db, "no-such-org", None).await.unwrap());
        h.stop().await;
    }
}
