"""A disk filling up (issue #22), on a disk the test owns, never the machine's:

- **Docker's storage**: a private engine (engine.py) whose data root is a small tmpfs, ``sandbar up`` beside it.
  A tenant's sandbox fills it with ``dd``. Its own daemon keeps answering, another organization's sandbox keeps
  running and answering (it cannot write either: without a storage driver that caps disk, the disk is shared, and
  the runner's watchdog acts only on a sandbox over its own quota, which the tmpfs is smaller than), a create
  fails with the reason Docker gave (not a hang, not a sandbox stuck in ``creating``), and once the file is removed
  creates and writes work again.
- **The API's data directory**: ``sandbar up`` with its data directory on a small tmpfs, filled by a file. Reads
  answer, a create is refused with 507 and a message that says the disk is full, a sandbox made before keeps
  answering through the proxy, the database stays intact (SQLite's integrity check), no half-made sandbox is left,
  and once space is freed creates work again.
"""

from __future__ import annotations

import errno
import secrets
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
from daytona import Daytona, DaytonaConfig

from engine import built_test_image, engine, stack_on
from sandbar_stack import new_org_key, start_stack
from sandbar_util import wait_until

ENGINE_DISK = "600m"  # the private engine's data root: the test image and a few sandboxes fit, with room to fill
API_DISK = "48m"  # the stack's data directory: the database, the runner's state, the logs


@pytest.fixture(scope="module")
def test_image() -> str:
    return built_test_image()


def echo(sb) -> bool:
    r = sb.process.exec("echo hi", timeout=20)
    return r.exit_code == 0 and r.result.strip() == "hi"


def fill(path: Path) -> int:
    """Writes ``path`` until its filesystem is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                return written


def test_docker_storage_full(tmp_path, test_image):
    image = test_image
    with engine(tmp_path, data_size=ENGINE_DISK) as e:
        e.load_image(image)
        data_dir = tmp_path / "sandbar-data"
        data_dir.mkdir()
        runner_id = "e2e-df-" + secrets.token_hex(3)
        with stack_on(e, data_dir, runner_id, image, ["--warm-pool", "0"]) as stack:
            tenant = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
            other = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=new_org_key(stack, "other-" + runner_id)))
            made: list = []
            try:
                hog = tenant.create(timeout=120)
                made.append((tenant, hog))
                neighbour = other.create(timeout=120)
                made.append((other, neighbour))
                neighbour.fs.upload_file(b"written before", "/tmp/before.txt")

                # The tenant fills the engine's disk from inside its sandbox.
                r = hog.process.exec("dd if=/dev/zero of=/fill bs=1M 2>&1; echo dd-exit=$?", timeout=180)
                assert "No space left on device" in r.result, r.result
                assert "dd-exit=0" not in r.result, r.result
                df = subprocess.run([*e.prefix, "df", "-B1", "--output=avail", str(e.run_dir / "data")],
                                    capture_output=True, text=True, timeout=30, check=True).stdout.split()
                print(f"\nengine disk available after the fill: {df[-1]} bytes")

                # Both daemons answer; the neighbour still runs and reads what it had.
                assert echo(hog)
                assert echo(neighbour)
                assert neighbour.fs.download_file("/tmp/before.txt") == b"written before"
                assert other.get(neighbour.id).state.value == "started"

                # A create fails with Docker's reason, promptly, and leaves nothing in a transitional state.
                with pytest.raises(Exception) as refused:  # noqa: PT011 - the SDK raises its own DaytonaError
                    other.create(timeout=120)
                message = str(refused.value).lower()
                print(f"create on a full disk: {refused.value}")
                assert "no space left" in message, message
                leftovers = [s for s in other.list() if s.id != neighbour.id]
                for s in leftovers:
                    assert s.state.value in ("error", "build_failed"), (s.id, s.state)
                    other.delete(s, timeout=60)

                # Space freed: writes and creates work again.
                r = hog.process.exec("rm -f /fill && dd if=/dev/zero of=/again bs=1M count=8 2>&1; echo dd-exit=$?",
                                     timeout=60)
                assert "dd-exit=0" in r.result, r.result
                again = other.create(timeout=120)
                made.append((other, again))
                assert echo(again)
                neighbour.fs.upload_file(b"written after", "/tmp/after.txt")
                assert neighbour.fs.download_file("/tmp/after.txt") == b"written after"
            except BaseException:
                print(f"--- runner log\n{stack.log('runner')}\n--- api log\n{stack.log('api')}")
                raise
            finally:
                for d, sb in made:
                    try:
                        d.delete(sb, timeout=60)
                    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
                        pass
            wait_until(lambda: not e.containers(), timeout=60, what="every container removed")


def test_api_data_dir_full(tmp_path, test_image):
    data_dir = tmp_path / "sandbar-data"
    data_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={API_DISK},mode=0700", "sandbar-api-data", str(data_dir)],
                   check=True, timeout=30)
    filler = data_dir / "filler"
    try:
        stack = start_stack(data_dir, "e2e-adf-" + secrets.token_hex(3), image=test_image)
        try:
            d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
            before = d.create(timeout=120)
            try:
                assert echo(before)
                print(f"\nfiller: {fill(filler)} bytes until the data directory was full")
                headers = {"Authorization": f"Bearer {stack.api_key}"}
                with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as api:
                    # Reads answer.
                    listed = api.get("/sandbox")
                    assert listed.status_code == 200, listed.text
                    ids = {s["id"] for s in listed.json()["items"]}
                    assert ids == {before.id}
                    # A write is refused, saying why.
                    r = api.post("/sandbox", json={})
                    print(f"create with the data directory full: {r.status_code} {r.text}")
                    assert r.status_code == 507, r.text
                    assert "no space left" in r.json()["message"], r.text
                    # The SDK user sees the same reason.
                    with pytest.raises(Exception, match="no space left"):  # noqa: PT011 - the SDK's own error type
                        d.create(timeout=60)
                    # The sandbox made before keeps answering through the proxy.
                    assert echo(before)
                    # No half-made sandbox appeared.
                    assert {s["id"] for s in api.get("/sandbox").json()["items"]} == {before.id}

                    filler.unlink()
                    after = d.create(timeout=120)
                    assert echo(after)
                    assert {s["id"] for s in api.get("/sandbox").json()["items"]} == {before.id, after.id}
                    d.delete(after, timeout=60)
                db = next(data_dir.glob("*.db"))
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            except BaseException:
                print(f"--- api log\n{stack.log('api')}\n--- runner log\n{stack.log('runner')}")
                raise
            finally:
                try:
                    d.delete(before, timeout=60)
                except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
                    pass
        finally:
            stack.stop()
    finally:
        filler.unlink(missing_ok=True)
        subprocess.run(["umount", str(data_dir)], check=False, timeout=30)
        if any(line.split()[1] == str(data_dir) for line in Path("/proc/self/mounts").read_text().splitlines()):
            subprocess.run(["umount", "-l", str(data_dir)], check=True, timeout=30)
