"""Sandboxes on two hosts reached through the addresses those hosts expose (issue #21), driven by the Daytona SDK.

Two private Docker engines (engine.py: each in a network namespace of its own, with its own bridge), host A and
host B, each with a ``sandbar-runner`` beside it started with ``--advertise-addr`` (the namespace's address): every
sandbox's daemon ports are published on that address and reported to the API. PostgreSQL, two ``sandbar-api``
instances on it (one listening on each namespace's far end, so each runner reaches one), and the edge proxy with its
SSH gateway in this namespace, which routes to the namespaces' addresses and to neither bridge. A second proxy runs
inside B's namespace (the same host as B's daemons) for the same-host figures; the second API hands out its URL.

- Sandboxes land on both hosts; exec, file upload and download, a PTY, a preview URL and SSH through the gateway
  work to each, through the edge in this namespace.
- A sandbox cannot open another sandbox's published daemon port through its host's address (the runner's rules),
  while the edge can.
- Host A dies (its runner and its engine are killed, its link goes down): its sandboxes read ``unknown`` after the
  API's deadline, and new creates go to B and work.

Figures (``-s``): create-to-first-exec and exec p50 across hosts and on the same host, and the time from host A's
death to ``unknown``. Cleanup (also after a failure): processes stopped, sandboxes' containers and rules removed
with their engines and namespaces (engine.py), the database dropped.

Env: as scale_stack.py (``SANDBAR_BIN_DIR``, ``SANDBAR_STATIC_DAEMON``, ``SANDBAR_TEST_DATABASE_URL``) and
``SANDBAR_TEST_IMAGE`` (the small busybox image; built when missing).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import time
import uuid

import pytest
from daytona import Daytona, DaytonaConfig
from daytona.common.pty import PtySize

from engine import Engine, built_test_image, engine, run
from sandbar_stack import BIN_DIR, REPO, remove_containers
from sandbar_util import Proc, start_proc
from scale_stack import Database, free_port, wait_until

UNREACHABLE_SECS = 10
PREVIEW_PORT = 8080
SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]


class Fleet:
    """The two hosts, the APIs, the proxies and the runners; see the module doc."""

    def __init__(self, work, engines: list[Engine], image: str):
        self.work = work
        self.engines = engines
        self.image = image
        self.tag = secrets.token_hex(3)
        self.runner_ids = [f"hosts-{self.tag}-a", f"hosts-{self.tag}-b"]
        self.db = Database()
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.apis: list[Proc] = []
        self.api_urls: list[str] = []
        self.runners: dict[str, Proc] = {}
        self.proxy: Proc | None = None
        self.local_proxy: Proc | None = None
        self.env: dict[str, str] = {}
        self.api_key = ""

    def describe(self) -> str:
        procs = [*self.apis, *self.runners.values(), *(p for p in (self.proxy, self.local_proxy) if p)]
        return "\n".join(f"--- {p.name} ({'alive' if p.alive() else f'exit {p.popen.returncode}'})\n{p.tail(25)}"
                         for p in procs)

    def start(self) -> None:
        for b in ("sandbar-api", "sandbar-runner", "sandbar-proxy"):
            if not os.access(BIN_DIR / b, os.X_OK):
                pytest.fail(f"{BIN_DIR / b} not found: run `cargo build --workspace --bins` or set SANDBAR_BIN_DIR")
        daemon = os.environ.get("SANDBAR_STATIC_DAEMON") or subprocess.run(
            [str(REPO / "scripts/build-daemon")], capture_output=True, text=True, check=True).stdout.strip()
        self.db.create()
        self.env = {k: v for k, v in os.environ.items() if k not in ("DAYTONA_API_URL", "DAYTONA_API_KEY")}
        self.env.update({"DATABASE_URL": self.db.url, "SANDBAR_RUNNER_TOKEN": secrets.token_hex(16),
                         "SANDBAR_PROXY_TOKEN": secrets.token_hex(16), "RUST_LOG": "info", "NO_COLOR": "1"})
        out = subprocess.run([str(BIN_DIR / "sandbar-api"), "--data-dir", str(self.work), "bootstrap"],
                             capture_output=True, text=True, env=self.env, check=False, timeout=120)
        if out.returncode != 0:
            pytest.fail(f"sandbar-api bootstrap failed: {out.stderr}")
        self.api_key = next(x.split("=", 1)[1] for x in out.stdout.splitlines() if x.startswith("api_key="))
        a, b = self.engines
        # The edge here; a second one inside B's namespace, on B's address (the same host as B's daemons).
        edge_port, local_port = free_port(), free_port()
        proxy_urls = [f"http://localhost:{edge_port}", f"http://{b.addr}:{local_port}"]
        for i, e in enumerate(self.engines):
            self.apis.append(start_proc(f"api{i + 1}", [
                str(BIN_DIR / "sandbar-api"), "--listen", f"{e.host_addr}:0", "--data-dir", str(self.work),
                "--proxy-url", proxy_urls[i], "--default-snapshot", self.image, "--create-wait-ms", "3000",
                "--runner-unreachable-secs", str(UNREACHABLE_SECS),
            ], self.env, self.logs, "sandbar-api ready", timeout=60))
            self.api_urls.append(f"http://{self.apis[-1].fields()['addr']}/api")
        self.proxy = start_proc("proxy", [
            str(BIN_DIR / "sandbar-proxy"), "--api-url", self.api_urls[0], "--data-dir", str(self.work / "edge"),
            "--bind", "127.0.0.1", "--http-port", str(edge_port), "--https-port", "0", "--ssh-port", "0",
            "--metrics-addr", "127.0.0.1:0",
        ], self.env, self.logs, "sandbar-proxy ready", timeout=60)
        self.local_proxy = start_proc("proxy-b", [*b.prefix,
            str(BIN_DIR / "sandbar-proxy"), "--api-url", self.api_urls[1], "--data-dir", str(self.work / "edge-b"),
            "--bind", b.addr, "--http-port", str(local_port), "--https-port", "0", "--ssh-port", "0",
            "--metrics-addr", "127.0.0.1:0",
        ], self.env, self.logs, "sandbar-proxy ready", timeout=60)
        for i, (rid, e) in enumerate(zip(self.runner_ids, self.engines)):
            since = int(time.time() * 1000)
            self.runners[rid] = start_proc(f"runner-{rid}", [*e.prefix,
                str(BIN_DIR / "sandbar-runner"), "--runner-id", rid, "--api-url", self.api_urls[i],
                "--daemon-binary", daemon, "--runner-listen", "127.0.0.1:0", "--default-image", self.image,
                "--warm-pool", "0", "--runner-state-dir", str(self.work / f"runner-{rid}"),
                "--container-label", "sandbar-e2e=1", "--advertise-addr", e.addr,
            ], {**self.env, "DOCKER_HOST": e.docker_host}, self.logs, "sandbar-runner ready", timeout=120)
            wait_until(f"a heartbeat from {rid}", lambda r=rid, t=since: self.heartbeat(r) >= t, 30,
                       detail=self.describe)

    def heartbeat(self, runner_id: str) -> int:
        rows = self.db.query(f"SELECT last_heartbeat FROM runners WHERE id = '{runner_id}'")
        return int(rows[0][0]) if rows else 0

    def row(self, sandbox_id: str) -> dict[str, str]:
        r = self.db.query(f"SELECT runner_id, daemon_addr, ssh_addr FROM sandboxes WHERE id = '{sandbox_id}'")
        return dict(zip(("runner", "daemon", "ssh"), r[0])) if r else {}

    def edge(self) -> tuple[str, int, int]:
        assert self.proxy is not None
        f = self.proxy.fields()
        return "127.0.0.1", int(f["http"].rsplit(":", 1)[1]), int(f["ssh"].rsplit(":", 1)[1])

    def close(self) -> list[str]:
        errors = []
        for p in [*(p for p in (self.proxy, self.local_proxy) if p), *self.runners.values(), *self.apis]:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                errors.append(f"{p.name}: {e}")
        for rid, e in zip(self.runner_ids, self.engines):
            if e.holder is not None and e.holder.poll() is None and e.dockerd is not None and e.dockerd.poll() is None:
                remove_containers(rid, docker_host=e.docker_host, prefix=e.prefix)
        try:
            self.db.drop()
        except Exception as e:  # noqa: BLE001
            errors.append(f"drop database: {e}")
        return errors


@pytest.fixture
def fleet(tmp_path):
    image = built_test_image()
    with engine(tmp_path) as a, engine(tmp_path) as b:
        for e in (a, b):
            e.load_image(image)
        f = Fleet(tmp_path, [a, b], image)
        try:
            f.start()
            yield f
        except BaseException:
            print(f.describe())
            raise
        finally:
            errors = f.close()
            # The rules live in each namespace, gone with it; the link of a dead host comes back for the teardown.
            with contextlib.suppress(RuntimeError):
                run(["ip", "link", "set", f"{a.name}h", "up"])
            assert not errors, errors


def exec_ms(sb, word: str) -> float:
    t = time.perf_counter()
    r = sb.process.exec(f"echo {word}", timeout=30)
    ms = (time.perf_counter() - t) * 1000
    assert (r.exit_code, r.result.strip()) == (0, word), r.result
    return ms


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def preview(fleet: Fleet, sb) -> tuple[int, str]:
    token = sb.get_preview_link(PREVIEW_PORT).token
    host, port, _ = fleet.edge()
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        conn.request("GET", "/", headers={"Host": f"{PREVIEW_PORT}-{sb.id}.localhost:{port}",
                                          "X-Daytona-Preview-Token": token})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def check_everything(fleet: Fleet, sb, where: str) -> None:
    """Exec, files both ways, a PTY, a preview URL and SSH through the gateway, all through the edge."""
    assert exec_ms(sb, f"on-{where}") > 0
    blob = os.urandom(256 << 10)
    sb.fs.upload_file(blob, "/tmp/hosts/blob.bin")
    assert sb.fs.download_file("/tmp/hosts/blob.bin") == blob
    handle = sb.process.create_pty_session(id="pty-" + uuid.uuid4().hex[:6], pty_size=PtySize(rows=24, cols=80))
    got: list[bytes] = []
    handle.send_input("echo pty-$((6*7))\nexit 0\n")
    assert handle.wait(on_data=got.append, timeout=30).exit_code == 0
    assert b"pty-42" in b"".join(got)
    mark = f"page-{where}-{sb.id}"
    r = sb.process.exec(f"mkdir -p /tmp/www && echo {mark} > /tmp/www/index.html && "
                        f"httpd -p {PREVIEW_PORT} -h /tmp/www </dev/null >/dev/null 2>&1; echo ok", timeout=20)
    assert r.exit_code == 0, r.result
    assert wait_until(f"the preview of {sb.id}", lambda: preview(fleet, sb) == (200, mark + "\n"), 20)
    access = sb.create_ssh_access(expires_in_minutes=10)
    host, _, ssh_port = fleet.edge()
    out = subprocess.run(["ssh", *SSH_OPTS, "-p", str(ssh_port), f"{access.token}@{host}", "echo ssh-$((40+2))"],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "ssh-42\n"), out.stderr


def tcp_open(addr: str, timeout: float = 3) -> bool:
    host, port = addr.rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=timeout):
        return True
    return False


def test_sandboxes_on_two_hosts_through_their_advertised_addresses(fleet):
    f = fleet
    a, b = f.runner_ids
    ea, eb = f.engines
    figures: dict[str, object] = {}
    d = Daytona(DaytonaConfig(api_url=f.api_urls[0], api_key=f.api_key))
    # Through the second API: toolbox calls go to the proxy inside B's namespace.
    d_local = Daytona(DaytonaConfig(api_url=f.api_urls[1], api_key=f.api_key))

    # The edge's namespace routes to each host's address, never to a bridge.
    for e in f.engines:
        route = run(["ip", "-o", "route", "get", e.bridge_subnet.replace(".0/24", ".2")]).stdout
        assert f"dev {e.name}h" not in route, route

    # 1. Four creates: placement alternates hosts; each daemon is reported at its host's address.
    first, create_to_exec, first_exec = [], [], []
    for i in range(4):
        t = time.perf_counter()
        sb = d.create(timeout=120)
        first_exec.append(exec_ms(sb, "first"))
        create_to_exec.append((time.perf_counter() - t) * 1000)
        first.append(sb)
    placed = {sb.id: f.row(sb.id) for sb in first}
    assert sorted(r["runner"] for r in placed.values()) == [a, a, b, b], placed
    for sb in first:
        r = placed[sb.id]
        e = ea if r["runner"] == a else eb
        assert r["daemon"].startswith(e.addr + ":") and r["ssh"].startswith(e.addr + ":"), r
        assert r["daemon"] != r["ssh"], r
    on_a = [sb for sb in first if placed[sb.id]["runner"] == a]
    on_b = [sb for sb in first if placed[sb.id]["runner"] == b]
    figures["cross_host_create_to_first_exec_ms_p50"] = p50(create_to_exec)
    figures["cross_host_first_exec_ms_p50"] = p50(first_exec)

    # 2. Everything works to both hosts through the edge.
    for sb in (on_a[0], on_b[0]):
        check_everything(f, sb, placed[sb.id]["runner"])

    # 3. A sandbox cannot reach its neighbour's published daemon port through the host address; the edge can.
    target = placed[on_a[1].id]
    for port_of in ("daemon", "ssh"):
        assert tcp_open(target[port_of]), f"the edge cannot reach {target[port_of]}"
        host, port = target[port_of].rsplit(":", 1)
        r = on_a[0].process.exec(f"nc -w 3 {host} {port} </dev/null && echo CONNECTED || echo refused", timeout=30)
        assert "CONNECTED" not in r.result, f"a sandbox on A opened {target[port_of]}: {r.result}"

    # 4. Exec latency: the edge in this namespace (across hosts) against the proxy on B's own host.
    sb_b_local = d_local.get(on_b[1].id)
    cross = [exec_ms(on_b[1], f"x{i}") for i in range(30)]
    same = [exec_ms(sb_b_local, f"s{i}") for i in range(30)]
    figures["exec_ms_p50_cross_host"] = p50(cross)
    figures["exec_ms_p50_same_host"] = p50(same)
    figures["exec_ms_p50_cross_host_a"] = p50([exec_ms(on_a[1], f"a{i}") for i in range(30)])

    # 5. Host A dies: its runner and engine killed, its link down.
    hb = f.heartbeat(a)
    wait_until("a heartbeat of runner A", lambda: f.heartbeat(a) > hb, 15, step=0.05, detail=f.describe)
    f.runners[a].kill9()
    assert ea.dockerd is not None
    ea.dockerd.kill()
    ea.dockerd.wait(timeout=30)
    run(["ip", "link", "set", f"{ea.name}h", "down"])
    t_dead = time.monotonic()
    wait_until("host A's sandboxes to read `unknown`",
               lambda: all(d.get(sb.id).state.value == "unknown" for sb in on_a), UNREACHABLE_SECS + 20,
               step=0.1, detail=f.describe)
    figures["host_death_to_unknown_s"] = round(time.monotonic() - t_dead, 2)
    assert a in (d.get(on_a[0].id).error_reason or "")
    for sb in on_b:
        assert d.get(sb.id).state.value == "started"
        exec_ms(sb, "still-here")

    # 6. New creates go to B, and work; through B's own proxy, the same-host create-to-first-exec.
    after = [d.create(timeout=120) for _ in range(2)]
    for sb in after:
        assert f.row(sb.id)["runner"] == b
        exec_ms(sb, "on-b")
    local_create, local_first_exec = [], []
    for _ in range(3):
        t = time.perf_counter()
        sb = d_local.create(timeout=120)
        local_first_exec.append(exec_ms(sb, "first"))
        local_create.append((time.perf_counter() - t) * 1000)
        assert f.row(sb.id)["runner"] == b
        after.append(sb)
    figures["same_host_create_to_first_exec_ms_p50"] = p50(local_create)
    figures["same_host_first_exec_ms_p50"] = p50(local_first_exec)

    for sb in [*on_b, *after]:
        d.delete(sb, timeout=60)
    print(f"\nhosts figures: {json.dumps(figures)}")
