//! `--trace-spans`: the daemon keeps its spans (its start and the entrypoint's spawn under `SANDBAR_TRACEPARENT`,
//! and a span per request that carries a `traceparent`) for `POST /trace/spans`, which only the daemon credential
//! opens, hands them over once as OTLP protobuf and keeps the variables out of its children's environment.

use sandbar_testkit::daemon::TestDaemon;
use serde_json::json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const JOB_SPAN: &str = "00f067aa0ba902b7";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).filter_map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn spans_wait_for_the_runner_and_only_it_may_take_them() {
    let traceparent = format!("00-{TRACE}-{JOB_SPAN}-01");
    let env =
        [("SANDBAR_TRACE_SPANS", "1"), ("SANDBAR_TRACEPARENT", traceparent.as_str()), ("SANDBAR_ENTRYPOINT_GATE", "1")];
    let d = TestDaemon::start_with(&env, &["sleep", "60"]);
    let anon = reqwest::Client::new();
    let forged = sandbar_support::daemon_auth::sign("wrong", "POST", "/trace/spans");
    for auth in [None, Some(forged)] {
        let mut req = anon.post(d.url("/trace/spans"));
        if let Some(a) = auth {
            req = req.header("x-sandbar-daemon-auth", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("daemon credential"), "{body}");
    }

    // A request in the trace (as the runner's or the proxy's would be), then the runner's release.
    let exec_parent = format!("00-{TRACE}-1111111111111111-01");
    let r = d
        .client
        .post(d.url("/process/execute"))
        .header("traceparent", &exec_parent)
        .json(&json!({"command": "env"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env_out: serde_json::Value = r.json().await.unwrap();
    let env_out = env_out["result"].as_str().unwrap();
    assert!(!env_out.contains("SANDBAR_TRACE"), "children must not inherit the trace settings:\n{env_out}");
    let status = std::process::Command::new("kill").args(["-USR2", &d.pid().to_string()]).status().unwrap();
    assert!(status.success());

    let r = d.client.post(d.url("/trace/spans")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", d.log());
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let body = r.bytes().await.unwrap();
    for needle in [
        b"sandbar-daemon".as_slice(),
        b"daemon start",
        b"entrypoint",
        b"POST /process/execute",
        b"sleep",
        &unhex(TRACE),
        &unhex(JOB_SPAN),
        &unhex("1111111111111111"),
    ] {
        assert!(contains(&body, needle), "{:?} missing from the spans", String::from_utf8_lossy(needle));
    }
    // Handed over once.
    let r = d.client.post(d.url("/trace/spans")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 204);
}
