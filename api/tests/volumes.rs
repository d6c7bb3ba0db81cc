//! Volumes through the API (SQLite and PostgreSQL): Daytona's `VolumeDto` and endpoints, organizations kept
//! apart, mounts checked and resolved into the runner's create job, sandboxes placed on the runner holding a
//! volume, delete refused while mounted and then carried out by that runner, the count and byte quotas. Also the
//! create fields and list filters sandbar either honours or refuses by name.

// Under `cfg(test)` so clippy's `allow-*-in-tests` covers the helpers too (see runner/tests/common).
#![cfg(test)]

use reqwest::{Method, StatusCode};
use sandbar_proto::runner::{Job, JobKind, VolumeMount};
use sandbar_testkit::api::{FakeRunner, Harness, config, databases, empty, started_sandbox};
use serde_json::{Value, json};

fn with_volumes(mounts: Value) -> Value {
    let mut b = empty();
    b["volumes"] = mounts;
    b
}

async fn new_volume(h: &Harness, name: &str) -> Value {
    let (s, v) = h.call(Method::POST, "/volumes", Some(json!({ "name": name }))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// The create job of `id` among `jobs`.
fn create_job<'a>(jobs: &'a [Job], id: &str) -> &'a sandbar_proto::runner::CreateSandbox {
    jobs.iter()
        .find_map(|j| match &j.kind {
            JobKind::CreateSandbox(c) if c.id == id => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no create job for {id}: {jobs:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_have_daytonas_shape_and_stay_in_their_organization() {
    for db in databases().await {
        let h = Harness::start(&db).await;
        let v = new_volume(&h, "data").await;
        for f in ["id", "name", "organizationId", "state", "createdAt", "updatedAt"] {
            assert!(v[f].is_string(), "{f} in {v}");
        }
        assert!(v.get("errorReason").is_some_and(Value::is_null), "{v}");
        assert_eq!((v["state"].as_str(), v["organizationId"].as_str()), (Some("ready"), Some(h.org.as_str())));
        let id = v["id"].as_str().unwrap().to_owned();

        let (s, e) = h.call(Method::POST, "/volumes", Some(json!({"name": "data"}))).await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        for bad in ["", "-x", "a b", "../x"] {
            let (s, e) = h.call(Method::POST, "/volumes", Some(json!({ "name": bad }))).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad:?}: {e}");
            assert!(e["message"].as_str().unwrap().contains("volume name"), "{e}");
        }
        assert_eq!(h.call(Method::GET, &format!("/volumes/{id}"), None).await.1["name"], "data");
        assert_eq!(h.call(Method::GET, "/volumes/by-name/data", None).await.1["id"], id.as_str());
        let (s, _) = h.call(Method::GET, "/volumes/by-name/nope", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, list) = h.call(Method::GET, "/volumes?includeDeleted=true", None).await;
        assert_eq!((s, list.as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{list}");

        // No key: 401. Another organization: its list is empty and the volume is unknown to it (404, like a
        // volume that does not exist), by id or by name, and it cannot delete it.
        assert_eq!(h.req(Method::GET, "/volumes", None, None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(h.req(Method::POST, "/volumes", None, Some(json!({"name": "x"}))).await.0, StatusCode::UNAUTHORIZED);
        let (_, other) = h.new_org("other").await;
        let (s, list) = h.req(Method::GET, "/volumes", Some(&other), None).await;
        assert_eq!((s, list), (StatusCode::OK, json!([])));
        for (m, p) in [
            (Method::GET, format!("/volumes/{id}")),
            (Method::GET, "/volumes/by-name/data".to_owned()),
            (Method::DELETE, format!("/volumes/{id}")),
        ] {
            let (s, v) = h.req(m.clone(), &p, Some(&other), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}: {v}");
        }
        // The other organization may use the same name for its own volume.
        let (s, _) = h.req(Method::POST, "/volumes", Some(&other), Some(json!({"name": "data"}))).await;
        assert_eq!(s, StatusCode::OK);

        // A volume no sandbox ever mounted goes at once.
        let (s, body) = h.call(Method::DELETE, &format!("/volumes/{id}"), None).await;
        assert_eq!((s, body), (StatusCode::OK, Value::Null));
        assert_eq!(h.call(Method::GET, &format!("/volumes/{id}"), None).await.0, StatusCode::NOT_FOUND);
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mounts_go_to_the_runner_holding_the_volume_and_outlive_their_sandboxes() {
    for db in databases().await {
        let (h, r1) = Harness::start_with_runner(&db, 8, 16, 100).await;
        let vid = new_volume(&h, "shared").await["id"].as_str().unwrap().to_owned();

        // Mounted by name, with a subpath: the job carries the volume's id and the cleaned paths.
        let body = with_volumes(json!([{"volumeId": "shared", "mountPath": "/data/", "subpath": "/team/a/"}]));
        let a = h.create(body).await;
        let a_id = a["id"].as_str().unwrap().to_owned();
        assert_eq!(a["volumes"], json!([{"volumeId": vid, "mountPath": "/data", "subpath": "team/a"}]), "{a}");
        let jobs = r1.poll(0).await;
        let job = create_job(&jobs, &a_id);
        assert_eq!(
            job.volumes,
            vec![VolumeMount { volume_id: vid.clone(), mount_path: "/data".into(), subpath: Some("team/a".into()) }]
        );
        for j in &jobs {
            assert_eq!(r1.succeed(j, &h.org).await, StatusCode::NO_CONTENT);
        }

        // A second runner with far more room: new sandboxes go there, except those mounting the volume.
        let r2 = h.runner("r2");
        r2.heartbeat(64, 256, 1000).await;
        let b = h.create(with_volumes(json!([{"volumeId": vid, "mountPath": "/mnt/v"}]))).await;
        let b_id = b["id"].as_str().unwrap().to_owned();
        assert_eq!(b["runnerId"], "r1", "{b}");
        let c = h.create(empty()).await;
        assert_eq!(c["runnerId"], "r2", "{c}");
        assert!(r2.poll(0).await.iter().all(|j| j.kind.sandbox_id() != b_id));
        r1.work(&h.org).await;
        r2.work(&h.org).await;

        // A fork shares the volumes (same runner).
        let (s, f) = h.call(Method::POST, &format!("/sandbox/{b_id}/fork"), Some(json!({}))).await;
        assert_eq!(s, StatusCode::OK, "{f}");
        let f_id = f["id"].as_str().unwrap().to_owned();
        let fork_jobs = r1.poll(0).await;
        let fork = fork_jobs
            .iter()
            .find_map(|j| match &j.kind {
                JobKind::ForkSandbox(x) if x.fork.id == f_id => Some(x),
                _ => None,
            })
            .expect("fork job");
        assert_eq!(fork.fork.volumes.len(), 1);
        for j in &fork_jobs {
            r1.succeed(j, &h.org).await;
        }

        // In use: refused, naming who uses it (a stopped sandbox still holds its volumes).
        let (s, e) = h.call(Method::DELETE, &format!("/volumes/{vid}"), None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("in use") && msg.contains(&a_id) && msg.contains(&b_id), "{msg}");
        for id in [&a_id, &b_id, &f_id] {
            assert_eq!(h.call(Method::DELETE, &format!("/sandbox/{id}"), None).await.0, StatusCode::OK);
        }
        r1.work(&h.org).await;
        // The sandboxes are gone, the volume is not.
        let v = h.call(Method::GET, &format!("/volumes/{vid}"), None).await.1;
        assert_eq!(v["state"], "ready");
        assert!(v["lastUsedAt"].is_string(), "{v}");

        // Now the delete goes to r1, which holds the data; the volume is `deleting` until r1 reports.
        let (s, _) = h.call(Method::DELETE, &format!("/volumes/{vid}"), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h.call(Method::GET, &format!("/volumes/{vid}"), None).await.1["state"], "deleting");
        let (s, e) =
            h.call(Method::POST, "/sandbox", Some(with_volumes(json!([{"volumeId": vid, "mountPath": "/d"}])))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(e["message"].as_str().unwrap().contains("deleting"), "{e}");
        let jobs = r1.poll(0).await;
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        match &jobs[0].kind {
            JobKind::RemoveVolume(rv) => {
                assert_eq!((rv.volume_id.as_str(), rv.organization_id.as_str()), (vid.as_str(), h.org.as_str()))
            }
            other => panic!("not a volume removal: {other:?}"),
        }
        assert_eq!(r1.succeed(&jobs[0], &h.org).await, StatusCode::NO_CONTENT);
        assert_eq!(h.call(Method::GET, &format!("/volumes/{vid}"), None).await.0, StatusCode::NOT_FOUND);
        new_volume(&h, "shared").await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mounts_are_checked_and_other_organizations_volumes_cannot_be_mounted() {
    for db in databases().await {
        let (h, _r) = Harness::start_with_runner(&db, 8, 16, 100).await;
        new_volume(&h, "v").await;
        let (other_org, other) = h.new_org("other").await;
        let (_, theirs) = h.req(Method::POST, "/volumes", Some(&other), Some(json!({"name": "theirs"}))).await;
        let theirs_id = theirs["id"].as_str().unwrap().to_owned();
        assert_eq!(theirs["organizationId"], other_org.as_str());

        let refused = |mounts: Value, status: StatusCode, needle: &'static str| {
            let h = &h;
            async move {
                let (s, e) = h.call(Method::POST, "/sandbox", Some(with_volumes(mounts.clone()))).await;
                assert_eq!(s, status, "{mounts}: {e}");
                let msg = e["message"].as_str().unwrap_or_default().to_owned();
                assert!(msg.contains(needle), "{mounts}: {msg}");
                msg
            }
        };
        // Another organization's volume is unknown, by id or by name, with the same answer as a missing one.
        let by_id =
            refused(json!([{"volumeId": theirs_id, "mountPath": "/d"}]), StatusCode::NOT_FOUND, "not found").await;
        refused(json!([{"volumeId": "theirs", "mountPath": "/d"}]), StatusCode::NOT_FOUND, "not found").await;
        let missing =
            refused(json!([{"volumeId": "no-such", "mountPath": "/d"}]), StatusCode::NOT_FOUND, "not found").await;
        assert_eq!(by_id.replace(&theirs_id, "X"), missing.replace("no-such", "X"));
        for path in ["d", "/", "/a/../b", "/usr/local/bin", "/usr", "/proc", "/dev/shm", "/a:b"] {
            refused(json!([{"volumeId": "v", "mountPath": path}]), StatusCode::BAD_REQUEST, "mountPath").await;
        }
        for sub in ["..", "a/../../b", "./a", "a//b"] {
            refused(json!([{"volumeId": "v", "mountPath": "/d", "subpath": sub}]), StatusCode::BAD_REQUEST, "subpath")
                .await;
        }
        refused(
            json!([{"volumeId": "v", "mountPath": "/d"}, {"volumeId": "v", "mountPath": "/d/"}]),
            StatusCode::BAD_REQUEST,
            "two volumes",
        )
        .await;
        let many: Vec<Value> = (0..17).map(|i| json!({"volumeId": "v", "mountPath": format!("/d{i}")})).collect();
        refused(Value::Array(many), StatusCode::BAD_REQUEST, "at most 16").await;
        refused(json!([{"volumeId": 1, "mountPath": "/d"}]), StatusCode::BAD_REQUEST, "").await;
        // Nothing was made by any of these.
        let (_, list) = h.call(Method::GET, "/sandbox", None).await;
        assert_eq!(list["items"], json!([]));
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_count_and_byte_quotas() {
    for db in databases().await {
        let mut c = config(&db.url);
        c.limits.quota_volumes = 3;
        c.limits.quota_volume_gib = 1;
        let h = Harness::start_with(&db, c, std::sync::Arc::default()).await;
        let r1 = h.runner("r1");
        r1.heartbeat(8, 16, 100).await;
        let v1 = new_volume(&h, "v1").await["id"].as_str().unwrap().to_owned();
        let v2 = new_volume(&h, "v2").await["id"].as_str().unwrap().to_owned();
        started_sandbox(&h, &r1, with_volumes(json!([{"volumeId": v1, "mountPath": "/d"}]))).await;

        // r1 measured 2 GiB in v1: over the 1 GiB quota, so no new volume and no new mount.
        let report = |runner: &str, bytes: u64| {
            json!({"runnerId": runner, "version": "t", "capacity": {"cpu": 8, "memory": 16, "disk": 100},
                "allocated": {"cpu": 0, "memory": 0, "disk": 0}, "sandboxes": 0, "started": 0,
                "storageDriver": "overlay2", "diskEnforced": false, "cgroupVersion": 2,
                "volumes": [{"volumeId": v1, "bytes": bytes}]})
        };
        // A runner that does not hold the volume cannot change its size.
        let r2: FakeRunner = h.runner("r2");
        r2.heartbeat(8, 16, 100).await;
        assert_eq!(r2.post("heartbeat", report("r2", 5 << 30)).await, StatusCode::OK);
        assert_eq!(h.call(Method::GET, &format!("/volumes/{v1}"), None).await.1["sizeBytes"], 0);
        assert_eq!(r1.post("heartbeat", report("r1", 2 << 30)).await, StatusCode::OK);
        assert_eq!(h.call(Method::GET, &format!("/volumes/{v1}"), None).await.1["sizeBytes"], 2i64 << 30);
        let (s, e) = h.call(Method::POST, "/volumes", Some(json!({"name": "v3"}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
        assert!(e["message"].as_str().unwrap().contains("1 GiB"), "{e}");
        let (s, e) =
            h.call(Method::POST, "/sandbox", Some(with_volumes(json!([{"volumeId": v2, "mountPath": "/d"}])))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
        // Sandboxes without volumes are not this quota's business.
        h.create(empty()).await;

        // Back under: the third volume is allowed, the fourth is over the count.
        assert_eq!(r1.post("heartbeat", report("r1", 1 << 20)).await, StatusCode::OK);
        new_volume(&h, "v3").await;
        let (s, e) = h.call(Method::POST, "/volumes", Some(json!({"name": "v4"}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
        assert!(e["message"].as_str().unwrap().contains("volume count"), "{e}");
        h.stop().await;
    }
}
