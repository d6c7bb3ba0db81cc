"""Fixtures: a real `sandbar-daemon` on loopback, the real `sandbar-proxy` in front of it, and the real Daytona SDK.

The SDK is used exactly as a user would: ``Daytona(DaytonaConfig(api_url=..., api_key=...)).get(sandbox_id)``
returns a real ``Sandbox`` whose ``process`` / ``fs`` / ``git`` objects build their requests with the SDK's own
toolbox client against ``{toolboxProxyUrl}/{sandboxId}/...``. That URL is the proxy's: it strips the prefix, drops
the caller's credentials and signs each request with the daemon token, as in production.

In place of the API, a small route server ([`RouteServer`]) holds the test's data: the sandboxes (their daemon's
address and token), the API key, and the proxy's service token. It answers the SDK's ``GET /api/sandbox/{id}`` and
the proxy's internal calls; the rewriting rules are the proxy's own.

Env: ``SANDBAR_DAEMON_BIN`` (default ``<repo>/target/debug/sandbar-daemon``), ``SANDBAR_BIN_DIR`` (where
``sandbar-proxy`` is; default ``<repo>/target/debug``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbar_util import Proc, start_proc  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DAEMON_BIN = os.environ.get("SANDBAR_DAEMON_BIN", str(REPO / "target" / "debug" / "sandbar-daemon"))
BIN_DIR = Path(os.environ.get("SANDBAR_BIN_DIR", str(REPO / "target" / "debug")))
SANDBOX_ID = "sbx-pytest"
SANDBOX_NO_TOKEN_ID = "sbx-pytest-notoken"
API_KEY = "sandbar-test-" + secrets.token_hex(8)
ORGANIZATION_ID = "org-sandbar-tests"


def service_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any ``SANDBAR_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBAR_")}
    env.update(RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
    env.update(extra)
    return env


@dataclass
class DaemonProc:
    proc: Proc
    token: str
    addr: str
    work_dir: Path
    home_dir: Path
    state_dir: Path

    def log_text(self, start: int = 0) -> str:
        return self.proc.log_text(start)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not drain in time. Returns the exit code (None if killed)."""
        return self.proc.stop(timeout)


def start_daemon(base: Path, extra_env: dict[str, str] | None = None, ready_timeout: float = 30) -> DaemonProc:
    if not os.access(DAEMON_BIN, os.X_OK):
        pytest.fail(
            f"sandbar-daemon binary not found at {DAEMON_BIN}: run `cargo build -p sandbar-daemon` "
            "in the repository or set SANDBAR_DAEMON_BIN"
        )
    token = secrets.token_hex(24)
    work, state, home = base / "work", base / "state", base / "home"
    for d in (work, state, home):
        d.mkdir(parents=True, exist_ok=True)
    env = service_env(
        {
            "SANDBAR_DAEMON_TOKEN": token,
            "SANDBAR_TOOLBOX_ADDR": "127.0.0.1:0",
            "SANDBAR_SSH_ADDR": "127.0.0.1:0",
            "SANDBAR_TERMINAL_ADDR": "127.0.0.1:0",
            "SANDBAR_WORK_DIR": str(work),
            "SANDBAR_STATE_DIR": str(state),
            "SANDBAR_SANDBOX_ID": SANDBOX_ID,
            "HOME": str(home),
            **(extra_env or {}),
        }
    )
    proc = start_proc(
        "daemon", [DAEMON_BIN], env, base, "sandbar-daemon ready ", ready_timeout, cwd=work, new_session=True
    )
    return DaemonProc(proc, token, proc.fields()["toolbox"], work, home, state)


class RouteServer(ThreadingHTTPServer):
    """The API as far as these tests need it: ``GET /api/sandbox/{id}`` for the SDK (with the API key), and for the
    proxy (with its service token) ``GET /api/internal/routes/{id}``, the ``routes/changes`` long-poll,
    ``POST /api/internal/authorize`` (grants the API key on every known sandbox) and ``POST /api/internal/activity``.
    Every other path is a 404, which the SDK tolerates (its Socket.IO probe among them)."""

    daemon_threads = True

    def __init__(self, api_key: str, proxy_token: str) -> None:
        super().__init__(("127.0.0.1", 0), RouteHandler)
        self.api_key = api_key
        self.proxy_token = proxy_token
        self.toolbox_proxy_url = ""
        self.routes: dict[str, dict] = {}
        self.seq = 0
        self.changed_at: dict[str, int] = {}  # sandbox id -> seq of its last change
        self.changed = threading.Condition()
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def set_route(self, sandbox_id: str, route: dict | None) -> None:
        """Adds, replaces (``route``) or removes (None) a sandbox, and announces it on the changes long-poll."""
        with self.changed:
            if route is None:
                self.routes.pop(sandbox_id, None)
            else:
                self.routes[sandbox_id] = route
            self.seq += 1
            self.changed_at[sandbox_id] = self.seq
            self.changed.notify_all()

    def changes(self, since: int, wait: float) -> dict:
        with self.changed:
            self.changed.wait_for(lambda: self.seq > since, timeout=wait)
            return {"seq": self.seq, "sandboxIds": [i for i, seq in self.changed_at.items() if seq > since]}

    def sandbox_dto(self, sandbox_id: str) -> dict:
        return {
            "id": sandbox_id,
            "organizationId": ORGANIZATION_ID,
            "name": sandbox_id,
            "user": "sandbar",
            "env": {},
            "labels": {"code-toolbox-language": "python"},
            "public": False,
            "networkBlockAll": False,
            "kvm": False,
            "target": "local",
            "cpu": 1,
            "gpu": 0,
            "memory": 1,
            "disk": 3,
            "state": "started",
            "desiredState": "started",
            "toolboxProxyUrl": self.toolbox_proxy_url,
            "createdAt": "2026-01-01T00:00:00.000Z",
            "updatedAt": "2026-01-01T00:00:00.000Z",
        }


class RouteHandler(BaseHTTPRequestHandler):
    server: RouteServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        self.server.log.append(f"{self.command} {self.path} => {args[1] if len(args) > 1 else '?'}")

    def answer(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def bearer(self, want: str) -> bool:
        return secrets.compare_digest(self.headers.get("Authorization", ""), f"Bearer {want}")

    def body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        s = self.server
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts[:2] == ["api", "internal"]:
            if not self.bearer(s.proxy_token):
                return self.answer(401, {"statusCode": 401, "message": "Unauthorized"})
            if parts[2:] == ["routes", "changes"]:
                q = parse_qs(url.query)
                return self.answer(200, s.changes(int(q["since"][0]), float(q["wait"][0])))
            if len(parts) == 4 and parts[2] == "routes" and parts[3] in s.routes:
                return self.answer(200, s.routes[parts[3]])
        elif len(parts) == 3 and parts[:2] == ["api", "sandbox"] and not url.path.startswith("/api/socket.io"):
            if not self.bearer(s.api_key):
                return self.answer(401, {"statusCode": 401, "message": "Unauthorized", "error": "Unauthorized"})
            if parts[2] in s.routes:
                return self.answer(200, s.sandbox_dto(parts[2]))
        self.answer(404, {"statusCode": 404, "message": f"not found: {url.path}", "error": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        s = self.server
        body = self.body()
        if not self.bearer(s.proxy_token):
            return self.answer(401, {"statusCode": 401, "message": "Unauthorized"})
        if self.path == "/api/internal/authorize":
            if body.get("sandboxId") not in s.routes:
                return self.answer(404, {"statusCode": 404, "message": "sandbox not found"})
            if not secrets.compare_digest(body.get("apiKey") or "", s.api_key):
                return self.answer(401, {"statusCode": 401, "message": "invalid API key"})
            return self.answer(200, {"organizationId": ORGANIZATION_ID, "ttlSecs": 60})
        if self.path == "/api/internal/activity":
            return self.answer(204)
        self.answer(404, {"statusCode": 404, "message": f"not found: {self.path}", "error": "Not Found"})


@dataclass
class Edge:
    """The route server and the real proxy in front of the tests' daemons."""

    routes: RouteServer
    proxy: Proc

    @property
    def api_url(self) -> str:
        return f"{self.routes.url}/api"

    def add_sandbox(self, sandbox_id: str, daemon_addr: str, daemon_token: str) -> None:
        self.routes.set_route(
            sandbox_id,
            {
                "sandboxId": sandbox_id,
                "organizationId": ORGANIZATION_ID,
                "state": "started",
                "daemonAddr": daemon_addr,
                "daemonToken": daemon_token,
                "public": False,
                "version": self.routes.seq + 1,
            },
        )

    def remove_sandbox(self, sandbox_id: str) -> None:
        self.routes.set_route(sandbox_id, None)


def start_edge(base: Path, api_key: str) -> Edge:
    proxy_bin = BIN_DIR / "sandbar-proxy"
    if not os.access(proxy_bin, os.X_OK):
        pytest.fail(f"{proxy_bin} not found: run `cargo build --workspace --bins` or set SANDBAR_BIN_DIR")
    proxy_token = secrets.token_hex(24)
    routes = RouteServer(api_key, proxy_token)
    threading.Thread(target=routes.serve_forever, name="route-server", daemon=True).start()
    env = service_env(
        {
            "SANDBAR_API_URL": routes.url,
            "SANDBAR_PROXY_TOKEN": proxy_token,
            "SANDBAR_DATA_DIR": str(base),
            "SANDBAR_PROXY_BIND": "127.0.0.1",
            "SANDBAR_PROXY_HTTP_PORT": "0",
            "SANDBAR_PROXY_HTTPS_PORT": "0",
            "SANDBAR_PROXY_SSH_PORT": "0",
            "SANDBAR_PROXY_METRICS_ADDR": "127.0.0.1:0",
        }
    )
    try:
        proxy = start_proc("proxy", [str(proxy_bin)], env, base, "sandbar-proxy ready ", 30)
    except BaseException:
        routes.shutdown()
        raise
    routes.toolbox_proxy_url = f"http://{proxy.fields()['http']}/toolbox"
    return Edge(routes, proxy)


# -- logs attached to failing tests ----------------------------------------------------------------------------
_current: dict[str, object] = {}
_offsets_key = pytest.StashKey[tuple]()


def pytest_runtest_setup(item):
    daemon = _current.get("daemon")
    edge = _current.get("edge")
    item.stash[_offsets_key] = (
        daemon.proc.log_size() if isinstance(daemon, DaemonProc) else 0,
        edge.proxy.log_size() if isinstance(edge, Edge) else 0,
        len(edge.routes.log) if isinstance(edge, Edge) else 0,
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    daemon_off, proxy_off, routes_off = item.stash.get(_offsets_key, (0, 0, 0))
    daemon = _current.get("daemon")
    edge = _current.get("edge")
    if isinstance(edge, Edge):
        rep.sections.append(("route server requests during this test", "\n".join(edge.routes.log[routes_off:]) or "-"))
        rep.sections.append(("sandbar-proxy log during this test", edge.proxy.log_text(proxy_off) or "-"))
    if isinstance(daemon, DaemonProc):
        rep.sections.append(("sandbar-daemon log during this test", daemon.log_text(daemon_off) or "-"))


# -- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def daemon(tmp_path_factory, request):
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    _current["daemon"] = d
    yield d
    _current.pop("daemon", None)
    code = d.stop()
    if request.session.testsfailed:
        tr = request.config.pluginmanager.get_plugin("terminalreporter")
        text = f"exit code after SIGTERM: {code}\n" + d.log_text()
        if tr is not None:
            tr.write_sep("=", "sandbar-daemon log (whole session)")
            tr.write_line(text)
        else:
            print(text, file=sys.stderr)


@pytest.fixture(scope="session")
def edge(daemon, tmp_path_factory):
    e = start_edge(tmp_path_factory.mktemp("edge"), API_KEY)
    e.add_sandbox(SANDBOX_ID, daemon.addr, daemon.token)
    # The route of this one carries no daemon token: the proxy signs with an empty key, which the daemon refuses.
    e.add_sandbox(SANDBOX_NO_TOKEN_ID, daemon.addr, "")
    _current["edge"] = e
    yield e
    _current.pop("edge", None)
    e.proxy.stop()
    e.routes.shutdown()


@pytest.fixture(scope="session")
def daytona(edge):
    from daytona import Daytona, DaytonaConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = Daytona(DaytonaConfig(api_key=API_KEY, api_url=edge.api_url, target="local"))
    yield client


@pytest.fixture
def sandbox(daytona):
    """A real SDK `Sandbox`, obtained through `Daytona.get()` like any user would."""
    sb = daytona.get(SANDBOX_ID)
    assert sb.toolbox_proxy_url.endswith("/toolbox")
    return sb


@pytest.fixture
def ws(daemon, request) -> Path:
    """A fresh directory inside the daemon's work dir for this test (absolute host path == sandbox path)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    p = daemon.work_dir / "t" / f"{name}-{secrets.token_hex(3)}"
    p.mkdir(parents=True)
    return p
