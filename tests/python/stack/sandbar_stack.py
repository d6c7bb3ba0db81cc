"""Starting and stopping the whole stack the way a user does it: ``sandbar up`` on port 0 with a temporary data directory.

Tests here use only what ``sandbar up`` prints (``DAYTONA_API_URL``, ``DAYTONA_API_KEY``, the proxy and SSH
addresses) and real clients: the Daytona SDK, OpenSSH, headless Chromium, curl. Every container the stack makes
carries the runner id of this run; the fixture removes them at the end, even after a failure.

Env: ``SANDBAR_BIN_DIR`` (default ``<repo>/target/debug``), ``SANDBAR_STATIC_DAEMON`` (else ``sandbar up`` builds it),
``SANDBAR_STACK_IMAGE`` (default: the real default image, built by ``sandbar up`` when missing).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbar_util import Proc, start_proc

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("SANDBAR_BIN_DIR", str(REPO / "target" / "debug")))


@dataclass
class Stack:
    proc: Proc
    data_dir: Path
    runner_id: str
    api_url: str = ""
    api_key: str = ""
    proxy_http: str = ""
    proxy_https: str = ""
    ssh: str = ""
    args: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        e = dict(os.environ)
        e["DAYTONA_API_URL"] = self.api_url
        e["DAYTONA_API_KEY"] = self.api_key
        return e

    def log(self, name: str) -> str:
        try:
            return (self.data_dir / "logs" / f"{name}.log").read_text(errors="replace")[-4000:]
        except OSError as e:
            return f"<no {name} log: {e}>"

    def stop(self, timeout: float = 30) -> int | None:
        return self.proc.stop(timeout)


def start_stack(data_dir: Path, runner_id: str, extra: list[str] | None = None, timeout: float = 600,
                prefix: list[str] | None = None, env: dict[str, str] | None = None, image: str | None = None,
                api_port: int = 0) -> Stack:
    """``sandbar up`` on port 0 (the API on ``api_port`` when given: a relay in front of it needs it first).
    ``prefix`` goes before its argv (``nsenter ...``: run it in another namespace), ``env`` is added to its
    environment (``DOCKER_HOST``: another engine; passed on to its services), and ``image`` is the default image
    instead of ``SANDBAR_STACK_IMAGE``."""
    sandbar = BIN_DIR / "sandbar"
    if not os.access(sandbar, os.X_OK):
        pytest.fail(f"{sandbar} not found: run `cargo build --workspace --bins` or set SANDBAR_BIN_DIR")
    args = [
        str(sandbar), "up", "--data-dir", str(data_dir),
        "--api-port", str(api_port), "--http-port", "0", "--https-port", "0", "--ssh-port", "0",
        "--runner-id", runner_id, "--container-label", "sandbar-e2e=1",
        "--shutdown-grace", "10",
    ]
    image = image or os.environ.get("SANDBAR_STACK_IMAGE")
    if image:
        args += ["--image", image]
    args += extra or []
    proc_env = dict(os.environ)
    proc_env.pop("DAYTONA_API_URL", None)
    proc_env.pop("DAYTONA_API_KEY", None)
    proc_env["SANDBAR_BIN_DIR"] = str(BIN_DIR)
    # The registry tests serve registries on loopback and on the docker0 address, which `*` leaves out.
    proc_env.setdefault("SANDBAR_ALLOWED_REGISTRIES", "*,127.0.0.1:*,172.17.0.1:*")
    proc_env.update(env or {})
    # The log sits beside the data directory: `sandbar up` owns what is inside it.
    proc = start_proc(f"sandbar-up-{data_dir.name}", [*(prefix or []), *args], proc_env, data_dir.parent,
                      "sandbar ready", timeout, new_session=True)
    stack = Stack(proc=proc, data_dir=data_dir, runner_id=runner_id, args=args)
    patterns = {
        "api_url": r"^DAYTONA_API_URL=(\S+)",
        "api_key": r"^DAYTONA_API_KEY=(\S+)",
        "proxy_http": r"^proxy http:\s+(\S+)",
        "proxy_https": r"^proxy https:\s+(\S+)",
        "ssh": r"^ssh gateway:\s+(\S+)",
    }
    for line in proc.lines:
        for attr, pattern in patterns.items():
            if m := re.match(pattern, line):
                setattr(stack, attr, m.group(1))
    if not proc.alive() or not stack.api_key:
        pytest.fail(f"sandbar up failed (exit {proc.popen.poll()}):\n{proc.tail()}")
    return stack


def remove_containers(runner_id: str, docker_host: str | None = None, prefix: list[str] | None = None) -> None:
    """The runner's containers (in the engine at ``docker_host``, default the local one) and its network rules (in
    the network namespace that ``prefix``, an ``nsenter ...`` argv, enters; default this one)."""
    # Rules first (as the Rust test guard does): a container's address freed while its rules remain would be
    # blocked for the next container Docker hands it to, whichever test or stack that is.
    remove_network_rules(runner_id, prefix)
    docker = ["docker", *(["-H", docker_host] if docker_host else [])]
    try:
        out = subprocess.run(
            [*docker, "ps", "-aq", "--filter", f"label=sandbar.runner={runner_id}"],
            capture_output=True, text=True, check=False, timeout=60,
        ).stdout.split()
        if out:
            subprocess.run([*docker, "rm", "-f", *out], capture_output=True, check=False, timeout=120)
    except subprocess.TimeoutExpired:
        pass  # an engine that does not answer: its own teardown (engine.py) or the next run deals with it


def chain_prefix(runner_id: str) -> str:
    """The runner's top iptables chain (runner/src/network.rs: ``SANDBAR-`` and 4 bytes of SHA-256, upper hex)."""
    return "SANDBAR-" + hashlib.sha256(runner_id.encode()).digest()[:4].hex().upper()


def sandbox_chain(runner_id: str, sandbox_id: str) -> str:
    return chain_prefix(runner_id) + "-" + hashlib.sha256(sandbox_id.encode()).digest()[:5].hex().upper()


def iptables_rules(prefix: list[str] | None = None) -> str:
    """Both iptables backends' filter tables (the runner uses the one holding Docker's DOCKER-USER chain), in the
    network namespace ``prefix`` enters (default this one)."""
    out = []
    for binary in ("iptables-nft", "iptables-legacy"):
        r = subprocess.run([*(prefix or []), binary, "-w", "5", "-S"], capture_output=True, text=True, check=False,
                           timeout=30)
        out.append(r.stdout)
    return "\n".join(out)


def bridge_table(runner_id: str) -> str:
    """The runner's nftables bridge table (runner/src/firewall/bridge.rs: ``sandbar_`` and 4 bytes of SHA-256)."""
    return "sandbar_" + hashlib.sha256(runner_id.encode()).digest()[:4].hex()


def remove_network_rules(runner_id: str, prefix: list[str] | None = None) -> None:
    """The runner's isolation chains and its bridge table outlive it on purpose (sandboxes keep running); a test run
    removes its own (in the network namespace ``prefix`` enters, default this one). A bridge table left behind pins
    each of its sandboxes' addresses to a port that is gone, so the next container Docker gives that address could
    not send anything."""
    ns = prefix or []

    def run(*argv: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([*ns, *argv], capture_output=True, text=True, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", "timed out")

    run("nft", "delete", "table", "bridge", bridge_table(runner_id))
    top = chain_prefix(runner_id)
    for binary in ("iptables-nft", "iptables-legacy"):
        listing = run(binary, "-w", "5", "-S").stdout
        chains = [line[3:] for line in listing.splitlines()
                  if line.startswith("-N ") and (line[3:] == top or line[3:].startswith(top + "-"))]
        if not chains:
            continue
        for hook in ("DOCKER-USER", "INPUT"):
            # Bounded: each pass deletes one jump, and there are never many.
            for _ in range(100):
                if run(binary, "-w", "5", "-D", hook, "-j", top).returncode != 0:
                    break
        for chain in chains:
            run(binary, "-w", "5", "-F", chain)
        for chain in chains:
            run(binary, "-w", "5", "-X", chain)




def new_org_key(stack: Stack, org: str) -> str:
    """An API key of a new organization `org` in the stack's database (`sandbar-api bootstrap`, as `sandbar up`
    makes the first one)."""
    out = subprocess.run([str(BIN_DIR / "sandbar-api"), "--data-dir", str(stack.data_dir), "bootstrap", "--org", org],
                         capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        pytest.fail(f"sandbar-api bootstrap --org {org} failed: {out.stderr}")
    return next(line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("api_key="))
