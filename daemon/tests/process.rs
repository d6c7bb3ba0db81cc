//! `/process/execute`, `/process/code-run`, the token check and the info endpoints, against the real binary.

use sandbar_testkit::daemon::TestDaemon;
use serde_json::json;

#[tokio::test]
async fn version_is_open_and_everything_else_needs_the_token() {
    let d = TestDaemon::start();
    let anon = reqwest::Client::new();
    let r = anon.get(d.url("/version")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["version"].is_string());

    // The token itself, in the header that once carried it, opens nothing; nor does a credential signed with
    // another key.
    let forged = sandbar_support::daemon_auth::sign("wrong", "POST", "/process/execute");
    for (header, value, why) in [
        (None, String::new(), "missing"),
        (Some("x-sandbar-daemon-token"), d.token.clone(), "the static token"),
        (Some("x-sandbar-daemon-auth"), d.token.clone(), "the token as a credential"),
        (Some("x-sandbar-daemon-auth"), forged, "signed with another key"),
    ] {
        let mut req = anon.post(d.url("/process/execute")).json(&json!({"command": "echo hi"}));
        if let Some(h) = header {
            req = req.header(h, value);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{why}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["statusCode"], 401);
        assert!(body["message"].as_str().unwrap().contains("daemon credential"), "{why}: {body}");
    }
}

#[tokio::test]
async fn execute_runs_through_the_shell_with_real_exit_codes() {
    let d = TestDaemon::start();
    assert_eq!(d.exec("echo hi").await, (0, "hi\n".into()));
    let (code, out) = d.exec("X=5; echo $X | tr 5 6 && echo err >&2; exit 3").await;
    assert_eq!(code, 3);
    assert!(out.contains("6\n") && out.contains("err\n"), "{out}");
    let (code, out) = d.exec("definitely-not-a-command-xyz").await;
    assert_eq!(code, 127, "{out}");

    let (s, b) =
        d.post("/process/execute", json!({"command": "pwd; echo $FOO", "cwd": "/tmp", "envs": {"FOO": "bar"}})).await;
    assert_eq!(s, 200);
    assert_eq!(b["result"], "/tmp\nbar\n");
    assert_eq!(b["exitCode"], 0);

    // Default cwd is the work dir; the daemon token is not passed on to children, and it is not in the daemon's
    // own /proc/PID/environ either (the daemon re-executes itself without it).
    let (_, out) = d.exec("pwd; echo token=${SANDBAR_DAEMON_TOKEN:-none}").await;
    assert_eq!(out, format!("{}\ntoken=none\n", d.work.display()));
    let environ = std::fs::read(format!("/proc/{}/environ", d.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(&d.token), "token visible in the daemon's environ");
    assert!(String::from_utf8_lossy(&environ).contains("SANDBAR_SANDBOX_ID=sbx-test"), "environ is readable");
}

#[tokio::test]
async fn execute_timeout_answers_408_and_kills_the_process_group() {
    let d = TestDaemon::start();
    let marker = format!("sandbar-timeout-{}", std::process::id());
    let (s, b) = d
        .post("/process/execute", json!({"command": format!("sleep 30 & sleep 31; echo {marker}"), "timeout": 1}))
        .await;
    assert_eq!(s, 408, "{b}");
    assert_eq!(b["code"], "PROCESS_EXECUTION_TIMEOUT");
    assert_eq!(b["source"], "DAYTONA_DAEMON");
    // Neither sleep survives: the whole group was killed.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ps = std::process::Command::new("ps").args(["-eo", "ppid,pgid,args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let daemon_pid = d.pid().to_string();
    let left: Vec<_> = ps
        .lines()
        .filter(|l| l.contains("sleep 3") && l.split_whitespace().next() == Some(daemon_pid.as_str()))
        .collect();
    assert!(left.is_empty(), "children left: {left:?}");
}

/// Found writing the fuzz targets: `Instant::now() + u64::MAX seconds` panicked inside the handler, and the
/// client saw a dropped connection. A timeout past what the clock can hold is no timeout.
#[tokio::test]
async fn execute_with_a_timeout_past_the_clock_runs_without_one() {
    let d = TestDaemon::start();
    for timeout in [u64::MAX, u64::MAX / 1000, 1 << 62] {
        let (s, b) = d.post("/process/execute", json!({"command": "echo hi", "timeout": timeout})).await;
        assert_eq!(s, 200, "{timeout}: {b}");
        assert_eq!(b["result"], "hi\n", "{timeout}: {b}");
    }
}

#[tokio::test]
async fn execute_does_not_wait_for_background_jobs_holding_the_pipe() {
    let d = TestDaemon::start();
    let t = std::time::Instant::now();
    let (code, out) = d.exec("sleep 20 & echo started").await;
    assert_eq!((code, out.as_str()), (0, "started\n"));
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let d = TestDaemon::start();
    let r = d.post_raw("/process/execute", "application/json", "{not json").await;
    assert_eq!(r.status(), 400);
    let b: serde_json::Value = r.json().await.unwrap();
    assert!(b["message"].is_string());
    let (s, _) = d.post("/process/execute", json!({"cwd": "/"})).await;
    assert_eq!(s, 400, "missing field");
    let (s, b) = d.post("/process/execute", json!({"command": "true", "cwd": "/does/not/exist"})).await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = d.get("/no/such/route").await;
    assert_eq!(s, 404);
    assert!(b["message"].as_str().unwrap().contains("no route"));
    // An oversized header is refused, not hung.
    let r = d.client.get(d.url("/version")).header("x-big", "a".repeat(200_000)).send().await.unwrap();
    assert_eq!(r.status(), 431);
}

#[tokio::test]
async fn code_run_python_and_clear_error_for_missing_runtime() {
    let d = TestDaemon::start();
    let (s, b) = d
        .post(
            "/process/code-run",
            json!({"code": "import sys\nprint('py', sys.argv[1:])\nsys.exit(4)", "language": "python", "argv": ["a", "b"]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["exitCode"], 4);
    assert_eq!(b["result"], "py ['a', 'b']\n");
    assert_eq!(b["artifacts"]["charts"], json!([]));

    let (s, b) = d.post("/process/code-run", json!({"code": "1", "language": "cobol"})).await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("cobol"));

    // With an empty PATH no runtime is found: a clear 400 naming what is missing.
    let (s, _) = d.post("/env", json!({"set": {"PATH": "/nonexistent"}})).await;
    assert_eq!(s, 200);
    let (s, b) = d.post("/process/code-run", json!({"code": "1", "language": "javascript"})).await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("node"), "{b}");
}

#[tokio::test]
async fn info_env_and_init() {
    let d = TestDaemon::start();
    let (s, b) = d.get("/user-home-dir").await;
    assert_eq!((s, b["dir"].as_str().unwrap()), (200, d.home.to_str().unwrap()));
    let (s, b) = d.get("/work-dir").await;
    assert_eq!((s, b["dir"].as_str().unwrap()), (200, d.work.to_str().unwrap()));

    let (s, b) = d.post("/env", json!({"set": {"SANDBAR_T1": "one"}, "unset": ["HOME"]})).await;
    assert_eq!(s, 200);
    assert_eq!(b["SANDBAR_T1"], "one");
    assert_eq!(d.exec("echo $SANDBAR_T1").await.1, "one\n");
    let (s, _) = d.post("/env", json!({"set": {"A=B": "x"}})).await;
    assert_eq!(s, 400);

    let (s, b) = d.post("/init", json!({"sandboxId": "sbx-42", "env": {"SANDBAR_T2": "two"}})).await;
    assert_eq!((s, b["sandboxId"].as_str().unwrap()), (200, "sbx-42"));
    assert_eq!(d.exec("echo $SANDBAR_T2").await.1, "two\n");
    let (s, _) = d.post("/init", json!({"sandboxId": ""})).await;
    assert_eq!(s, 400);
}
