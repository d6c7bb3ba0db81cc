"""The Daytona Python SDK against a stack started with ``sandbar up``, with only DAYTONA_API_URL and DAYTONA_API_KEY."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid

import httpx
import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    ListSandboxesQuery,
    LspCompletionPosition,
    SessionExecuteRequest,
)
from daytona.common.pty import PtySize


def test_exec_and_code_run(sandbox):
    r = sandbox.process.exec("echo hello from $(whoami); exit 3")
    assert r.exit_code == 3
    assert "hello from" in r.result
    r = sandbox.process.code_run("import sys; print(sum(range(10)), sys.version_info[0])")
    assert r.exit_code == 0
    assert r.result.strip() == "45 3"


def test_file_round_trip(sandbox):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    sandbox.fs.upload_file(data, "/tmp/e2e/blob.bin")
    assert sandbox.fs.download_file("/tmp/e2e/blob.bin") == data
    names = [f.name for f in sandbox.fs.list_files("/tmp/e2e")]
    assert "blob.bin" in names


def test_sessions_async_and_logs(sandbox):
    sid = "e2e-" + uuid.uuid4().hex[:6]
    sandbox.process.create_session(sid)
    try:
        cmd = sandbox.process.execute_session_command(
            sid, SessionExecuteRequest(command="for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done",
                                       run_async=True))
        out, err = [], []
        asyncio.run(asyncio.wait_for(
            sandbox.process.get_session_command_logs_async(sid, cmd.cmd_id, out.append, err.append), timeout=30))
        assert "".join(out).split() == ["out1", "out2", "out3"]
        assert "".join(err).split() == ["err1", "err2", "err3"]
        assert sandbox.process.get_session_command(sid, cmd.cmd_id).exit_code == 0
    finally:
        sandbox.process.delete_session(sid)


def test_pty(sandbox):
    handle = sandbox.process.create_pty_session(id="e2e-pty-" + uuid.uuid4().hex[:6], pty_size=PtySize(rows=24, cols=80))
    got = []
    handle.send_input("echo pty-$((6*7))\nexit 0\n")
    result = handle.wait(on_data=lambda b: got.append(b), timeout=30)
    assert b"pty-42" in b"".join(got)
    assert result.exit_code == 0


def test_git(sandbox):
    sandbox.process.exec("rm -rf /tmp/e2e-repo && mkdir -p /tmp/e2e-repo && cd /tmp/e2e-repo && git init -q -b main")
    sandbox.fs.upload_file(b"hello\n", "/tmp/e2e-repo/a.txt")
    sandbox.git.add("/tmp/e2e-repo", ["a.txt"])
    commit = sandbox.git.commit("/tmp/e2e-repo", "first", "E2E", "e2e@example.com")
    assert len(commit.sha) >= 7
    status = sandbox.git.status("/tmp/e2e-repo")
    assert status.current_branch == "main"


def test_lsp_completions(sandbox):
    project = "/tmp/e2e-lsp"
    sandbox.process.exec(f"mkdir -p {project}")
    sandbox.fs.upload_file(b"import os\nos.pa\n\ndef hello():\n    return 1\n", f"{project}/main.py")
    lsp = sandbox.create_lsp_server("python", project)
    lsp.start()
    try:
        lsp.did_open(f"{project}/main.py")
        completions = lsp.completions(f"{project}/main.py", LspCompletionPosition(line=1, character=5))
        assert "path" in [i.label for i in completions.items]
        symbols = lsp.document_symbols(f"{project}/main.py")
        assert "hello" in [s.name for s in symbols]
    finally:
        lsp.stop()


def test_labels(daytona, sandbox):
    sandbox.set_labels({"team": "e2e", "code-toolbox-language": "python"})
    again = daytona.get(sandbox.id)
    assert again.labels["team"] == "e2e"
    listed = list(daytona.list(ListSandboxesQuery(labels={"team": "e2e"})))
    assert sandbox.id in [s.id for s in listed]
    assert all(s.labels.get("team") == "e2e" for s in listed)


def test_preview_link(stack, sandbox):
    sid = "e2e-http-" + uuid.uuid4().hex[:6]
    sandbox.process.create_session(sid)
    sandbox.fs.upload_file(b"preview works\n", "/tmp/e2e-www/index.html")
    sandbox.process.execute_session_command(
        sid, SessionExecuteRequest(command="cd /tmp/e2e-www && exec python3 -m http.server 8080", run_async=True))
    link = sandbox.get_preview_link(8080)
    host = urllib.parse.urlsplit(link.url).netloc
    # *.localhost names are not in /etc/hosts: send the preview host to the proxy's address, as a resolver would.
    proxy = stack.proxy_http
    deadline = time.time() + 20
    while True:
        r = httpx.get(proxy + "/index.html", headers={"Host": host, "X-Daytona-Preview-Token": link.token}, timeout=10)
        if r.status_code == 200 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert r.status_code == 200, r.text
    assert r.text == "preview works\n"
    # Without a token a private sandbox's preview is refused.
    r = httpx.get(proxy + "/index.html", headers={"Host": host}, timeout=10)
    assert r.status_code in (401, 403)
    sandbox.process.delete_session(sid)


def test_stop_start_delete(daytona):
    sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"e2e": "lifecycle"}), timeout=180)
    sb.fs.upload_file(b"kept\n", "/tmp/kept.txt")
    sb.stop(timeout=60)
    assert daytona.get(sb.id).state.value == "stopped"
    sb.start(timeout=120)
    assert sb.fs.download_file("/tmp/kept.txt") == b"kept\n"
    daytona.delete(sb)
    with pytest.raises(Exception):
        # Deleted: gone from the API (or reported destroyed).
        got = daytona.get(sb.id)
        if got.state.value in ("destroyed", "destroying"):
            raise RuntimeError("destroyed")
