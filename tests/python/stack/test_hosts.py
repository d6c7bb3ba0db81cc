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
- Images travel (a fleet with an internal registry, Debian's ``docker-registry`` on A's far end that both engines
  reach, plain HTTP through their ``insecure-registries``, and one archive store): a snapshot taken on A and an
  image built on A start sandboxes on B (A cordoned through the admin API), which pulls them; a fork made on B,
  archived, restores on A; deleting the snapshot deletes its registry copy.
- LSP (a fleet with the real default image in both engines): pylsp answers through the edge on both hosts.

Figures (``-s``): create-to-first-exec and exec p50 across hosts and on the same host, and the time from host A's
death to ``unknown``; the push of a snapshot's image, and a create on B that pulls it against one that finds it. Cleanup (also after a failure): processes stopped, sandboxes' containers and rules removed
with their engines and namespaces (engine.py), the database dropped.

Env: as scale_stack.py (``SANDBAR_BIN_DIR``, ``SANDBAR_STATIC_DAEMON``, ``SANDBAR_TEST_DATABASE_URL``) and
``SANDBAR_TEST_IMAGE`` (the small busybox image; built when missing).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import time
import urllib.request
import uuid

import pytest
from daytona import (CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, DaytonaError,
                     Image)
from daytona.common.pty import PtySize

from engine import Engine, built_test_image, engine, run
from registry import Registry
from sandbar_stack import BIN_DIR, REPO, remove_containers
from sandbar_util import Proc, check_pylsp, start_proc
from scale_stack import Database, free_port, wait_until

UNREACHABLE_SECS = 10
ADMIN_TOKEN = secrets.token_hex(16)
# The real default image (pylsp inside), for LSP.
SANDBOX_IMAGE = os.environ.get("SANDBAR_STACK_IMAGE", "sandbar-sandbox:default")
# Every engine's veth pair lies in it (engine.py).
VETH_SPACE = "10.213.0.0/16"
PREVIEW_PORT = 8080
SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]


class Fleet:
    """The two hosts, the APIs, the proxies and the runners; see the module doc."""

    def __init__(self, work, engines: list[Engine], image: str, runner_args: list[str] | None = None,
                 api_args: list[str] | None = None):
        self.work = work
        self.runner_args = runner_args or []
        self.api_args = api_args or []
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
        self.registry: Registry | None = None

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
                         "SANDBAR_PROXY_TOKEN": secrets.token_hex(16), "RUST_LOG": "info", "NO_COLOR": "1",
                         "SANDBAR_API_ADMIN_TOKEN": ADMIN_TOKEN})
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
                "--runner-unreachable-secs", str(UNREACHABLE_SECS), *self.api_args,
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
                "--container-label", "sandbar-e2e=1", "--advertise-addr", e.addr, *self.runner_args,
            ], {**self.env, "DOCKER_HOST": e.docker_host}, self.logs, "sandbar-runner ready", timeout=120)
            wait_until(f"a heartbeat from {rid}", lambda r=rid, t=since: self.heartbeat(r) >= t, 30,
                       detail=self.describe)

    def admin(self, runner_id: str, action: str) -> None:
        """``cordon``, ``uncordon`` or ``drain`` a runner through the operator's admin API."""
        req = urllib.request.Request(f"{self.api_urls[0]}/admin/runners/{runner_id}/{action}", method="POST",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, r.read()

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


@contextlib.contextmanager
def _fleet(tmp_path, with_registry: bool = False, extra_images: tuple[str, ...] = ()):
    """The fleet of the module doc; ``with_registry``: and an internal registry (registry.py, deletes allowed) on
    host A's far end, which B's namespace routes to through this one, given to both runners (``--image-registry``),
    with one archive store both runners use; ``extra_images``: loaded into both engines and allowed by the APIs."""
    image = built_test_image()
    # Plain HTTP to the registry on a 10.213.N.1 address: each engine's insecure-registries.
    insecure = [VETH_SPACE] if with_registry else None
    with engine(tmp_path, insecure_registries=insecure) as a, engine(tmp_path, insecure_registries=insecure) as b:
        # Both engines load at once (the default image takes most of a minute each: every file is chowned for
        # the engine's userns-remap).
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(lambda e=e: [e.load_image(i) for i in (image, *extra_images)]) for e in (a, b)]:
                f.result()
        registry = None
        runner_args: list[str] = []
        try:
            if with_registry:
                registry = Registry(host=a.host_addr, delete=True)
                run([*b.prefix, "ip", "route", "add", f"{a.host_addr}/32", "via", b.host_addr])
                runner_args = ["--image-registry", f"http://{registry.addr}/sandbar",
                               "--archive-store", str(tmp_path / "archives")]
            api_args = [f"--allowed-image={i}" for i in extra_images]
            f = Fleet(tmp_path, [a, b], image, runner_args, api_args)
            f.registry = registry
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
        finally:
            if registry is not None:
                registry.stop()


@pytest.fixture
def fleet(tmp_path):
    with _fleet(tmp_path) as f:
        yield f


@pytest.fixture
def fleet_with_registry(tmp_path):
    with _fleet(tmp_path, with_registry=True) as f:
        yield f


@pytest.fixture
def fleet_with_sandbox_image(tmp_path):
    with _fleet(tmp_path, extra_images=(SANDBOX_IMAGE,)) as f:
        yield f


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


def _runner_log_secs(f: Fleet, runner_id: str, message: str, needle: str) -> float:
    """The ``secs=`` field of the runner's last log line with ``message`` and ``needle``."""
    lines = [ln for ln in f.runners[runner_id].log_path.read_text(errors="replace").splitlines()
             if message in ln and needle in ln]
    assert lines, f"no {message!r} line about {needle} in {runner_id}'s log"
    m = re.search(r"secs=([0-9.]+)", lines[-1])
    assert m, lines[-1]
    return round(float(m.group(1)), 3)


def test_images_travel_between_hosts_through_the_registry(fleet_with_registry):
    """A snapshot taken on host A, and an image built there, start sandboxes on host B (A cordoned), which pulls
    them from the internal registry; a fork made on B, archived, restores on A; deleting the snapshot deletes its
    registry copy. Figures: the push of the snapshot's image, a create on B that pulls it against one that finds
    it local."""
    f = fleet_with_registry
    assert f.registry is not None
    a, b = f.runner_ids
    d = Daytona(DaytonaConfig(api_url=f.api_urls[0], api_key=f.api_key))
    figures: dict[str, object] = {}
    made = []
    token = secrets.token_hex(3)
    try:
        # 1. A snapshot of a sandbox on A, pushed by A's runner.
        f.admin(b, "cordon")
        src = d.create(timeout=120)
        made.append(src)
        assert f.row(src.id)["runner"] == a
        src.fs.upload_file(b"made on A\n", "/tmp/travel/file.txt")
        name = f"travel-{token}"
        t = time.perf_counter()
        src.create_snapshot(name, timeout=180)
        figures["snapshot_with_push_s"] = round(time.perf_counter() - t, 3)
        snap = d.snapshot.get(name)
        pushed, push_error = f.db.query(f"SELECT pushed_image, push_error FROM snapshots WHERE name = '{name}'")[0]
        assert pushed == f"{f.registry.addr}/sandbar/{snap.image_name}", (pushed, push_error)
        tag = snap.image_name.split(":", 1)[1]
        assert tag in f.registry.tags("sandbar/sandbar-snapshot")
        figures["snapshot_push_s"] = _runner_log_secs(f, a, "image pushed", snap.image_name)

        # 2. A cordoned, B open: a sandbox of the snapshot starts on B, which pulls the image first, and works.
        f.admin(b, "uncordon")
        f.admin(a, "cordon")
        t = time.perf_counter()
        on_b = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=180)
        figures["create_on_b_with_pull_ms"] = round((time.perf_counter() - t) * 1000, 1)
        made.append(on_b)
        assert f.row(on_b.id)["runner"] == b
        assert on_b.fs.download_file("/tmp/travel/file.txt") == b"made on A\n"
        exec_ms(on_b, "travelled")
        figures["pull_on_b_s"] = _runner_log_secs(f, b, "pushed image pulled", snap.image_name)
        # The image is on B now: the next create there is a local one.
        t = time.perf_counter()
        again = d.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=180)
        figures["create_on_b_local_ms"] = round((time.perf_counter() - t) * 1000, 1)
        made.append(again)
        assert f.row(again.id)["runner"] == b
        exec_ms(again, "local")

        # 3. An image built on A (a Dockerfile snapshot) starts on B.
        f.admin(a, "uncordon")
        f.admin(b, "cordon")
        built = f"built-{token}"
        image = Image.base(f.image).run_commands(f"echo built-on-a-{token} > /built.txt")
        d.snapshot.create(CreateSnapshotParams(name=built, image=image), timeout=300)
        build_runner = f.db.query(
            f"SELECT b.runner_id, b.pushed_image FROM builds b JOIN snapshots s ON s.build_id = b.id "
            f"WHERE s.name = '{built}'")[0]
        assert build_runner[0] == a and build_runner[1], build_runner
        f.admin(b, "uncordon")
        f.admin(a, "cordon")
        from_build = d.create(CreateSandboxFromSnapshotParams(snapshot=built), timeout=180)
        made.append(from_build)
        assert f.row(from_build.id)["runner"] == b
        r = from_build.process.exec("cat /built.txt", timeout=30)
        assert (r.exit_code, r.result.strip()) == (0, f"built-on-a-{token}"), r.result

        # 4. A fork of the snapshot's sandbox on B, archived, restores on A (one archive store): its base, the
        # snapshot's image, is there (or pulled from the registry through the sandbox's image source).
        fork = on_b.fork(timeout=120)
        made.append(fork)
        assert f.row(fork.id)["runner"] == b
        fork.fs.upload_file(b"forked on B\n", "/tmp/travel/fork.txt")
        fork.stop(timeout=60)
        fork.archive()
        wait_until("the fork to be archived", lambda: d.get(fork.id).state.value == "archived", 120, detail=f.describe)
        f.admin(a, "uncordon")
        f.admin(b, "cordon")
        fork.start(timeout=180)
        assert f.row(fork.id)["runner"] == a
        assert fork.fs.download_file("/tmp/travel/fork.txt") == b"forked on B\n"
        assert fork.fs.download_file("/tmp/travel/file.txt") == b"made on A\n"
        f.admin(b, "uncordon")

        # 5. Deleting the snapshot (its sandboxes first) deletes its copy from the registry.
        for sb in (on_b, again, fork):
            d.delete(sb, timeout=60)
            made.remove(sb)

        def deleted() -> bool:
            # Refused (409) while a deleted sandbox is still being destroyed.
            try:
                d.snapshot.delete(d.snapshot.get(name))
                return True
            except DaytonaError as e:
                assert "in use" in str(e) or "used by" in str(e), e
                return False

        wait_until("the snapshot's delete", deleted, 60, detail=f.describe)
        wait_until("the registry copy to go", lambda: tag not in f.registry.tags("sandbar/sandbar-snapshot"), 60,
                   detail=f.describe)
    finally:
        for sb in made:
            with contextlib.suppress(Exception):
                d.delete(sb, timeout=60)
    print(f"\nimages travel figures: {json.dumps(figures)}")


def test_lsp_to_both_hosts(fleet_with_sandbox_image):
    """pylsp in a sandbox of the real default image on each host, driven over the daemon's LSP WebSocket through
    the edge in this namespace (``check_pylsp``)."""
    f = fleet_with_sandbox_image
    a, b = f.runner_ids
    d = Daytona(DaytonaConfig(api_url=f.api_urls[0], api_key=f.api_key))
    made = []
    try:
        for here, other in ((a, b), (b, a)):
            f.admin(other, "cordon")
            f.admin(here, "uncordon")
            sb = d.create(CreateSandboxFromSnapshotParams(snapshot=SANDBOX_IMAGE), timeout=180)
            made.append(sb)
            assert f.row(sb.id)["runner"] == here
            check_pylsp(sb, f.api_key, f"/tmp/lsp-{here}")
    finally:
        for sb in made:
            with contextlib.suppress(Exception):
                d.delete(sb, timeout=60)
