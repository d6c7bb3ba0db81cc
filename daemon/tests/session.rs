//! Sessions, command logs (JSON and followed over WebSocket), input, the entrypoint session, reaping and
//! draining on SIGTERM, against the real binary.
#![cfg(test)]

use std::time::Duration;

use futures_util::StreamExt;
use sandbar_testkit::daemon::TestDaemon;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn sexec(d: &TestDaemon, sid: &str, command: &str) -> serde_json::Value {
    let (s, b) = d.post(&format!("/process/session/{sid}/exec"), json!({ "command": command })).await;
    assert_eq!(s, 200, "{command}: {b}");
    b
}

async fn wait_exit(d: &TestDaemon, sid: &str, cid: &str) -> serde_json::Value {
    for _ in 0..200 {
        let (s, b) = d.get(&format!("/process/session/{sid}/command/{cid}")).await;
        assert_eq!(s, 200);
        if !b["exitCode"].is_null() {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("command {cid} did not finish");
}

/// Follows a command's logs over WebSocket and demultiplexes Daytona's markers; returns (stdout, stderr, close code).
async fn follow(d: &TestDaemon, path: &str) -> (String, String, u16) {
    let mut req = d.ws_url(path).into_client_request().unwrap();
    let auth = d.sign("GET", req.uri().path_and_query().unwrap().as_str());
    req.headers_mut().insert("x-sandbar-daemon-auth", auth.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut out, mut err, mut cur) = (Vec::new(), Vec::new(), 0u8);
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("follow timed out") {
            Some(Ok(Message::Binary(b))) => {
                let mut rest = &b[..];
                while !rest.is_empty() {
                    if rest.starts_with(&[1, 1, 1]) {
                        cur = 1;
                        rest = &rest[3..];
                    } else if rest.starts_with(&[2, 2, 2]) {
                        cur = 2;
                        rest = &rest[3..];
                    }
                    let next = (0..rest.len())
                        .find(|&i| rest[i..].starts_with(&[1, 1, 1]) || rest[i..].starts_with(&[2, 2, 2]))
                        .unwrap_or(rest.len());
                    match cur {
                        1 => out.extend_from_slice(&rest[..next]),
                        2 => err.extend_from_slice(&rest[..next]),
                        _ => {}
                    }
                    rest = &rest[next..];
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)).unwrap_or(1005),
            Some(Ok(_)) => {}
            other => panic!("unexpected end of stream: {other:?}"),
        }
    };
    (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), code)
}

#[tokio::test]
async fn a_session_keeps_shell_state_and_separates_streams() {
    let d = TestDaemon::start();
    let (s, _) = d.post("/process/session", json!({"sessionId": "s1"})).await;
    assert_eq!(s, 201);
    let b = sexec(&d, "s1", "cd /tmp && export SANDBAR_A=1; f() { echo fn-$1; }").await;
    assert_eq!(b["exitCode"], 0);
    let b = sexec(&d, "s1", "pwd; echo $SANDBAR_A; f x; echo oops >&2").await;
    assert_eq!(b["exitCode"], 0);
    assert_eq!(b["stdout"], "/tmp\n1\nfn-x\n");
    assert_eq!(b["stderr"], "oops\n");
    assert!(b["output"].as_str().unwrap().contains("oops"));
    assert!(b["cmdId"].is_string());

    let b = sexec(&d, "s1", "false").await;
    assert_eq!(b["exitCode"], 1);
    // A syntax error fails that command only.
    let b = sexec(&d, "s1", "echo \"unterminated").await;
    assert_ne!(b["exitCode"], 0);
    let b = sexec(&d, "s1", "echo still-here; pwd").await;
    assert_eq!(b["stdout"], "still-here\n/tmp\n");

    // JSON logs of an earlier command.
    let cid = b["cmdId"].as_str().unwrap();
    let r = d
        .client
        .get(d.url(&format!("/process/session/s1/command/{cid}/logs")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logs: serde_json::Value = r.json().await.unwrap();
    assert_eq!(logs, json!({"output": "still-here\n/tmp\n", "stdout": "still-here\n/tmp\n", "stderr": ""}));

    let (s, b) = d.get("/process/session/s1").await;
    assert_eq!(s, 200);
    assert_eq!(b["sessionId"], "s1");
    assert_eq!(b["commands"].as_array().unwrap().len(), 5);
    let (s, b) = d.get("/process/session").await;
    assert_eq!(s, 200);
    assert_eq!(b.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn async_commands_follow_logs_and_take_input() {
    let d = TestDaemon::start();
    d.post("/process/session", json!({"sessionId": "a"})).await;
    let (s, b) = d
        .post(
            "/process/session/a/exec",
            json!({"command": "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done", "runAsync": true}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let cid = b["cmdId"].as_str().unwrap().to_owned();
    let (s, c) = d.get(&format!("/process/session/a/command/{cid}")).await;
    assert_eq!(s, 200);
    assert!(c["exitCode"].is_null(), "still running: {c}");
    let (out, err, code) = follow(&d, &format!("/process/session/a/command/{cid}/logs?follow=true")).await;
    assert_eq!(out, "out1\nout2\nout3\n");
    assert_eq!(err, "err1\nerr2\nerr3\n");
    assert_eq!(code, 1000);
    assert_eq!(wait_exit(&d, "a", &cid).await["exitCode"], 0);
    // Following a finished command replays it and closes.
    let (out, _, code) = follow(&d, &format!("/process/session/a/command/{cid}/logs?follow=true")).await;
    assert_eq!((out.as_str(), code), ("out1\nout2\nout3\n", 1000));

    // Input goes to the running command.
    let (s, b) = d.post("/process/session/a/exec", json!({"command": "read x; echo got-$x", "runAsync": true})).await;
    assert_eq!(s, 202);
    let cid = b["cmdId"].as_str().unwrap().to_owned();
    let mut status = 0;
    for _ in 0..100 {
        let (s, _) = d.post(&format!("/process/session/a/command/{cid}/input"), json!({"data": "hello\n"})).await;
        status = s;
        if s == 204 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // 409 until the shell picks the command up
    }
    assert_eq!(status, 204);
    assert_eq!(wait_exit(&d, "a", &cid).await["exitCode"], 0);
    let (s, b) = d.post(&format!("/process/session/a/command/{cid}/input"), json!({"data": "late\n"})).await;
    assert_eq!(s, 400);
    assert_eq!(b["code"], "COMMAND_ALREADY_COMPLETED");
    let b = sexec(&d, "a", "echo next").await;
    assert_eq!(b["stdout"], "next\n", "unread input must not run as a command");
}

#[tokio::test]
async fn session_errors_and_deletion() {
    let d = TestDaemon::start();
    assert_eq!(d.post("/process/session", json!({"sessionId": "x"})).await.0, 201);
    assert_eq!(d.post("/process/session", json!({"sessionId": "x"})).await.0, 409);
    assert_eq!(d.post("/process/session", json!({"sessionId": "entrypoint"})).await.0, 409);
    assert_eq!(d.post("/process/session", json!({"sessionId": ""})).await.0, 400);
    assert_eq!(d.post("/process/session", json!({})).await.0, 400);
    assert_eq!(d.get("/process/session/nope").await.0, 404);
    assert_eq!(d.get("/process/session/x/command/nope").await.0, 404);
    assert_eq!(d.post("/process/session/nope/exec", json!({"command": "true"})).await.0, 404);

    // `exit 3` ends the shell: the command reports 3 and the session refuses more.
    let b = sexec(&d, "x", "echo bye; exit 3").await;
    assert_eq!((b["exitCode"].as_i64(), b["stdout"].as_str()), (Some(3), Some("bye\n")));
    let (s, b) = d.post("/process/session/x/exec", json!({"command": "true"})).await;
    assert_eq!(s, 410, "{b}");
    assert_eq!(b["code"], "SESSION_ENDED");

    // Deleting a session with a running command kills it.
    d.post("/process/session", json!({"sessionId": "y"})).await;
    let (s, b) =
        d.post("/process/session/y/exec", json!({"command": "sleep 300 && echo never", "runAsync": true})).await;
    assert_eq!(s, 202);
    let cid = b["cmdId"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(d.delete("/process/session/y").await.0, 204);
    assert_eq!(d.get("/process/session/y").await.0, 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = std::process::Command::new("ps").args(["-eo", "ppid,args"]).output().unwrap();
    let me = d.pid().to_string();
    let left = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains("sleep 300") && l.split_whitespace().next() == Some(me.as_str()))
        .count();
    assert_eq!(left, 0, "the deleted session's command must be gone ({cid})");
}

#[tokio::test]
async fn entrypoint_runs_in_its_session_and_gets_sigterm() {
    let mut d = TestDaemon::start_with(
        &[("SANDBAR_SHUTDOWN_GRACE", "5")],
        &[
            "sh",
            "-c",
            "trap 'echo got-term > \"$HOME/term\"; exit 0' TERM; echo entry-out; echo entry-err >&2; \
             while true; do sleep 0.1; done",
        ],
    );
    let mut logs = json!(null);
    for _ in 0..100 {
        let r = d
            .client
            .get(d.url("/process/session/entrypoint/logs"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        // The ready line means "listening"; the entrypoint session is made just after it, so a loaded machine can
        // answer 404 for a moment.
        if r.status() == 404 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(r.status(), 200);
        logs = r.json().await.unwrap();
        // stdout and stderr are separate pipes, read by separate tasks: wait for both, not for the second written.
        if logs["stdout"] == "entry-out\n" && logs["stderr"] == "entry-err\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(logs["stdout"], "entry-out\n");
    assert_eq!(logs["stderr"], "entry-err\n");
    let (s, b) = d.get("/process/session/entrypoint").await;
    assert_eq!(s, 200);
    assert_eq!(b["commands"][0]["exitCode"], serde_json::Value::Null);
    assert_eq!(d.delete("/process/session/entrypoint").await.0, 400);
    assert_eq!(d.post("/process/session/entrypoint/exec", json!({"command": "true"})).await.0, 400);

    let started = std::time::Instant::now();
    let status = d.terminate();
    assert!(status.success(), "daemon exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped within the grace period");
    assert_eq!(std::fs::read_to_string(d.home.join("term")).unwrap(), "got-term\n");
}

#[tokio::test]
async fn sigterm_stops_children_that_ignore_it_after_the_grace_period() {
    let mut d = TestDaemon::start_with(&[("SANDBAR_SHUTDOWN_GRACE", "1")], &[]);
    d.post("/process/session", json!({"sessionId": "stubborn"})).await;
    let (s, _) =
        d.post("/process/session/stubborn/exec", json!({"command": "trap '' TERM; sleep 120", "runAsync": true})).await;
    assert_eq!(s, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = d.pid();
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    let ps = std::process::Command::new("ps").args(["-eo", "ppid,args"]).output().unwrap();
    let left = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains("sleep 120") && l.split_whitespace().next() == Some(pid.to_string().as_str()))
        .count();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn orphans_are_reaped_and_exit_codes_are_not_stolen() {
    let d = TestDaemon::start();
    // The subshell exits at once; its sleeping child is re-parented to the daemon (a subreaper outside a
    // container, PID 1 inside one) and must not stay a zombie when it ends.
    for _ in 0..5 {
        assert_eq!(d.exec("(sleep 0.2 &); exit 7").await.0, 7);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ps = std::process::Command::new("ps").args(["-eo", "ppid,stat,args"]).output().unwrap();
    let me = d.pid().to_string();
    let zombies: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(me.as_str()) && f.next().is_some_and(|s| s.starts_with('Z'))
        })
        .map(str::to_owned)
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    // Many quick children in parallel: every exit code reaches its own request.
    let mut handles = Vec::new();
    for i in 0..20 {
        let client = d.client.clone();
        let url = d.url("/process/execute");
        handles.push(tokio::spawn(async move {
            let r: serde_json::Value = client
                .post(url)
                .json(&json!({"command": format!("exit {i}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["exitCode"], i);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}
