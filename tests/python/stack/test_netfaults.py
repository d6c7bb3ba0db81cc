"""Network faults (issue #22): the runner cut off from the API, and a sandbox's daemon black-holed behind the proxy.

The runner reaches the API only through a relay the test controls (``relay.py``; ``sandbar up --runner-api-url``),
so a cut touches runner-to-API traffic and nothing else: clients, the proxy and the daemons keep their paths.

- **A 30 s cut** (black hole: bytes held, connections hang): sandboxes keep running and answering through the proxy,
  also once the API marks the runner unreachable after ``--runner-unreachable-secs`` (default 20) and its sandboxes
  read ``unknown`` (their routes keep the daemon's address); a stop and a create asked for in the first seconds of the cut wait and are carried out once after it;
  once the relay passes again every state returns to the truth by itself.
- **A cut that outlasts every deadline** (refused: connections reset): the jobs asked for while it lasts fail with
  ``TIMEOUT`` at their deadline and are not run when the runner comes back; the runner's full report then brings
  each sandbox back to what Docker holds. The literal form of the issue ("10 min") takes 11 minutes:
  ``SANDBAR_NETFAULT_LONG_CUT_SECS=630`` runs it against the default deadlines (10 min for a stop or a start); by
  default CI cuts for 45 s against deadlines of 20 s.
- **The proxy black-holed from one daemon** (``iptables -j DROP`` on the toolbox port inside that sandbox's own
  network namespace): a toolbox call gets a JSON error (504/502) within a bounded time rather than hanging, an open
  PTY WebSocket is closed with code 1014, other sandboxes are not affected, and all is well once the rule is gone.

Each prints its figures (time to ``unknown``, time back to the truth, the proxy's time to answer). Every test
removes its containers, its relay and its iptables rule, also after a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sqlite3
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import requests
from daytona import Daytona, DaytonaConfig
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from relay import Relay
from sandbar_stack import Stack, remove_containers, start_stack
from sandbar_util import wait_until

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Every call a client makes while a part is down must answer within this (the test's "no hang" bound).
CALL_BOUND = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def relayed_stack(tmp_path_factory, tag: str, env: dict[str, str] | None = None):
    """``sandbar up`` whose runner reaches the API only through a :class:`Relay`; yields ``(stack, relay)``."""
    data_dir = tmp_path_factory.mktemp(f"sandbar-{tag}")
    runner_id = f"e2e-{tag}-" + secrets.token_hex(3)
    api_port = free_port()
    relay = Relay(("127.0.0.1", api_port))
    stack = None
    try:
        started = int(time.time() * 1000)
        stack = start_stack(data_dir, runner_id, api_port=api_port, env=env,
                            extra=["--runner-api-url", f"{relay.url}/api"])
        # `sandbar ready` comes once the runner has registered; placement needs its first heartbeat (its capacity).
        wait_until(lambda: heartbeat(stack) >= started, timeout=30, interval=0.1, what="the runner's first heartbeat")
        yield stack, relay
    finally:
        # The stack first: the runner reports the deletes of the test's cleanup through the relay.
        if stack is not None:
            stack.stop()
        relay.close()
        remove_containers(runner_id)


def heartbeat(stack: Stack) -> int:
    """The runner's last heartbeat as the API recorded it (unix ms; 0 before the first)."""
    db = next(stack.data_dir.rglob("sandbar.db"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        row = c.execute("SELECT last_heartbeat FROM runners WHERE id = ?", (stack.runner_id,)).fetchone()
    return int(row[0]) if row else 0


class Api:
    """The REST API, called the way any client calls it, every call bounded by :data:`CALL_BOUND`."""

    def __init__(self, stack: Stack) -> None:
        self.base = stack.api_url
        self.headers = {"Authorization": f"Bearer {stack.api_key}"}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, float]:
        t = time.monotonic()
        r = requests.request(method, self.base + path, json=body, headers=self.headers, timeout=CALL_BOUND)
        took = time.monotonic() - t
        try:
            data = r.json()
        except ValueError:
            data = {"raw": r.text}
        return r.status_code, data, took

    def state(self, sandbox_id: str) -> str:
        code, body, _ = self.call("GET", f"/sandbox/{sandbox_id}")
        assert code == 200, body
        return body["state"]


def jobs_of(stack: Stack, sandbox_id: str) -> list[tuple[str, str, str | None, str]]:
    """``(kind, state, error, id)`` of every job of the sandbox, oldest first."""
    db = next(stack.data_dir.rglob("sandbar.db"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        return list(c.execute("SELECT kind, state, error, id FROM jobs WHERE sandbox_id = ? ORDER BY seq",
                              (sandbox_id,)))


def runs_of(stack: Stack, job_id: str) -> int:
    """How many times the runner started job ``job_id`` (its ``job`` log line, one per run)."""
    log = ANSI.sub("", (stack.data_dir / "logs" / "runner.log").read_text(errors="replace"))
    return len(re.findall(rf"\bjob\b.*job_id=\s*\"?{re.escape(job_id)}", log))


def containers_of(sandbox_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbar.sandbox.id={sandbox_id}"],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.split()


def exec_through_proxy(stack: Stack, sb, timeout: float = 60) -> tuple[int, dict, float]:
    """``POST /process/execute`` of ``echo hi`` through the proxy with the API key, as the SDK sends it;
    ``(status, body, seconds)``."""
    t = time.monotonic()
    r = requests.post(f"{sb.toolbox_proxy_url.rstrip('/')}/{sb.id}/process/execute", json={"command": "echo hi"},
                      headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=timeout)
    took = time.monotonic() - t
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text}
    return r.status_code, body, took


def answered_or_documented(status: int, body: dict) -> bool:
    """A toolbox call during a fault: it works, or it is a clear error (status and a JSON message)."""
    return status == 200 or (status >= 400 and isinstance(body.get("message"), str) and body["message"] != "")


def test_runner_cut_for_30s_converges_and_runs_each_job_once(tmp_path_factory):
    cut_secs = 30.0
    with relayed_stack(tmp_path_factory, "nfcut") as (stack, relay):
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        api = Api(stack)
        a = d.create(timeout=180)
        b = d.create(timeout=180)
        figures = []
        made: list[str] = [a.id, b.id]
        try:
            relay.cut("hold")
            cut_at = time.monotonic()
            # Asked for while the runner is still believed reachable: accepted, and queued.
            code, body, took = api.call("POST", f"/sandbox/{b.id}/stop")
            assert code == 200 and body["state"] == "stopping", (code, body)
            assert took < CALL_BOUND
            code, body, took = api.call("POST", "/sandbox", {})
            assert code in (200, 201) and body["state"] == "creating", (code, body)
            c_id = body["id"]
            made.append(c_id)

            # The data path does not go through the runner: the running sandbox answers.
            status, out, took = exec_through_proxy(stack, a)
            assert status == 200 and out.get("result", "").strip() == "hi", (status, out)

            became_unknown = wait_until(lambda: api.state(a.id) == "unknown" and time.monotonic(), timeout=60,
                                        interval=0.25, what="the cut runner's sandbox to read unknown")
            figures.append(f"unknown {became_unknown - cut_at:.1f}s after the cut")
            # While unknown: a new action is refused with the documented reason, at once.
            code, body, took = api.call("POST", f"/sandbox/{a.id}/stop")
            assert code == 400 and "unreachable" in body.get("message", ""), (code, body)
            # Its route keeps the daemon's address (the runner is not in the data path): it still answers.
            status, out, took = exec_through_proxy(stack, a, timeout=CALL_BOUND + 10)
            assert status == 200 and out.get("result", "").strip() == "hi", (status, out)
            figures.append(f"exec while unknown: {status} in {took:.2f}s")

            time.sleep(max(0.0, cut_at + cut_secs - time.monotonic()))
            relay.restore()
            restored = time.monotonic()

            def truth():
                return (api.state(a.id), api.state(b.id), api.state(c_id)) == ("started", "stopped", "started")
            wait_until(truth, timeout=120, interval=0.25, what="every sandbox back to the truth after the cut")
            figures.append(f"back to the truth {time.monotonic() - restored:.1f}s after the relay passed again")

            # Each job queued during the cut ran once and ended `done`; nothing failed.
            for sid, kind in ((b.id, "STOP_SANDBOX"), (c_id, "CREATE_SANDBOX")):
                jobs = [j for j in jobs_of(stack, sid) if j[0] == kind]
                assert len(jobs) == 1 and jobs[0][1] == "done", jobs
                assert runs_of(stack, jobs[0][3]) == 1, f"{kind} of {sid} ran {runs_of(stack, jobs[0][3])} times"
            assert len(containers_of(c_id)) == 1, containers_of(c_id)
            c = d.get(c_id)
            status, out, _ = exec_through_proxy(stack, c)
            assert status == 200 and out["result"].strip() == "hi", (status, out)
            status, out, _ = exec_through_proxy(stack, a)
            assert status == 200 and out["result"].strip() == "hi", (status, out)
            print("\nRUNNER CUT 30s: " + "; ".join(figures))
        finally:
            relay.restore()
            for sid in made:
                try:
                    d.delete(d.get(sid))
                except Exception:  # noqa: BLE001 - cleanup; containers are removed by label anyway
                    pass


LONG_CUT_SECS = float(os.environ.get("SANDBAR_NETFAULT_LONG_CUT_SECS", "45"))


def test_runner_cut_past_every_deadline_fails_its_jobs_and_never_runs_them(tmp_path_factory):
    literal = LONG_CUT_SECS >= 600
    # Scaled down for CI: the runner is unreachable after 8 s, a stop, start or create fails after 20 s, and the
    # cut outlasts both. The literal form keeps every default (20 s, 10 min for a stop or start) and cuts past them.
    env = {} if literal else {"SANDBAR_RUNNER_UNREACHABLE_SECS": "8", "SANDBAR_JOB_DEADLINE_SECS": "20",
                              "SANDBAR_CREATE_JOB_DEADLINE_SECS": "20"}
    deadline = 600 if literal else 20
    assert LONG_CUT_SECS > deadline + 5, "the cut must outlast every deadline involved"
    with relayed_stack(tmp_path_factory, "nflong", env=env) as (stack, relay):
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        api = Api(stack)
        a = d.create(timeout=180)
        b = d.create(timeout=180)
        b.stop(timeout=120)
        made = [a.id, b.id]
        figures = []
        try:
            relay.cut("reset")
            cut_at = time.monotonic()
            queued = {}
            code, body, _ = api.call("POST", f"/sandbox/{a.id}/stop")
            assert code == 200 and body["state"] == "stopping", (code, body)
            queued[a.id] = "STOP_SANDBOX"
            code, body, _ = api.call("POST", f"/sandbox/{b.id}/start")
            assert code == 200 and body["state"] == "starting", (code, body)
            queued[b.id] = "START_SANDBOX"
            c_id = None
            if not literal:  # a create's own deadline (30 min) is past the literal cut
                code, body, _ = api.call("POST", "/sandbox", {})
                assert code in (200, 201) and body["state"] == "creating", (code, body)
                c_id = body["id"]
                made.append(c_id)
                queued[c_id] = "CREATE_SANDBOX"

            # A stop is under way: the proxy says so rather than reaching a daemon that may be going.
            status, out, _ = exec_through_proxy(stack, a)
            assert status == 409 and "stopping" in out.get("message", ""), (status, out)
            became_unknown = wait_until(lambda: api.state(a.id) == "unknown" and time.monotonic(),
                                        timeout=deadline + 60, interval=0.25, what="unknown during the cut")
            figures.append(f"unknown {became_unknown - cut_at:.1f}s after the cut")

            def all_timed_out():
                rows = {sid: [j for j in jobs_of(stack, sid) if j[0] == kind] for sid, kind in queued.items()}
                return all(len(r) == 1 and r[0][1] == "failed" and "Timeout" in (r[0][2] or "")
                           for r in rows.values()) and rows
            timed_out = wait_until(all_timed_out, timeout=LONG_CUT_SECS + 60, interval=0.5,
                                   what="every job queued during the cut to fail by its deadline")
            figures.append(f"jobs failed: timeout {time.monotonic() - cut_at:.1f}s after the cut")
            # Still unknown while the runner is away; a toolbox call still answers or says why, never hangs.
            assert api.state(a.id) == "unknown"
            status, out, took = exec_through_proxy(stack, a, timeout=CALL_BOUND + 10)
            assert answered_or_documented(status, out), (status, out)

            time.sleep(max(0.0, cut_at + LONG_CUT_SECS - time.monotonic()))
            relay.restore()
            restored = time.monotonic()
            # The truth is what Docker holds: A still runs (its stop never ran), B is still stopped (its start never
            # ran), C was never made (its create never ran, and stays failed).
            want = {a.id: "started", b.id: "stopped", **({c_id: "error"} if c_id else {})}
            wait_until(lambda: all(api.state(s) == v for s, v in want.items()), timeout=120, interval=0.25,
                       what=f"the sandboxes back to the truth {want}")
            figures.append(f"back to the truth {time.monotonic() - restored:.1f}s after the relay passed again")
            # Give a late delivery every chance to show up, then check that none ran.
            time.sleep(12)
            for sid, kind in queued.items():
                job = [j for j in jobs_of(stack, sid) if j[0] == kind][0]
                assert runs_of(stack, job[3]) == 0, f"{kind} of {sid} ran after failing by its deadline"
            if c_id:
                assert containers_of(c_id) == []
                # It keeps the reason it failed for.
                assert "Timeout" in (d.get(c_id).error_reason or ""), d.get(c_id).error_reason
            assert {s: api.state(s) for s in want} == want
            status, out, _ = exec_through_proxy(stack, a)
            assert status == 200 and out["result"].strip() == "hi", (status, out)
            # And the system works again: B starts on request.
            b.start(timeout=120)
            status, out, _ = exec_through_proxy(stack, b)
            assert status == 200 and out["result"].strip() == "hi", (status, out)
            print(f"\nRUNNER CUT {LONG_CUT_SECS:.0f}s ({'default deadlines' if literal else 'deadlines 20 s'}): "
                  + "; ".join(figures) + f"; timed out: {sorted(queued.values())} ({len(timed_out)} sandboxes)")
        finally:
            relay.restore()
            for sid in made:
                try:
                    d.delete(d.get(sid))
                except Exception:  # noqa: BLE001 - cleanup; containers are removed by label anyway
                    pass


# --- proxy to daemon ------------------------------------------------------------------------------------------------

def container_pid(sandbox_id: str) -> int:
    ids = containers_of(sandbox_id)
    assert len(ids) == 1, ids
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", ids[0]], capture_output=True, text=True,
                         check=True, timeout=60)
    return int(out.stdout.strip())


@contextmanager
def black_hole(pid: int, port: int = 2280):
    """Drops every packet to ``port`` in the network namespace of process ``pid`` (a sandbox's container) while the
    block runs; the rule is deleted afterwards, also after a failure."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    ns = ["nsenter", "-t", str(pid), "-n"]
    subprocess.run([*ns, "iptables", "-w", "5", "-I", *rule], check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        for _ in range(5):
            if subprocess.run([*ns, "iptables", "-w", "5", "-D", *rule], capture_output=True,
                              timeout=30).returncode != 0:
                break


def test_proxy_answers_a_black_holed_daemon_and_closes_its_websockets(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-nfproxy")
    runner_id = "e2e-nfproxy-" + secrets.token_hex(3)
    stack = start_stack(data_dir, runner_id)
    d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
    made = []
    try:
        a = d.create(timeout=180)
        made.append(a)
        b = d.create(timeout=180)
        made.append(b)
        base = a.toolbox_proxy_url.rstrip("/")
        auth = {"Authorization": f"Bearer {stack.api_key}"}
        r = requests.post(f"{base}/{a.id}/process/pty", json={"id": "nf-pty", "cols": 80, "rows": 24},
                          headers=auth, timeout=30)
        assert r.status_code in (200, 201), r.text
        ws = ws_connect(f"{base.replace('http', 'ws', 1)}/{a.id}/process/pty/nf-pty/connect",
                        additional_headers=auth, open_timeout=30, close_timeout=5)
        ws.send("echo pty-$((6*7))\n")
        seen = b""
        while b"pty-42" not in seen:
            m = ws.recv(timeout=30)
            seen += m if isinstance(m, bytes) else m.encode()
        # A pooled connection to A's daemon exists now: the first call below goes on it.
        status, out, _ = exec_through_proxy(stack, a)
        assert status == 200, (status, out)

        figures = []
        with black_hole(container_pid(a.id)):
            holed = time.monotonic()
            # B is not affected while A's calls wait for their answer.
            others: list = []

            def use_b():
                for _ in range(5):
                    others.append(exec_through_proxy(stack, b, timeout=CALL_BOUND))
            t = threading.Thread(target=use_b, daemon=True)
            t.start()
            for attempt in ("a pooled connection", "a new connection"):
                status, out, took = exec_through_proxy(stack, a, timeout=90)
                assert status in (502, 504) and out.get("message"), (attempt, status, out)
                assert took < 60, f"{attempt}: {took:.1f}s"
                figures.append(f"exec on {attempt}: {status} in {took:.1f}s")
            t.join(CALL_BOUND * 5)
            assert len(others) == 5 and all(s == 200 and o["result"].strip() == "hi" for s, o, _ in others), others
            figures.append(f"other sandbox: 5 execs, slowest {max(x for _, _, x in others):.2f}s")
            # The open terminal: keepalive (or typing into it) makes the daemon's silence visible to TCP; the proxy
            # closes the WebSocket with a close code instead of leaving it open. It may be closed already.
            try:
                ws.send("echo still-there\n")
                while True:
                    ws.recv(timeout=90)
            except TimeoutError:
                pytest.fail("the terminal WebSocket to a black-holed daemon stayed open for 90 s")
            except ConnectionClosed as e:
                closed = time.monotonic() - holed
                code = e.rcvd.code if e.rcvd is not None else None
                figures.append(f"terminal closed with {code} {closed:.1f}s after the black hole")
                assert code == 1014, f"closed without the bad-gateway close code: {e!r}"
            ws.close()
        cleared = time.monotonic()
        wait_until(lambda: exec_through_proxy(stack, a, timeout=CALL_BOUND)[0] == 200, timeout=60, interval=0.5,
                   what="A to answer through the proxy once the rule is gone")
        figures.append(f"answering again {time.monotonic() - cleared:.1f}s after the rule was removed")
        again = ws_connect(f"{base.replace('http', 'ws', 1)}/{a.id}/process/pty/nf-pty/connect",
                           additional_headers=auth, open_timeout=30)
        again.send("echo back-$((6*7))\n")
        seen = b""
        while b"back-42" not in seen:
            m = again.recv(timeout=30)
            seen += m if isinstance(m, bytes) else m.encode()
        again.close()
        print("\nPROXY BLACK HOLE: " + "; ".join(figures))
    finally:
        for s in made:
            try:
                d.delete(s)
            except Exception:  # noqa: BLE001
                pass
        stack.stop()
        remove_containers(runner_id)
