//! Registry credentials (`/docker-registry`) and registry images, over HTTP with a fake runner: CRUD without the
//! password ever coming back, another organization's entries out of reach, the operator's registry list; which
//! creates, builds and snapshots pull (and show `pulling_snapshot` / `pulling`); the credentials a runner gets for
//! its job, and nobody else's. SQLite and PostgreSQL.
#![cfg(test)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use sandbar_api::ManualClock;
use sandbar_proto::runner::{Job, JobErrorCode, JobKind, JobOutcome, JobResult, SnapshotImage};
use sandbar_testkit::api::{FakeRunner, Harness, config, databases};
use serde_json::{Value, json};

const REGISTRY: &str = "127.0.0.1:5000";

async fn harness(db: &sandbar_testkit::api::TestDb) -> (Harness, FakeRunner) {
    let mut c = config(&db.url);
    c.allowed_registries = vec!["*".into(), REGISTRY.into()];
    let h = Harness::start_with(db, c, Arc::new(ManualClock::default())).await;
    let r = h.runner("r1");
    r.heartbeat(8, 16, 100).await;
    (h, r)
}

async fn one_job(r: &FakeRunner) -> Job {
    let jobs = r.poll(0).await;
    let [job] = &jobs[..] else { panic!("one job: {jobs:?}") };
    job.clone()
}

fn no_secret(v: &Value) {
    assert!(!v.to_string().contains("s3cret"), "a password came back: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_credentials_are_per_organization_and_never_returned() {
    for db in databases().await {
        let (h, _r) = harness(&db).await;
        let body = json!({"name": "team", "url": format!("http://{REGISTRY}/"), "username": "u", "password": "s3cret"});
        let (s, v) = h.call(Method::POST, "/docker-registry", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{} {v}", db.label);
        no_secret(&v);
        assert_eq!((v["registryType"].as_str(), v["username"].as_str()), (Some("organization"), Some("u")));
        for f in ["id", "name", "url", "project", "createdAt", "updatedAt"] {
            assert!(v.get(f).is_some_and(Value::is_string), "{f}: {v}");
        }
        let id = v["id"].as_str().unwrap().to_owned();
        let (s, list) = h.call(Method::GET, "/docker-registry", None).await;
        assert_eq!((s, list.as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
        no_secret(&list);
        // An update without a password keeps the stored one (checked below through the runner's view).
        let patch = json!({"name": "team2", "url": REGISTRY, "username": "u2"});
        let (s, v) = h.call(Method::PATCH, &format!("/docker-registry/{id}"), Some(patch)).await;
        assert_eq!((s, v["name"].as_str(), v["username"].as_str()), (StatusCode::OK, Some("team2"), Some("u2")));
        no_secret(&v);

        // Another organization sees none of it and cannot change or delete it.
        let (_, other) = h.new_org("other").await;
        let (s, v) = h.req(Method::GET, "/docker-registry", Some(&other), None).await;
        assert_eq!((s, v), (StatusCode::OK, json!([])));
        for m in [Method::GET, Method::DELETE] {
            let (s, _) = h.req(m, &format!("/docker-registry/{id}"), Some(&other), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND);
        }
        let patch = json!({"name": "x", "url": REGISTRY, "username": "evil", "password": "p"});
        let (s, _) = h.req(Method::PATCH, &format!("/docker-registry/{id}"), Some(&other), Some(patch)).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(h.req(Method::GET, "/docker-registry", None, None).await.0 == StatusCode::UNAUTHORIZED);

        // Bad input: clear 400s, not rows.
        for (body, says) in [
            (json!({"name": "a", "url": "user:pw@host", "username": "u", "password": "p"}), "not a registry"),
            (json!({"name": "a", "url": "reg.example.com", "username": "", "password": "p"}), "username"),
            (json!({"name": "a", "url": "reg.example.com", "username": "u", "password": ""}), "password"),
            // Local addresses need the operator's own entry (metadata, the host's services).
            (json!({"name": "a", "url": "169.254.169.254", "username": "u", "password": "p"}), "--allowed-registry"),
            (json!({"name": "a", "url": "127.0.0.1:5001", "username": "u", "password": "p"}), "--allowed-registry"),
        ] {
            let (s, v) = h.call(Method::POST, "/docker-registry", Some(body)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
            assert!(v["message"].as_str().unwrap().contains(says), "{says}: {v}");
        }
        let (s, v) = h.call(Method::POST, "/docker-registry", Some(json!({"name": "a"}))).await;
        assert!(s.is_client_error(), "{v}");

        let (s, _) = h.call(Method::DELETE, &format!("/docker-registry/{id}"), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(h.call(Method::GET, &format!("/docker-registry/{id}"), None).await.0, StatusCode::NOT_FOUND);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_images_are_pulled_with_the_jobs_own_credentials() {
    for db in databases().await {
        let (h, r) = harness(&db).await;
        let body = json!({"name": "team", "url": REGISTRY, "username": "u", "password": "s3cret"});
        let (s, v) = h.call(Method::POST, "/docker-registry", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let patch = json!({"name": "team", "url": REGISTRY, "username": "u2"});
        let id = v["id"].as_str().unwrap();
        assert_eq!(h.call(Method::PATCH, &format!("/docker-registry/{id}"), Some(patch)).await.0, StatusCode::OK);
        let image = format!("{REGISTRY}/team/app:1");

        // A create from a registry image pulls, and shows `pulling_snapshot` until the runner answers.
        let v = h.create(json!({"snapshot": image})).await;
        assert_eq!(v["state"], "pulling_snapshot", "{v}");
        let sandbox = v["id"].as_str().unwrap().to_owned();
        let job = one_job(&r).await;
        let JobKind::CreateSandbox(c) = &job.kind else { panic!("{job:?}") };
        assert!(c.pull && c.image == image, "{c:?}");
        let (s, auth) = r.get(&format!("jobs/{}/registry-auth", job.id)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(auth, json!([{"server": REGISTRY, "username": "u2", "password": "s3cret"}]), "{}", db.label);
        // Another runner (registered, never heartbeating, so nothing is placed on it) cannot have them.
        let r2 = h.runner("r2");
        assert_eq!(r2.get(&format!("jobs/{}/registry-auth", job.id)).await.0, StatusCode::NOT_FOUND);
        assert_eq!(r.succeed(&job, &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.state(&sandbox).await, "started");
        // Once the job is done, its credentials are no longer handed out.
        assert_eq!(r.get(&format!("jobs/{}/registry-auth", job.id)).await.0, StatusCode::NOT_FOUND);

        // Another organization's create of the same image pulls too, with no credentials of ours.
        let (_, other) = h.new_org("other").await;
        let (s, v) = h.req(Method::POST, "/sandbox", Some(&other), Some(json!({"snapshot": image}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let job = one_job(&r).await;
        assert!(matches!(&job.kind, JobKind::CreateSandbox(c) if c.pull), "{job:?}");
        assert_eq!(r.get(&format!("jobs/{}/registry-auth", job.id)).await, (StatusCode::OK, json!([])));
        let why = "registry 127.0.0.1:5000 refused to give it";
        assert_eq!(r.fail(&job, JobErrorCode::PullFailed, why).await, StatusCode::NO_CONTENT);
        let (_, v) = h.req(Method::GET, &format!("/sandbox/{}", v["id"].as_str().unwrap()), Some(&other), None).await;
        assert_eq!(v["state"], "error");
        assert!(v["errorReason"].as_str().unwrap().contains(why), "{v}");

        // Operator-allowed local images are not pulled; disallowed registries are refused up front.
        let v = h.create(json!({"snapshot": "sandbar-test-busybox:x"})).await;
        assert_eq!(v["state"], "creating");
        let job = one_job(&r).await;
        assert!(matches!(&job.kind, JobKind::CreateSandbox(c) if !c.pull), "{job:?}");
        assert_eq!(r.succeed(&job, &h.org).await, StatusCode::NO_CONTENT);
        for refused in ["127.0.0.1:5001/team/app:1", "169.254.169.254/x:1", "localhost/x"] {
            let (s, v) = h.call(Method::POST, "/sandbox", Some(json!({"snapshot": refused}))).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{refused}: {v}");
            assert!(v["message"].as_str().unwrap().contains("--allowed-registry"), "{v}");
        }

        // A snapshot of a registry image is `pulling` until its PULL_IMAGE job ends.
        let (s, v) = h.call(Method::POST, "/snapshots", Some(json!({"name": "app", "imageName": image}))).await;
        assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("pulling")), "{v}");
        let job = one_job(&r).await;
        let JobKind::PullImage(p) = &job.kind else { panic!("{job:?}") };
        assert_eq!((p.image.as_str(), p.organization_id.as_str()), (image.as_str(), h.org.as_str()));
        assert_eq!(r.get(&format!("jobs/{}/registry-auth", job.id)).await.1[0]["username"], "u2");
        let snapshot = Some(SnapshotImage {
            image: image.clone(),
            image_id: "sha256:01".into(),
            size: 3 << 30,
            ..Default::default()
        });
        let done = JobResult { job_id: job.id.clone(), outcome: JobOutcome::Succeeded { sandbox: None, snapshot } };
        assert_eq!(r.result(done).await, StatusCode::NO_CONTENT);
        let v = h.call(Method::GET, "/snapshots/app", None).await.1;
        assert_eq!((v["state"].as_str(), v["size"].as_f64()), (Some("active"), Some(3.0)), "{v}");
        // A failed pull leaves the snapshot in `error` with the registry's reason.
        let (_, _) = h.call(Method::POST, "/snapshots", Some(json!({"name": "gone", "imageName": image}))).await;
        let job = one_job(&r).await;
        assert_eq!(r.fail(&job, JobErrorCode::ImageNotFound, "manifest unknown").await, StatusCode::NO_CONTENT);
        let v = h.call(Method::GET, "/snapshots/gone", None).await.1;
        assert_eq!(v["state"], "error", "{v}");
        assert!(v["errorReason"].as_str().unwrap_or_default().contains("manifest unknown"), "{v}");

        // A Dockerfile build pulls the registry images it names (not its stages, not allowed local images).
        let dockerfile = format!(
            "FROM {image} AS base\nRUN true\nFROM sandbar-test-busybox:x\nCOPY --from=base /bin/sh /x\n\
             COPY --from={REGISTRY}/team/tools:2 /bin/ls /y\n"
        );
        let build = json!({"buildInfo": {"dockerfileContent": dockerfile, "contextHashes": []}});
        let v = h.create(build).await;
        assert_eq!(v["state"], "pending_build", "{v}");
        let job = one_job(&r).await;
        let JobKind::BuildSnapshot(b) = &job.kind else { panic!("{job:?}") };
        assert_eq!(b.pull, vec![image.clone(), format!("{REGISTRY}/team/tools:2")]);
        let (s, auth) = r.get(&format!("jobs/{}/registry-auth", job.id)).await;
        assert_eq!((s, auth.as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{auth}");
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_without_pulls_get_no_credentials() {
    let dbs = databases().await;
    let (h, r) = harness(&dbs[0]).await;
    let body = json!({"name": "team", "url": REGISTRY, "username": "u", "password": "s3cret"});
    assert_eq!(h.call(Method::POST, "/docker-registry", Some(body)).await.0, StatusCode::CREATED);
    let v = h.create(json!({"snapshot": "sandbar-test-busybox:x"})).await;
    let job = one_job(&r).await;
    assert_eq!(job.kind.sandbox_id(), v["id"].as_str().unwrap());
    assert_eq!(r.get(&format!("jobs/{}/registry-auth", job.id)).await, (StatusCode::OK, json!([])));
    assert_eq!(r.get("jobs/no-such-job/registry-auth").await.0, StatusCode::NOT_FOUND);
    h.stop().await;
}
