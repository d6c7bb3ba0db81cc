#!/usr/bin/env python3
"""The figures that need a running stack (`sandbar up`), each beside its peer in the same run, interleaved (every
subject once per round, the order turning each round):

- create to first exec through the Daytona SDK (`create()` then `process.exec("echo hi")`), cold (a stack without
  a warm pool) and warm (a second stack with one), beside `docker run --rm IMAGE echo hi` of the same image;
- SSH through the stack's gateway (an access token from the SDK) beside OpenSSH's sshd on loopback, same client,
  same cipher, same file: connection setup (`ssh host true`, median of a few) and scp upload;
- idle memory per sandbox: sandboxes the runner started, left idle, against `docker run -d IMAGE sleep` containers
  of the same image; each container's memory cgroup, read after they settle.

Run (after `cargo build --workspace --bins`, as root for sshd):
    SANDBAR_STATIC_DAEMON=$(scripts/build-daemon) .venv/bin/python benches/stack.py [--rounds N] [--scp-mib M]
        [--idle K] [--image IMAGE] [--samples FILE]
IMAGE defaults to SANDBAR_STACK_IMAGE, else scripts/build-test-image's output. With --samples, every figure is
appended there as a `benches/run` sample (see benches/src/report.rs); either way it prints them. Nothing here asserts
a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "python"
sys.path[:0] = [str(TESTS / "stack"), str(TESTS)]  # sandbar_stack, and the sandbar_util it uses

from daytona import Daytona, DaytonaConfig  # noqa: E402
from sandbar_stack import remove_containers, start_stack  # noqa: E402

CIPHER = "aes256-gcm@openssh.com"
# Docker label of the containers this run starts itself (the peers): removed at the end, whatever happens.
LABEL = "sandbar-bench=stack"


def sh(*args: str, timeout: float = 120) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout).stdout.strip()


class Samples:
    def __init__(self, path: Path | None):
        self.path = path

    def add(self, metric: str, subject: str, value: float) -> None:
        print(f"  {metric} {subject}: {value:.2f}", file=sys.stderr)
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps({"metric": metric, "subject": subject, "value": value}) + "\n")


def rotate(items: list[str], r: int) -> list[str]:
    return [items[(i + r) % len(items)] for i in range(len(items))]


def memory_mib(container: str) -> float:
    """MiB charged to the container's memory cgroup (v2 through the process's own cgroup path, or v1)."""
    pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", container)
    cid = sh("docker", "inspect", "-f", "{{.Id}}", container)
    candidates = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            candidates.append(Path("/sys/fs/cgroup" + line[3:]) / "memory.current")
    candidates += [Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current"),
                   Path(f"/sys/fs/cgroup/docker/{cid}/memory.current"),
                   Path(f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes")]
    for p in candidates:
        try:
            return int(p.read_text()) / 2**20
        except OSError:
            continue
    raise RuntimeError(f"no memory cgroup found for {container} (tried {[str(c) for c in candidates]})")


class Sshd:
    """OpenSSH's sshd on loopback, key authentication only (as benches/src/sshd.rs starts it)."""

    def __init__(self, work: Path):
        self.key = work / "client_key"
        host_key = work / "host_key"
        for k in (self.key, host_key):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k))
        (work / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = str(s.getsockname()[1])
        sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server") if Path(p).exists()),
                    "internal-sftp")
        config = work / "sshd_config"
        config.write_text(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n"
                          f"AuthorizedKeysFile {work / 'authorized_keys'}\nStrictModes no\n"
                          "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                          f"PermitRootLogin yes\nSubsystem sftp {sftp}\nUseDNS no\n")
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(self.port)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def ssh_opts(work: Path, key: Path) -> list[str]:
    return ["-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={work / 'known_hosts'}",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30", "-c", CIPHER]


def timed(argv: list[str], timeout: float = 300) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return time.perf_counter() - t


def create_to_exec(d: Daytona) -> float:
    t = time.perf_counter()
    sb = d.create(timeout=120)
    r = sb.process.exec("echo hi")
    ms = (time.perf_counter() - t) * 1000
    if r.result.strip() != "hi":
        raise RuntimeError(f"exec answered {r.result!r}")
    d.delete(sb)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--scp-mib", type=int, default=256)
    ap.add_argument("--setups", type=int, default=5, help="`ssh true` runs a round and subject (median)")
    ap.add_argument("--idle", type=int, default=3, help="idle sandboxes and idle containers to measure")
    ap.add_argument("--warm-pool", type=int, default=2)
    ap.add_argument("--image", default=os.environ.get("SANDBAR_STACK_IMAGE"))
    ap.add_argument("--samples", type=Path)
    a = ap.parse_args()
    image = a.image or sh(str(ROOT / "scripts/build-test-image"))
    os.environ["SANDBAR_STACK_IMAGE"] = image
    out = Samples(a.samples)
    work = Path(tempfile.mkdtemp(prefix="sandbar-bench-stack-"))
    run_id = secrets.token_hex(3)
    global LABEL
    LABEL = f"sandbar-bench=stack-{run_id}"
    runners = [f"bench-cold-{run_id}", f"bench-warm-{run_id}"]
    stacks = []
    sshd = None
    try:
        t = time.perf_counter()
        cold = start_stack(work / "cold", runners[0])
        stacks.append(cold)
        warm = start_stack(work / "warm", runners[1], ["--warm-pool", str(a.warm_pool)])
        stacks.append(warm)
        print(f"stacks up in {time.perf_counter() - t:.1f} s (image {image})", file=sys.stderr)
        clients = {"cold": Daytona(DaytonaConfig(api_url=cold.api_url, api_key=cold.api_key)),
                   "warm": Daytona(DaytonaConfig(api_url=warm.api_url, api_key=warm.api_key))}
        # One unrecorded create on each (the image's first start, the SDK's first connection); the pool fills
        # meanwhile.
        for c in clients.values():
            create_to_exec(c)
        subprocess.run(["docker", "run", "--rm", "--label", LABEL, image, "echo", "hi"], check=True,
                       capture_output=True, timeout=120)

        # SSH: a sandbox of the cold stack behind the gateway, and sshd, with the same file.
        sshd = Sshd(work)
        opts = ssh_opts(work, sshd.key)
        target = clients["cold"].create(timeout=120)
        access = target.create_ssh_access(expires_in_minutes=60)
        gw_host, gw_port = cold.ssh.rsplit(":", 1)
        ssh = {"gateway": (gw_port, f"{access.token}@{gw_host}", "/tmp/bench.bin"),
               "sshd": (sshd.port, "root@127.0.0.1", str(work / "up.bin"))}
        src = work / "src.bin"
        with src.open("wb") as f:
            for _ in range(a.scp_mib):
                f.write(os.urandom(1 << 20))

        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
            for s in rotate(["docker-run", "cold", "warm"], r):
                if s == "docker-run":
                    t = time.perf_counter()
                    subprocess.run(["docker", "run", "--rm", "--label", LABEL, image, "echo", "hi"], check=True,
                                   capture_output=True, timeout=120)
                    out.add("create_cold_p50_ms", "docker-run", (time.perf_counter() - t) * 1000)
                else:
                    out.add(f"create_{s}_p50_ms", "sandbar", create_to_exec(clients[s]))
            for s in rotate(["gateway", "sshd"], r):
                port, login, path = ssh[s]
                setups = [timed(["ssh", *opts, "-p", port, login, "true"]) * 1000 for _ in range(a.setups)]
                out.add("ssh_gateway_setup_ms", s, statistics.median(setups))
                secs = timed(["scp", *opts, "-q", "-P", port, str(src), f"{login}:{path}"])
                out.add("scp_gateway_mib_s", s, a.scp_mib / secs)
        clients["cold"].delete(target)

        # Idle memory: K sandboxes of the cold stack and K `sleep` containers, started in turns, read together.
        idle, sleepers = [], []
        for i in range(a.idle):
            idle.append(clients["cold"].create(timeout=120))
            sleepers.append(sh("docker", "run", "-d", "--label", LABEL, image, "sleep", "3600"))
        time.sleep(5)
        for sb in idle:
            cid = sh("docker", "ps", "-q", "--filter", f"label=sandbar.sandbox.id={sb.id}")
            out.add("idle_mib", "sandbar", memory_mib(cid))
        for cid in sleepers:
            out.add("idle_mib", "docker-sleep", memory_mib(cid))
        for sb in idle:
            clients["cold"].delete(sb)
    finally:
        if sshd:
            sshd.stop()
        for s in stacks:
            s.stop()
        for runner in runners:
            remove_containers(runner)
        leftover = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}"], capture_output=True,
                                  text=True).stdout.split()
        if leftover:
            subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
