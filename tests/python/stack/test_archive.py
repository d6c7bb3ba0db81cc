"""Archive and restore with the Daytona SDK on the real default image, through ``sandbar up``: ``sandbox.archive()``
moves a stopped sandbox to ``archived`` (its container gone, its filesystem in the runner's archive store under the
data directory), ``sandbox.start()`` brings it back with its files, and deleting an archived sandbox deletes its
archive. Prints the archive and restore times and the archive's size."""

from __future__ import annotations

import json
import subprocess
import time

import pytest


def wait_for(sb, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sb.refresh_data()
        state = str(getattr(sb.state, "value", sb.state))
        if state == wanted:
            return
        if state in ("error", "build_failed") or time.monotonic() > deadline:
            pytest.fail(f"sandbox {sb.id} is {state} (reason: {sb.error_reason}), waiting for {wanted}")
        time.sleep(0.2)


def containers_of(sandbox_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=sandbar.sandbox.id={sandbox_id}"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.split()


def test_archive_then_start_keeps_files(daytona, stack):
    sb = daytona.create(timeout=180)
    archives = stack.data_dir / "runner" / "archives"
    try:
        sb.fs.upload_file(b"kept across an archive\n", "/home/sandbar/kept.txt")
        r = sb.process.exec("mkdir -p /home/sandbar/proj && cd /home/sandbar/proj && git init -q -b main && "
                            "echo 'print(6*7)' > main.py && git add main.py")
        assert r.exit_code == 0, r.result
        sb.stop(timeout=60)

        t0 = time.monotonic()
        sb.archive()
        wait_for(sb, "archived", 600)
        archive_secs = time.monotonic() - t0
        assert containers_of(sb.id) == [], "an archived sandbox has no container"
        manifest = json.loads((archives / sb.id / "manifest.json").read_text())
        # The sandbox's own layer over its image, not the image's whole file system.
        assert manifest["kind"] == "layer", manifest
        tarball = archives / sb.id / "layer.tar.zst"
        size = tarball.stat().st_size
        assert size == manifest["size"]

        t0 = time.monotonic()
        sb.start(timeout=600)
        restore_secs = time.monotonic() - t0
        assert str(getattr(sb.state, "value", sb.state)) == "started"
        assert sb.fs.download_file("/home/sandbar/kept.txt") == b"kept across an archive\n"
        r = sb.process.exec("cd /home/sandbar/proj && git status --porcelain && python3 main.py && whoami")
        assert r.exit_code == 0, r.result
        assert "A  main.py" in r.result and "42" in r.result and "sandbar" in r.result, r.result
        assert not (archives / sb.id).exists(), "the archive goes once the sandbox runs again"
        print(f"\nARCHIVE FIGURES default image: archive {archive_secs:.2f} s (SDK call to 'archived'), "
              f"size {size / 2**20:.1f} MiB, restore {restore_secs:.2f} s (SDK start() to 'started')")

        # Archived again, then deleted: the archive goes with it.
        sb.stop(timeout=60)
        sb.archive()
        wait_for(sb, "archived", 600)
        assert (archives / sb.id / "manifest.json").is_file()
    finally:
        daytona.delete(sb)
    deadline = time.monotonic() + 60
    while (archives / sb.id).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (archives / sb.id).exists(), "deleting an archived sandbox deletes its archive"
    subprocess.run(["docker", "rmi", "-f", f"sandbar-archive:{sb.id}"], capture_output=True, check=False)
