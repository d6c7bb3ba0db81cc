"""Dockerfile builds through the Daytona SDK against ``sandbar up``: a snapshot built from
``Image.base(...).run_commands(...)`` with its build log followed (``on_logs``), a sandbox created from an ``Image``
with the log streamed (``on_snapshot_create_logs``), reuse of an identical build, and failures that say why.

The base is the stack's default image (``SANDBAR_STACK_IMAGE``, else ``sandbar-sandbox:default``); builds from
registry images are test_registry.py's. Build times are printed (``pytest -s`` shows them)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaError,
    Image,
)

BASE = os.environ.get("SANDBAR_STACK_IMAGE", "sandbar-sandbox:default")


def _remove_images(*images: str | None) -> None:
    names = [i for i in images if i]
    if names:
        subprocess.run(["docker", "rmi", "-f", *names], capture_output=True, check=False)


def _delete(daytona, sandbox) -> None:
    try:
        daytona.delete(sandbox, timeout=60, wait=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
        pass


def test_snapshot_built_from_an_image_definition_with_its_log(daytona):
    token = uuid.uuid4().hex[:8]
    name = f"e2e-build-{token}"
    # `$((6*7))` is only 42 in the RUN step's own output, not in the echoed Dockerfile line.
    image = (
        Image.base(BASE)
        .run_commands(f"echo run-output-$((6*7))-{token}", f"echo {token} > /built")
        .env({"FLAVOUR": "vanilla"})
        .workdir("/srv")
    )
    logs: list[str] = []
    started = time.monotonic()
    snapshot = daytona.snapshot.create(CreateSnapshotParams(name=name, image=image), on_logs=logs.append, timeout=300)
    took = time.monotonic() - started
    print(f"\nsnapshot build (FROM {BASE}, 2 RUN, ENV, WORKDIR) via the SDK: {took:.2f} s")
    try:
        assert snapshot.state == "active"
        assert snapshot.image_name.startswith("sandbar-build:")
        text = "\n".join(logs)
        assert f"run-output-42-{token}" in text, text
        assert "Step 1/" in text and f"FROM {BASE}" in text, text
        assert logs[-1].startswith(f"Created snapshot {name} ("), logs[-3:]

        started = time.monotonic()
        sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=120)
        print(f"sandbox from the built snapshot: {time.monotonic() - started:.2f} s")
        try:
            r = sandbox.process.exec("cat /built; echo $FLAVOUR; pwd")
            assert r.result.split() == [token, "vanilla", "/srv"], r.result
        finally:
            _delete(daytona, sandbox)
    finally:
        daytona.snapshot.delete(snapshot)
        _remove_images(snapshot.image_name)


def test_sandbox_from_an_image_streams_the_build_and_reuses_it(daytona):
    token = uuid.uuid4().hex[:8]
    image = Image.base(BASE).run_commands(f"echo built-$((6*7))-{token} | tee /built-by-image")
    logs: list[str] = []
    started = time.monotonic()
    sandbox = daytona.create(
        CreateSandboxFromImageParams(image=image), on_snapshot_create_logs=logs.append, timeout=300
    )
    took = time.monotonic() - started
    print(f"\nsandbox from an Image (build + create) via the SDK: {took:.2f} s")
    built_image = sandbox.snapshot
    second = None
    try:
        assert sandbox.state == "started"
        assert built_image.startswith("sandbar-build:")
        assert f"built-42-{token}" in "\n".join(logs), logs
        assert sandbox.process.exec("cat /built-by-image").result.strip() == f"built-42-{token}"

        # The identical image again: no second build, straight to creating.
        again: list[str] = []
        started = time.monotonic()
        second = daytona.create(
            CreateSandboxFromImageParams(image=image), on_snapshot_create_logs=again.append, timeout=120
        )
        print(f"the same Image again (build reused): {time.monotonic() - started:.2f} s")
        assert second.snapshot == built_image
        assert second.process.exec("cat /built-by-image").result.strip() == f"built-42-{token}"
        assert again == [], "a reused build streams no log"
    finally:
        _delete(daytona, sandbox)
        if second is not None:
            _delete(daytona, second)
        _remove_images(built_image)


def test_failed_builds_say_why(daytona):
    token = uuid.uuid4().hex[:8]
    logs: list[str] = []
    with pytest.raises(DaytonaError) as failed:
        daytona.create(
            CreateSandboxFromImageParams(image=Image.base(BASE).run_commands(f"echo doomed-{token}; exit 3")),
            on_snapshot_create_logs=logs.append,
            timeout=300,
        )
    message = str(failed.value)
    assert "build_failed" in message.lower() and "non-zero code: 3" in message, message
    assert f"doomed-{token}" in "\n".join(logs), logs

    # Image.debian_slim() names python:*-slim-bookworm on Docker Hub, which this machine cannot reach: the build
    # fails at once with the pull's reason (registry images: test_registry.py).
    with pytest.raises(DaytonaError) as failed:
        daytona.snapshot.create(
            CreateSnapshotParams(name=f"e2e-noreg-{token}", image=Image.debian_slim("3.12")), timeout=120
        )
    message = str(failed.value)
    assert "python:3.12" in message and "docker.io" in message, message
