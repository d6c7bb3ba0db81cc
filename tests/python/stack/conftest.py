"""Fixtures for the stack tests: one ``sandbar up`` for the session (see sandbar_stack.py), the SDK client, and a
shared sandbox of the default image."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from sandbar_stack import remove_containers, start_stack  # noqa: E402


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-data")
    runner_id = "e2e-" + secrets.token_hex(4)
    s = start_stack(data_dir, runner_id)
    try:
        yield s
    finally:
        s.stop()
        remove_containers(runner_id)


@pytest.fixture(scope="session")
def daytona(stack):
    from daytona import Daytona, DaytonaConfig

    return Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))


@pytest.fixture(scope="session")
def sandbox(daytona):
    """One sandbox of the default image shared by the read-mostly tests."""
    sb = daytona.create(timeout=180)
    yield sb
    try:
        daytona.delete(sb)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
        pass
