#!/usr/bin/env python3
"""Churn: N creates and deletes spread over T minutes across 3 organizations through the Daytona SDK, against
`sandbar up` with the warm pool off and on. Prints create p50/p99 (the SDK's `create` until `started`), the runner's
firewall writes against the number of sandboxes with rules (its `network rules written` log lines: mode, sandboxes,
micros), and checks that nothing leaked once the last delete is through: no container of the run's runner id but the
pool's, no iptables chain or bridge-table port of it but the pool members', no new image made from a sandbox of the
run, no job row unfinished, and no more route-change rows than the run's sandboxes can have made (they are kept 24 h
for proxies that were away, then pruned: `api/src/domain/lifecycle.rs`).

Each sandbox lives a few seconds (uniform in `--lifetime`), so about N / T x lifetime are up at once: the default
keeps that under what placement gives one small runner.

Run (after `cargo build --workspace --bins`; root, Docker):
    SANDBAR_STATIC_DAEMON=... [SANDBAR_STACK_IMAGE=...] .venv/bin/python benches/churn.py [--quick]
        full: 500 creates over 10 minutes, pool off then on (size 4); about 25 minutes with both stacks.
        --quick: 12 over 25 s each (what tests/python/stack/test_churn.py runs in CI).
    --n N --minutes M --pools 0,4 --lifetime 2,10 override.
Exit status 1 when a create, exec or delete failed or something leaked.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests" / "python"
for p in (str(TESTS / "stack"), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from daytona import Daytona, DaytonaConfig  # noqa: E402
from sandbar_stack import (  # noqa: E402
    Stack, bridge_table, chain_prefix, iptables_rules, new_org_key, remove_containers, start_stack,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
WRITE = re.compile(r'network rules written.*?mode="?(\w+)"?.*?sandboxes=(\d+).*?micros=(\d+)')
ORGS = 3
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


@dataclass
class Result:
    pool: int
    n: int
    seconds: float
    create_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    # (mode, sandboxes, micros) of every firewall write in the runner's log.
    writes: list[tuple[str, int, int]] = field(default_factory=list)
    peak_live: int = 0

    def ok(self) -> bool:
        return not self.errors and not self.leaks

    def summary(self) -> str:
        lines = [f"pool {self.pool}: {self.n} creates and deletes over {self.seconds:.0f} s across {ORGS} "
                 f"organizations, at most {self.peak_live} up at once",
                 f"  create p50 {pct(self.create_ms, 50):.0f} ms, p99 {pct(self.create_ms, 99):.0f} ms "
                 f"(n={len(self.create_ms)})"]
        for mode in ("change", "full"):
            ws = [(s, us) for m, s, us in self.writes if m == mode]
            if not ws:
                continue
            bounds = [(0, 9), (10, 49), (50, 199), (200, 10**9)]
            parts = []
            for lo, hi in bounds:
                us = [u for s, u in ws if lo <= s <= hi]
                if us:
                    label = f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"
                    parts.append(f"{label} sandboxes: p50 {pct(us, 50) / 1000:.1f} ms, p99 {pct(us, 99) / 1000:.1f} ms "
                                 f"(n={len(us)})")
            parts = "; ".join(parts)
            lines.append(f"  firewall writes ({mode}): {parts}")
        lines.append(f"  errors: {len(self.errors)}" + "".join(f"\n    {e}" for e in self.errors[:10]))
        lines.append("  leaks: " + ("none" if not self.leaks else "".join(f"\n    {x}" for x in self.leaks)))
        return "\n".join(lines)


def docker_lines(*args: str) -> list[str]:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=False)
    return out.stdout.split()


def image_ids() -> set[str]:
    return set(docker_lines("images", "-aq", "--no-trunc"))


def db_rows(stack: Stack, query: str) -> list[tuple]:
    db = next(stack.data_dir.rglob("sandbar.db"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        return list(c.execute(query))


def firewall_writes(stack: Stack) -> list[tuple[str, int, int]]:
    try:
        text = ANSI.sub("", (stack.data_dir / "logs" / "runner.log").read_text(errors="replace"))
    except OSError:
        return []
    return [(m.group(1), int(m.group(2)), int(m.group(3))) for m in WRITE.finditer(text)]


def wait_until(cond, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def churn(stack: Stack, n: int, seconds: float, lifetime: tuple[float, float], pool: int,
          seed: int = 1) -> Result:
    """Create i starts at i * seconds / n, in one of three organizations; each sandbox runs `echo` once, lives a
    random time in `lifetime`, and is deleted. Returns the figures; errors are collected, never raised."""
    res = Result(pool=pool, n=n, seconds=seconds)
    keys = [stack.api_key] + [new_org_key(stack, f"churn-org-{i}-{secrets.token_hex(2)}") for i in range(1, ORGS)]
    clients = [Daytona(DaytonaConfig(api_url=stack.api_url, api_key=k)) for k in keys]
    rng = random.Random(seed)
    lifetimes = [rng.uniform(*lifetime) for _ in range(n)]
    lock = threading.Lock()
    live = [0]

    def one(i: int) -> None:
        d = clients[i % ORGS]
        sb = None
        try:
            t0 = time.perf_counter()
            sb = d.create(timeout=180)
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                res.create_ms.append(ms)
                live[0] += 1
                res.peak_live = max(res.peak_live, live[0])
            r = sb.process.exec("echo churn")
            if r.result.strip() != "churn":
                raise RuntimeError(f"exec answered {r.result!r}")
            time.sleep(lifetimes[i])
        except Exception as e:  # noqa: BLE001 - every failure is a figure of the run
            with lock:
                res.errors.append(f"sandbox {i} (org {i % ORGS}): {type(e).__name__}: {e}"[:400])
            # A create that failed leaves its sandbox in `error` (holding its share of the runner) until the client
            # deletes it, as a client would.
            if sb is None and (m := UUID.search(str(e))):
                try:
                    d.delete(d.get(m.group(0)), timeout=180)
                except Exception as e2:  # noqa: BLE001
                    with lock:
                        res.errors.append(f"delete of failed {m.group(0)}: {type(e2).__name__}: {e2}"[:300])
        finally:
            if sb is not None:
                try:
                    d.delete(sb, timeout=180)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        res.errors.append(f"delete of {sb.id}: {type(e).__name__}: {e}"[:300])
                with lock:
                    live[0] -= 1

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as ex:
        futures = []
        for i in range(n):
            delay = start + i * seconds / n - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(ex.submit(one, i))
        for f in futures:
            f.result()
    res.seconds = time.monotonic() - start
    return res


def check_leaks(stack: Stack, pool: int, created: int, images_before: set[str], patience: float = 120) -> list[str]:
    """What the run left behind, once the API and the runner had up to `patience` seconds to settle."""
    leaks: list[str] = []
    runner = stack.runner_id

    def containers() -> list[str]:
        return docker_lines("ps", "-aq", "--no-trunc", "--filter", f"label=sandbar.runner={runner}")

    def pool_members() -> list[str]:
        return docker_lines("ps", "-aq", "--no-trunc", "--filter", f"label=sandbar.runner={runner}",
                            "--filter", "label=sandbar.pool=1")

    # The pool refills after the last claims: wait for it to be whole, and for every other container to go.
    wait_until(lambda: set(containers()) == set(pool_members()) and len(pool_members()) == pool, timeout=patience)
    others = set(containers()) - set(pool_members())
    if others:
        leaks.append(f"{len(others)} container(s) of runner {runner} that are no pool member: {sorted(others)[:5]}")
    members = len(pool_members())
    if members != pool:
        leaks.append(f"{members} pool member(s), expected {pool}")

    top = chain_prefix(runner)

    def sandbox_chains() -> list[str]:
        return [line[3:] for line in iptables_rules().splitlines() if line.startswith(f"-N {top}-")
                and not line[3:].endswith(("-ISO", "-DENY"))]

    # Two chains (egress, inbound) per sandbox with rules: the pool members' only.
    wait_until(lambda: len(sandbox_chains()) == 2 * members, timeout=patience / 4)
    if (c := len(sandbox_chains())) != 2 * members:
        leaks.append(f"{c} sandbox chain(s) of {top}, expected {2 * members} (the pool members')")
    nft = subprocess.run(["nft", "-j", "list", "table", "bridge", bridge_table(runner)], capture_output=True,
                         text=True, timeout=30, check=False)
    if nft.returncode == 0:
        items = json.loads(nft.stdout).get("nftables", [])
        ports = [i for i in items if "chain" in i and i["chain"]["name"].startswith("p_")]
        if len(ports) != members:
            leaks.append(f"{len(ports)} port chain(s) in bridge table {bridge_table(runner)}, expected {members}")
    elif members:
        leaks.append(f"no bridge table {bridge_table(runner)} though {members} pool member(s) run")

    # Images: a create or delete makes none; a new one labelled with a sandbox or runner of this run is a leak.
    ids = set(db_rows(stack, "SELECT id FROM sandboxes"))
    names = {r[0] for r in ids} | {runner}
    for image in image_ids() - images_before:
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image],
                             capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        labels = json.loads(out or "null") or {}
        if names & set(labels.values()):
            leaks.append(f"image {image[:19]} made during the run: {labels}")

    def unfinished() -> list[tuple]:
        return db_rows(stack, "SELECT kind, state, sandbox_id FROM jobs WHERE state IN ('pending', 'claimed')")

    wait_until(lambda: not unfinished(), timeout=patience / 2)
    if rows := unfinished():
        leaks.append(f"{len(rows)} unfinished job(s): {rows[:5]}")
    not_gone = db_rows(stack, "SELECT id, state FROM sandboxes WHERE state NOT IN ('destroyed')")
    # Pool members are the runner's, not the API's: every sandbox row of the run is destroyed.
    if not_gone:
        leaks.append(f"{len(not_gone)} sandbox row(s) not destroyed: {not_gone[:5]}")
    # A sandbox's route version changes at most a handful of times in a create, exec, delete life.
    changes = db_rows(stack, "SELECT COUNT(*) FROM route_changes")[0][0]
    if changes > 8 * max(created, 1):
        leaks.append(f"{changes} route-change rows for {created} sandboxes")
    stale = db_rows(stack, "SELECT COUNT(*) FROM route_changes WHERE at < "
                    f"{int(time.time() * 1000) - 24 * 3600 * 1000}")[0][0]
    if stale:
        leaks.append(f"{stale} route-change rows older than 24 h (not pruned)")
    return leaks


def run(n: int, seconds: float, pool: int, lifetime: tuple[float, float], data: Path | None = None) -> Result:
    """One stack (`sandbar up`, warm pool of `pool`), one churn, the leak check; the stack and everything of its
    runner id are removed at the end, also after a failure."""
    data = data or Path(tempfile.mkdtemp(prefix="sandbar-churn-"))
    runner = "churn-" + secrets.token_hex(3)
    images_before = image_ids()
    stack = start_stack(data / "stack", runner, ["--warm-pool", str(pool)])
    try:
        if pool:
            wait_until(lambda: len(docker_lines("ps", "-q", "--filter", f"label=sandbar.runner={runner}",
                                                "--filter", "label=sandbar.pool=1")) >= pool, timeout=120)
        res = churn(stack, n, seconds, lifetime, pool)
        res.leaks = check_leaks(stack, pool, len(res.create_ms), images_before)
        failed = db_rows(stack, "SELECT kind, error, sandbox_id FROM jobs WHERE state = 'failed'")
        res.errors += [f"job {kind} of {sb} failed: {err}"[:300] for kind, err, sb in failed]
        res.writes = firewall_writes(stack)
        return res
    finally:
        stack.stop()
        remove_containers(runner)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--pools", default="0,4")
    ap.add_argument("--lifetime", default="2,8")
    a = ap.parse_args()
    n = a.n or (12 if a.quick else 500)
    seconds = a.minutes * 60 if a.minutes else (25 if a.quick else 600)
    lifetime = tuple(float(x) for x in a.lifetime.split(","))
    ok = True
    for pool in (int(x) for x in a.pools.split(",")):
        res = run(n, seconds, pool, lifetime)  # type: ignore[arg-type]
        print(res.summary(), flush=True)
        ok &= res.ok()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
