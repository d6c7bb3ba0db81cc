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
