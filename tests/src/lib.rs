//! End-to-end test helpers: the static daemon and the test image the scripts build, and a guard that removes a
//! test's containers even when the test panics (printing their logs first).

use std::path::PathBuf;
use std::process::Command;

/// Label on every container a test starts, so a crashed run's leftovers can be found and removed.
pub const TEST_LABEL: &str = "sandbar.test=1";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script_output(script: &str) -> anyhow::Result<String> {
    let out = Command::new(repo_root().join("scripts").join(script)).output()?;
    anyhow::ensure!(out.status.success(), "scripts/{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The static daemon: `SANDBAR_STATIC_DAEMON` (set by scripts/test), else built by scripts/build-daemon.
pub fn static_daemon() -> anyhow::Result<PathBuf> {
    match std::env::var_os("SANDBAR_STATIC_DAEMON") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(PathBuf::from(script_output("build-daemon")?)),
    }
}

/// The busybox test image: `SANDBAR_TEST_IMAGE` (set by scripts/test), else built by scripts/build-test-image.
pub fn test_image() -> anyhow::Result<String> {
    match std::env::var("SANDBAR_TEST_IMAGE") {
        Ok(t) => Ok(t),
        Err(_) => script_output("build-test-image"),
    }
}

/// Runs `docker args...` and returns its stdout; fails with its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output()?;
    anyhow::ensure!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A container removed (with its logs printed if the test failed) when dropped.
#[derive(Debug)]
pub struct Container {
    pub id: String,
}

impl Container {
    /// `docker run -d --label sandbar.test=1 <args>`.
    pub fn run(args: &[&str]) -> anyhow::Result<Self> {
        let mut all = vec!["run", "-d", "--label", TEST_LABEL];
        all.extend_from_slice(args);
        Ok(Self { id: docker(&all)? })
    }

    pub fn ip(&self) -> anyhow::Result<String> {
        docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &self.id])
    }

    pub fn logs(&self) -> String {
        let out = Command::new("docker").args(["logs", &self.id]).output();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- logs of container {} ----\n{}", self.id, self.logs());
        }
        let _ = Command::new("docker").args(["rm", "-f", &self.id]).output();
    }
}

/// Removes containers that earlier, crashed test runs left behind.
pub fn remove_stale_containers() {
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &format!("label={TEST_LABEL}")]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
}
