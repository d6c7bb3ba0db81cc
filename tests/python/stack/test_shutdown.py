"""Shutdown under load (issue #22): SIGTERM to ``sandbar up`` while a Dockerfile build runs with its log followed, a
session command's log is followed, a PTY WebSocket is open through the proxy and the runner's job long-poll waits:
every service ends its own drain within its grace (``sandbar up --shutdown-grace 10`` gives each 7 s), none has to
be killed, and the stack exits 0 with no service left running. Its own stack."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import threading
import time
import uuid

from daytona import CreateSnapshotParams, Daytona, DaytonaConfig, Image, SessionExecuteRequest

from sandbar_stack import remove_containers, start_stack
from sandbar_util import wait_until

BASE = os.environ.get("SANDBAR_STACK_IMAGE", "sandbar-sandbox:default")


def services_of(pid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    return out


def test_sigterm_with_work_in_flight_stops_within_the_grace(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-shutdown")
    runner_id = "e2e-shutdown-" + secrets.token_hex(3)
    stack = start_stack(data_dir, runner_id)
    build_name = f"e2e-shutdown-{uuid.uuid4().hex[:8]}"
    try:
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        sb = d.create(timeout=180)

        # A session command that prints forever, its log followed.
        sb.process.create_session("forever")
        cmd = sb.process.execute_session_command(
            "forever", SessionExecuteRequest(command="while true; do echo tick; sleep 0.2; done", run_async=True))
        followed: list[str] = []
        follower = threading.Thread(
            target=lambda: _swallow(lambda: asyncio.run(sb.process.get_session_command_logs_async(
                "forever", cmd.cmd_id, followed.append, followed.append))),
            daemon=True)
        follower.start()

        # A PTY through the proxy, open.
        pty = sb.process.create_pty_session(id="shutdown-pty")
        pty.wait_for_connection()

        # A build that runs long, its log followed.
        build_logs: list[str] = []
        builder = threading.Thread(target=lambda: _swallow(lambda: d.snapshot.create(
            CreateSnapshotParams(name=build_name, image=Image.base(BASE).run_commands("echo building; sleep 300")),
            on_logs=build_logs.append, timeout=600)), daemon=True)
        builder.start()
        wait_until(lambda: any("building" in line for line in build_logs), timeout=180,
                   what="the build's RUN step in its followed log")
        wait_until(lambda: any("tick" in line for line in followed), timeout=30, what="the followed session log")

        children = services_of(stack.proc.popen.pid)
        assert len(children) == 3, children
        t0 = time.monotonic()
        code = stack.stop(timeout=60)
        took = time.monotonic() - t0
        print(f"\nSHUTDOWN with a build, two follows, a PTY and the long-poll in flight: {took:.1f} s")
        assert code == 0, stack.proc.tail()
        log = stack.proc.log_text(0)
        assert "did not stop within" not in log, f"a service had to be killed:\n{stack.proc.tail()}"
        # Each service drains for at most 7 s (three quarters of the stack's 10 s), all at once.
        assert took < 30, f"took {took:.1f} s"
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"service {pid} still running"
    finally:
        stack.stop()
        remove_containers(runner_id)
        subprocess.run(["docker", "rmi", "-f", f"sandbar-build:{build_name}"], capture_output=True, check=False)


def _swallow(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the stack going away ends these calls; that is the point
        pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True
