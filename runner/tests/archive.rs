//! Archive and restore on real Docker with a local archive store: files, permissions, environment and entrypoint
//! come back, the container is gone while archived, jobs are idempotent across a runner restart, a corrupt archive
//! is refused without losing it, and destroying an archived sandbox deletes its archive.
//!
//! Figures (archive, restore and fork time, archive size of the default image, beside `docker export`,
//! `docker import` and `docker commit` of the same container):
//! `cargo test --test archive -- --ignored --nocapture default_image_archive_figures`; with
//! `SANDBAR_BENCH_SAMPLES=FILE` it also appends them there as samples (`benches/run`'s full run does).
#![cfg(test)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::Moto;
use common::*;
use sandbar_proto::runner::{CreateSandbox, ForkSandbox, JobErrorCode, SandboxState, StopSandbox, fork_image};
use sandbar_proto::toolbox::ExecuteRequest;
use sandbar_runner::{ARCHIVE_REPO, ArchiveKind, Runner, RunnerConfig, SandboxError};

/// Removes the images restores make for `id`, even when the test fails half way.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let refs = [format!("{ARCHIVE_REPO}:{}", self.0), format!("{ARCHIVE_REPO}:{}.rootfs", self.0)];
        let _ = Command::new("docker").args(["rmi", "-f"]).args(&refs).output();
    }
}

fn config(t: &TestRunner, store: &Path) -> RunnerConfig {
    let mut c = t.config();
    c.archive_store = Some(store.display().to_string());
    c
}

async fn sh(runner: &Runner, id: &str, cmd: &str) -> String {
    let req = ExecuteRequest { command: cmd.into(), timeout: Some(30), ..Default::default() };
    let out = runner.exec(id, &req).await.unwrap();
    assert_eq!(out.exit_code, 0, "{cmd}: {}", out.result);
    out.result.trim().to_owned()
}

async fn stop(runner: &Runner, id: &str) {
    let s = runner.stop(StopSandbox { sandbox_id: id.into(), force: false, timeout_secs: Some(5) }).await.unwrap();
    assert_eq!(s.state, SandboxState::Stopped);
}

fn spec(id: &str) -> CreateSandbox {
    let mut req = create_req(id, &busybox_image());
    req.env = BTreeMap::from([("GREETING".into(), "hello \"archived\" $world".into())]);
    req.labels = BTreeMap::from([("team".into(), "a".into())]);
    // Counts its starts: a restored sandbox runs its entrypoint again, with the image's environment.
    req.entrypoint =
        Some(["sh", "-c", "echo \"start $PATH\" >> /tmp/starts; exec sleep 1000000"].map(String::from).to_vec());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_restore_keeps_files_and_destroy_deletes_the_archive() {
    let t = TestRunner::new("archive");
    let store = tempfile::tempdir().unwrap();
    let id = format!("ar-{}", unique());
    let _images = ImageGuard(id.clone());
    let runner = Runner::new(config(&t, store.path())).await.unwrap();
    assert_eq!(runner.archive_location(), Some(store.path().display().to_string().as_str()));
    let req = spec(&id);
    let created = runner.create(req.clone()).await.unwrap();
    sh(
        &runner,
        &id,
        "mkdir -p /data/sub && echo kept > /data/sub/file.txt && chmod 640 /data/sub/file.txt \
        && ln -s sub/file.txt /data/link && head -c 3000000 /dev/urandom > /data/random.bin \
        && md5sum /data/random.bin > /data/random.md5",
    )
    .await;

    // Only a stopped sandbox can be archived.
    let err = runner.archive(&id).await.unwrap_err();
    assert!(matches!(err, SandboxError::InvalidState { .. }), "{err}");
    stop(&runner, &id).await;

    let mut changes = runner.subscribe();
    let archived = runner.archive(&id).await.unwrap();
    assert_eq!(archived.state, SandboxState::Archived);
    assert!(archived.container_id.is_empty() && archived.daemon_addr.is_none());
    wait_for_state(&mut changes, &id, SandboxState::Archiving, Duration::from_secs(1)).await;
    wait_for_state(&mut changes, &id, SandboxState::Archived, Duration::from_secs(1)).await;
    assert!(runner.get(&id).is_none(), "the runner forgets an archived sandbox");
    assert!(t.containers().is_empty(), "the container is gone: {:?}", t.containers());
    let manifest = runner.archive_manifest(&id).await.unwrap().expect("a complete archive");
    assert_eq!(manifest.kind, ArchiveKind::Layer, "the sandbox's own layer, over its image");
    assert!(image_exists(&format!("{ARCHIVE_REPO}:{id}")), "the base is pinned while the archive needs it");
    let tar = store.path().join(&id).join("layer.tar.zst");
    assert_eq!(manifest.size, std::fs::metadata(&tar).unwrap().len());
    assert!(manifest.size > 3_000_000, "the export holds the files: {} bytes", manifest.size);
    assert_eq!(manifest.sha256.len(), 64);
    assert_eq!(Some(manifest.argv.clone()), req.entrypoint);
    assert!(manifest.env.iter().any(|kv| kv.starts_with("PATH=")), "the image's env is kept: {:?}", manifest.env);
    assert!(
        !manifest.env.iter().any(|kv| kv.starts_with("GREETING=") || kv.starts_with("SANDBAR_")),
        "neither the caller's env nor the daemon token goes into the store: {:?}",
        manifest.env
    );
    let on_disk = std::fs::read_to_string(store.path().join(&id).join("manifest.json")).unwrap();
    assert!(!on_disk.contains(&created.daemon_token));

    // A repeated archive job (a runner that restarted before reporting) succeeds without a container.
    assert_eq!(runner.archive(&id).await.unwrap().state, SandboxState::Archived);

    let restored = runner.restore(req.clone()).await.unwrap();
    assert_eq!(restored.state, SandboxState::Started);
    assert_ne!(restored.daemon_token, created.daemon_token, "a restore gets a fresh token, as a create does");
    assert_eq!(restored.labels, req.labels);
    assert_eq!(sh(&runner, &id, "cat /data/sub/file.txt").await, "kept");
    assert_eq!(sh(&runner, &id, "stat -c %a /data/sub/file.txt").await, "640");
    assert_eq!(sh(&runner, &id, "cat /data/link").await, "kept");
    sh(&runner, &id, "md5sum -c /data/random.md5").await;
    assert_eq!(sh(&runner, &id, "echo \"$GREETING\"").await, "hello \"archived\" $world");
    let starts = sh(&runner, &id, "cat /tmp/starts").await;
    assert_eq!(starts.lines().count(), 2, "the entrypoint ran again: {starts}");
    assert!(starts.lines().all(|l| l.starts_with("start /") && l.contains("bin")), "{starts}");
    let limits = runner.cgroup_limits(&id).await.unwrap();
    assert_eq!(limits.memory_bytes, Some(1 << 30));
    assert_eq!(runner.archive_manifest(&id).await.unwrap(), None, "objects go once the sandbox runs again");
    assert!(!store.path().join(&id).exists());
    // A repeated restore answers with the running sandbox.
    let again = runner.restore(req.clone()).await.unwrap();
    assert_eq!(again.container_id, restored.container_id);

    // Archive a restored sandbox again (its restore image goes with the container), restart the runner in
    // between: nothing about the archive lives in the runner.
    stop(&runner, &id).await;
    runner.archive(&id).await.unwrap();
    assert!(image_exists(&format!("{ARCHIVE_REPO}:{id}")), "the pinned base stays with the archive");
    drop(runner);
    let runner = Runner::new(config(&t, store.path())).await.unwrap();
    assert!(runner.get(&id).is_none());
    let restored = runner.restore(req.clone()).await.unwrap();
    assert_eq!(sh(&runner, &id, "cat /data/sub/file.txt").await, "kept");
    assert_eq!(sh(&runner, &id, "cat /tmp/starts").await.lines().count(), 3);
    let _ = restored;
    stop(&runner, &id).await;
    runner.archive(&id).await.unwrap();

    // Destroying the archived sandbox deletes its archive; a second destroy finds nothing.
    runner.destroy(&id).await.unwrap();
    assert_eq!(runner.archive_manifest(&id).await.unwrap(), None);
    assert!(!store.path().join(&id).exists());
    assert!(matches!(runner.destroy(&id).await, Err(SandboxError::NotFound(_))));
    assert!(t.containers().is_empty());
    assert!(!image_exists(&format!("{ARCHIVE_REPO}:{id}")));
}

/// Everything under the changed trees as the sandbox sees it: path, type, mode, owner, size, link count, link
/// target, content hash; and whether the two names of the hard link are one file.
const TREE: &str = "for p in $(find /data /home /usr /bin | sort); do stat -c '%n|%F|%a|%u|%g|%s|%h' \"$p\"; \
    if [ -L \"$p\" ]; then readlink \"$p\"; elif [ -f \"$p\" ]; then md5sum < \"$p\"; fi; done; \
    [ /data/file -ef /data/dir/hard ] && echo one-inode";

/// The host path of `rel` in the writable layer of sandbox `id`'s container.
fn in_upper_dir(id: &str, rel: &str) -> std::path::PathBuf {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", &format!("sandbar-{id}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Path::new(String::from_utf8_lossy(&out.stdout).trim()).join(rel)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_restore_and_fork_keep_the_layer_tree() {
    let t = TestRunner::new("archive-tree");
    let store = tempfile::tempdir().unwrap();
    let id = format!("at-{}", unique());
    let fork_id = format!("atf-{}", unique());
    let _images = ImageGuard(id.clone());
    let _fork_image = Images(vec![fork_image(&fork_id)]);
    let runner = Runner::new(config(&t, store.path())).await.unwrap();
    let req = spec(&id);
    runner.create(req.clone()).await.unwrap();
    sh(
        &runner,
        &id,
        "mkdir -p /data/dir/deeper /data/empty && echo hello > /data/file && chmod 640 /data/file \
        && chown 1000:1000 /data/file && ln /data/file /data/dir/hard && ln -s ../file /data/dir/sym \
        && ln -s /nowhere /data/dangling && echo '#!/bin/sh' > /data/suid && chmod 4755 /data/suid \
        && chown 1234:5678 /data/dir/deeper && mkfifo /data/fifo && chmod 600 /data/fifo \
        && head -c 2000000 /dev/urandom > /data/dir/deeper/random.bin \
        && rm /bin/vi && rmdir /usr/sbin && rm -rf /home && mkdir -p /home/new && echo x > /home/new/file",
    )
    .await;
    // busybox has no setfattr: the attribute goes where the sandbox's own write of it would land.
    rustix::fs::lsetxattr(in_upper_dir(&id, "data/file"), "user.note", b"kept", rustix::fs::XattrFlags::empty())
        .unwrap();
    let before = sh(&runner, &id, TREE).await;
    for (what, missing) in [("deleted", "/bin/vi"), ("deleted dir", "/usr/sbin"), ("hidden", "/home/sandbar")] {
        assert!(!before.contains(&format!("{missing}|")), "{what} {missing} shows: {before}");
    }
    assert!(before.contains("/data/suid|regular file|4755|0|0|") && before.contains("one-inode"), "{before}");

    // A fork of the running sandbox: the same tree, the attribute too.
    let mut fork = create_req(&fork_id, &fork_image(&fork_id));
    fork.entrypoint = req.entrypoint.clone();
    runner.fork(ForkSandbox { source_sandbox_id: id.clone(), fork }).await.unwrap();
    assert_eq!(sh(&runner, &fork_id, TREE).await, before, "the fork's tree");
    assert_eq!(xattr(&in_upper_dir(&fork_id, "data/file"), "user.note").as_deref(), Some(&b"kept"[..]));
    runner.destroy(&fork_id).await.unwrap();

    stop(&runner, &id).await;
    runner.archive(&id).await.unwrap();
    let manifest = runner.archive_manifest(&id).await.unwrap().expect("a complete archive");
    assert_eq!(manifest.kind, ArchiveKind::Layer);
    assert!(manifest.base_image_id.as_deref().is_some_and(|b| b.starts_with("sha256:")), "{manifest:?}");
    runner.restore(req).await.unwrap();
    assert_eq!(sh(&runner, &id, TREE).await, before, "the restored tree");
    assert_eq!(xattr(&in_upper_dir(&id, "data/file"), "user.note").as_deref(), Some(&b"kept"[..]));
    runner.destroy(&id).await.unwrap();
    assert!(!image_exists(&format!("{ARCHIVE_REPO}:{id}")), "the pin goes with the sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_archive_is_refused_and_kept() {
    let t = TestRunner::new("archive-bad");
    let store = tempfile::tempdir().unwrap();
    let id = format!("ab-{}", unique());
    let _images = ImageGuard(id.clone());
    let runner = Runner::new(config(&t, store.path())).await.unwrap();
    let req = spec(&id);

    let err = runner.restore(req.clone()).await.unwrap_err();
    assert!(err.to_string().contains("no archive of sandbox"), "{err}");
    assert!(runner.get(&id).is_none());

    runner.create(req.clone()).await.unwrap();
    sh(&runner, &id, "echo precious > /precious").await;
    stop(&runner, &id).await;
    runner.archive(&id).await.unwrap();

    // Flip one byte in the middle of the tarball: same size, other content.
    let kind = runner.archive_manifest(&id).await.unwrap().unwrap().kind;
    let tar = store.path().join(&id).join(kind.object());
    let mut bytes = std::fs::read(&tar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tar, &bytes).unwrap();
    let mut changes = runner.subscribe();
    let err = runner.restore(req.clone()).await.unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(err.code(), JobErrorCode::Internal);
    let back = wait_for_state(&mut changes, &id, SandboxState::Archived, Duration::from_secs(1)).await;
    assert!(back.reason.unwrap().contains("restore failed"));
    assert!(runner.get(&id).is_none() && t.containers().is_empty(), "nothing half-restored is left");
    assert!(!image_exists(&format!("{ARCHIVE_REPO}:{id}.rootfs")));
    assert!(image_exists(&format!("{ARCHIVE_REPO}:{id}")), "a layer's pinned base stays for the next attempt");
    assert!(runner.archive_manifest(&id).await.unwrap().is_some(), "a failed restore keeps the archive");

    // Repaired, it restores.
    bytes[mid] ^= 0xff;
    std::fs::write(&tar, &bytes).unwrap();
    runner.restore(req).await.unwrap();
    assert_eq!(sh(&runner, &id, "cat /precious").await, "precious");
    runner.destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_and_restore_through_an_s3_compatible_store() {
    let Some(moto) = Moto::start_or_skip("the S3 archive test") else { return };
    let http = reqwest::Client::new();
    assert!(http.put(moto.url("sandbar-archives")).send().await.unwrap().status().is_success());
    let t = TestRunner::new("archive-s3");
    let id = format!("as-{}", unique());
    let _images = ImageGuard(id.clone());
    let mut config = t.config();
    // Signed requests (ring) over plain HTTP to the loopback server; options in the URL, not the environment.
    config.archive_store = Some(format!(
        "s3://sandbar-archives/runner-a?endpoint=http://127.0.0.1:{}&allow_http=true&region=us-east-1\
         &access_key_id=testing&secret_access_key=testing",
        moto.port
    ));
    let runner = Runner::new(config).await.unwrap();
    assert_eq!(runner.archive_location(), Some("s3://sandbar-archives/runner-a"));
    let req = spec(&id);
    runner.create(req.clone()).await.unwrap();
    // Over one 16 MiB part: the upload is a real multipart upload.
    sh(&runner, &id, "head -c 20000000 /dev/urandom > /big.bin && md5sum /big.bin > /big.md5").await;
    stop(&runner, &id).await;
    runner.archive(&id).await.unwrap();
    assert!(t.containers().is_empty());
    let manifest = runner.archive_manifest(&id).await.unwrap().expect("archive in the bucket");
    let object = moto.url(&format!("sandbar-archives/runner-a/{id}/{}", manifest.kind.object()));
    let head = http.head(&object).send().await.unwrap();
    assert_eq!(head.status(), reqwest::StatusCode::OK);
    let length = head.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    assert_eq!(length, Some(manifest.size));

    runner.restore(req).await.unwrap();
    sh(&runner, &id, "md5sum -c /big.md5").await;
    assert_eq!(sh(&runner, &id, "echo \"$GREETING\"").await, "hello \"archived\" $world");
    assert_eq!(http.head(&object).send().await.unwrap().status(), reqwest::StatusCode::NOT_FOUND);
    runner.destroy(&id).await.unwrap();
}

#[tokio::test]
async fn without_a_store_archive_is_refused_with_the_reason() {
    let (t, runner) = TestRunner::start("archive-none").await;
    assert_eq!(runner.archive_location(), None);
    let err = runner.archive("nothing-here").await.unwrap_err();
    assert!(err.to_string().contains("--archive-store"), "{err}");
    let mut bad = t.config();
    bad.archive_store = Some("ftp://somewhere/x".into());
    let err = Runner::new(bad).await.unwrap_err();
    assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
}

/// The repository of the images the figures' peers (`docker commit`, `docker import`) make.
const PEER_REPO: &str = "sandbar-bench-peer";

/// Removes the peers' images of `id`, even when the figures fail half way.
struct PeerImages(String);

impl Drop for PeerImages {
    fn drop(&mut self) {
        let refs = [format!("{PEER_REPO}:{}-commit", self.0), format!("{PEER_REPO}:{}-import", self.0)];
        let _ = Command::new("docker").args(["rmi", "-f"]).args(&refs).output();
    }
}

/// Runs `docker ARGS`, which must succeed, and returns how long it took.
fn docker_timed(args: &[&str]) -> Duration {
    let t0 = Instant::now();
    let out = Command::new("docker").args(args).output().unwrap();
    let took = t0.elapsed();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    took
}

/// Appends one sample (`{"metric", "subject", "value"}`, what `benches/run`'s report reads) to the file
/// `SANDBAR_BENCH_SAMPLES` names, when it is set.
fn bench_sample(metric: &str, subject: &str, value: f64) {
    use std::io::Write as _;
    let Ok(path) = std::env::var("SANDBAR_BENCH_SAMPLES") else { return };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    writeln!(f, "{}", serde_json::json!({"metric": metric, "subject": subject, "value": value})).unwrap();
}

/// Archive, restore and fork of a default-image sandbox with 10 MB of changes (5 MB random, 5 MB text, a deleted
/// directory), three rounds: time and size, each beside its Docker peer on the same container in the same round
/// (`docker commit` of the running container, `docker export` of the stopped one, `docker import` of that export).
/// Not a pass/fail check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: run with --ignored --nocapture"]
async fn default_image_archive_figures() {
    let t = TestRunner::new("archive-fig");
    let store = tempfile::tempdir().unwrap();
    let id = format!("af-{}", unique());
    let _images = ImageGuard(id.clone());
    let runner = Runner::new(config(&t, store.path())).await.unwrap();
    let image = runner.ensure_default_image().await.unwrap();
    let req = create_req(&id, &image.reference);
    runner.create(req.clone()).await.unwrap();
    sh(
        &runner,
        &id,
        "echo kept > /tmp/file.txt && head -c 5000000 /dev/urandom > /tmp/random.bin \
         && seq 1 740000 > /tmp/text.txt && sudo rm -rf /usr/share/doc && du -sh /tmp",
    )
    .await;
    let _peer_images = PeerImages(id.clone());
    let container = format!("sandbar-{id}");
    let export = store.path().join("export.tar");
    for round in 1..=3 {
        let fork_id = format!("{id}-f{round}");
        let mut fork = create_req(&fork_id, &fork_image(&fork_id));
        fork.entrypoint = req.entrypoint.clone();
        let t0 = Instant::now();
        runner.fork(ForkSandbox { source_sandbox_id: id.clone(), fork }).await.unwrap();
        let forked = t0.elapsed();
        assert_eq!(sh(&runner, &fork_id, "cat /tmp/file.txt").await, "kept");
        runner.destroy(&fork_id).await.unwrap();
        // The peer of a fork: `docker commit` of the same running container.
        let commit = docker_timed(&["commit", &container, &format!("{PEER_REPO}:{id}-commit")]);
        stop(&runner, &id).await;
        // The peer of an archive: `docker export` of the same stopped container, before the archive removes it.
        let exported = docker_timed(&["export", "-o", &export.display().to_string(), &container]);
        let t0 = Instant::now();
        runner.archive(&id).await.unwrap();
        let archive = t0.elapsed();
        let size = runner.archive_manifest(&id).await.unwrap().unwrap().size;
        // The peer of a restore: `docker import` of that export.
        let imported = docker_timed(&["import", &export.display().to_string(), &format!("{PEER_REPO}:{id}-import")]);
        let t0 = Instant::now();
        runner.restore(req.clone()).await.unwrap();
        let restore = t0.elapsed();
        assert_eq!(sh(&runner, &id, "cat /tmp/file.txt").await, "kept");
        println!(
            "round {round}: image {} ({} MiB), fork of the running sandbox to daemon ready {:.2} s (docker commit \
             {:.2} s), archive {:.2} s (docker export {:.2} s), archive size {:.1} MiB, restore to daemon ready \
             {:.2} s (docker import {:.2} s)",
            image.reference,
            image.size >> 20,
            forked.as_secs_f64(),
            commit.as_secs_f64(),
            archive.as_secs_f64(),
            exported.as_secs_f64(),
            size as f64 / (1 << 20) as f64,
            restore.as_secs_f64(),
            imported.as_secs_f64(),
        );
        for (metric, subject, took) in [
            ("fork_s", "runner", forked),
            ("fork_s", "docker-commit", commit),
            ("archive_s", "runner", archive),
            ("archive_s", "docker-export", exported),
            ("restore_s", "runner", restore),
            ("restore_s", "docker-import", imported),
        ] {
            bench_sample(metric, subject, took.as_secs_f64());
        }
    }
    runner.destroy(&id).await.unwrap();
}
