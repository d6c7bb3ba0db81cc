"""Fork and snapshot-from-sandbox with the real Daytona SDK against ``sandbar up`` (default image).

``sandbox.fork()`` copies the filesystem (not memory, not running processes) into a new sandbox that diverges from
then on; ``sandbox.create_snapshot()`` makes a snapshot that ``daytona.create(CreateSandboxFromSnapshotParams(...))``
starts new sandboxes from. The copies are images on the runner; deleting the fork or the snapshot removes them.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False).returncode == 0


def wait_image_gone(ref: str, within: float = 30) -> bool:
    deadline = time.time() + within
    while image_exists(ref):
        if time.time() > deadline:
            return False
        time.sleep(0.3)
    return True


def remove_image(ref: str) -> None:
    subprocess.run(["docker", "rmi", ref], capture_output=True, check=False)


def delete_quietly(daytona, sb) -> None:
    try:
        daytona.delete(sb, timeout=60, wait=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
        pass


def sh(sb, cmd: str) -> str:
    r = sb.process.exec(cmd)
    return r.result.strip()


def test_fork_keeps_files_and_diverges(daytona):
    src = daytona.create(timeout=180)
    made = [src]
    try:
        src.fs.upload_file(b"before the fork\n", "/tmp/fork-e2e/file.txt")
        # A process that runs in the source: memory and processes are not part of a fork.
        src.process.exec("nohup sleep 4242 > /dev/null 2>&1 &")
        assert sh(src, "pgrep -f 'sleep 424[2]' > /dev/null; echo $?") == "0"

        name = "e2e-fork-" + uuid.uuid4().hex[:6]
        t0 = time.monotonic()
        fork = src.fork(name=name, timeout=120)
        took = time.monotonic() - t0
        made.append(fork)
        print(f"\nFORK default image: {took * 1000:.0f} ms from sandbox.fork() to started")
        assert fork.id != src.id
        assert fork.name == name
        assert fork.state.value == "started"
        assert fork.labels.get("code-toolbox-language") == src.labels.get("code-toolbox-language")
        assert (fork.cpu, fork.memory, fork.disk) == (src.cpu, src.memory, src.disk)
        assert daytona.get(src.id).state.value == "started", "the source keeps running"

        # The files written before the fork are there; the source's processes are not.
        assert fork.fs.download_file("/tmp/fork-e2e/file.txt") == b"before the fork\n"
        assert sh(fork, "pgrep -f 'sleep 424[2]' > /dev/null; echo $?") == "1"

        # Divergence, both ways.
        fork.fs.upload_file(b"fork only\n", "/tmp/fork-e2e/fork-only.txt")
        src.fs.upload_file(b"source only\n", "/tmp/fork-e2e/source-only.txt")
        fork.fs.upload_file(b"changed in the fork\n", "/tmp/fork-e2e/file.txt")
        assert sh(src, "test -e /tmp/fork-e2e/fork-only.txt; echo $?") == "1"
        assert sh(fork, "test -e /tmp/fork-e2e/source-only.txt; echo $?") == "1"
        assert src.fs.download_file("/tmp/fork-e2e/file.txt") == b"before the fork\n"
        assert fork.fs.download_file("/tmp/fork-e2e/file.txt") == b"changed in the fork\n"

        # The name is taken now.
        with pytest.raises(DaytonaError) as e:
            src.fork(name=name, timeout=60)
        assert "already exists" in str(e.value)

        # Deleting the fork removes the image it was made from; the source is unaffected.
        image = fork.snapshot
        assert image == f"sandbar-fork:{fork.id}" and image_exists(image)
        daytona.delete(fork, timeout=60, wait=True)
        made.remove(fork)
        assert wait_image_gone(image), f"{image} is still there after the fork was deleted"
        assert src.fs.download_file("/tmp/fork-e2e/source-only.txt") == b"source only\n"
    finally:
        for sb in made:
            delete_quietly(daytona, sb)


def test_fork_of_a_stopped_sandbox(daytona):
    src = daytona.create(timeout=180)
    made = [src]
    try:
        src.fs.upload_file(b"stopped state\n", "/tmp/stopped.txt")
        src.stop(timeout=60)
        fork = src.fork(timeout=120)
        made.append(fork)
        assert fork.state.value == "started"
        assert daytona.get(src.id).state.value == "stopped"
        assert fork.fs.download_file("/tmp/stopped.txt") == b"stopped state\n"
    finally:
        for sb in made:
            delete_quietly(daytona, sb)


def test_create_snapshot_then_create_from_it(daytona):
    src = daytona.create(timeout=180)
    made = [src]
    name = "e2e-snap-" + uuid.uuid4().hex[:6]
    image = None
    try:
        src.fs.upload_file(b"in the snapshot\n", "/tmp/snap-e2e/file.txt")
        src.create_snapshot(name, timeout=120)
        assert src.state.value == "started", "back to its state after snapshotting"

        snap = daytona.snapshot.get(name)
        image = snap.image_name
        assert snap.state.value == "active"
        assert snap.source_sandbox_id == src.id
        assert snap.size and snap.size > 0
        assert name in [s.name for s in daytona.snapshot.list().items]

        # Changes after the snapshot are not in it.
        src.fs.upload_file(b"after the snapshot\n", "/tmp/snap-e2e/later.txt")
        copy = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=180)
        made.append(copy)
        assert copy.fs.download_file("/tmp/snap-e2e/file.txt") == b"in the snapshot\n"
        assert sh(copy, "test -e /tmp/snap-e2e/later.txt; echo $?") == "1"

        # Same name again: a clear conflict; memory snapshots: a clear refusal (raw API, the SDK never sends true).
        with pytest.raises(DaytonaError) as e:
            src.create_snapshot(name, timeout=60)
        assert "already exists" in str(e.value)

        # Deleting the snapshot is refused while a sandbox runs it, then removes its image.
        with pytest.raises(DaytonaError) as e:
            daytona.snapshot.delete(snap)
        assert "used by" in str(e.value)
        daytona.delete(copy, timeout=60, wait=True)
        made.remove(copy)
        daytona.snapshot.delete(snap)
        assert wait_image_gone(image), f"{image} is still there after the snapshot was deleted"
    finally:
        for sb in made:
            delete_quietly(daytona, sb)
        if image:
            try:
                daytona.snapshot.delete(daytona.snapshot.get(name))
            except Exception:  # noqa: BLE001 - already deleted by the test
                pass
            if not wait_image_gone(image, within=10):
                remove_image(image)


def test_include_memory_is_refused(stack, daytona):
    import httpx

    sb = daytona.create(timeout=180)
    try:
        r = httpx.post(
            f"{stack.api_url}/sandbox/{sb.id}/snapshot",
            json={"name": "e2e-mem-" + uuid.uuid4().hex[:6], "includeMemory": True},
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=30,
        )
        assert r.status_code == 400, r.text
        assert "memory" in r.json()["message"]
        assert daytona.get(sb.id).state.value == "started"
    finally:
        delete_quietly(daytona, sb)


def test_pause_then_start_resumes(daytona):
    sb = daytona.create(timeout=180)
    try:
        sb.process.exec("nohup sleep 4343 > /dev/null 2>&1 &")
        pid = sh(sb, "pgrep -f 'sleep 434[3]'")
        sb.pause(timeout=60)
        assert sb.state.value == "paused"
        assert daytona.get(sb.id).state.value == "paused"
        # Frozen: the toolbox is not served (the proxy says the sandbox is not running).
        with pytest.raises(DaytonaError):
            sb.process.exec("true")
        sb.start(timeout=60)
        assert sb.state.value == "started"
        # The same process goes on: memory and processes were kept.
        assert sh(sb, "pgrep -f 'sleep 434[3]'") == pid
        sb.pause(timeout=60)
        sb.stop(timeout=60)
        assert daytona.get(sb.id).state.value == "stopped"
    finally:
        delete_quietly(daytona, sb)
