#!/usr/bin/env python3
"""Create-to-first-exec through the Daytona SDK against `sandbar up`, cold and from a warm pool, beside `docker run`
of the same image measured in the same run; and the idle stack's memory.

Run (after `cargo build --workspace --bins` and scripts/build-daemon):
    SANDBAR_STATIC_DAEMON=$(scripts/build-daemon) .venv/bin/python benches/stack_create.py [N]
"""

from __future__ import annotations

import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests" / "python"
sys.path[:0] = [str(TESTS / "stack"), str(TESTS)]  # sandbar_stack, and the sandbar_util it uses

from daytona import Daytona, DaytonaConfig  # noqa: E402
from sandbar_stack import remove_containers, start_stack  # noqa: E402

IMAGE = "sandbar-sandbox:default"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_mib(pattern: str) -> float:
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run(label: str, warm: int, n: int) -> list[float]:
    data = Path(tempfile.mkdtemp(prefix="sandbar-bench-"))
    runner = "bench-" + secrets.token_hex(3)
    stack = start_stack(data, runner, ["--warm-pool", str(warm)] if warm else [])
    times = []
    try:
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        if warm:
            time.sleep(5 + warm)  # let the pool fill
        else:
            print(f"idle stack RSS: api {rss_mib('sandbar-api'):.1f} MiB, runner {rss_mib('sandbar-runner'):.1f} MiB, "
                  f"proxy {rss_mib('sandbar-proxy'):.1f} MiB")
        for _ in range(n):
            t0 = time.perf_counter()
            sb = d.create(timeout=120)
            r = sb.process.exec("echo hi")
            assert r.result.strip() == "hi"
            times.append((time.perf_counter() - t0) * 1000)
            d.delete(sb)
            if warm:
                time.sleep(2)  # refill
    finally:
        stack.stop()
        remove_containers(runner)
    print(f"{label}: create-to-first-exec median {statistics.median(times):.0f} ms, p95 {pct(times, 95):.0f} ms "
          f"(n={n})")
    return times


def docker_run(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", IMAGE, "echo", "hi"], check=True, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    print(f"docker run --rm {IMAGE} echo hi: median {statistics.median(times):.0f} ms, p95 {pct(times, 95):.0f} ms")
    return times


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    dock = docker_run(n)
    cold = run("cold", 0, n)
    warm = run("warm pool", 3, n)
    print(f"ratio to docker run (median): cold {statistics.median(cold) / statistics.median(dock):.2f}, "
          f"warm {statistics.median(warm) / statistics.median(dock):.2f}")


if __name__ == "__main__":
    main()
