//! `/git/*` against the real daemon binary and the real `git`, with bare repositories in a temp dir as remotes
//! (no network). The test's own git commands (making and inspecting the remotes) run with a fixed identity and
//! no global config, so the machine's `~/.gitconfig` changes nothing.
#![cfg(test)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sandbar_testkit::daemon::TestDaemon;
use serde_json::{Value, json};

/// Runs git for the test itself (never through the daemon) and returns its trimmed stdout; panics on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Seed Author")
        .env("GIT_AUTHOR_EMAIL", "seed@example.com")
        .env("GIT_COMMITTER_NAME", "Seed Author")
        .env("GIT_COMMITTER_EMAIL", "seed@example.com")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare `origin.git` with one commit ("seed", README.md) on `main`, plus a clone to push more from.
struct Remote {
    _tmp: tempfile::TempDir,
    bare: PathBuf,
    other: PathBuf,
    seed_hash: String,
}

impl Remote {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("origin.git");
        let other = tmp.path().join("other");
        git(tmp.path(), &["init", "--quiet", "--bare", "--initial-branch=main", bare.to_str().unwrap()]);
        git(tmp.path(), &["clone", "--quiet", bare.to_str().unwrap(), other.to_str().unwrap()]);
        std::fs::write(other.join("README.md"), "hello\n").unwrap();
        git(&other, &["add", "README.md"]);
        git(&other, &["commit", "--quiet", "-m", "seed"]);
        git(&other, &["push", "--quiet", "origin", "HEAD:main"]);
        let seed_hash = git(&other, &["rev-parse", "HEAD"]);
        Remote { _tmp: tmp, bare, other, seed_hash }
    }

    fn url(&self) -> &str {
        self.bare.to_str().unwrap()
    }

    /// Commits `content` to `file` in the other clone and pushes it; returns the new commit's hash.
    fn push_change(&self, file: &str, content: &str, message: &str) -> String {
        std::fs::write(self.other.join(file), content).unwrap();
        git(&self.other, &["add", file]);
        git(&self.other, &["commit", "--quiet", "-m", message]);
        git(&self.other, &["push", "--quiet", "origin", "HEAD:main"]);
        git(&self.other, &["rev-parse", "HEAD"])
    }

    fn remote_head(&self, branch: &str) -> String {
        git(&self.bare, &["--git-dir", self.url(), "log", "-1", "--format=%H", branch])
    }
}

/// Clones the remote through the API into `<work>/<path>`.
async fn clone(d: &TestDaemon, remote: &Remote, path: &str) {
    let (s, b) = d.post("/git/clone", json!({"url": remote.url(), "path": path})).await;
    assert_eq!(s, 200, "clone: {b}");
}

async fn status(d: &TestDaemon, path: &str) -> Value {
    let (s, b) = d.get(&format!("/git/status?path={path}")).await;
    assert_eq!(s, 200, "status: {b}");
    b
}

/// `POST /git/commit` that must succeed; its answer (`{hash}`).
async fn commit(d: &TestDaemon, body: Value) -> Value {
    let (s, b) = d.post("/git/commit", body).await;
    assert_eq!(s, 200, "commit: {b}");
    b
}

/// The `{staging, worktree}` of `name` in a status answer.
fn file_state(status: &Value, name: &str) -> Option<(String, String)> {
    status["fileStatus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| (f["staging"].as_str().unwrap().to_owned(), f["worktree"].as_str().unwrap().to_owned()))
}

fn pair(a: &str, b: &str) -> Option<(String, String)> {
    Some((a.to_owned(), b.to_owned()))
}

/// Asserts an error answer: status, Daytona's code and source, and a message.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["statusCode"], want_status, "{body}");
    if let Some(code) = want_code {
        assert_eq!(body["code"], code, "{body}");
    }
    assert_eq!(body["source"], "DAYTONA_DAEMON", "{body}");
    assert!(!body["message"].as_str().unwrap_or_default().trim().is_empty(), "{body}");
}

#[tokio::test]
async fn clone_status_add_commit_history_push_and_pull() {
    let d = TestDaemon::start();
    let remote = Remote::new();
    clone(&d, &remote, "repo").await;
    let repo = d.work.join("repo");
    assert_eq!(std::fs::read_to_string(repo.join("README.md")).unwrap(), "hello\n");

    let st = status(&d, "repo").await;
    assert_eq!(st["currentBranch"], "main");
    assert_eq!(st["fileStatus"], json!([]));
    assert_eq!(st["branchPublished"], true);
    assert_eq!(st["upstream"], "origin/main");
    assert_eq!((st["ahead"].as_u64(), st["behind"].as_u64()), (Some(0), Some(0)));
    assert_eq!(st["detached"], false);

    // Untracked, then staged; an unstaged edit shows in the worktree column. Absolute paths work too.
    std::fs::create_dir_all(repo.join("dir with space")).unwrap();
    std::fs::write(repo.join("dir with space/new file.txt"), "new\n").unwrap();
    let st = status(&d, repo.to_str().unwrap()).await;
    assert_eq!(file_state(&st, "dir with space/new file.txt"), pair("Untracked", "Untracked"), "{st}");
    let (s, b) = d.post("/git/add", json!({"path": "repo", "files": ["dir with space/new file.txt"]})).await;
    assert_eq!(s, 200, "{b}");
    std::fs::write(repo.join("README.md"), "hello again\n").unwrap();
    let st = status(&d, "repo").await;
    assert_eq!(file_state(&st, "dir with space/new file.txt"), pair("Added", "Unmodified"), "{st}");
    assert_eq!(file_state(&st, "README.md"), pair("Unmodified", "Modified"), "{st}");
    let (s, b) = d.post("/git/add", json!({"path": "repo", "files": ["."]})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(file_state(&status(&d, "repo").await, "README.md"), pair("Modified", "Unmodified"));

    let b = commit(
        &d,
        json!({"path": "repo", "message": "add a file", "author": "Ann Example", "email": "ann@example.com",
                   "allow_empty": false}),
    )
    .await;
    let hash = b["hash"].as_str().unwrap().to_owned();
    assert!(hash.len() == 40 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), hash);
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%an <%ae> / %cn <%ce>"]),
        "Ann Example <ann@example.com> / Ann Example <ann@example.com>"
    );
    let st = status(&d, "repo").await;
    assert_eq!(st["fileStatus"], json!([]));
    assert_eq!(st["ahead"], 1);

    // Nothing left to commit: refused with git's own words; allow_empty makes an empty commit.
    let (s, b) = d.post("/git/commit", json!({"path": "repo", "message": "x", "author": "A", "email": "a@x"})).await;
    assert_error(s, &b, 400, None);
    assert!(b["message"].as_str().unwrap().contains("nothing to commit"), "{b}");

    let (s, h) = d.get("/git/history?path=repo").await;
    assert_eq!(s, 200, "{h}");
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["hash"], hash.as_str());
    assert_eq!(h[0]["message"], "add a file");
    assert_eq!(h[0]["author"], "Ann Example");
    assert_eq!(h[0]["email"], "ann@example.com");
    let ts = h[0]["timestamp"].as_str().unwrap();
    assert!(ts.len() >= 20 && ts.get(10..11) == Some("T"), "RFC 3339: {ts}");
    assert_eq!(h[1]["hash"], remote.seed_hash.as_str());
    assert_eq!(h[1]["message"], "seed");
    assert_eq!(h[1]["author"], "Seed Author");

    let (s, b) = d.post("/git/push", json!({"path": "repo"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(remote.remote_head("main"), hash);
    assert_eq!(status(&d, "repo").await["ahead"], 0);

    // A commit pushed from elsewhere arrives with pull.
    git(&remote.other, &["pull", "--quiet", "--ff-only", "origin", "main"]);
    let theirs = remote.push_change("theirs.txt", "theirs\n", "their change");
    let (s, b) = d.post("/git/pull", json!({"path": "repo"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(std::fs::read_to_string(repo.join("theirs.txt")).unwrap(), "theirs\n");
    let (_, h) = d.get("/git/history?path=repo").await;
    assert_eq!(h[0]["hash"], theirs.as_str());
    assert_eq!(h.as_array().unwrap().len(), 3);

    // Explicit remote and branch.
    let again = remote.push_change("theirs.txt", "again\n", "again");
    let (s, b) = d.post("/git/pull", json!({"path": "repo", "remote": "origin", "branch": "main"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]), again);
}

#[tokio::test]
async fn clone_options_branch_commit_and_depth() {
    let d = TestDaemon::start();
    let remote = Remote::new();
    let second = remote.push_change("b.txt", "b\n", "second");
    git(&remote.other, &["push", "--quiet", "origin", "HEAD:refs/heads/side"]);

    // commit_id: detached at that commit.
    let (s, b) =
        d.post("/git/clone", json!({"url": remote.url(), "path": "at-seed", "commit_id": remote.seed_hash})).await;
    assert_eq!(s, 200, "{b}");
    let st = status(&d, "at-seed").await;
    assert_eq!(st["detached"], true, "{st}");
    assert_eq!(st["currentBranch"], "HEAD");
    assert_eq!(git(&d.work.join("at-seed"), &["rev-parse", "HEAD"]), remote.seed_hash);

    // branch, and depth over file:// (a plain path ignores depth).
    let url = format!("file://{}", remote.url());
    let (s, b) = d
        .post(
            "/git/clone",
            json!({"url": url, "path": "shallow", "branch": "side", "depth": 1,
                                   "username": null, "password": null, "insecure_skip_tls": false}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, h) = d.get("/git/history?path=shallow").await;
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h[0]["hash"], second.as_str());
    assert_eq!(status(&d, "shallow").await["currentBranch"], "side");

    // Cloning over a non-empty directory is a conflict.
    let (s, b) = d.post("/git/clone", json!({"url": remote.url(), "path": "shallow"})).await;
    assert_error(s, &b, 409, None);

    // A new repository has an empty history and its unborn branch as current.
    let (s, b) = d.post("/git/init", json!({"path": "fresh", "bare": false, "initial_branch": "trunk"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, h) = d.get("/git/history?path=fresh").await;
    assert_eq!((s, h), (200, json!([])));
    assert_eq!(status(&d, "fresh").await["currentBranch"], "trunk");
}

#[tokio::test]
async fn branches_create_list_checkout_delete() {
    let d = TestDaemon::start();
    let remote = Remote::new();
    clone(&d, &remote, "repo").await;
    let repo = d.work.join("repo");

    let (s, b) = d.get("/git/branches?path=repo").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"branches": ["main"], "current": "main"}));

    // Creating a branch also switches to it, as Daytona's daemon does.
    let (s, b) = d.post("/git/branches", json!({"path": "repo", "name": "feature/one"})).await;
    assert_eq!(s, 201, "{b}");
    let (_, b) = d.get("/git/branches?path=repo").await;
    assert_eq!(b, json!({"branches": ["feature/one", "main"], "current": "feature/one"}));

    let (s, b) = d.post("/git/branches", json!({"path": "repo", "name": "main"})).await;
    assert_error(s, &b, 409, Some("GIT_BRANCH_EXISTS"));

    let (s, b) = d.post("/git/checkout", json!({"path": "repo", "branch": "main"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(status(&d, "repo").await["currentBranch"], "main");

    let (s, b) = d.post("/git/checkout", json!({"path": "repo", "branch": "no-such-branch"})).await;
    assert_error(s, &b, 404, Some("GIT_BRANCH_NOT_FOUND"));

    // A file name is never taken for a checkout of that file (which would throw local edits away).
    std::fs::write(repo.join("README.md"), "local edit\n").unwrap();
    let (s, b) = d.post("/git/checkout", json!({"path": "repo", "branch": "README.md"})).await;
    assert_error(s, &b, 404, Some("GIT_BRANCH_NOT_FOUND"));
    assert_eq!(std::fs::read_to_string(repo.join("README.md")).unwrap(), "local edit\n");

    // A commit: detached HEAD, no current branch.
    let (s, b) = d.post("/git/checkout", json!({"path": "repo", "branch": remote.seed_hash})).await;
    assert_eq!(s, 200, "{b}");
    let st = status(&d, "repo").await;
    assert_eq!((st["detached"].clone(), st["currentBranch"].clone()), (json!(true), json!("HEAD")));
    let (_, b) = d.get("/git/branches?path=repo").await;
    assert!(b.get("current").is_none(), "{b}");
    d.post("/git/checkout", json!({"path": "repo", "branch": "main"})).await;

    // Delete takes a JSON body (the SDK's form) or a query.
    let r = d
        .client
        .delete(d.url("/git/branches"))
        .json(&json!({"path": "repo", "name": "feature/one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, b) = d.get("/git/branches?path=repo").await;
    assert_eq!(b["branches"], json!(["main"]));
    let (s, b) = d.post("/git/branches", json!({"path": "repo", "name": "tmp"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = d.delete("/git/branches?path=repo&name=tmp").await;
    assert_eq!(s, 409, "the current branch cannot be deleted: {b}");
    d.post("/git/checkout", json!({"path": "repo", "branch": "main"})).await;
    let (s, _) = d.delete("/git/branches?path=repo&name=tmp").await;
    assert_eq!(s, 204);
    let (s, b) = d.delete("/git/branches?path=repo&name=tmp").await;
    assert_error(s, &b, 404, Some("GIT_BRANCH_NOT_FOUND"));

    // A new branch pushed with set_upstream gets its upstream.
    let (s, b) = d.post("/git/branches", json!({"path": "repo", "name": "topic"})).await;
    assert_eq!(s, 201, "{b}");
    commit(&d, json!({"path": "repo", "message": "on topic", "author": "T", "email": "t@x", "allow_empty": true}))
        .await;
    let (s, b) = d.post("/git/push", json!({"path": "repo", "set_upstream": true})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(remote.remote_head("topic"), git(&repo, &["rev-parse", "HEAD"]));
    let st = status(&d, "repo").await;
    assert_eq!(st["upstream"], "origin/topic", "{st}");
    assert_eq!(st["branchPublished"], true);

    // A remote-only branch can be checked out by name.
    git(&remote.other, &["push", "--quiet", "origin", "HEAD:refs/heads/remote-only"]);
    git(&repo, &["fetch", "--quiet"]);
    let (s, b) = d.post("/git/checkout", json!({"path": "repo", "branch": "remote-only"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(status(&d, "repo").await["upstream"], "origin/remote-only");
}

#[tokio::test]
async fn failures_answer_4xx_with_daytona_codes() {
    let d =
        TestDaemon::start_with(&[("GIT_COMMITTER_NAME", "Daemon"), ("GIT_COMMITTER_EMAIL", "daemon@example.com")], &[]);
    let remote = Remote::new();

    let missing = remote.bare.with_file_name("no-such-repo.git");
    let (s, b) = d.post("/git/clone", json!({"url": missing.to_str().unwrap(), "path": "x"})).await;
    assert_error(s, &b, 404, Some("GIT_REPO_NOT_FOUND"));
    assert!(!d.work.join("x").exists());
    let (s, b) = d.post("/git/clone", json!({"url": remote.url(), "path": "x", "branch": "nope"})).await;
    assert_error(s, &b, 404, Some("GIT_BRANCH_NOT_FOUND"));

    // Not a repository, not there, not a directory.
    std::fs::create_dir(d.work.join("plain")).unwrap();
    std::fs::write(d.work.join("file"), "x").unwrap();
    for path in ["plain", "missing", "file"] {
        let (s, b) = d.get(&format!("/git/status?path={path}")).await;
        assert_error(s, &b, 404, Some("GIT_REPO_NOT_FOUND"));
        let (s, b) = d.get(&format!("/git/history?path={path}")).await;
        assert_error(s, &b, 404, Some("GIT_REPO_NOT_FOUND"));
        let (s, b) = d.post("/git/add", json!({"path": path, "files": ["."]})).await;
        assert_error(s, &b, 404, Some("GIT_REPO_NOT_FOUND"));
    }

    // Malformed requests.
    let (s, b) = d.get("/git/status").await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.get("/git/branches?path=").await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.post("/git/clone", json!({"path": "y"})).await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.post("/git/clone", json!({"url": "--upload-pack=touch /tmp/pwned", "path": "y"})).await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.post("/git/add", json!({"path": "plain"})).await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.post("/git/commit", json!({"path": "plain", "message": 5})).await;
    assert_error(s, &b, 400, None);
    let r = d.post_raw("/git/commit", "application/json", "{").await;
    assert_eq!(r.status(), 400);
    let r = d
        .client
        .delete(d.url("/git/branches"))
        .header("content-type", "application/json")
        .body("[")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    clone(&d, &remote, "a").await;
    let a = d.work.join("a");
    let (s, b) = d.post("/git/checkout", json!({"path": "a", "branch": "--orphan=x"})).await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.post("/git/branches", json!({"path": "a", "name": "bad name"})).await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.post("/git/add", json!({"path": "a", "files": ["no-such-file"]})).await;
    assert_error(s, &b, 400, None);
    let (s, b) = d.post("/git/push", json!({"path": "a", "remote": "nowhere"})).await;
    assert_error(s, &b, 404, Some("GIT_REPO_NOT_FOUND"));
    let (s, b) = d.post("/git/push", json!({"path": "a", "branch": "no-such-branch"})).await;
    assert_error(s, &b, 404, Some("GIT_BRANCH_NOT_FOUND"));

    // Someone else pushed first: the push is rejected.
    remote.push_change("README.md", "theirs\n", "theirs");
    std::fs::write(a.join("mine.txt"), "mine\n").unwrap();
    d.post("/git/add", json!({"path": "a", "files": ["mine.txt"]})).await;
    let (s, b) = d.post("/git/commit", json!({"path": "a", "message": "mine", "author": "Me", "email": "me@x"})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = d.post("/git/push", json!({"path": "a"})).await;
    assert_error(s, &b, 409, Some("GIT_PUSH_REJECTED"));

    // Local edits a pull would overwrite.
    std::fs::write(a.join("README.md"), "uncommitted\n").unwrap();
    let (s, b) = d.post("/git/pull", json!({"path": "a"})).await;
    assert_error(s, &b, 409, Some("GIT_DIRTY_WORKTREE"));

    // Committed edits that conflict with theirs.
    d.post("/git/add", json!({"path": "a", "files": ["README.md"]})).await;
    let (s, b) = d.post("/git/commit", json!({"path": "a", "message": "ours", "author": "Me", "email": "me@x"})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = d.post("/git/pull", json!({"path": "a"})).await;
    assert_error(s, &b, 409, Some("GIT_MERGE_CONFLICT"));
    let st = status(&d, "a").await;
    assert_eq!(file_state(&st, "README.md"), pair("Updated but unmerged", "Updated but unmerged"), "{st}");
}

/// A one-shot HTTP "git server" that answers every request 401 and records the requests' heads.
fn refusing_http_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            seen2.lock().unwrap().push(head);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (format!("http://{addr}/repo.git"), seen)
}

#[tokio::test]
async fn credentials_travel_as_a_header_and_auth_failures_never_prompt() {
    let d = TestDaemon::start_with(&[("no_proxy", "*"), ("NO_PROXY", "*")], &[]);
    let (url, seen) = refusing_http_server();

    let (s, b) =
        d.post("/git/clone", json!({"url": url, "path": "r", "username": "alice", "password": "s3cret-pw"})).await;
    assert_error(s, &b, 401, Some("GIT_AUTH_FAILED"));
    assert!(!b["message"].as_str().unwrap().contains("s3cret-pw"), "{b}");
    let heads = seen.lock().unwrap().join("\n---\n").to_lowercase();
    // base64("alice:s3cret-pw")
    assert!(heads.contains("authorization: basic ywxpy2u6cznjcmv0lxb3"), "{heads}");
    assert!(!d.work.join("r").exists());

    // No credentials: git would ask for a username; it must fail at once instead of waiting for a terminal.
    let started = std::time::Instant::now();
    let (s, b) = d.post("/git/clone", json!({"url": url, "path": "r"})).await;
    assert_error(s, &b, 401, Some("GIT_AUTH_FAILED"));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[tokio::test]
async fn a_hook_left_running_in_the_background_does_not_hold_the_answer() {
    use std::os::unix::fs::PermissionsExt;
    let d = TestDaemon::start();
    let remote = Remote::new();
    clone(&d, &remote, "repo").await;
    let hook = d.work.join("repo/.git/hooks/post-commit");
    std::fs::write(&hook, "#!/bin/sh\necho hook ran >&2\nsleep 20 &\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    let started = std::time::Instant::now();
    let b =
        commit(&d, json!({"path": "repo", "message": "m", "author": "A", "email": "a@x", "allow_empty": true})).await;
    assert_eq!(b["hash"].as_str().unwrap().len(), 40);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}
