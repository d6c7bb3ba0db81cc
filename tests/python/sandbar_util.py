"""Small helpers shared by the tests (tests/python and tests/python/stack): polling, service processes, an LSP client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def daemon_auth(token: str, method: str, path_and_query: str) -> str:
    """The `X-Sandbar-Daemon-Auth` credential for one request straight to a daemon, made as
    `sandbar_support::daemon_auth::sign` makes it: HMAC-SHA256 keyed by the daemon token over the version, method,
    path and query, unix-ms time and a fresh nonce. Good once, for a minute."""
    ts = int(time.time() * 1000)
    nonce = secrets.token_hex(16)
    canonical = f"sandbar-daemon-auth-v1\n{method}\n{path_and_query}\n{ts}\n{nonce}"
    sig = hmac.new(token.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return f"v1.{ts}.{nonce}.{sig}"


def wait_until(predicate, timeout: float = 10, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {last!r}")


def read_until(handle, needle: bytes, timeout: float = 20) -> bytes:
    """A PTY's output through the SDK's public ``wait(on_data, timeout)`` until ``needle`` shows up; fails if the
    shell exits first."""
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"waiting for {needle!r}; seen {bytes(seen)!r}"
        result = handle.wait(on_data=seen.extend, timeout=min(remaining, 0.5))
        assert result.exit_code is None or needle in seen, f"shell exited early: {result}; seen {bytes(seen)!r}"
    return bytes(seen)


def stop_process(popen: subprocess.Popen, timeout: float = 15) -> int | None:
    """SIGTERM, then wait; SIGKILL if it does not drain in time. Returns the exit code (None if it had to be killed)."""
    if popen.poll() is not None:
        return popen.returncode
    popen.send_signal(signal.SIGTERM)
    try:
        return popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=10)
        return None


@dataclass
class Proc:
    """A service binary started by [`start_proc`]: its stdout and stderr go to ``log_path``; its stdout lines are
    also kept in ``lines``."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    ready_line: str = ""
    lines: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, str]:
        """The ``key=value`` words of the ready line."""
        return dict(w.split("=", 1) for w in self.ready_line.split() if "=" in w)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15) -> int | None:
        return stop_process(self.popen, timeout)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_text(self, start: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


def start_proc(name: str, argv: list[str], env: dict[str, str], log_dir: Path, ready_prefix: str,
               timeout: float = 120, cwd: Path | None = None, new_session: bool = False) -> Proc:
    """Starts ``argv`` with stderr and stdout in ``<log_dir>/<name>.log`` and waits for its ready line (the first
    stdout line starting with ``ready_prefix``); fails the test when it exits or times out first. Stdout keeps being
    drained into the log, so the process never blocks on a full pipe."""
    import pytest

    log_path = log_dir / f"{name}.log"
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - shared with the reader thread, closed with it
    popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                             errors="replace", env=env, cwd=cwd, start_new_session=new_session)
    proc = Proc(name=name, popen=popen, log_path=log_path)
    ready = threading.Event()

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            log.write(line)
            proc.lines.append(line.rstrip("\n"))
            if not ready.is_set() and line.startswith(ready_prefix):
                proc.ready_line = line.strip()
                ready.set()
        log.close()
        ready.set()

    threading.Thread(target=read, name=f"{name}-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if time.monotonic() > deadline:
            proc.stop()
            pytest.fail(f"{name} was not ready within {timeout}s:\n{proc.tail()}")
    if not proc.ready_line:
        popen.wait(timeout=10)
        pytest.fail(f"{name} exited ({popen.returncode}) before it was ready:\n{proc.tail()}")
    return proc


@contextlib.asynccontextmanager
async def lsp_client(url: str, headers: dict[str, str], root_uri: str, timeout: float):
    """pygls's LanguageClient over an LSP WebSocket (pygls's own ``start_ws()`` takes only a host and a port):
    yields ``(client, initialize result, queue of publishDiagnostics params)`` after ``initialized``, and shuts the
    server down when the block ends without an error."""
    from lsprotocol import types as t
    from pygls.io_ import run_websocket
    from pygls.lsp.client import LanguageClient
    from websockets.asyncio.client import connect

    client = LanguageClient("sandbar-test", "1.0")
    diagnostics: asyncio.Queue = asyncio.Queue()

    @client.feature(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def on_diagnostics(params: t.PublishDiagnosticsParams):
        diagnostics.put_nowait(params)

    socket = await connect(url, additional_headers=headers)
    loop_task = asyncio.create_task(
        run_websocket(websocket=socket, stop_event=client._stop_event, protocol=client.protocol)
    )
    try:
        result = await asyncio.wait_for(
            client.initialize_async(
                t.InitializeParams(capabilities=t.ClientCapabilities(), root_uri=root_uri, process_id=None)
            ),
            timeout,
        )
        client.initialized(t.InitializedParams())
        yield client, result, diagnostics
        await asyncio.wait_for(client.shutdown_async(None), 10)
        client.exit(None)
    finally:
        client._stop_event.set()
        await socket.close()
        loop_task.cancel()


async def next_diagnostics(queue: asyncio.Queue, uri: str, timeout: float):
    """The first non-empty publishDiagnostics for ``uri``."""
    while True:
        params = await asyncio.wait_for(queue.get(), timeout)
        if params.uri == uri and params.diagnostics:
            return params


def check_pylsp(sandbox, api_key: str, project: str) -> None:
    """Drives the sandbox's pylsp over the daemon's /lsp/ws WebSocket through the proxy of its
    ``toolbox_proxy_url`` with only the API key: initialize answered by pylsp, diagnostics for a broken file,
    completions for ``os.pa``."""
    from lsprotocol import types as t

    sandbox.process.exec(f"mkdir -p {project}")
    broken_text = "def f(:\n    return 1\n"
    main_text = "import os\nos.pa\n"

    async def session():
        base = sandbox.toolbox_proxy_url.replace("http", "ws", 1)
        url = f"{base}/{sandbox.id}/lsp/ws?languageId=python&pathToProject={project}"
        headers = {"Authorization": f"Bearer {api_key}"}
        async with lsp_client(url, headers, f"file://{project}", 60) as (client, result, diagnostics):
            assert result.server_info is not None and result.server_info.name == "pylsp"

            uri = f"file://{project}/broken.py"
            client.text_document_did_open(t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=uri, language_id="python", version=1, text=broken_text)))
            params = await next_diagnostics(diagnostics, uri, 60)
            assert any(d.severity == t.DiagnosticSeverity.Error for d in params.diagnostics), params.diagnostics

            main_uri = f"file://{project}/main.py"
            client.text_document_did_open(t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=main_uri, language_id="python", version=1, text=main_text)))
            completion = await asyncio.wait_for(client.text_document_completion_async(t.CompletionParams(
                text_document=t.TextDocumentIdentifier(uri=main_uri), position=t.Position(line=1, character=5))), 60)
            items = completion.items if hasattr(completion, "items") else completion
            assert "path" in [i.label for i in items]

    asyncio.run(session())
