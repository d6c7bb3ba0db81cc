//! The `sandbar` binary as a user runs it, against an API stand-in on loopback (a plain HTTP/1.1 responder with
//! canned answers): `--version`, completions that load in bash, the man page, exit status 125 for sandbar's own
//! failures (unreachable API, 4xx/5xx, missing sandbox), `-o json` output that parses, `ssh-config`, and a hostile
//! `sshCommand` that never reaches `ssh`. The same against a real stack: tests/python/stack/test_cli.py.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

const SANDBAR: &str = env!("CARGO_BIN_EXE_sandbar");

/// One canned answer: status and JSON body.
type Reply = (u16, Value);

/// An API stand-in: answers each request with `route(method, path)`, records `method path` lines.
struct StandIn {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

fn stand_in(listener: TcpListener, route: impl Fn(&str, &str) -> Reply + Send + 'static) -> StandIn {
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = path.strip_prefix("/api").unwrap_or(&path).to_owned();
            log.lock().unwrap().push(format!("{method} {path}"));
            let (status, value) = route(&method, &path);
            let text = value.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    StandIn { url, seen }
}

fn sandbox(id: &str, state: &str, toolbox: &str) -> Value {
    json!({"id": id, "name": id, "state": state, "cpu": 1, "memory": 1, "disk": 3, "snapshot": "img",
           "toolboxProxyUrl": toolbox})
}

/// The canned API: sandbox `sb1` exists (started), everything else is a 404 with Daytona's `{"message"}`.
/// Its toolbox (`toolboxProxyUrl`) is the same stand-in, under `/toolbox`.
fn api(ssh_command: &str) -> StandIn {
    api_access(json!({"id": "a1", "sandboxId": "sb1", "token": "tok1", "expiresAt": "2026-12-04T21:00:00.000Z",
                      "sshCommand": ssh_command}))
}

/// As [`api`], with `access` as the answer to `POST /sandbox/sb1/ssh-access`.
fn api_access(access: Value) -> StandIn {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let toolbox = format!("http://{}/toolbox", listener.local_addr().unwrap());
    stand_in(listener, move |method, path| {
        let path = path.split('?').next().unwrap_or(path);
        let sandbox = |id: &str, state: &str| sandbox(id, state, &toolbox);
        match (method, path) {
            ("GET", "/sandbox") => (200, json!({"items": [sandbox("sb1", "started")], "nextCursor": null})),
            ("POST", "/sandbox") => (200, sandbox("sb2", "creating")),
            ("GET", "/sandbox/sb1") => (200, sandbox("sb1", "started")),
            ("GET", "/toolbox/sb1/process/session/entrypoint/logs") => {
                (200, json!({"output": "o\ne\n", "stdout": "o\n", "stderr": "e\n"}))
            }
            ("GET", "/sandbox/sb1/ports/8080/preview-url") => {
                (200, json!({"sandboxId": "sb1", "url": "http://8080-sb1.localhost", "token": "pt"}))
            }
            ("POST", "/sandbox/sb1/snapshot") => (200, sandbox("sb1", "snapshotting")),
            ("POST", "/sandbox/sb1/ssh-access") => (200, access.clone()),
            ("GET", "/sandbox/broken") => (500, json!({"message": "the database is on fire"})),
            _ => (404, json!({"message": format!("Sandbox with ID or name {path} not found")})),
        }
    })
}

fn sandbar(url: &str, args: &[&str]) -> Output {
    sandbar_env(url, args, &[])
}

fn sandbar_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(SANDBAR);
    cmd.args(args)
        .env("DAYTONA_API_URL", url)
        .env("DAYTONA_API_KEY", "test-key")
        // No `sandbar up` data directory with credentials of its own.
        .env("SANDBAR_DATA_DIR", empty.path())
        .env_remove("SANDBAR_CA_CERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_and_help() {
    let o = sandbar("http://unused", &["--version"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), format!("sandbar {}", env!("CARGO_PKG_VERSION")));
    let o = sandbar("http://unused", &["--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    assert!(help.contains("Exit status:") && help.contains("125"), "{help}");
    assert!(help.contains("ssh-config") && help.contains("completions"), "{help}");
}

#[test]
fn bash_completion_loads_and_completes_a_subcommand() {
    let script = r#"
        source <("$SANDBAR" completions bash) || exit 10
        complete -p sandbar || exit 11
        COMP_WORDS=(sandbar ssh-c); COMP_CWORD=1; COMP_LINE="sandbar ssh-c"; COMP_POINT=${#COMP_LINE}
        _sandbar sandbar ssh-c sandbar
        printf 'reply:%s\n' "${COMPREPLY[@]}"
        COMP_WORDS=(sandbar list --out); COMP_CWORD=2; COMP_LINE="sandbar list --out"; COMP_POINT=${#COMP_LINE}
        _sandbar sandbar --out list
        printf 'reply:%s\n' "${COMPREPLY[@]}"
    "#;
    let o = Command::new("bash").arg("-c").arg(script).env("SANDBAR", SANDBAR).output().unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("-F _sandbar") && out.lines().any(|l| l.starts_with("complete ") && l.ends_with(" sandbar")));
    let replies: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("reply:")).collect();
    assert_eq!(replies, ["ssh-config", "--output"], "{out}");
}

#[test]
fn zsh_and_fish_scripts_and_an_unknown_shell() {
    let o = sandbar("http://unused", &["completions", "zsh"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("#compdef sandbar"), "{}", stdout(&o));
    let o = sandbar("http://unused", &["completions", "fish"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("complete -c sandbar") && stdout(&o).contains("ssh-config"));
    let o = sandbar("http://unused", &["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty() && stderr(&o).contains("invalid value 'tcsh'"), "{}", stderr(&o));
}

const COMMANDS: [&str; 17] = [
    "up",
    "create",
    "list",
    "info",
    "exec",
    "term",
    "ssh",
    "ssh-config",
    "preview",
    "stop",
    "start",
    "rm",
    "snapshot",
    "logs",
    "completions",
    "man",
    "help",
];

#[test]
fn man_page_has_every_command_and_renders() {
    let o = sandbar("http://unused", &["man"]);
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(page.contains(".TH sandbar 1"), "{page}");
    for c in COMMANDS {
        assert!(page.contains(&format!("sandbar\\-{}(1)", c.replace('-', "\\-"))), "{c} missing:\n{page}");
    }
    // man(1) renders it (groff through `man -l -`) without a warning.
    let mut man = Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    man.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let rendered = man.wait_with_output().unwrap();
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    let text = stdout(&rendered);
    assert!(text.contains("SUBCOMMANDS") && text.contains("Exit status:"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let o = sandbar("http://unused", &["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for c in COMMANDS.iter().filter(|c| **c != "help") {
        let page = std::fs::read_to_string(dir.path().join(format!("sandbar-{c}.1"))).unwrap();
        assert!(page.contains(&format!(".TH sandbar-{c} 1")), "{page}");
    }
}

#[test]
fn own_failures_exit_125() {
    // Nothing listens: a port that was free a moment ago.
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let o = sandbar(&format!("http://{free}/api"), &["list"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach the API") && o.stdout.is_empty(), "{}", stderr(&o));

    let a = api("ssh -p 2222 tok1@127.0.0.1");
    for args in [&["info", "nope"][..], &["exec", "nope", "--", "true"], &["rm", "nope"], &["logs", "nope"]] {
        let o = sandbar(&a.url, args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("not found (404)"), "{args:?}: {}", stderr(&o));
    }
    let o = sandbar(&a.url, &["info", "broken"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("the database is on fire (500)"), "{}", stderr(&o));

    // No credentials anywhere.
    let o = Command::new(SANDBAR)
        .args(["list"])
        .env_remove("DAYTONA_API_URL")
        .env_remove("DAYTONA_API_KEY")
        .env("SANDBAR_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("no API to talk to"), "{}", stderr(&o));

    // A usage error is clap's 2, and nothing was sent.
    let seen = a.seen.lock().unwrap().len();
    let o = sandbar(&a.url, &["create", "--cpu", "many"]);
    assert_eq!(o.status.code(), Some(2));
    let o = sandbar(&a.url, &["list", "-o", "yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(a.seen.lock().unwrap().len(), seen);
}

fn parse(o: &Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn json_output_parses_with_stable_fields() {
    let a = api("ssh -p 2222 tok1@127.0.0.1");
    let list = parse(&sandbar(&a.url, &["list", "-o", "json"]));
    assert_eq!(list[0]["id"], "sb1");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(parse(&sandbar(&a.url, &["list", "--json"])), list);
    assert_eq!(parse(&sandbar(&a.url, &["--output", "json", "list"])), list);
    let text = stdout(&sandbar(&a.url, &["list"]));
    assert!(text.starts_with("ID ") && text.contains("sb1"), "{text}");

    assert_eq!(parse(&sandbar(&a.url, &["info", "sb1", "-o", "json"]))["state"], "started");
    let created = parse(&sandbar(&a.url, &["create", "--no-wait", "-o", "json"]));
    assert_eq!((&created["id"], &created["state"]), (&json!("sb2"), &json!("creating")));
    assert_eq!(stdout(&sandbar(&a.url, &["create", "--no-wait"])), "sb2\n");
    let preview = parse(&sandbar(&a.url, &["preview", "sb1", "8080", "-o", "json"]));
    assert_eq!(preview, json!({"sandboxId": "sb1", "url": "http://8080-sb1.localhost", "token": "pt"}));
    let snap = parse(&sandbar(&a.url, &["snapshot", "sb1", "nightly", "-o", "json"]));
    assert_eq!(snap, json!({"name": "nightly", "sandboxId": "sb1"}));
    let logs = parse(&sandbar(&a.url, &["logs", "sb1", "-o", "json"]));
    assert_eq!(logs, json!({"stdout": "o\n", "stderr": "e\n"}));
    let text = sandbar(&a.url, &["logs", "sb1"]);
    assert_eq!((stdout(&text).as_str(), stderr(&text).as_str()), ("o\n", "e\n"));
    let cfg = parse(&sandbar(&a.url, &["ssh-config", "sb1", "-o", "json"]));
    assert_eq!(
        cfg,
        json!({"host": "sandbar-sb1", "hostName": "127.0.0.1", "port": 2222, "user": "tok1", "sandboxId": "sb1",
               "expiresAt": "2026-12-04T21:00:00.000Z"})
    );
}

#[test]
fn ssh_config_prints_a_host_block() {
    let a = api("ssh -p 2222 tok1@127.0.0.1");
    let o = sandbar(&a.url, &["ssh-config", "sb1", "--alias", "dev", "--known-hosts", "/tmp/kh", "--expires", "90"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let block = stdout(&o);
    assert!(block.contains("\nHost dev\n    HostName 127.0.0.1\n    Port 2222\n    User tok1\n"), "{block}");
    assert!(block.contains("UserKnownHostsFile \"/tmp/kh\""), "{block}");
    assert!(a.seen.lock().unwrap().contains(&"POST /sandbox/sb1/ssh-access?expiresInMinutes=90".to_owned()));
    let o = sandbar(&a.url, &["ssh-config", "sb1", "--alias", "dev\nProxyCommand sh"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(o.stdout.is_empty());
}

/// A directory with an `ssh` that records its argv, first on PATH. A shell writes the script, so no thread of this
/// test process holds it open for writing when it is run ("text file busy").
fn fake_ssh(dir: &Path) -> String {
    let body = format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}/argv'\nexit 3\n", dir.display());
    let ok = Command::new("sh")
        .arg("-c")
        .arg(r#"printf '%s' "$1" > "$2/ssh" && chmod 755 "$2/ssh""#)
        .args(["sh", body.as_str(), dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[test]
fn ssh_runs_an_argv_built_from_the_parts() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_ssh(dir.path());
    let a = api("ssh -p 2222 tok1@127.0.0.1");
    let o = sandbar_env(&a.url, &["ssh", "sb1", "--", "uname", "-a"], &[("PATH", &path)]);
    assert_eq!(o.status.code(), Some(3), "ssh's status is ours: {}", stderr(&o));
    let argv = std::fs::read_to_string(dir.path().join("argv")).unwrap();
    let argv: Vec<&str> = argv.lines().collect();
    assert_eq!(
        argv,
        ["-o", "StrictHostKeyChecking=accept-new", "-p", "2222", "-l", "tok1", "127.0.0.1", "uname", "-a"]
    );
}

#[test]
fn a_hostile_ssh_command_is_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_ssh(dir.path());
    let pwned = dir.path().join("pwned");
    for hostile in [
        "ssh -o ProxyCommand=touch${IFS}PWNED -p 2222 tok1@127.0.0.1",
        "ssh -p 2222 tok1@127.0.0.1 touch PWNED",
        "touch PWNED",
        "ssh -p 2222 tok1@127.0.0.1;touch${IFS}PWNED",
        "ssh -p 2222 tok1@$(touch${IFS}PWNED)",
    ] {
        let a = api(&hostile.replace("PWNED", pwned.to_str().unwrap()));
        for args in [&["ssh", "sb1"][..], &["ssh-config", "sb1"]] {
            let o = sandbar_env(&a.url, args, &[("PATH", &path)]);
            assert_eq!(o.status.code(), Some(125), "{hostile}: {}", stderr(&o));
            assert!(stderr(&o).contains("sshCommand"), "{}", stderr(&o));
            assert!(o.stdout.is_empty(), "{hostile}: {}", stdout(&o));
        }
        assert!(!dir.path().join("argv").exists(), "ssh ran for {hostile}");
        assert!(!pwned.exists(), "{hostile} was executed");
    }
}

#[test]
fn the_gateway_fields_are_used_and_the_command_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_ssh(dir.path());
    let pwned = dir.path().join("pwned");
    let hostile = format!("touch {}", pwned.display());
    let a = api_access(json!({"sandboxId": "sb1", "token": "tok1", "sshHost": "127.0.0.1", "sshPort": 2022,
                              "sshCommand": hostile}));
    let o = sandbar_env(&a.url, &["ssh", "sb1"], &[("PATH", &path)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let argv = std::fs::read_to_string(dir.path().join("argv")).unwrap();
    assert_eq!(argv.lines().collect::<Vec<_>>()[2..], ["-p", "2022", "-l", "tok1", "127.0.0.1"]);
    assert!(!pwned.exists());
    // A hostile field is refused as the command is.
    let a = api_access(json!({"sandboxId": "sb1", "token": "tok1", "sshHost": "-oProxyCommand=sh", "sshPort": 22}));
    std::fs::remove_file(dir.path().join("argv")).unwrap();
    let o = sandbar_env(&a.url, &["ssh", "sb1"], &[("PATH", &path)]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(!dir.path().join("argv").exists());
}
