"""A sandbox's usage through ``sandbar up``: the runner samples it at each heartbeat and
``GET /api/sandbox/{id}/usage`` serves it (the SDK has no call for it, so plain HTTP with the same API key)."""

from __future__ import annotations

import time

import httpx
from daytona import Daytona

from test_volumes import delete_quietly, other_org_key


def usage(stack, key: str, sandbox_id: str) -> httpx.Response:
    return httpx.get(f"{stack.api_url}/sandbox/{sandbox_id}/usage", headers={"Authorization": f"Bearer {key}"},
                     timeout=10)


def test_usage_follows_what_the_sandbox_does(daytona: Daytona, stack):
    sb = daytona.create(timeout=180)
    try:
        first = usage(stack, stack.api_key, sb.id)
        assert first.status_code == 200, first.text
        assert first.json()["sandboxId"] == sb.id
        # Two seconds of a busy loop, then 40 MB held in /dev/shm.
        r = sb.process.exec("timeout 2 sh -c 'while :; do :; done'; head -c 40000000 /dev/zero > /dev/shm/hold")
        assert r.exit_code == 0, r.result
        deadline = time.monotonic() + 30
        while True:
            u = usage(stack, stack.api_key, sb.name).json()
            if u["sampledAt"] and u["cpuNanos"] > 1_000_000_000 and u["memoryBytes"] > 35_000_000:
                break
            assert time.monotonic() < deadline, f"no heartbeat sample saw the work: {u}"
            time.sleep(1)
        assert u["memoryLimitBytes"] == sb.memory * (1 << 30), u
        assert u["pids"] >= 1 and u["netRxBytes"] > 0 and u["netTxBytes"] > 0, u
        assert u["oomKills"] in (0, None), u
        assert u["history"] and u["history"][-1]["sampledAt"] <= u["sampledAt"], u

        # Another organization's key: the sandbox does not exist for it.
        r = usage(stack, other_org_key(stack), sb.id)
        assert r.status_code == 404 and "not found" in r.json()["message"], r.text
    finally:
        delete_quietly(daytona, sb)
