"""Docker restarting under running sandboxes (issue #22), on a private engine in a network namespace of its own
(engine.py) with ``sandbar up`` beside it, through the Daytona SDK and the proxy from this namespace.

Three sandboxes of the small test image: two open, one with ``network_block_all``; one of the open ones serves a
port (busybox httpd) reached through its preview URL. Then dockerd is stopped with SIGTERM and started again with
the same arguments, as ``systemctl restart docker`` or a package upgrade does:

- **live-restore off**: Docker stops every container. The sandboxes must come back to ``started`` by themselves
  (meanwhile the API only gets reads, and no call goes to a sandbox before Docker shows its container started
  again, so a wake by the proxy cannot be what brings it back), exec must work on each, a server started again
  answers on its preview, and the blocked sandbox is still blocked (its container has a new bridge port, maybe a
  new address: the runner must bind its rules again). The time from the engine answering again to every sandbox
  usable is printed.
- **live-restore on**: the containers keep running. Exec is polled on every sandbox through the restart and the
  longest gap printed; no sandbox leaves ``started``; the server started before the restart still answers on its
  preview; the blocked sandbox is still blocked.

Every sandbox is deleted at the end and the private engine must be empty. ``-s`` shows the figures.
"""

from __future__ import annotations

import http.client
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

from engine import Engine, built_test_image, engine, stack_on
from sandbar_stack import Stack, chain_prefix, iptables_rules, sandbox_chain
from sandbar_util import wait_until

PREVIEW_PORT = 8080
RUNNER_UNREACHABLE_AFTER = 20  # proto::api::RUNNER_UNREACHABLE_AFTER_SECS
BACK_WITHIN = 120  # liveness bound: sandboxes usable again this long after the engine answers
MARK = "sandbar-restart-" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def test_image() -> str:
    return built_test_image()


class _Egress(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"egress-ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@dataclass
class Host:
    """The private engine, its stack, an SDK client, and a server on this side of the veth (the "internet")."""

    engine: Engine
    stack: Stack
    daytona: Daytona
    egress: str
    sandboxes: list = field(default_factory=list)

    @property
    def open(self) -> list:
        return self.sandboxes[:2]

    @property
    def blocked(self):
        return self.sandboxes[2]


@contextmanager
def private_host(tmp_path, image: str, live_restore: bool):
    with engine(tmp_path, live_restore=live_restore) as e:
        e.load_image(image)
        server = ThreadingHTTPServer((e.host_addr, 0), _Egress)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            data_dir = tmp_path / "sandbar-data"
            data_dir.mkdir()
            with stack_on(e, data_dir, "e2e-dr-" + secrets.token_hex(3), image) as stack:
                d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
                h = Host(engine=e, stack=stack, daytona=d, egress=f"{e.host_addr}:{server.server_port}")
                try:
                    yield h
                except BaseException:
                    print(f"--- runner log\n{stack.log('runner')}\n--- api log\n{stack.log('api')}\n"
                          f"--- dockerd log\n{e.log_tail(40)}")
                    raise
                finally:
                    for sb in h.sandboxes:
                        try:
                            d.delete(sb, timeout=60)
                        except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
                            pass
        finally:
            server.shutdown()
            server.server_close()


def create_sandboxes(h: Host) -> None:
    d = h.daytona
    h.sandboxes.append(d.create(timeout=120))
    h.sandboxes.append(d.create(timeout=120))
    h.sandboxes.append(d.create(CreateSandboxFromSnapshotParams(network_block_all=True), timeout=120))
    assert h.blocked.network_block_all is True


def echo(sb, timeout: int = 10) -> bool:
    r = sb.process.exec("echo hi", timeout=timeout)
    return r.exit_code == 0 and r.result.strip() == "hi"


def egress(sb, addr: str) -> bool:
    """Whether the sandbox gets an answer from ``addr`` (``host:port``) over HTTP. busybox nc: this busybox's wget
    segfaults in any container; the firewall refuses with a reset, so a blocked call does not wait."""
    host, port = addr.rsplit(":", 1)
    r = sb.process.exec(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}", timeout=20)
    return r.exit_code == 0 and "egress-ok" in r.result


def serve(sb) -> None:
    """busybox httpd on the preview port (it daemonizes itself; its page is the test's mark)."""
    r = sb.process.exec(f"mkdir -p /tmp/www && echo {MARK} > /tmp/www/index.html && "
                        f"httpd -p {PREVIEW_PORT} -h /tmp/www </dev/null >/dev/null 2>&1; echo started", timeout=20)
    assert r.exit_code == 0, r.result


def preview(h: Host, sb) -> tuple[int, str]:
    """``GET /`` of the sandbox's preview port through the proxy, with its preview token."""
    token = sb.get_preview_link(PREVIEW_PORT).token
    host, port = h.engine.addr, int(h.stack.proxy_http.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        conn.request("GET", "/", headers={"Host": f"{PREVIEW_PORT}-{sb.id}.localhost:{port}",
                                          "X-Daytona-Preview-Token": token})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def check_usable(h: Host) -> None:
    """Exec on each, egress from the open ones, none from the blocked one, and its rules in the namespace."""
    for sb in h.sandboxes:
        assert echo(sb), f"exec failed on {sb.id}"
    for sb in h.open:
        assert egress(sb, h.egress), f"{sb.id} (open) cannot reach {h.egress}"
    assert not egress(h.blocked, h.egress), f"{h.blocked.id} (network_block_all) reached {h.egress}"
    rules = iptables_rules(h.engine.prefix)
    chain = sandbox_chain(h.stack.runner_id, h.blocked.id)
    assert f"-N {chain}" in rules, f"no chain {chain} for the blocked sandbox:\n{rules}"
    for hook in ("DOCKER-USER", "INPUT"):
        assert f"-A {hook} -j {chain_prefix(h.stack.runner_id)}" in rules, f"no {hook} hook:\n{rules}"


def usage_sampled(h: Host, sb) -> dict:
    """The sandbox's usage once the runner sampled it: its cgroup sits under the private engine's own parent."""
    seen: list = []

    def sampled():
        r = httpx.get(f"{h.stack.api_url}/sandbox/{sb.id}/usage",
                      headers={"Authorization": f"Bearer {h.stack.api_key}"}, timeout=10)
        seen[:] = [r.status_code, r.text]
        u = r.json() if r.status_code == 200 else {}
        return u if u.get("sampledAt") and u.get("memoryBytes", 0) > 0 and u.get("pids") else None
    try:
        return wait_until(sampled, timeout=30, interval=1, what=f"a usage sample of {sb.id}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer {seen}") from None


def started_at(h: Host) -> dict[str, str]:
    """Each sandbox's container start time, from the engine."""
    out = {}
    for sb in h.sandboxes:
        ids = h.engine.docker("ps", "-aq", "--filter", f"label=sandbar.sandbox.id={sb.id}").stdout.split()
        assert len(ids) == 1, f"{sb.id}: containers {ids}"
        out[sb.id] = h.engine.docker("inspect", "-f", "{{.State.StartedAt}}", ids[0]).stdout.strip()
    return out


def running_since(h: Host, sb) -> str | None:
    """When the sandbox's one container started, if it is running (None while Docker does not answer)."""
    ps = h.engine.docker("ps", "-q", "--filter", f"label=sandbar.sandbox.id={sb.id}", check=False, timeout=20)
    ids = ps.stdout.split()
    if ps.returncode != 0 or len(ids) != 1:
        return None
    return h.engine.docker("inspect", "-f", "{{.State.StartedAt}}", ids[0], check=False, timeout=20).stdout.strip()


def clock_step() -> float:
    """The wall clock minus the monotonic one: it grows by the length of a pause of the machine (a paused VM's
    monotonic clock stands still, and its wall clock is stepped forward when it runs again)."""
    return time.time() - time.monotonic()


def state(h: Host, sb) -> str:
    return h.daytona.get(sb.id).state.value


def delete_all_and_check_empty(h: Host) -> None:
    """Deletes every sandbox; then the private engine has no container left and the runner no sandbox chain."""
    chains = [sandbox_chain(h.stack.runner_id, sb.id) for sb in h.sandboxes]
    for sb in list(h.sandboxes):
        h.daytona.delete(sb, timeout=60)
        h.sandboxes.remove(sb)
    deadline = time.monotonic() + 60
    while (left := h.engine.containers()) or any(f"-N {c}" in iptables_rules(h.engine.prefix) for c in chains):
        assert time.monotonic() < deadline, f"left after the deletes: containers {left}, chains " \
            f"{[c for c in chains if f'-N {c}' in iptables_rules(h.engine.prefix)]}"
        time.sleep(0.5)


def test_docker_restart_without_live_restore(tmp_path, test_image):
    with private_host(tmp_path, test_image, live_restore=False) as h:
        create_sandboxes(h)
        serve(h.open[0])
        assert preview(h, h.open[0]) == (200, MARK + "\n")
        check_usable(h)
        before = started_at(h)

        # Nothing but reads until every sandbox is usable again by itself: one watcher per sandbox (an exec on an
        # address that is gone may wait, and must not hold up the others), from before the restart.
        back = threading.Event()
        seen: dict[str, list[tuple[float, str]]] = {sb.id: [] for sb in h.sandboxes}
        usable: dict[str, float] = {}

        def watch(sb) -> None:
            deadline = time.monotonic() + BACK_WITHIN + 60
            while time.monotonic() < deadline:
                try:
                    s = state(h, sb)
                except Exception as e:  # noqa: BLE001 - the API may answer an error while the runner catches up
                    s = f"error: {type(e).__name__}"
                if not seen[sb.id] or seen[sb.id][-1][1] != s:
                    seen[sb.id].append((time.monotonic(), s))
                # Exec only once the engine shows the container started again: the proxy wakes some stopped
                # sandboxes on a call, and this must not be what brought it back.
                if s == "started" and back.is_set() and running_since(h, sb) not in (None, before[sb.id]):
                    try:
                        if echo(sb, timeout=5):
                            usable[sb.id] = time.monotonic()
                            return
                    except Exception:  # noqa: BLE001 - the daemon may not answer yet
                        pass
                time.sleep(0.3)

        watchers = [threading.Thread(target=watch, args=(sb,), daemon=True) for sb in h.sandboxes]
        for t in watchers:
            t.start()
        r = h.engine.restart()
        back.set()
        for t in watchers:
            t.join(timeout=max(0.0, r["back"] + BACK_WITHIN - time.monotonic()))
        timeline = {sid: [(round(t - r["back"], 1), st) for t, st in states] for sid, states in seen.items()}
        assert len(usable) == len(h.sandboxes), (
            f"not usable {BACK_WITHIN}s after Docker was back: {set(seen) - set(usable)}; states seen (seconds "
            f"after Docker was back): {timeline}")
        after = started_at(h)
        # Docker really stopped them: each container started again.
        assert all(after[i] != before[i] for i in before), (before, after)

        # A server started again answers on its preview (the proxy follows the new address), and the rules are
        # bound to the new ports.
        serve(h.open[0])
        assert preview(h, h.open[0]) == (200, MARK + "\n")
        check_usable(h)
        last = max(usable.values())
        each = ", ".join(f"{t - r['back']:.1f}" for t in usable.values())
        print(f"\nlive-restore off: dockerd stopped in {r['stop_s']:.1f}s (containers stopped by Docker), answered "
              f"{r['start_s']:.1f}s after its start; every sandbox usable {last - r['back']:.1f}s after Docker was "
              f"back ({last - r['began']:.1f}s after the restart began; each: "
              f"{each}); states seen (s after Docker was "
              f"back): {timeline}")
        delete_all_and_check_empty(h)


def test_docker_restart_with_live_restore(tmp_path, test_image):
    with private_host(tmp_path, test_image, live_restore=True) as h:
        create_sandboxes(h)
        serve(h.open[0])
        assert preview(h, h.open[0]) == (200, MARK + "\n")
        check_usable(h)
        usage_sampled(h, h.open[0])
        before = started_at(h)

        stop = threading.Event()
        execs: dict[str, list[tuple[float, bool]]] = {sb.id: [] for sb in h.sandboxes}
        states: list[tuple[float, str, str, float]] = []  # (when, sandbox, state, clock_step())

        def poll_exec(sb) -> None:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    ok = echo(sb, timeout=5)
                except Exception:  # noqa: BLE001 - a failure is a gap, measured below
                    ok = False
                execs[sb.id].append((t, ok))
                time.sleep(0.1)

        def poll_states() -> None:
            while not stop.is_set():
                for sb in h.sandboxes:
                    try:
                        s = state(h, sb)
                    except Exception as e:  # noqa: BLE001 - recorded as what the API answered
                        s = f"error: {type(e).__name__}"
                    if s != "started":
                        states.append((time.monotonic(), sb.id, s, clock_step()))
                time.sleep(0.3)

        step0 = clock_step()
        threads = [threading.Thread(target=poll_exec, args=(sb,), daemon=True) for sb in h.sandboxes]
        threads.append(threading.Thread(target=poll_states, daemon=True))
        for t in threads:
            t.start()
        try:
            time.sleep(2)
            r = h.engine.restart()
            # Long enough for the runner to see the engine again and reconcile (its firewall recheck is 5 s).
            time.sleep(15)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a poller hung"

        # `unknown` is the API's right answer after the whole machine stood still (this VM gets paused): the
        # runner's last heartbeat then looks as old as the pause, until its next one. Only that is excused.
        paused = [x for x in states if x[2] == "unknown" and x[3] - step0 > RUNNER_UNREACHABLE_AFTER]
        if paused:
            print(f"\nexcused: `unknown` right after the machine was paused (wall clock {paused[0][3] - step0:.0f}s "
                  f"ahead): {[(round(t - r['began'], 1), sid, st) for t, sid, st, _ in paused]}")
        left = [(round(t - r["began"], 1), sid, st) for t, sid, st, step in states if (t, sid, st, step) not in paused]
        assert left == [], f"sandboxes left `started` during a live-restore restart (s after it began): {left}"
        gaps = {}
        for sid, calls in execs.items():
            oks = [t for t, ok in calls if ok]
            fails = [t for t, ok in calls if not ok]
            assert oks and oks[0] < r["began"] and oks[-1] > r["back"], f"{sid}: no exec around the restart"
            gaps[sid] = max(b - a for a, b in zip(oks, oks[1:]))
            # Nothing between the proxy and a daemon goes through Docker: no call may fail.
            assert not fails, f"{sid}: {len(fails)} execs failed, at {[round(t - r['began'], 1) for t in fails]}s " \
                f"after the restart began (Docker back at {r['back'] - r['began']:.1f}s)"
        assert started_at(h) == before, "a container was restarted"
        # The server started before the restart still answers; rules still hold.
        assert preview(h, h.open[0]) == (200, MARK + "\n")
        check_usable(h)
        print(f"\nlive-restore on: dockerd stopped in {r['stop_s']:.1f}s, answered {r['start_s']:.1f}s after its "
              f"start; longest gap between successful execs: {max(gaps.values()):.2f}s "
              f"({', '.join(f'{v:.2f}' for v in gaps.values())}); execs: "
              f"{sum(len(c) for c in execs.values())}, failed: {sum(not ok for c in execs.values() for _, ok in c)}")
        delete_all_and_check_empty(h)
