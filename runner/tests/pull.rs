//! Pulls from real registries (Debian's `docker-registry`, Docker's own distribution server) on loopback: an open
//! one and one behind htpasswd basic auth. An image built here is pushed, removed locally and pulled back; a
//! private pull without credentials, with wrong ones, of an unknown tag, from a closed port and from a registry
//! that never answers each fail with their own reason and leave no image; create and build jobs pull first.
#![cfg(test)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sandbar_proto::runner::{BuildSnapshot, Job, JobErrorCode, JobKind, JobOutcome, RegistryAuth, SandboxState};
use sandbar_runner::error::PullError;

/// A `docker-registry` serving on a free loopback port until dropped.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `auth`: `(user, password)` for htpasswd basic auth; `None` for an open registry.
    fn start(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
             enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd");
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: sandbar-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's docker-registry package; scripts/setup installs it)");
        let r = Self { child, port, _dir: dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {port}");
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes local `image` as `name` (`host/name`), logging in first when `auth` is given (in a throwaway
    /// Docker CLI config, so the host's own logins are untouched); removes the local tag again.
    fn push(&self, image: &str, name: &str, auth: Option<(&str, &str)>) -> String {
        let target = format!("{}/{name}", self.host());
        run(Command::new("docker").args(["tag", image, &target]));
        let cli = tempfile::tempdir().unwrap();
        let docker = |args: &[&str]| {
            let mut c = Command::new("docker");
            c.arg("--config").arg(cli.path()).args(args);
            c
        };
        if let Some((user, password)) = auth {
            run(docker(&["login", "-u", user, "--password-stdin", &self.host()]).stdin(piped(password)));
        }
        run(&mut docker(&["push", &target]));
        run(Command::new("docker").args(["rmi", &target]));
        target
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stdin that holds `text` (for `--password-stdin`).
fn piped(text: &str) -> Stdio {
    let path = std::env::temp_dir().join(format!("sandbar-pw-{}", unique()));
    std::fs::write(&path, text).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    Stdio::from(f)
}

fn auth(server: &str, user: &str, password: &str) -> Vec<RegistryAuth> {
    vec![RegistryAuth { server: server.into(), username: user.into(), password: password.into() }]
}

async fn pull(runner: &sandbar_runner::Runner, image: &str, auth: &[RegistryAuth]) -> Result<Vec<String>, PullError> {
    let mut lines = Vec::new();
    let mut log = |l: &str| lines.push(l.to_owned());
    runner.pull_image(image, auth, &mut log).await.map(|_| lines)
}

#[tokio::test]
async fn pulls_from_open_and_private_registries_with_clear_failures() {
    let open = Registry::start(None);
    let private = Registry::start(Some(("team", "s3cret")));
    let app = open.push(&busybox_image(), "team/app:1", None);
    let secret = private.push(&busybox_image(), "team/secret:1", Some(("team", "s3cret")));
    let _images = Images(vec![app.clone(), secret.clone()]);
    let (_t, runner) = TestRunner::start("pull").await;

    // Open: pulled, with progress in the log; the image is then on the host.
    let lines = pull(&runner, &app, &[]).await.expect("open pull");
    assert!(lines[0].starts_with(&format!("Pulling {app} from {}", open.host())), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("Downloaded newer image") || l.contains("Pull complete")), "{lines:?}");
    assert!(image_exists(&app));

    // Private: refused without credentials and with wrong ones, nothing left behind; pulled with the right ones.
    for creds in [vec![], auth(&private.host(), "team", "wrong"), auth(&open.host(), "team", "s3cret")] {
        let e = pull(&runner, &secret, &creds).await.expect_err("private pull without the right credentials");
        assert!(matches!(e, PullError::Unauthorized { .. }), "{e:?}");
        assert!(e.to_string().contains("/docker-registry"), "{e}");
        assert!(!image_exists(&secret));
    }
    pull(&runner, &secret, &auth(&format!("https://{}/", private.host()), "team", "s3cret")).await.expect("pull");
    assert!(image_exists(&secret));

    // Unknown tag, closed port, and a registry that accepts connections and never answers.
    let missing = format!("{}/team/app:nope", open.host());
    let e = pull(&runner, &missing, &[]).await.expect_err("unknown tag");
    assert!(matches!(e, PullError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("was not found"), "{e}");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = pull(&runner, &format!("127.0.0.1:{closed}/team/app:1"), &[]).await.expect_err("closed port");
    assert!(matches!(e, PullError::Unreachable { .. }), "{e:?}");
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_image = format!("{}/team/app:1", silent.local_addr().unwrap());
    let mut config = _t.config();
    config.pull_stall_timeout = Duration::from_secs(3);
    let quick = sandbar_runner::Runner::new(config).await.unwrap();
    let started = std::time::Instant::now();
    let e = pull(&quick, &silent_image, &[]).await.expect_err("silent registry");
    assert!(matches!(e, PullError::Stalled { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(!image_exists(&silent_image));
    drop(silent);
}

#[tokio::test]
async fn create_and_build_jobs_pull_first() {
    let open = Registry::start(None);
    let app = open.push(&busybox_image(), "team/base:1", None);
    let built = format!("sandbar-build:pull-{}", unique());
    let _images = Images(vec![app.clone(), built.clone()]);
    let (_t, runner) = TestRunner::start("pull-jobs").await;

    // A create job of a registry image that is not on the host: pulled, then started.
    assert!(!image_exists(&app));
    let id = format!("pulled-{}", unique());
    let mut req = create_req(&id, &app);
    req.pull = true;
    let job = Job { id: "j1".into(), kind: JobKind::CreateSandbox(req), traceparent: None };
    let result = sandbar_runner::jobs::run(&runner, None, job).await;
    let JobOutcome::Succeeded { sandbox: Some(info), .. } = result.outcome else { panic!("{result:?}") };
    assert_eq!(info.state, SandboxState::Started);
    let out = runner.exec(&id, &exec_req("echo from-the-registry")).await.unwrap();
    assert_eq!(out.result, "from-the-registry\n");

    // A build whose FROM is a registry image that is not on the host (removed again): pulled, then built.
    runner.destroy(&id).await.unwrap();
    run(Command::new("docker").args(["rmi", &app]));
    let build = BuildSnapshot {
        build_id: "b1".into(),
        image: built.clone(),
        dockerfile: format!("FROM {app}\nRUN echo built > /built\n"),
        pull: vec![app.clone()],
        network: None,
    };
    let result = sandbar_runner::jobs::run(
        &runner,
        None,
        Job { id: "j2".into(), kind: JobKind::BuildSnapshot(build), traceparent: None },
    )
    .await;
    assert!(matches!(result.outcome, JobOutcome::Succeeded { snapshot: Some(_), .. }), "{result:?}");
    assert!(image_exists(&built));

    // A create of an image the registry does not have fails with ImageNotFound and the registry's reason.
    let mut req = create_req(&format!("missing-{}", unique()), &format!("{}/team/none:1", open.host()));
    req.pull = true;
    let result = sandbar_runner::jobs::run(
        &runner,
        None,
        Job { id: "j3".into(), kind: JobKind::CreateSandbox(req), traceparent: None },
    )
    .await;
    let JobOutcome::Failed { code, message } = result.outcome else { panic!("{result:?}") };
    assert_eq!(code, JobErrorCode::ImageNotFound, "{message}");
    assert!(message.contains("team/none:1"), "{message}");
}
