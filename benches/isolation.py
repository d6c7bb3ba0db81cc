#!/usr/bin/env python3
"""What the sandbox hardening costs, side by side and interleaved in one run: the old defaults (Docker's default
capabilities, container root = host root), the hardened defaults the runner applies today (capabilities dropped,
user namespace, nofile/log caps, no-new-privileges for root images), and the hardened set on gVisor (`runsc`).

For each: cold create (docker run -> the daemon's GET /version answers), `process/execute` of `echo hi` p50/p99
straight to the daemon, scp of 64 MiB to the daemon's SSH server, and the sandbox's memory when idle (its
cgroup's usage). Containers run the image the runner would (the busybox test image by default, or --image) with
the static daemon as PID 1, exactly as `runner/src/host/containers.rs` starts them.

Run: SANDBAR_STATIC_DAEMON=$(scripts/build-daemon) .venv/bin/python benches/isolation.py [--rounds N] [--quick]
      [--image IMAGE]  (IMAGE defaults to $SANDBAR_TEST_IMAGE, else scripts/build-test-image's output)
Nothing here asserts a figure: it prints a Markdown table and the JSON of every sample.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAEMON_PATH = "/usr/local/bin/sandbar-daemon"
# What runner/src/host/hardening.rs keeps (SANDBOX_CAPS).
CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]
LABEL = "sandbar.bench=isolation"

CONFIGS = {
    "old defaults": ["--userns=host"],
    "hardened": ["--cap-drop=ALL", *[f"--cap-add={c}" for c in CAPS], "--ulimit", "nofile=16384:16384",
                 "--log-opt", "max-size=10m", "--log-opt", "max-file=3",
                 "--security-opt", "no-new-privileges:true"],
    "hardened on gVisor": ["--cap-drop=ALL", *[f"--cap-add={c}" for c in CAPS], "--ulimit", "nofile=16384:16384",
                           "--log-opt", "max-size=10m", "--log-opt", "max-file=3",
                           "--security-opt", "no-new-privileges:true", "--runtime=runsc", "--userns=host"],
}


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout.strip()


def sign(token: str, method: str, path: str) -> str:
    """support::daemon_auth: v1.<ms>.<nonce>.<HMAC-SHA256(token, canonical)>."""
    ts = int(time.time() * 1000)
    nonce = secrets.token_hex(16)
    canonical = f"sandbar-daemon-auth-v1\n{method}\n{path}\n{ts}\n{nonce}"
    sig = hmac.new(token.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return f"v1.{ts}.{nonce}.{sig}"


def request(base: str, token: str, method: str, path: str, body: dict | None = None, timeout: float = 5) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("x-sandbar-daemon-auth", sign(token, method, path))
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def container_memory(cid: str) -> float | None:
    """MiB charged to the container's memory cgroup (v1 or v2)."""
    for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
                 f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current"):
        try:
            return int(Path(path).read_text()) / 2**20
        except OSError:
            continue
    return None


def one(config: str, image: str, daemon: str, exec_n: int, scp_file: Path | None) -> dict:
    token = secrets.token_hex(32)
    name = "sandbar-bench-iso-" + secrets.token_hex(4)
    t0 = time.perf_counter()
    cid = sh("docker", "run", "-d", "--name", name, "--label", LABEL, "--pids-limit", "4096",
             "-v", f"{daemon}:{DAEMON_PATH}:ro", "--entrypoint", DAEMON_PATH,
             "-e", f"SANDBAR_DAEMON_TOKEN={token}", "-e", "SANDBAR_SANDBOX_ID=bench",
             *CONFIGS[config], image)
    try:
        ip = sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid)
        base = f"http://{ip}:2280"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/version", timeout=1).read()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{config}: the daemon never answered: {sh('docker', 'logs', cid)}")
                time.sleep(0.01)
        create_ms = (time.perf_counter() - t0) * 1000
        execs = []
        for _ in range(exec_n):
            s = time.perf_counter()
            out = json.loads(request(base, token, "POST", "/process/execute", {"command": "echo hi"}))
            execs.append((time.perf_counter() - s) * 1000)
            if out.get("result", "").strip() != "hi":
                raise RuntimeError(f"{config}: exec answered {out}")
        time.sleep(2)
        memory = container_memory(cid)
        scp_mibs = None
        if scp_file is not None and shutil.which("sshpass"):
            s = time.perf_counter()
            subprocess.run(["sshpass", "-p", token, "scp", "-q", "-P", "22220", "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", str(scp_file),
                            f"root@{ip}:/tmp/bench.bin"], check=True, timeout=120)
            scp_mibs = scp_file.stat().st_size / 2**20 / (time.perf_counter() - s)
        return {"config": config, "create_ms": create_ms, "exec_ms": execs, "idle_mib": memory, "scp_mibs": scp_mibs}
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one round, few execs, no scp")
    ap.add_argument("--image", default=os.environ.get("SANDBAR_TEST_IMAGE"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    daemon = os.environ.get("SANDBAR_STATIC_DAEMON") or sh(str(ROOT / "scripts/build-daemon"))
    image = a.image or sh(str(ROOT / "scripts/build-test-image"))
    configs = list(CONFIGS)
    if "runsc" not in sh("docker", "info", "--format", "{{json .Runtimes}}"):
        print("runsc is not registered with Docker: skipping gVisor (scripts/setup registers it)", file=sys.stderr)
        configs.remove("hardened on gVisor")
    rounds, exec_n = (1, 20) if a.quick else (a.rounds, 200)
    scp_file = None
    if not a.quick:
        scp_file = Path(tempfile.mkdtemp(prefix="sandbar-bench-")) / "64m.bin"
        scp_file.write_bytes(os.urandom(64 * 2**20))
    samples: list[dict] = []
    for r in range(rounds):  # interleaved: A, B, C, A, B, C ...
        for config in configs:
            samples.append(one(config, image, daemon, exec_n, scp_file))
            print(f"round {r + 1}/{rounds} {config}: create {samples[-1]['create_ms']:.0f} ms", file=sys.stderr)
    print("| config | cold create p50 (ms) | exec p50 / p99 (ms) | scp 64 MiB (MiB/s) | idle memory (MiB) |")
    print("|---|---|---|---|---|")
    for config in configs:
        s = [x for x in samples if x["config"] == config]
        execs = [e for x in s for e in x["exec_ms"]]
        scp = [x["scp_mibs"] for x in s if x["scp_mibs"] is not None]
        mem = [x["idle_mib"] for x in s if x["idle_mib"] is not None]
        scp_s = f"{statistics.median(scp):.0f}" if scp else "-"
        mem_s = f"{statistics.median(mem):.1f}" if mem else "-"
        create = statistics.median(x["create_ms"] for x in s)
        print(f"| {config} | {create:.0f} | {pct(execs, 50):.2f} / {pct(execs, 99):.2f} | {scp_s} | {mem_s} |")
    if a.json:
        a.json.write_text(json.dumps(samples, indent=1))


if __name__ == "__main__":
    main()
