"""A command printing gigabytes, read back through every path that returns a session command's output, with the
daemon's memory bounded: the synchronous execute's JSON, the followed WebSocket (through the SDK) and the whole-log
GET (JSON, and text/plain), each read as a stream and counted, never kept; and ``process/execute``, whose
output over its cap is dropped with a note saying so.

The daemon here is one of its own, so its peak RSS (``VmHWM``) measures this test only. It runs the same command
printing ``SMALL`` bytes, then ``BIG`` bytes: the peak after the big run must stay under ``RSS_BOUND`` and grow by
less than ``GROWTH_BOUND`` over the small run's. Before streaming, one whole-log answer of ``BIG`` bytes made the
daemon allocate the output several times over (file contents, three decoded strings, the JSON), i.e. gigabytes.
A long WebSocket stream also answers the client's keepalive pings (the SDK's client drops a connection whose
pings go unanswered for 20 s, which a 2 GiB follow takes).

``RSS_BOUND`` (100 MiB): a debug daemon idles at about 10 MiB; a streamed answer holds a block of the file (256 KiB),
its decoded and escaped copies, and hyper's write buffer (about 1 MiB); a follower holds one 256 KiB read. Tens
of such buffers at once are still far below 100 MiB, and any copy of the whole output (``BIG``, 1 GiB or more) is
far above it. ``GROWTH_BOUND`` (16 MiB) says the same independently of the baseline: 16 (or 32) times more output,
the same memory.

Size: ``BIG`` is 1 GiB by default (``SANDBAR_TEST_BIG_LOG_MIB`` sets it, in MiB). Each run writes the log once
(plus 5 bytes per 32 KiB frame) and sends it through the proxy six times (the sync execute's JSON and the logs'
JSON carry it twice each, the WebSocket and the text once): with the debug daemon on a 2-core machine, 2 GiB took
109 s for the big run alone (118 s for the test; peak RSS 20.7 MiB after 64 MiB, 23.3 MiB after 2 GiB), so the
default is the 1 GiB that fits about a minute, and ``SANDBAR_TEST_BIG_LOG_MIB=2048`` runs the full size.
The log files live in the daemon's state dir under this test's temp dir; each session is deleted (its logs with
it) as soon as it was read, and the whole dir is removed at the end, so at most one big log is on disk at a time
and none survives the test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time

import pytest
import requests
from daytona import SessionExecuteRequest

from conftest import API_KEY, start_daemon

MIB = 1 << 20
SMALL = 64 * MIB
BIG = int(os.environ.get("SANDBAR_TEST_BIG_LOG_MIB", "1024")) * MIB
RSS_BOUND = 100 * MIB
GROWTH_BOUND = 16 * MIB
SANDBOX_ID = "sbx-big-logs"
STDERR_TEXT = "err-start\nerr-end\n"


@pytest.fixture(scope="module")
def big(tmp_path_factory, edge, daytona):
    base = tmp_path_factory.mktemp("big-logs")
    d = start_daemon(base)
    try:
        edge.add_sandbox(SANDBOX_ID, d.addr, d.token)
        yield d, daytona.get(SANDBOX_ID)
    finally:
        edge.remove_sandbox(SANDBOX_ID)
        d.stop(timeout=10)
        # pytest keeps the temp dirs of recent runs: do not leave gigabytes of logs in them.
        shutil.rmtree(base, ignore_errors=True)


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


class JsonScan:
    """Reads a JSON object of string (and number) members incrementally, without keeping its values: per member,
    how many ``x`` its string value holds and its other bytes (which must stay few). The values' text never holds
    a quote (the command prints only ``x`` and the stderr lines, escaped as ``\\n``), so each ``"`` opens or closes
    a string and strings alternate key, value."""

    def __init__(self) -> None:
        self.quotes = 0
        self.keys: list[bytes] = []
        self.key = b""
        self.xs: dict[str, int] = {}
        self.rest: dict[str, bytes] = {}
        self.outside = b""  # the bytes outside strings, and the quotes
        self.size = 0
        self.first = b""
        self.last = b""

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self.first) < 64:
            self.first = (self.first + chunk)[:64]
        self.last = (self.last + chunk[-64:])[-64:]
        parts = chunk.split(b'"')
        for i, part in enumerate(parts):
            if i > 0:
                self.quotes += 1
                self.outside += b'"'
                if self.quotes % 4 == 2:  # a key closed
                    self.keys.append(self.key)
                    self.key = b""
            inside = self.quotes % 2 == 1
            if not inside:
                self.outside += part
            elif self.quotes % 4 == 1:
                self.key += part
            else:
                name = self.keys[-1].decode()
                xs = part.count(b"x")
                self.xs[name] = self.xs.get(name, 0) + xs
                if xs != len(part):
                    self.rest[name] = self.rest.get(name, b"") + part.replace(b"x", b"")
                else:
                    self.rest.setdefault(name, b"")
                assert len(self.rest[name]) < MIB, f"{name} holds more than x and a few lines"
        assert len(self.outside) < 4096 and len(self.key) < 4096


def scan(resp: requests.Response) -> JsonScan:
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    s = JsonScan()
    for chunk in resp.iter_content(chunk_size=MIB):
        s.feed(chunk)
    return s


def check_logs_json(s: JsonScan, n: int, extra: str = "") -> None:
    assert s.first.startswith(b'{"' + (extra.encode() or b"output"))
    assert s.last.endswith(b"}")
    keys = [k.decode() for k in s.keys]
    assert keys[keys.index("output") :][:3] == ["output", "stdout", "stderr"], keys
    assert s.xs["stdout"] == n and s.rest["stdout"] == b""
    assert s.xs["stderr"] == 0 and s.rest["stderr"] == b"err-start\\nerr-end\\n"
    assert s.xs["output"] == n
    # Both stderr lines are in `output`; where they fall among the x's is the pipes' business.
    lines = s.rest["output"].decode().split("\\n")
    assert sorted(lines) == ["", "err-end", "err-start"], lines


def run_and_read(sb, daemon, n: int) -> dict:
    """Runs the command printing `n` x's in a new session and reads its output every way; returns the figures."""
    sid = "big-" + secrets.token_hex(4)
    sb.process.create_session(sid)
    base = f"{sb.toolbox_proxy_url}/{SANDBOX_ID}/process/session/{sid}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    cmd = f"echo err-start >&2; head -c {n} /dev/zero | tr '\\0' x; echo err-end >&2"
    figures: dict = {"bytes": n}
    try:
        # (0) The synchronous execute: the whole output in one JSON answer, streamed.
        t = time.monotonic()
        with requests.post(
            f"{base}/exec", json={"command": cmd}, headers={**auth, "Accept": "application/json"}, stream=True
        ) as r:
            s = scan(r)
        figures["sync_exec_s"] = round(time.monotonic() - t, 1)
        assert s.first.startswith(b'{"cmdId":"')
        assert s.keys[0] == b"cmdId"
        cmd_id = s.rest["cmdId"].decode()
        check_logs_json(s, n, extra="cmdId")
        assert s.keys == [b"cmdId", b"output", b"stdout", b"stderr", b"exitCode"]
        assert s.outside == b'{"":"","":"","":"","":"","":0}', s.outside

        # (1) The followed WebSocket, through the SDK: counted in the callbacks.
        counts = {"out": 0, "err": 0}
        err_text: list[str] = []

        def on_stdout(text: str) -> None:
            counts["out"] += text.count("x")

        def on_stderr(text: str) -> None:
            counts["err"] += len(text)
            err_text.append(text)

        t = time.monotonic()
        asyncio.run(
            asyncio.wait_for(sb.process.get_session_command_logs_async(sid, cmd_id, on_stdout, on_stderr), 300)
        )
        figures["follow_s"] = round(time.monotonic() - t, 1)
        assert counts["out"] == n
        assert "".join(err_text) == STDERR_TEXT

        # (2) The whole log as JSON, streamed.
        t = time.monotonic()
        with requests.get(
            f"{base}/command/{cmd_id}/logs", headers={**auth, "Accept": "application/json"}, stream=True
        ) as r:
            s = scan(r)
        figures["logs_json_s"] = round(time.monotonic() - t, 1)
        assert s.first.startswith(b'{"output":"')
        assert s.keys == [b"output", b"stdout", b"stderr"]
        check_logs_json(s, n)
        assert s.outside == b'{"":"","":"","":""}', s.outside
        # n x's twice, the stderr lines (escaped) twice, the structure: nothing else.
        structure = len(b'{"output":"","stdout":"","stderr":""}')
        assert s.size == 2 * n + 2 * len(b"err-start\\nerr-end\\n") + structure

        # (2') The whole log as text: the output only.
        t = time.monotonic()
        with requests.get(f"{base}/command/{cmd_id}/logs", headers=auth, stream=True) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            size = xs = 0
            for chunk in r.iter_content(chunk_size=MIB):
                size += len(chunk)
                xs += chunk.count(b"x")
        figures["logs_text_s"] = round(time.monotonic() - t, 1)
        assert xs == n and size == n + len(STDERR_TEXT)
    finally:
        sb.process.delete_session(sid)
    figures["vm_hwm_mib"] = round(vm_hwm(daemon.proc.popen.pid) / MIB, 1)
    return figures


def execute_capped(sb) -> dict:
    """`process/execute` of 96 MiB: `result` holds the first `SANDBAR_MAX_EXEC_OUTPUT` (64 MiB by default) bytes,
    streamed from the daemon's spool file, and says how many more were dropped."""
    n, cap = 96 * MIB, 64 * MIB
    t = time.monotonic()
    with requests.post(
        f"{sb.toolbox_proxy_url}/{SANDBOX_ID}/process/execute",
        json={"command": f"head -c {n} /dev/zero | tr '\\0' z; echo done >&2"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        stream=True,
    ) as r:
        assert r.status_code == 200, r.text[:500]
        zs, rest = 0, b""
        for chunk in r.iter_content(chunk_size=MIB):
            zs += chunk.count(b"z")
            rest += chunk.replace(b"z", b"")
            assert len(rest) < 4096
    dropped = n - cap + len("done\n")
    assert zs == cap
    assert rest == (
        b'{"exitCode":0,"result":"\\n[sandbar: %d more bytes of output were dropped]\\n","exitReason":"exited"}'
        % dropped
    ), rest
    return {"bytes": n, "execute_s": round(time.monotonic() - t, 1)}


def test_gigabytes_of_output_stream_with_bounded_daemon_memory(big):
    daemon, sb = big
    small = run_and_read(sb, daemon, SMALL)
    small["execute"] = execute_capped(sb)
    large = run_and_read(sb, daemon, BIG)
    print(f"\nsmall: {small}\nbig: {large}")
    assert large["vm_hwm_mib"] * MIB < RSS_BOUND, (small, large)
    assert (large["vm_hwm_mib"] - small["vm_hwm_mib"]) * MIB < GROWTH_BOUND, (small, large)
    # The logs went with their sessions, the spool file with its answer.
    leftover = sum(f.stat().st_size for f in daemon.state_dir.rglob("*") if f.is_file())
    assert leftover < MIB, f"{leftover} bytes left in the daemon's state dir"
