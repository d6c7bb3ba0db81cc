"""Fixtures: a real `sandbar-daemon` on loopback, an edge stand-in in front of it, and the real Daytona SDK.

The SDK is used exactly as a user would: ``Daytona(DaytonaConfig(api_url=..., api_key=...)).get(sandbox_id)``
returns a real ``Sandbox`` whose ``process`` / ``fs`` / ``git`` objects build their requests with the SDK's own
toolbox client against ``{toolboxProxyUrl}/{sandboxId}/...``. The edge strips that prefix and adds the daemon
token, as sandbar's proxy does.

Env: ``SANDBAR_DAEMON_BIN`` (default ``<repo>/target/debug/sandbar-daemon``).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbar_edge import Edge  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DAEMON_BIN = os.environ.get("SANDBAR_DAEMON_BIN", str(REPO / "target" / "debug" / "sandbar-daemon"))
READY_RE = re.compile(r"^sandbar-daemon ready .*\btoolbox=(\S+)")
SANDBOX_ID = "sbx-pytest"
SANDBOX_NO_TOKEN_ID = "sbx-pytest-notoken"
API_KEY = "sandbar-test-" + secrets.token_hex(8)


@dataclass
class DaemonProc:
    proc: subprocess.Popen
    token: str
    addr: str
    work_dir: Path
    home_dir: Path
    state_dir: Path
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)

    def stderr_text(self, start: int = 0) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"<cannot read daemon stderr: {e}>"

    def stderr_size(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except OSError:
            return 0

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not drain in time. Returns the exit code (None if killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return None


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
    env = dict(os.environ)
    for k in [k for k in env if k.startswith("SANDBAR_")]:
        del env[k]
    env.update(
        SANDBAR_DAEMON_TOKEN=token,
        SANDBAR_TOOLBOX_ADDR="127.0.0.1:0",
        SANDBAR_SSH_ADDR="127.0.0.1:0",
        SANDBAR_TERMINAL_ADDR="127.0.0.1:0",
        SANDBAR_WORK_DIR=str(work),
        SANDBAR_STATE_DIR=str(state),
        SANDBAR_SANDBOX_ID=SANDBOX_ID,
        HOME=str(home),
        RUST_LOG=os.environ.get("RUST_LOG", "info"),
        NO_COLOR="1",
    )
    env.update(extra_env or {})
    stderr_path = base / "daemon.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [DAEMON_BIN],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=str(work),
            start_new_session=True,
        )
    d = DaemonProc(proc, token, "", work, home, state, stderr_path)
    ready = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # keep draining after the ready line so the daemon never blocks on stdout
            line = raw.decode("utf-8", "replace").rstrip("\n")
            d.stdout_lines.append(line)
            m = READY_RE.match(line)
            if m and not ready.is_set():
                d.addr = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read_stdout, name="daemon-stdout", daemon=True).start()
    if not ready.wait(ready_timeout) or not d.addr:
        d.stop(timeout=5)
        pytest.fail(
            f"sandbar-daemon did not print its ready line within {ready_timeout}s "
            f"(exit code {proc.poll()}); stdout={d.stdout_lines!r}\nstderr:\n{d.stderr_text()}"
        )
    return d


# -- daemon stderr / edge log attached to failing tests -------------------------------------------------------
_current: dict[str, object] = {}


def pytest_runtest_setup(item):
    daemon = _current.get("daemon")
    edge = _current.get("edge")
    item.stash[_offsets_key] = (
        daemon.stderr_size() if isinstance(daemon, DaemonProc) else 0,
        len(edge.log) if isinstance(edge, Edge) else 0,
    )


_offsets_key = pytest.StashKey[tuple]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    err_off, log_off = item.stash.get(_offsets_key, (0, 0))
    daemon = _current.get("daemon")
    edge = _current.get("edge")
    if isinstance(edge, Edge):
        rep.sections.append(
            ("requests through the edge during this test", "\n".join(str(e) for e in edge.log[log_off:]) or "-")
        )
    if isinstance(daemon, DaemonProc):
        rep.sections.append(("sandbar-daemon stderr during this test", daemon.stderr_text(err_off) or "-"))


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
        text = f"exit code after SIGTERM: {code}\n" + d.stderr_text()
        if tr is not None:
            tr.write_sep("=", "sandbar-daemon stderr (whole session)")
            tr.write_line(text)
        else:
            print(text, file=sys.stderr)


@pytest.fixture(scope="session")
def edge(daemon):
    e = Edge(api_key=API_KEY).start()
    e.add_sandbox(SANDBOX_ID, daemon.addr, daemon.token)
    e.add_sandbox(SANDBOX_NO_TOKEN_ID, daemon.addr, None)
    _current["edge"] = e
    yield e
    _current.pop("edge", None)
    e.stop()


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
