//! The official Daytona Python SDK against sandbar-api (real HTTP; a fake runner carries out the jobs), running
//! api/tests/sdk_client.py. Needs the repository's `.venv` (scripts/setup) or `SANDBAR_PYTHON`; without either it
//! skips loudly, and fails in CI.

use std::path::PathBuf;
use std::time::Duration;

use sandbar_testkit::api::{Harness, databases};
use tokio_util::sync::CancellationToken;

fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SANDBAR_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    venv.exists().then_some(venv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daytona_python_sdk_drives_the_api() {
    let Some(py) = python() else {
        assert!(std::env::var_os("CI").is_none(), "no .venv: run scripts/setup");
        eprintln!("\n!!!!! SKIPPING the Daytona SDK test: no .venv/bin/python (run scripts/setup)\n");
        return;
    };
    for db in databases().await {
        let h = Harness::start(&db).await;
        let runner = h.runner("sdk-runner");
        runner.heartbeat(8, 16, 100).await;
        // The fake runner: heartbeats and carries out every job at once.
        let stop = CancellationToken::new();
        let worker = tokio::spawn({
            let (runner, org, stop) = (runner.clone(), h.org.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    runner.heartbeat(8, 16, 100).await;
                    for job in runner.poll(1).await {
                        runner.succeed(&job, &org).await;
                    }
                }
            }
        });
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_client.py");
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&py)
                .arg(&script)
                .env("DAYTONA_API_URL", &h.base)
                .env("DAYTONA_API_KEY", &h.key)
                .env_remove("DAYTONA_TARGET")
                .output(),
        )
        .await
        .expect("the SDK script timed out")
        .expect("run python");
        stop.cancel();
        let _ = worker.await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stdout.contains("OK"), "{}: SDK script failed\n{stdout}\n{stderr}", db.label);
        h.stop().await;
    }
}
