"""A scaled-out sandbar for the scale-out test: one PostgreSQL database (fresh per run, dropped after), two
``sandbar-api`` instances on it, two ``sandbar-runner``s with their own ids, each in a network namespace of its own,
and one ``sandbar-proxy``, all started from ``SANDBAR_BIN_DIR``.

Runner namespaces: the runner reaches Docker through its unix socket (a file, so any network namespace sees it),
but it must also reach its API and the daemons of the containers it starts (it waits for their ``GET /version``).
Each namespace gets a veth pair with a /30: the API it talks to listens on the host end's address, a default route
points at the host end, and one ``DOCKER-USER`` rule lets connections from that veth into ``docker0`` (Docker's
FORWARD policy is DROP and its own rules only admit published ports; replies come back through Docker's
``-i docker0 ! -o docker0 -j ACCEPT``).

Cleanup (``ScaleStack.close``, also after a failure): processes stopped (SIGTERM, then SIGKILL), containers removed
by runner label, the ``DOCKER-USER`` rules deleted, the namespaces deleted (which deletes their veths), the database
dropped. Leftovers of a run that was itself killed are swept at the next start: namespaces are named after the pid
of the pytest that made them, and rules naming a veth that no longer exists are dropped.

``shared_archive``: both runners archive to one directory (as an S3 bucket would be shared between hosts). The
APIs get an admin token (``SANDBAR_API_ADMIN_TOKEN`` in ``env``) for ``/api/admin/runners``.

Env: ``SANDBAR_BIN_DIR``, ``SANDBAR_STATIC_DAEMON`` (else scripts/build-daemon), ``SANDBAR_STACK_IMAGE`` (default:
the default image, built by scripts/build-sandbox-image when missing), ``SANDBAR_TEST_DATABASE_URL`` (an existing
database of a role that may create databases; default the one scripts/setup makes).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest

from sandbar_stack import BIN_DIR, REPO, remove_containers
from sandbar_util import Proc, start_proc

ADMIN_DB_URL = os.environ.get("SANDBAR_TEST_DATABASE_URL", "postgres://sandbar:sandbar@127.0.0.1:5432/sandbar_test")
NETNS_PREFIX = "sandbar-scale-"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def wait_until(what: str, fn: Callable[[], object], timeout: float, step: float = 0.1, detail: Callable[[], str] = lambda: ""):
    """Polls ``fn`` until it returns something truthy (returned) or fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - polled calls may fail until the condition holds
            last_error = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}"
                        + (f" (last error: {last_error})" if last_error else "") + f"\n{detail()}")
        time.sleep(step)


# --- PostgreSQL ----------------------------------------------------------------------------------------------------

class Database:
    """A database made for one run on the cluster of ``ADMIN_DB_URL``, queried with ``psql``."""

    def __init__(self) -> None:
        self.name = "sandbar_scale_" + secrets.token_hex(5)
        admin = urlsplit(ADMIN_DB_URL)
        self.url = urlunsplit(admin._replace(path="/" + self.name))
        self.created = False

    def create(self) -> None:
        self.psql(ADMIN_DB_URL, f'CREATE DATABASE "{self.name}"')
        self.created = True

    def drop(self) -> None:
        if self.created:
            # FORCE ends the connections of API processes that were killed rather than stopped.
            self.psql(ADMIN_DB_URL, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False

    @staticmethod
    def psql(url: str, sql: str) -> list[list[str]]:
        p = run("psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-c", sql)
        return [line.split("\t") for line in p.stdout.splitlines() if line]

    def query(self, sql: str) -> list[list[str]]:
        return self.psql(self.url, sql)


# --- network namespaces --------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep_leftovers() -> None:
    """Removes namespaces of scale-out runs whose pytest is gone, and DOCKER-USER rules naming vanished veths."""
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{NETNS_PREFIX}(\d+)-", name)
        # Only namespaces nothing runs in any more: a process left in one is not ours to end.
        if m and not _pid_alive(int(m.group(1))) and not run("ip", "netns", "pids", name, check=False).stdout.split():
            run("ip", "netns", "del", name, check=False)
    existing = set(os.listdir("/sys/class/net"))
    for rule in run("iptables", "-S", "DOCKER-USER", check=False).stdout.splitlines():
        m = re.match(r"^-A DOCKER-USER -i (sbs[0-9a-f]+h) -o (\S+) -j ACCEPT$", rule)
        if m and m.group(1) not in existing:
            run("iptables", "-D", "DOCKER-USER", "-i", m.group(1), "-o", m.group(2), "-j", "ACCEPT", check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    used = run("ip", "-4", "-o", "addr", "show").stdout + run("ip", "-4", "route", "show").stdout
    taken = [ipaddress.ip_network(m, strict=False) for m in re.findall(r"(\d+\.\d+\.\d+\.\d+/\d+)", used)]
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(56) + 200}.{secrets.randbelow(256)}.{secrets.randbelow(64) * 4}/30")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free 10.x /30 for a runner namespace")


@dataclass
class NetNs:
    """A network namespace joined to the host by a veth pair; ``host_ip`` is the host end, ``ns_ip`` the inside."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str = ""
    ns_ip: str = ""
    bridge: str = "docker0"
    rule: bool = False
    made: bool = False

    def create(self) -> None:
        net = _free_subnet()
        hosts = list(net.hosts())
        self.host_ip, self.ns_ip = str(hosts[0]), str(hosts[1])
        run("ip", "netns", "add", self.name)
        self.made = True
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        run("ip", "-n", self.name, "link", "set", "lo", "up")
        run("ip", "-n", self.name, "route", "add", "default", "via", self.host_ip)
        run("iptables", "-I", "DOCKER-USER", "-i", self.host_if, "-o", self.bridge, "-j", "ACCEPT")
        self.rule = True

    def close(self) -> None:
        if self.rule:
            run("iptables", "-D", "DOCKER-USER", "-i", self.host_if, "-o", self.bridge, "-j", "ACCEPT", check=False)
            self.rule = False
        if self.made:
            run("ip", "netns", "del", self.name, check=False)
            self.made = False
        # Deleting the namespace destroys the inside end and with it the pair; this covers a half-made pair.
        if os.path.exists(f"/sys/class/net/{self.host_if}"):
            run("ip", "link", "del", self.host_if, check=False)

    def wrap(self, argv: list[str]) -> list[str]:
        # `ip netns exec` execs the command (no fork), so the child's pid is the runner's.
        return ["ip", "netns", "exec", self.name, *argv]


# --- processes -----------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the stack -----------------------------------------------------------------------------------------------------

@dataclass
class ScaleStack:
    work: Path
    unreachable_secs: int = 10
    # One archive store (a directory) both runners use, so a sandbox archived on one restores on the other.
    shared_archive: bool = False
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    db: Database = field(default_factory=Database)
    namespaces: list[NetNs] = field(default_factory=list)
    apis: list[Proc] = field(default_factory=list)
    api_urls: list[str] = field(default_factory=list)
    runners: dict[str, Proc] = field(default_factory=dict)
    runner_ids: list[str] = field(default_factory=list)
    proxy: Proc | None = None
    api_key: str = ""
    image: str = ""
    daemon: str = ""
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.runner_ids = [f"scale-{self.tag}-a", f"scale-{self.tag}-b"]
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # Everything a failure message should show.
    def describe(self) -> str:
        procs = [*self.apis, *self.runners.values(), *([self.proxy] if self.proxy else [])]
        out = []
        for p in procs:
            out.append(f"--- {p.name} ({'alive' if p.alive() else f'exit {p.popen.returncode}'}) ---\n{p.tail(25)}")
        try:
            out.append("--- jobs ---\n" + "\n".join(" ".join(r) for r in self.db.query(
                "SELECT id, runner_id, sandbox_id, kind, state FROM jobs ORDER BY seq")))
        except Exception as e:  # noqa: BLE001
            out.append(f"--- jobs: {e}")
        return "\n".join(out)

    def start(self) -> None:
        for b in ("sandbar-api", "sandbar-runner", "sandbar-proxy"):
            if not os.access(BIN_DIR / b, os.X_OK):
                pytest.fail(f"{BIN_DIR / b} not found: run `cargo build --workspace --bins` or set SANDBAR_BIN_DIR")
        self.daemon = os.environ.get("SANDBAR_STATIC_DAEMON") or run(str(REPO / "scripts/build-daemon")).stdout.strip()
        self.image = os.environ.get("SANDBAR_STACK_IMAGE") or "sandbar-sandbox:default"
        if self.image == "sandbar-sandbox:default":
            run(str(REPO / "scripts/build-sandbox-image"))
        sweep_leftovers()
        self.started_at = time.time()
        self.db.create()
        self.env = dict(os.environ)
        for k in ("DAYTONA_API_URL", "DAYTONA_API_KEY"):
            self.env.pop(k, None)
        self.env.update({
            "DATABASE_URL": self.db.url,
            "SANDBAR_RUNNER_TOKEN": secrets.token_hex(16),
            "SANDBAR_PROXY_TOKEN": secrets.token_hex(16),
            "SANDBAR_API_ADMIN_TOKEN": secrets.token_hex(16),
            "RUST_LOG": "info",
            "NO_COLOR": "1",
        })
        # Migrations and the first key, once, before either instance serves.
        out = subprocess.run([str(BIN_DIR / "sandbar-api"), "--data-dir", str(self.work), "bootstrap"],
                             capture_output=True, text=True, env=self.env, check=False)
        if out.returncode != 0:
            pytest.fail(f"sandbar-api bootstrap failed: {out.stderr}")
        self.api_key = next(line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("api_key="))

        for i, rid in enumerate(self.runner_ids):
            ns = NetNs(name=f"{NETNS_PREFIX}{os.getpid()}-{self.tag}-{i}", host_if=f"sbs{self.tag}{i}h",
                       ns_if=f"sbs{self.tag}{i}n")
            self.namespaces.append(ns)
            ns.create()

        # The APIs hand out the proxy's URL, so its port is chosen first.
        proxy_port = free_port()
        for i, ns in enumerate(self.namespaces):
            api = start_proc(f"api{i + 1}", [
                str(BIN_DIR / "sandbar-api"), "--listen", f"{ns.host_ip}:0", "--data-dir", str(self.work),
                "--proxy-url", f"http://localhost:{proxy_port}", "--default-snapshot", self.image,
                "--create-wait-ms", "3000", "--runner-unreachable-secs", str(self.unreachable_secs),
            ], self.env, self.logs, "sandbar-api ready", timeout=60)
            self.apis.append(api)
            self.api_urls.append(f"http://{api.fields()['addr']}/api")
        self.proxy = start_proc("proxy", [
            str(BIN_DIR / "sandbar-proxy"), "--api-url", self.api_urls[0], "--data-dir", str(self.work),
            "--bind", "127.0.0.1", "--http-port", str(proxy_port), "--https-port", "0", "--ssh-port", "0",
            "--metrics-addr", "127.0.0.1:0",
        ], self.env, self.logs, "sandbar-proxy ready", timeout=60)
        for i in range(len(self.runner_ids)):
            self.start_runner(i)

    def start_runner(self, i: int) -> Proc:
        rid = self.runner_ids[i]
        ns = self.namespaces[i]
        argv = ns.wrap([
            str(BIN_DIR / "sandbar-runner"), "--runner-id", rid, "--api-url", self.api_urls[i],
            "--daemon-binary", self.daemon, "--runner-listen", "127.0.0.1:0", "--default-image", self.image,
            "--warm-pool", "0", "--runner-state-dir", str(self.work / f"runner-{rid}"),
            "--container-label", "sandbar-e2e=1",
            # A runner in its own network namespace sees that namespace's iptables, not the host's DOCKER-USER
            # chain where sandbox rules must go; this test is about placement and failover, not isolation.
            "--network-rules", "false",
            *(["--archive-store", str(self.work / "archives")] if self.shared_archive else []),
        ])
        since = int(time.time() * 1000)
        proc = start_proc(f"runner-{rid}", argv, self.env, self.logs, "sandbar-runner ready", timeout=120)
        self.runners[rid] = proc
        # Ready once the control plane has its heartbeat.
        wait_until(f"a heartbeat from {rid}", lambda: self.heartbeat(rid) >= since, 30, detail=self.describe)
        return proc

    def heartbeat(self, runner_id: str) -> int:
        rows = self.db.query(f"SELECT last_heartbeat FROM runners WHERE id = '{runner_id}'")
        return int(rows[0][0]) if rows else 0

    def admin(self, runner_id: str, action: str) -> None:
        """``cordon`` or ``uncordon`` a runner through the first API's admin endpoint (the operator's token)."""
        req = urllib.request.Request(f"{self.api_urls[0]}/admin/runners/{runner_id}/{action}", method="POST",
                                     headers={"Authorization": f"Bearer {self.env['SANDBAR_API_ADMIN_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, r.read()

    def runner_of(self, sandbox_id: str) -> str:
        rows = self.db.query(f"SELECT runner_id FROM sandboxes WHERE id = '{sandbox_id}'")
        return rows[0][0] if rows else ""

    def close(self) -> None:
        errors = []
        procs = [*([self.proxy] if self.proxy else []), *self.runners.values(), *self.apis]
        for p in procs:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                errors.append(f"{p.name}: {e}")
        for rid in self.runner_ids:
            remove_containers(rid)
        for ns in self.namespaces:
            ns.close()
        try:
            self.db.drop()
        except Exception as e:  # noqa: BLE001
            errors.append(f"drop database: {e}")
        if errors:
            raise RuntimeError("cleanup: " + "; ".join(errors))
