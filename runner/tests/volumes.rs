//! Volumes with real containers: one sandbox writes as the unprivileged user (uid 1000 inside, remapped outside)
//! and another reads, a subpath shows only its directory, the data outlives both sandboxes, another organization
//! naming the same volume id gets its own empty directory, a symlink planted in a volume never becomes a mount of
//! the host, and removing a volume deletes its data.
#![cfg(test)]

mod common;

use std::os::unix::fs::MetadataExt;

use common::{TestRunner, busybox_image, create_req, exec_req, unique};
use sandbar_proto::runner::{CreateSandbox, RemoveVolume, VolumeMount};
use sandbar_runner::Runner;

async fn sh(runner: &Runner, id: &str, cmd: &str) -> (i32, String) {
    let out = runner.exec(id, &exec_req(cmd)).await.unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (out.exit_code, out.result)
}

async fn sh_ok(runner: &Runner, id: &str, cmd: &str) -> String {
    let (code, out) = sh(runner, id, cmd).await;
    assert_eq!(code, 0, "{cmd}:\n{out}");
    out
}

fn with_volume(id: &str, org: &str, mounts: Vec<VolumeMount>, user: Option<&str>) -> CreateSandbox {
    let mut req = create_req(id, &busybox_image());
    req.organization_id = org.into();
    req.volumes = mounts;
    req.user = user.map(str::to_owned);
    req.entrypoint = Some(["sleep", "1000000"].map(String::from).to_vec());
    req
}

fn mount(volume: &str, at: &str, sub: Option<&str>) -> VolumeMount {
    VolumeMount { volume_id: volume.into(), mount_path: at.into(), subpath: sub.map(str::to_owned) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_shared_persist_and_stay_in_their_organization() {
    let t = TestRunner::new("volumes");
    let state = tempfile::tempdir().unwrap();
    let mut config = t.config();
    config.state_dir = Some(state.path().to_owned());
    let runner = Runner::new(config).await.unwrap();
    let vol = format!("vol-{}", unique());
    let dir = state.path().join("volumes").join("org-a").join(&vol);

    // A writes as uid 1000; B mounts the subpath `team` and reads it.
    let a = format!("va-{}", unique());
    let b = format!("vb-{}", unique());
    runner.create(with_volume(&a, "org-a", vec![mount(&vol, "/data", None)], Some("1000"))).await.unwrap();
    assert_eq!(sh_ok(&runner, &a, "id -u").await.trim(), "1000");
    sh_ok(&runner, &a, "mkdir -p /data/team && echo shared > /data/team/hello && echo top > /data/top").await;
    runner.create(with_volume(&b, "org-a", vec![mount(&vol, "/mnt/sub", Some("team"))], None)).await.unwrap();
    assert_eq!(sh_ok(&runner, &b, "cat /mnt/sub/hello").await.trim(), "shared");
    assert_eq!(sh_ok(&runner, &b, "ls /mnt/sub").await.trim(), "hello", "a subpath shows only its directory");
    sh_ok(&runner, &b, "echo back > /mnt/sub/reply").await;
    assert_eq!(sh_ok(&runner, &a, "cat /data/team/reply").await.trim(), "back");

    // On the host: owned by the sandbox user as Docker's user namespace maps it, files owned the same way.
    let meta = std::fs::metadata(&dir).unwrap();
    let hello = std::fs::metadata(dir.join("team/hello")).unwrap();
    if runner.host().userns {
        assert!(meta.uid() > 100_000 && meta.uid() == hello.uid(), "dir {} file {}", meta.uid(), hello.uid());
    }

    // The data outlives both sandboxes.
    runner.destroy(&a).await.unwrap();
    runner.destroy(&b).await.unwrap();
    let c = format!("vc-{}", unique());
    runner.create(with_volume(&c, "org-a", vec![mount(&vol, "/data", None)], None)).await.unwrap();
    assert_eq!(sh_ok(&runner, &c, "cat /data/team/hello /data/top").await, "shared\ntop\n");

    // Another organization naming the same id gets a directory of its own, empty.
    let other = format!("vo-{}", unique());
    runner.create(with_volume(&other, "org-b", vec![mount(&vol, "/data", None)], None)).await.unwrap();
    assert_eq!(sh_ok(&runner, &other, "ls -A /data | wc -l").await.trim(), "0");

    // A symlink planted in the volume (root inside may make one) never leads a later mount out of the volume.
    sh_ok(&runner, &c, "ln -s / /data/evil && ln -s /etc /data/team/etc").await;
    for sub in ["evil", "evil/etc", "team/etc"] {
        let d = format!("vd-{}", unique());
        let err = runner.create(with_volume(&d, "org-a", vec![mount(&vol, "/data", Some(sub))], None)).await;
        let err = err.expect_err(sub).to_string();
        assert!(err.contains("not a directory"), "{sub}: {err}");
    }

    // Measured, then removed with its data (again: already gone is fine).
    let usage = runner.volume_usage().await.unwrap();
    assert!(usage.iter().any(|u| u.volume_id == vol && u.bytes > 0), "{usage:?}");
    runner.destroy(&c).await.unwrap();
    runner.destroy(&other).await.unwrap();
    for _ in 0..2 {
        runner.remove_volume(RemoveVolume { volume_id: vol.clone(), organization_id: "org-a".into() }).await.unwrap();
    }
    assert!(!dir.exists());
    assert!(state.path().join("volumes/org-b").join(&vol).exists(), "only org-a's volume went");
    // Mount paths over the daemon are refused here too.
    let e = format!("ve-{}", unique());
    let bad = runner.create(with_volume(&e, "org-a", vec![mount(&vol, "/usr/local/bin", None)], None)).await;
    assert!(bad.is_err());
}
