"""Supervision (issue #22): a service of ``sandbar up`` killed with SIGKILL is started again on the addresses it had,
while the others keep serving. Sandboxes answer through the proxy while the runner is down (it is not in the data
path), a terminal cut by a killed proxy reconnects to its session with the scrollback, and the SDK works again
once a killed API is back (creates in flight then happened whole or not at all). A service that cannot start (its port taken) stops the
stack with a message naming it after five tries, and a signal stops the stack during a restart's wait. Each test
uses its own stack: it kills that stack's children, never another's."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from daytona import Daytona, DaytonaConfig

from sandbar_stack import Stack, remove_containers, start_stack
from sandbar_util import read_until, wait_until


def child_pid(stack: Stack, name: str) -> int | None:
    """The pid of ``sandbar-<name>`` among the children of this stack's ``sandbar up`` (never another stack's)."""
    out = subprocess.run(["pgrep", "-P", str(stack.proc.popen.pid), "-x", f"sandbar-{name}"],
                         capture_output=True, text=True, check=False).stdout.split()
    assert len(out) <= 1, f"more than one sandbar-{name} child: {out}"
    return int(out[0]) if out else None


def kill9(stack: Stack, name: str) -> tuple[int, float]:
    """SIGKILL to the stack's ``sandbar-<name>``; returns the position in the stack's log and the time it was sent."""
    pid = child_pid(stack, name)
    assert pid, f"no sandbar-{name} child of {stack.proc.popen.pid}:\n{stack.proc.tail()}"
    start = stack.proc.log_size()
    os.kill(pid, signal.SIGKILL)
    return start, time.monotonic()


def log_line(stack: Stack, start: int, pattern: str, timeout: float = 120) -> re.Match:
    """The first line of the stack's log after ``start`` matching ``pattern``."""
    return wait_until(lambda: re.search(pattern, stack.proc.log_text(start), re.M), timeout=timeout,
                      what=f"{pattern!r} in the sandbar up log:\n{stack.proc.tail()}")


def ready_lines(stack: Stack, name: str) -> list[str]:
    text = (stack.data_dir / "logs" / f"{name}.log").read_text(errors="replace")
    return re.findall(rf"^sandbar-{name} ready .*$", text, re.M)


def echo(sandbox) -> str:
    r = sandbox.process.exec("echo hi")
    assert r.exit_code == 0, r
    return r.result.strip()


def test_killed_services_come_back_and_sandboxes_keep_answering(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-supervise")
    runner_id = "e2e-supervise-" + secrets.token_hex(3)
    stack = start_stack(data_dir, runner_id)
    timings: list[str] = []
    try:
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        sb = d.create(timeout=180)
        assert echo(sb) == "hi"

        # The runner, four times: each crash waits longer (0.5 s doubling, with jitter), so the fourth leaves it
        # down for 2 to 4 s, time to show that sandboxes and the API do not need it.
        for n in range(1, 5):
            start, killed = kill9(stack, "runner")
            crash = log_line(stack, start,
                             rf"^sandbar: runner exited \(signal: 9.*\) after .*; restart {n} in ([0-9.]+)s$")
            assert echo(sb) == "hi"
            assert d.get(sb.id).state.value == "started"
            checked = time.monotonic()
            log_line(stack, start, rf"^sandbar: runner restarted \(restart {n}\): ready [0-9.]+s after it went down$")
            timings.append(f"runner #{n}: delay {crash.group(1)}s, ready {time.monotonic() - killed:.1f}s after kill")
            if n == 4:
                assert checked - killed < float(crash.group(1)), f"the checks ran after the runner was back: {timings}"
        assert child_pid(stack, "runner")
        # Back, on the address it had, and doing its work: a new sandbox.
        assert len(set(ready_lines(stack, "runner"))) == 1, ready_lines(stack, "runner")
        sb2 = d.create(timeout=180)
        assert echo(sb2) == "hi"
        d.delete(sb2)

        # The proxy: it comes back on the same ports (the stack was started on port 0), so the SDK's toolbox URL
        # and the proxy's own URL still work. A terminal open through it is cut; the client reconnects to the same
        # PTY session, whose shell lived on in the daemon, and its scrollback replays.
        pty = sb.process.create_pty_session(id="supervise-pty")
        pty.wait_for_connection()
        pty.send_input("echo before-$((6*7))\n")
        read_until(pty, b"before-42")
        start, killed = kill9(stack, "proxy")
        log_line(stack, start, r"^sandbar: proxy restarted \(restart 1\)")
        timings.append(f"proxy: ready {time.monotonic() - killed:.1f}s after kill")
        assert len(set(ready_lines(stack, "proxy"))) == 1, ready_lines(stack, "proxy")
        assert echo(sb) == "hi"
        again = sb.process.connect_pty_session("supervise-pty")
        again.wait_for_connection()
        assert b"before-42" in read_until(again, b"before-42"), "the scrollback replays after the reconnect"
        again.send_input("echo after-$((7*6))\n")
        read_until(again, b"after-42")
        again.send_input("exit\n")
        again.wait(timeout=20)

        # The API, with creates in flight: once it is back, the SDK works again with the same URL and key, and each
        # create either happened whole (its sandbox starts) or not at all (no row is left half-written).
        before = {s.id for s in d.list()}
        inflight = [threading.Thread(target=_quietly, args=(lambda: d.create(timeout=180),), daemon=True)
                    for _ in range(3)]
        for t in inflight:
            t.start()
        time.sleep(0.05)
        start, killed = kill9(stack, "api")
        log_line(stack, start, r"^sandbar: api exited \(signal: 9.*; restart 1 in [0-9.]+s$")
        log_line(stack, start, r"^sandbar: api restarted \(restart 1\)")
        timings.append(f"api: ready {time.monotonic() - killed:.1f}s after kill")
        assert d.get(sb.id).state.value == "started"
        # The restarted API still serves /metrics with the token `sandbar up` keeps in the data dir, and only with it.
        token = api_metrics_token(stack)
        assert metrics_status(stack, token) == 200
        assert metrics_status(stack, None) == 401
        assert metrics_status(stack, stack.api_key) == 401
        assert echo(sb) == "hi"
        for t in inflight:
            t.join(200)
        made = [s for s in d.list() if s.id not in before]
        for s in made:
            wait_until(lambda s=s: d.get(s.id).state.value == "started", timeout=120,
                       what=f"sandbox {s.id}, created as the API was killed, to start")
            d.delete(s)
        timings.append(f"api: {len(made)} of 3 creates in flight when it was killed happened")
        sb3 = d.create(timeout=180)
        assert echo(sb3) == "hi"
        d.delete(sb3)
        d.delete(sb)

        print("restart timings:", "; ".join(timings))
        # Still one of each, and a clean stop after all that.
        assert [child_pid(stack, n) is not None for n in ("api", "runner", "proxy")] == [True, True, True]
        assert stack.stop() == 0, stack.proc.tail()
        assert "sandbar: stopped" in stack.proc.log_text()
    finally:
        stack.stop()
        remove_containers(runner_id)


def api_metrics_token(stack: Stack) -> str:
    """The API's metrics token, from ``<data-dir>/secrets.env`` where ``sandbar up`` keeps its tokens."""
    text = (stack.data_dir / "secrets.env").read_text()
    m = re.search(r"^SANDBAR_API_METRICS_TOKEN=([0-9a-f]{48})$", text, re.M)
    assert m, "no metrics token in secrets.env"
    return m.group(1)


def metrics_status(stack: Stack, token: str | None) -> int:
    """The status of the API's ``GET /metrics`` with ``token`` as bearer (none when ``None``)."""
    url = stack.api_url.removesuffix("/api") + "/metrics"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            assert b"sandbar_api_" in r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a create cut by the API's death may fail; the test checks what it left
        pass


def hold_api_port(stack: Stack) -> socket.socket:
    """Kills the stack's API and listens on its port first, so that each restart of the API fails to bind."""
    port = urllib.parse.urlsplit(stack.api_url).port
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    pid = child_pid(stack, "api")
    assert pid
    os.kill(pid, signal.SIGKILL)
    # The supervisor waits at least 0.25 s before the first restart; the killed API's socket is gone at once.
    wait_until(lambda: _bound(held, port), timeout=0.25, interval=0.01, what=f"binding port {port}")
    held.listen()
    return held


def _bound(s: socket.socket, port: int) -> bool:
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def test_a_service_that_cannot_start_stops_the_stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-giveup")
    runner_id = "e2e-giveup-" + secrets.token_hex(3)
    stack = start_stack(data_dir, runner_id)
    held = None
    try:
        children = [child_pid(stack, n) for n in ("api", "runner", "proxy")]
        held = hold_api_port(stack)
        # Five failed starts, 0.5 s doubling (with jitter) between them: between 8 and 16 s, plus the starts.
        code = stack.proc.popen.wait(timeout=60)
        log = stack.proc.log_text()
        assert code != 0, log
        assert re.search(r"^sandbar: api failed to start \(exit status: 1; 4 in a row, see .*api\.log\); "
                         r"restart 5 in", log, re.M), log
        assert re.search(r"^sandbar: api failed to start 5 times in a row \(last: exit status: 1\), "
                         r"so the stack stopped; see .*api\.log$", log, re.M), log
        assert "sandbar: stopped" in log
        # Every child it had is gone, the healthy ones included.
        for pid in children[1:]:
            assert not os.path.exists(f"/proc/{pid}"), f"child {pid} is still there"
    finally:
        if held:
            held.close()
        stack.stop()
        remove_containers(runner_id)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_stack_during_a_restart_wait(tmp_path_factory, sig):
    data_dir = tmp_path_factory.mktemp("sandbar-termwait")
    runner_id = "e2e-termwait-" + secrets.token_hex(3)
    stack = start_stack(data_dir, runner_id)
    held = None
    try:
        start = stack.proc.log_size()
        held = hold_api_port(stack)
        log_line(stack, start, r"^sandbar: api failed to start .*; restart 4 in [0-9.]+s$", timeout=30)
        # Now the API waits 2 to 4 s: the signal must not wait for it.
        sent = time.monotonic()
        stack.proc.popen.send_signal(sig)
        assert stack.proc.popen.wait(timeout=15) == 0, stack.proc.tail()
        took = time.monotonic() - sent
        print(f"{sig.name}: stopped in {took:.1f}s")
        assert took < 10, "sandbar up took longer than its grace period"
        log = stack.proc.log_text(start)
        assert "sandbar: stopped" in log and "4 in a row" not in log, log
    finally:
        if held:
            held.close()
        stack.stop()
        remove_containers(runner_id)
