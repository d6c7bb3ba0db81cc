"""Draining a host, with two real runners (see scale_stack.py: PostgreSQL, two APIs, two runners in network
namespaces of their own, one archive store both use), the ``sandbar runner`` CLI with the operator's admin token,
and the Daytona SDK through the proxy:

- ``sandbar runner cordon A``: a create lands on B; ``uncordon`` opens A again. An organization's API key cannot
  cordon (403 with a message).
- ``sandbar runner drain A --move``: a started sandbox on A is stopped, archived and restored on B by the API's
  lifecycle; it ends ``started`` on B with its files, and Docker holds one container for it, B's.

Prints how long the move took.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from daytona import Daytona, DaytonaConfig

from sandbar_stack import BIN_DIR
from scale_stack import ScaleStack, wait_until


@pytest.fixture
def scale(tmp_path):
    s = ScaleStack(work=tmp_path, unreachable_secs=10, shared_archive=True)
    try:
        s.start()
        yield s
    finally:
        s.close()


def runner_cli(s: ScaleStack, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update({"DAYTONA_API_URL": s.api_urls[0], "SANDBAR_ADMIN_TOKEN": token or s.env["SANDBAR_API_ADMIN_TOKEN"],
                "SANDBAR_DATA_DIR": str(s.work / "cli")})
    env.pop("DAYTONA_API_KEY", None)
    return subprocess.run([str(BIN_DIR / "sandbar"), "-o", "json", "runner", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def containers(sandbox_id: str) -> list[str]:
    """The `sandbar.runner` label of every container (running or not) of this sandbox."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=sandbar.sandbox.id={sandbox_id}",
         "--format", '{{.Label "sandbar.runner"}}'],
        capture_output=True, text=True, check=True).stdout
    return out.split()


def test_cordon_then_drain_with_move(scale):
    s = scale
    a, b = s.runner_ids
    d = Daytona(DaytonaConfig(api_url=s.api_urls[0], api_key=s.api_key))

    # An organization's key is not the operator's.
    req = urllib.request.Request(f"{s.api_urls[1]}/admin/runners/{a}/cordon", method="POST",
                                 headers={"Authorization": f"Bearer {s.api_key}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403 and json.loads(e.value.read())["message"], "an API key cannot cordon"

    r = runner_cli(s, "cordon", b)
    assert r.returncode == 0 and json.loads(r.stdout)["schedule"] == "cordoned", r.stderr
    sb = d.create(timeout=180)
    assert s.runner_of(sb.id) == a, "a cordoned runner gets no new sandbox"
    r = runner_cli(s, "uncordon", b)
    assert r.returncode == 0 and json.loads(r.stdout)["schedule"] == "active", r.stderr

    sb.fs.upload_file(b"moves with its sandbox\n", "/home/sandbar/kept.txt")
    t0 = time.monotonic()
    r = runner_cli(s, "drain", a, "--move")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["moving"] is True, r.stdout
    listed = {x["id"]: x for x in json.loads(runner_cli(s, "ls").stdout)}
    assert listed[a]["schedule"] == "draining" and listed[b]["schedule"] == "active", listed

    def moved() -> bool:
        sb.refresh_data()
        state = str(getattr(sb.state, "value", sb.state))
        if state in ("error", "build_failed"):
            pytest.fail(f"sandbox {sb.id} is {state}: {sb.error_reason}\n{s.describe()}")
        return state == "started" and s.runner_of(sb.id) == b

    wait_until(f"sandbox {sb.id} started on {b}", moved, 600, step=0.5, detail=s.describe)
    move_secs = time.monotonic() - t0
    assert sb.fs.download_file("/home/sandbar/kept.txt") == b"moves with its sandbox\n"
    assert sb.process.exec("cat /home/sandbar/kept.txt").result.strip() == "moves with its sandbox"
    assert containers(sb.id) == [b], "one container, on the runner it moved to"
    listed = {x["id"]: x for x in json.loads(runner_cli(s, "ls").stdout)}
    assert listed[a]["sandboxes"] == 0, listed
    print(f"\ndrain --move: started sandbox on {a} -> started on {b} with its files in {move_secs:.1f}s")
    d.delete(sb, timeout=120)
