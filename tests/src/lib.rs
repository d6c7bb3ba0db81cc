//! End-to-end test helpers: the static daemon and the test image the scripts build, a guard that removes a
//! test's containers even when the test panics (printing their logs first), and the static daemon as PID 1 of such
//! a container with a client that speaks to it. [`fuzzing`]: the Dockerfile parsers' fuzz target.

pub mod fuzzing;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

/// Removes containers that earlier, crashed test runs left behind: once per test process, before its first
/// container, so that a test starting later never removes the container of a test running beside it.
pub fn remove_stale_containers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &format!("label={TEST_LABEL}")]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
    });
}

/// The static daemon as PID 1 of a container of the test image, and a client that sends its token.
#[derive(Debug)]
pub struct DaemonContainer {
    pub container: Container,
    /// `http://<container ip>:2280`.
    pub base: String,
    /// Signs every request with the daemon token.
    pub client: sandbar_testkit::daemon::SignedClient,
}

impl DaemonContainer {
    /// Starts the container with the daemon as its entrypoint (`token`, sandbox id `sandbox_id`, the image command
    /// `cmd`) and waits until the daemon answers `GET /version`.
    pub async fn start(token: &str, sandbox_id: &str, cmd: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(&[], token, sandbox_id, cmd).await
    }

    /// [`Self::start`] with more `docker run` options (limits, say) before the image.
    pub async fn start_with(docker_args: &[&str], token: &str, sandbox_id: &str, cmd: &[&str]) -> anyhow::Result<Self> {
        remove_stale_containers();
        let daemon = static_daemon()?;
        let image = test_image()?;
        let mount = format!("{}:/usr/local/bin/sandbar-daemon:ro", daemon.display());
        let token_env = format!("SANDBAR_DAEMON_TOKEN={token}");
        let id_env = format!("SANDBAR_SANDBOX_ID={sandbox_id}");
        let mut args = docker_args.to_vec();
        args.extend_from_slice(&[
            "-v",
            &mount,
            "-e",
            &token_env,
            "-e",
            &id_env,
            "--entrypoint",
            "/usr/local/bin/sandbar-daemon",
            &image,
        ]);
        if !cmd.is_empty() {
            args.push("--");
            args.extend_from_slice(cmd);
        }
        let container = Container::run(&args)?;
        let base = format!("http://{}:2280", container.ip()?);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        let client = sandbar_testkit::daemon::SignedClient::new(http, token);
        let d = Self { container, base, client };
        // Bounded as a whole: a daemon that accepts connections but never answers fails here in 20 s, not after
        // each poll's own timeout.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last = String::from("no try finished");
        while tokio::time::Instant::now() < deadline {
            let poll = d.client.get(d.url("/version")).timeout(Duration::from_secs(2)).send();
            match tokio::time::timeout_at(deadline, poll).await {
                Ok(Ok(r)) if r.status() == 200 => return Ok(d),
                Ok(Ok(r)) => last = format!("answered {}", r.status()),
                Ok(Err(e)) => last = format!("{e:?}"),
                Err(_) => last = "no answer by the deadline".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "the daemon in container {} did not answer ({last}); logs:\n{}",
            d.container.id,
            d.container.logs()
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /process/execute`: (exit code, output).
    pub async fn exec(&self, command: &str) -> anyhow::Result<(i64, String)> {
        let req = self.client.post(self.url("/process/execute")).json(&serde_json::json!({ "command": command }));
        let r = json(req).await?;
        let code = r["exitCode"].as_i64().ok_or_else(|| anyhow::anyhow!("no exitCode in {r}"))?;
        let output = r["result"].as_str().ok_or_else(|| anyhow::anyhow!("no result in {r}"))?;
        Ok((code, output.to_owned()))
    }
}

/// Sends `req` and reads the answer as JSON.
pub async fn json(req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    Ok(req.send().await?.json().await?)
}
