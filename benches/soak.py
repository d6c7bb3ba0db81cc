#!/usr/bin/env python3
"""The soak (issue #22): ``sandbar up`` with a steady population of sandboxes and clients working on them for a
long time, tracking what would show a leak: the resident memory and open file descriptors of every service, the
database's size and Docker's disk use, beside the clients' throughput, latency and errors.

Run through ``scripts/soak`` (it builds what is needed and draws the plots), or directly:

    .venv/bin/python benches/soak.py [--minutes 60] [--sandboxes 200] [--clients 16] [--sample-secs 30] [--out DIR]
    .venv/bin/python benches/soak.py --quick      # 1 minute, 4 sandboxes, 4 clients: what CI runs

Each client loops over random sandboxes: ``process.exec`` of a command whose output it checks, an upload of a
random file and its download compared byte for byte, every tenth round a session command and its logs, and a
listing of its sandboxes; every 50th round it deletes a sandbox and creates a new one, so the population churns
slowly. Samples go to ``samples.jsonl`` in ``--out`` (``report``'s format, ``x`` in minutes); the summary and
``soak.svg`` come from the ``soak_report`` binary. The run fails (exit 1) on any client error or a service that
died: figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import queue
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests" / "python"
sys.path[:0] = [str(TESTS / "stack"), str(TESTS)]  # sandbar_stack, and the sandbar_util it uses

from daytona import Daytona, DaytonaConfig, SessionExecuteRequest  # noqa: E402
from loadgen import rss_mib  # noqa: E402 - VmRSS from /proc, as the load test reads it
from sandbar_stack import remove_containers, start_stack  # noqa: E402

SERVICES = ("sandbar-api", "sandbar-runner", "sandbar-proxy", "sandbar")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else 0.0


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


SIZE = re.compile(r"^([\d.]+)\s*([kKMGT]?B)$")
UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def docker_disk_gib() -> float | None:
    """Images, containers' writable layers and volumes, as ``docker system df`` counts them."""
    try:
        r = subprocess.run(["docker", "system", "df", "--format", "{{.Size}}"], capture_output=True, text=True,
                           timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    total = 0.0
    for line in r.stdout.split():
        if m := SIZE.match(line.strip()):
            total += float(m.group(1)) * UNITS.get(m.group(2), 1)
    return total / 2**30


class Soak:
    def __init__(self, args: argparse.Namespace, stack, daytona: Daytona):
        self.args = args
        self.stack = stack
        self.d = daytona
        self.lock = threading.Lock()
        self.sandboxes: list = []
        # Each client takes a sandbox from here and puts it back when its round is done, so a sandbox that a
        # client deletes (the churn) is never in another client's hands.
        self.idle: queue.Queue = queue.Queue()
        self.ops = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.started = time.monotonic()
        # `docker system df` takes seconds (tens under load): measured in a loop of its own, its latest figure used.
        self.docker_disk: float | None = None
        self.out = open(args.out / "samples.jsonl", "w")  # noqa: SIM115 - closed by finish()

    def sample(self, metric: str, subject: str, value: float) -> None:
        minutes = (time.monotonic() - self.started) / 60
        self.out.write(json.dumps({"metric": metric, "subject": subject, "value": value, "x": round(minutes, 3)})
                       + "\n")
        self.out.flush()

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)
        print(f"soak: error: {what}", file=sys.stderr, flush=True)

    def services(self) -> dict[str, int]:
        up = self.stack.proc.popen.pid
        found = {"sandbar": up}
        for pid in children(up):
            if (name := comm(pid)) in SERVICES:
                found[name] = pid
        return found

    def take_samples(self, window_ops: int, window_s: float) -> None:
        for name, pid in self.services().items():
            if (r := rss_mib(pid)) is not None:
                self.sample("rss_mib", name, round(r, 2))
            if (n := fds(pid)) is not None:
                self.sample("fds", name, n)
        db = sum(p.stat().st_size for p in self.stack.data_dir.glob("sandbar.db*"))
        self.sample("db_mib", "sqlite (with WAL)", round(db / 2**20, 3))
        if (g := self.docker_disk) is not None:
            self.sample("docker_disk_gib", "docker system df", round(g, 3))
        if window_s > 0:
            self.sample("ops_per_s", "clients", round(window_ops / window_s, 2))
        with self.lock:
            lat, self.latencies = self.latencies, []
        if lat:
            self.sample("latency_ms", "exec p50", round(pct(lat, 50) * 1000, 2))
            self.sample("latency_ms", "exec p99", round(pct(lat, 99) * 1000, 2))

    def measure_docker_disk(self) -> None:
        while not self.stop.is_set():
            # With 200 containers `docker system df` took over two minutes here: a slow answer is a missing point.
            self.docker_disk = docker_disk_gib()
            self.stop.wait(self.args.sample_secs)

    def create(self):
        sb = self.d.create(timeout=300)
        with self.lock:
            self.sandboxes.append(sb)
        self.idle.put(sb)
        return sb

    def client(self, n: int) -> None:
        rng = random.Random(n)
        rounds = 0
        while not self.stop.is_set():
            try:
                sb = self.idle.get(timeout=1)
            except queue.Empty:
                continue
            rounds += 1
            try:
                sb = self.one_round(sb, rng, rounds)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported, the loop goes on
                self.error(f"client {n} round {rounds} on {sb.id}: {type(e).__name__}: {e}")
                continue
            finally:
                with self.lock:
                    alive = sb in self.sandboxes
                if alive:
                    self.idle.put(sb)
            with self.lock:
                self.ops += 1

    def one_round(self, sb, rng: random.Random, rounds: int):
        """One round on ``sb``; returns the sandbox to put back (a new one when this round replaced it)."""
        word = secrets.token_hex(4)
        t0 = time.monotonic()
        r = sb.process.exec(f"echo {word}", timeout=60)
        with self.lock:
            self.latencies.append(time.monotonic() - t0)
        if r.exit_code != 0 or r.result.strip() != word:
            raise RuntimeError(f"exec answered {r.exit_code} {r.result!r}")
        body = rng.randbytes(rng.randint(1, 256 * 1024))
        path = f"/tmp/soak-{word}"
        sb.fs.upload_file(body, path)
        if sb.fs.download_file(path) != body:
            raise RuntimeError("download differs from upload")
        sb.fs.delete_file(path)
        if rounds % 10 == 0:
            sid = f"soak-{word}"
            sb.process.create_session(sid)
            out = sb.process.execute_session_command(sid, SessionExecuteRequest(command=f"echo s-{word}"), timeout=60)
            if f"s-{word}" not in (out.output or ""):
                raise RuntimeError(f"session command answered {out.output!r}")
            sb.process.delete_session(sid)
        if rounds % 50 == 0:
            with self.lock:
                self.sandboxes.remove(sb)
            self.d.delete(sb, timeout=120)
            new = self.d.create(timeout=300)
            with self.lock:
                self.sandboxes.append(new)
            return new
        return sb

    def run(self) -> None:
        a = self.args
        print(f"soak: creating {a.sandboxes} sandboxes", flush=True)
        with ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(self.create) for _ in range(a.sandboxes)]:
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001 - reported, and the soak does not start
                    self.error(f"create: {e}")
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} of {a.sandboxes} creates failed; first: {self.errors[0]}")
        self.started = time.monotonic()
        threading.Thread(target=self.measure_docker_disk, daemon=True).start()
        print(f"soak: {len(self.sandboxes)} sandboxes, {a.clients} clients, {a.minutes} minutes", flush=True)
        self.take_samples(0, 0)
        threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(a.clients)]
        for t in threads:
            t.start()
        end = self.started + a.minutes * 60
        last_ops, last_t = 0, time.monotonic()
        while time.monotonic() < end:
            time.sleep(max(0.0, min(a.sample_secs, end - time.monotonic())))
            with self.lock:
                ops = self.ops
            now = time.monotonic()
            self.take_samples(ops - last_ops, now - last_t)
            last_ops, last_t = ops, now
            missing = [s for s in SERVICES if s not in self.services()]
            if missing or not self.stack.proc.alive():
                self.error(f"services gone: {missing or ['sandbar up']}")
                break
            print(f"soak: {(now - self.started) / 60:.1f} min, {ops} rounds, {len(self.errors)} errors", flush=True)
        self.stop.set()
        for t in threads:
            t.join(timeout=120)
            if t.is_alive():
                self.error("a client did not stop within 120 s")

    def finish(self) -> None:
        for sb in list(self.sandboxes):
            try:
                self.d.delete(sb, timeout=120)
            except Exception as e:  # noqa: BLE001 - reported as an error of the run
                self.error(f"delete {sb.id}: {e}")
        self.out.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--sandboxes", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--sample-secs", type=float, default=30)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--image", default=None, help="the stack's default image (else SANDBAR_STACK_IMAGE or sandbar up's)")
    p.add_argument("--quick", action="store_true", help="1 minute, 4 sandboxes, 4 clients, a sample every 10 s")
    a = p.parse_args()
    if a.quick:
        a.minutes, a.sandboxes, a.clients, a.sample_secs = 1, 4, 4, 10
    a.out = a.out or Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).resolve().parents[1] / "target")) / \
        "soak" / ("quick" if a.quick else "full")
    a.out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="sandbar-soak-"))
    runner = "soak-" + secrets.token_hex(3)
    # One host holding --sandboxes sandboxes of the default size (1 vCPU, 1 GiB, 3 GiB): the operator's settings
    # that let it (quotas, memory overcommit, the disk the runner advertises); idle sandboxes use a few MiB each.
    n = max(a.sandboxes, 10)
    room = {"SANDBAR_QUOTA_SANDBOXES": n * 2, "SANDBAR_QUOTA_CPU": n * 2, "SANDBAR_QUOTA_MEMORY": n * 2,
            "SANDBAR_QUOTA_DISK": n * 8, "SANDBAR_MEMORY_OVERCOMMIT": max(2, n // 10), "SANDBAR_CPU_OVERCOMMIT": max(8, n), "SANDBAR_DISK_CAPACITY": n * 8}
    stack = start_stack(data, runner, image=a.image, env={k: str(v) for k, v in room.items()})
    soak = None
    try:
        soak = Soak(a, stack, Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key)))
        soak.run()
    finally:
        if soak:
            soak.finish()
        stack.stop()
        remove_containers(runner)
    errors = soak.errors if soak else ["the soak did not start"]
    print(f"soak: {soak.ops if soak else 0} rounds, {len(errors)} errors; samples in {a.out / 'samples.jsonl'}")
    for e in errors[:20]:
        print(f"  {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
