//! Test harness: the static daemon, the busybox test image, and a guard that removes every container a test's
//! runner made, even when the test panics. Containers carry `sandbar-test.pid`; containers of test processes that
//! are gone are removed when the next test process starts.
// Under `cfg(test)` (true in every test target) so that clippy's `allow-*-in-tests` covers helpers outside
// `#[test]` functions: clippy 1.95 does not treat `tests/` as test code yet (rust-clippy#11119); test files with
// helpers of their own carry the same line. Each test binary uses part of the harness.
#![cfg(test)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sandbar_proto::runner::{CreateSandbox, Resources, SandboxState, StateChange};
use sandbar_proto::toolbox::ExecuteRequest;
use sandbar_runner::{Runner, RunnerConfig};
use tokio::sync::broadcast;

pub mod s3;

pub const TEST_PID_LABEL: &str = "sandbar-test.pid";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs one of the repository's scripts and returns the last line it printed (scripts print their result last).
fn script_output(name: &str) -> String {
    let root = workspace_root();
    let out = run(Command::new(root.join("scripts").join(name)).current_dir(&root));
    out.lines().last().unwrap_or_else(|| panic!("scripts/{name} printed nothing")).trim().to_owned()
}

/// The static daemon: `SANDBAR_STATIC_DAEMON` (set by `scripts/test`), else what `scripts/build-daemon` builds.
pub fn daemon_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("SANDBAR_STATIC_DAEMON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(script_output("build-daemon")));
        assert!(bin.exists(), "no static daemon at {}", bin.display());
        bin
    })
    .clone()
}

/// The busybox test image: `SANDBAR_TEST_IMAGE` (set by `scripts/test`), else what `scripts/build-test-image` builds
/// (cached by its tag; needs Debian's busybox-static).
pub fn busybox_image() -> String {
    static IMG: OnceLock<String> = OnceLock::new();
    IMG.get_or_init(|| std::env::var("SANDBAR_TEST_IMAGE").unwrap_or_else(|_| script_output("build-test-image")))
        .clone()
}

/// What the image itself would run (entrypoint + cmd), as `docker image inspect` tells.
pub fn image_argv(image: &str) -> Vec<String> {
    let ep = docker_inspect(image, "{{json .Config.Entrypoint}}").unwrap();
    let cmd = docker_inspect(image, "{{json .Config.Cmd}}").unwrap();
    let parse = |s: &str| serde_json::from_str::<Option<Vec<String>>>(s).unwrap().unwrap_or_default();
    parse(&ep).into_iter().chain(parse(&cmd)).collect()
}

/// A long-running command for tests that need to see the entrypoint run: it leaves a marker file.
pub fn marker_entrypoint() -> Vec<String> {
    ["sh", "-c", "echo from-entrypoint > /tmp/marker; exec sleep 1000000"].map(String::from).to_vec()
}

/// Removes containers left by test processes that no longer exist (a crash, a kill -9 of the test binary).
fn remove_stale_test_containers() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let out = run(Command::new("docker").args([
            "ps",
            "-a",
            "--filter",
            &format!("label={TEST_PID_LABEL}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{TEST_PID_LABEL}\"}}}}"),
        ]));
        let stale: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, pid)| !Path::new(&format!("/proc/{pid}")).exists())
            .map(|(id, _)| id)
            .collect();
        if !stale.is_empty() {
            run(Command::new("docker").args(["rm", "-f"]).args(&stale));
        }
    });
}

/// Owns a runner ID; dropping it removes every container labelled with that ID.
pub struct TestRunner {
    pub runner_id: String,
}

impl TestRunner {
    pub fn new(test: &str) -> Self {
        remove_stale_test_containers();
        let runner_id = format!("t-{test}-{}-{}", std::process::id(), unique());
        Self { runner_id }
    }

    /// A test runner and the runner it owns, with the test configuration.
    pub async fn start(test: &str) -> (Self, Runner) {
        let t = Self::new(test);
        let runner = t.runner().await;
        (t, runner)
    }

    pub fn config(&self) -> RunnerConfig {
        let mut c = RunnerConfig::new(daemon_binary());
        c.runner_id = self.runner_id.clone();
        c.extra_labels.insert(TEST_PID_LABEL.into(), std::process::id().to_string());
        c.daemon_ready_timeout = Duration::from_secs(20);
        c.image_script = Some(workspace_root().join("scripts/build-sandbox-image"));
        c
    }

    pub async fn runner(&self) -> Runner {
        Runner::new(self.config()).await.expect("runner starts")
    }

    /// IDs of this runner's containers, as Docker lists them.
    pub fn containers(&self) -> Vec<String> {
        run(Command::new("docker").args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=sandbar.runner={}", self.runner_id),
        ]))
        .lines()
        .map(str::to_owned)
        .collect()
    }
}

impl Drop for TestRunner {
    fn drop(&mut self) {
        // The runner's isolation chains outlive it by design (sandboxes keep running): tests remove them, before the
        // containers, so that no address Docker frees (and hands the next container) is still bound to a port here.
        if let Err(e) = sandbar_runner::firewall::purge_blocking(&self.runner_id) {
            eprintln!("cannot remove the network rules of {}: {e}", self.runner_id);
        }
        let ids = self.containers();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
        }
    }
}

/// A short unique suffix for sandbox IDs.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{}", nanos & 0xffffff, N.fetch_add(1, Ordering::Relaxed))
}

pub fn create_req(id: &str, image: &str) -> CreateSandbox {
    CreateSandbox {
        id: id.into(),
        name: None,
        organization_id: "org-test".into(),
        image: image.into(),
        pull: false,
        pull_from: None,
        user: None,
        env: Default::default(),
        labels: Default::default(),
        resources: Resources { cpu: 1, memory: 1, disk: 3 },
        entrypoint: None,
        auto: Default::default(),
        network: Default::default(),
        linked_sandbox: None,
        runtime: None,
        volumes: Vec::new(),
    }
}

/// Waits for a change of `id` to `state`; returns it. Fails after `within`.
pub async fn wait_for_state(
    rx: &mut broadcast::Receiver<StateChange>,
    id: &str,
    state: SandboxState,
    within: Duration,
) -> StateChange {
    tokio::time::timeout(within, async {
        loop {
            let c = rx.recv().await.expect("state channel open");
            if c.sandbox_id == id && c.state == state {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no change of {id} to {state} within {within:?}"))
}

/// `docker inspect -f FORMAT container`.
pub fn docker_inspect(container: &str, format: &str) -> Option<String> {
    let out = Command::new("docker").args(["inspect", "-f", format, container]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Sends SIGKILL to a container's main process (our daemon) from the host.
pub fn kill_9_daemon(container: &str) {
    let pid = docker_inspect(container, "{{.State.Pid}}").expect("container exists");
    assert_ne!(pid, "0", "container is not running");
    run(Command::new("kill").args(["-9", &pid]));
}

/// A command for the sandbox's daemon, killed after 20 s.
pub fn exec_req(cmd: &str) -> ExecuteRequest {
    ExecuteRequest { command: cmd.into(), timeout: Some(20), ..Default::default() }
}

/// Whether Docker has the image.
pub fn image_exists(image: &str) -> bool {
    docker_inspect(image, "{{.Id}}").is_some()
}

/// Removes the test's images even when it panics (after the TestRunner removed the containers using them).
pub struct Images(pub Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", name]).output();
        }
    }
}
