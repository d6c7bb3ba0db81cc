"""The runner killed with SIGKILL in the middle of a job (issue #22): ``sandbar up`` starts it again, the API hands
the unfinished job out again, and it ends once: the sandbox reaches the state the user asked for, exactly one
container carries it, no archive is left half-written, and every job row of the sandbox is ``done`` (none failed,
none still pending). Create, stop, archive (killed mid-export), restore (killed mid-import), start and fork, on the
default image. Its own stack: it kills that stack's runner, never another's."""

from __future__ import annotations

import re
import secrets
import sqlite3
import subprocess
import threading
import time

from daytona import Daytona, DaytonaConfig

from sandbar_stack import Stack, remove_containers, start_stack
from sandbar_util import wait_until
from test_supervise import kill9, log_line


# The services' logs are coloured.
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def containers_of(sandbox_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=sandbar.sandbox.id={sandbox_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def jobs_of(stack: Stack, sandbox_id: str) -> list[tuple[str, str]]:
    """``(kind, state)`` of every job of the sandbox, oldest first, from the stack's SQLite database."""
    db = next(stack.data_dir.rglob("sandbar.db"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        return list(c.execute("SELECT kind, state FROM jobs WHERE sandbox_id = ? ORDER BY seq", (sandbox_id,)))


def in_background(fn) -> dict:
    """Runs ``fn`` in a thread; the dict gets ``result`` or ``error``, and ``thread``."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except Exception as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def kill_during(stack: Stack, kind: str, call, after: float = 0.0) -> float:
    """Starts ``call`` in the background, SIGKILLs the runner ``after`` seconds once it logs a ``kind`` job, waits for
    the call; returns how long the call took from the kill."""
    runner_log = stack.data_dir / "logs" / "runner.log"
    mark = runner_log.stat().st_size
    bg = in_background(call)
    wait_until(lambda: re.search(rf'kind=\s*"{kind}"', ANSI.sub("", runner_log.read_text(errors="replace")[mark:])),
               timeout=120, what=f"a {kind} job in the runner's log")
    time.sleep(after)
    start, killed = kill9(stack, "runner")
    log_line(stack, start, r"^sandbar: runner restarted")
    bg["thread"].join(600)
    assert not bg["thread"].is_alive(), f"the {kind} call did not return"
    if "error" in bg:
        raise AssertionError(f"{kind} after a runner kill: {bg['error']!r}\n{stack.log('runner')}")
    return time.monotonic() - killed


def settled(stack: Stack, sandbox_id: str) -> list[tuple[str, str]]:
    """Every job of the sandbox finished, each ``done``."""
    jobs = wait_until(lambda: (j := jobs_of(stack, sandbox_id)) and all(s not in ("pending", "claimed") for _, s in j)
                      and j, timeout=60, what=f"the jobs of {sandbox_id} to finish")
    assert all(s == "done" for _, s in jobs), jobs
    return jobs


def state(d: Daytona, sandbox_id: str) -> str:
    return str(getattr(d.get(sandbox_id).state, "value", d.get(sandbox_id).state))


def test_runner_killed_mid_job_each_job_ends_once(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-runner-kill")
    runner_id = "e2e-rkill-" + secrets.token_hex(3)
    stack = start_stack(data_dir, runner_id)
    figures = []
    try:
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))

        holder: dict = {}
        took = kill_during(stack, "CREATE_SANDBOX", lambda: holder.setdefault("sb", d.create(timeout=300)))
        sb = holder["sb"]
        figures.append(f"create {took:.1f}s")
        assert state(d, sb.id) == "started"
        assert len(containers_of(sb.id)) == 1, containers_of(sb.id)
        assert [k for k, _ in settled(stack, sb.id)] == ["CREATE_SANDBOX"]
        sb.fs.upload_file(b"kept through every kill\n", "/home/sandbar/kept.txt")

        fork_holder: dict = {}
        took = kill_during(stack, "FORK_SANDBOX", lambda: fork_holder.setdefault("f", sb.fork(timeout=300)))
        fork = fork_holder["f"]
        figures.append(f"fork {took:.1f}s")
        assert state(d, fork.id) == "started"
        assert len(containers_of(fork.id)) == 1, containers_of(fork.id)
        assert fork.fs.download_file("/home/sandbar/kept.txt") == b"kept through every kill\n"
        # The source was frozen for the commit when the runner died: it answers again, and is `started`.
        assert state(d, sb.id) == "started"
        assert sb.process.exec("echo source").result.strip() == "source"

        took = kill_during(stack, "STOP_SANDBOX", lambda: sb.stop(timeout=300))
        figures.append(f"stop {took:.1f}s")
        assert state(d, sb.id) == "stopped"

        def archive():
            sb.archive()
            wait_until(lambda: state(d, sb.id) in ("archived", "error"), timeout=600, interval=0.5,
                       what="the archive")
        took = kill_during(stack, "ARCHIVE_SANDBOX", archive, after=1.0)
        figures.append(f"archive {took:.1f}s")
        assert state(d, sb.id) == "archived", d.get(sb.id).error_reason
        assert containers_of(sb.id) == []
        archives = stack.data_dir / "runner" / "archives" / sb.id
        assert (archives / "manifest.json").is_file()
        leftovers = [p.name for p in archives.iterdir() if p.name not in ("manifest.json", "layer.tar.zst", "rootfs.tar")]
        assert leftovers == [], f"half-written files left in {archives}: {leftovers}"

        took = kill_during(stack, "RESTORE_SANDBOX", lambda: sb.start(timeout=600), after=1.0)
        figures.append(f"restore {took:.1f}s")
        assert state(d, sb.id) == "started"
        assert len(containers_of(sb.id)) == 1, containers_of(sb.id)
        assert sb.fs.download_file("/home/sandbar/kept.txt") == b"kept through every kill\n"
        assert sb.process.exec("echo hi").result.strip() == "hi"

        sb.stop(timeout=120)
        took = kill_during(stack, "START_SANDBOX", lambda: sb.start(timeout=300))
        figures.append(f"start {took:.1f}s")
        assert sb.process.exec("echo hi").result.strip() == "hi"
        kinds = [k for k, _ in settled(stack, sb.id)]
        assert kinds == ["CREATE_SANDBOX", "STOP_SANDBOX", "ARCHIVE_SANDBOX", "RESTORE_SANDBOX", "STOP_SANDBOX",
                         "START_SANDBOX"], kinds
        # A fork's job is the fork's own.
        assert [k for k, _ in settled(stack, fork.id)] == ["FORK_SANDBOX"]

        for s in (fork, sb):
            d.delete(s)
        for s in (fork, sb):
            wait_until(lambda s=s: containers_of(s.id) == [], timeout=120, what=f"{s.id}'s container gone")
        print("\nRUNNER KILL (kill to the call's return): " + ", ".join(figures))
    finally:
        stack.stop()
        remove_containers(runner_id)
