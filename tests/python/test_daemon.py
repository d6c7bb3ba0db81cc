"""Daemon lifecycle seen from the SDK: a daemon of its own, driven through the SDK, then SIGTERM."""

from __future__ import annotations

import os
import time

from daytona import SessionExecuteRequest

from conftest import start_daemon
from sandbar_util import wait_until


def test_sigterm_drains_and_exits_zero(tmp_path, edge, daytona):
    d = start_daemon(tmp_path / "own-daemon")
    try:
        edge.add_sandbox("sbx-own-daemon", d.addr, d.token)
        sb = daytona.get("sbx-own-daemon")
        assert sb.process.exec("echo alive").result == "alive\n"
        sb.process.create_session("long")
        pidfile = tmp_path / "child.pid"
        sb.process.execute_session_command(
            "long", SessionExecuteRequest(command=f"sh -c 'echo $$ > {pidfile}; exec sleep 300'", run_async=True)
        )
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="child pid"))

        started = time.monotonic()
        code = d.stop(timeout=12)
        elapsed = time.monotonic() - started
        assert code == 0, f"exit code after SIGTERM: {code} (None = had to be killed)\n{d.log_text()}"
        assert elapsed < 8, f"took {elapsed:.1f}s to exit after SIGTERM (grace is 5s)"

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # a zombie is gone too (its parent, our daemon, has exited and init will reap it)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(") ", 1)[1].startswith("Z")
            except OSError:
                return True
            return False

        wait_until(gone, timeout=5, what=f"session child {pid} to be stopped with the daemon")
    finally:
        edge.remove_sandbox("sbx-own-daemon")
        d.stop(timeout=5)
