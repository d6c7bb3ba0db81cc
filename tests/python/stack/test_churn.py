"""Churn through ``sandbar up`` (the quick form of ``benches/churn.py``): creates and deletes spread over half a
minute across three organizations, with the warm pool off and on. Only facts are asserted: every create, exec and
delete succeeded, and nothing was left behind (containers, iptables chains and bridge-table ports of the runner
beyond the pool's, images, unfinished jobs, sandbox rows, route changes). Timings are printed, never asserted; the
full form (500 over 10 minutes) is ``benches/churn.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benches"))

from churn import run  # noqa: E402


@pytest.mark.parametrize("pool", [0, 2])
def test_churn_leaves_nothing_behind(tmp_path, pool):
    res = run(n=16, seconds=20, pool=pool, lifetime=(1.0, 4.0), data=tmp_path)
    print(res.summary())
    assert not res.errors, res.summary()
    assert len(res.create_ms) == res.n, res.summary()
    assert not res.leaks, res.summary()
    # The runner wrote each change as a difference: every write after the first (the start's full one) was one.
    assert res.writes and any(m == "change" for m, _, _ in res.writes), res.writes[:5]
    assert [m for m, _, _ in res.writes[1:]].count("full") == 0, res.writes


def test_the_leak_check_sees_a_sandbox_left_behind(tmp_path):
    """The check above is not vacuous: a sandbox still up is a container, two chains, a bridge port and a row."""
    import secrets

    from daytona import Daytona, DaytonaConfig

    from churn import check_leaks, image_ids
    from sandbar_stack import remove_containers, start_stack

    runner = "churnleak-" + secrets.token_hex(3)
    before = image_ids()
    stack = start_stack(tmp_path / "stack", runner)
    try:
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        sb = d.create(timeout=180)
        leaks = check_leaks(stack, 0, 1, before, patience=2)
        text = "\n".join(leaks)
        assert "container(s) of runner" in text and "sandbox chain(s)" in text, leaks
        assert "port chain(s) in bridge table" in text and "not destroyed" in text, leaks
        d.delete(sb, timeout=180)
        assert check_leaks(stack, 0, 1, before, patience=60) == []
    finally:
        stack.stop()
        remove_containers(runner)
