"""The Debian package, installed as the README's "Install on a server" says, on throwaway servers.

The README's section is the script: its ``sh`` blocks are run in order, as written, with the variables the section
asks the reader to set (``HOST``, ``API_HOST``, ``RUNNER_TOKEN``). The first block (``scripts/package``) runs here
with ``--profile debug`` (the dev-profile binaries the suite built; a release build adds 24 minutes); the others run
as root inside two containers booted with systemd as PID 1 and their own Docker engine (``scripts/build-systemd-image``,
cached by tag): ``server`` gets the install, configure, start and API-side join blocks, ``second`` the new runner's.
The one change the test makes of its own, between configuring and starting, is the default image: the small test
image (loaded into each engine) instead of a debootstrapped Debian, so ``sandbar-image.service`` has nothing to build.

Then the Daytona SDK, from this host, creates a sandbox through the installed proxy, runs a command in it and deletes
it; a second runner joined by the README's commands takes a create while the server's own runner is stopped; and
``dpkg --purge`` leaves no sandbar process, unit, listener, container, user or file behind.

This machine runs no systemd and must not be changed: everything happens inside the two containers (labelled
``sandbar.test=package``, removed on success and failure). Their engines are their own, so the runners' firewall
rules and sandboxes stay inside them. The containers get every capability this host's Docker can grant (it lacks
CAP_SYS_RESOURCE, so ``--privileged`` fails here) and the host's user namespace (Docker's userns-remap is on).

Env: ``SANDBAR_STATIC_DAEMON`` (the static daemon to pack), ``SANDBAR_TEST_IMAGE`` (default: scripts/build-test-image).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SECTION = "## Install on a server"
LABEL = "sandbar.test=package"
# The test process that made a container: a later run removes the containers of runs that died without cleaning up.
OWNER = "sandbar.test.owner"
UNITS = ["sandbar-api", "sandbar-proxy", "sandbar-runner", "sandbar-image"]

pytestmark = pytest.mark.skipif(shutil.which("docker") is None or os.geteuid() != 0,
                                reason="needs root and Docker (debootstrap, containers with systemd)")


def readme_blocks() -> list[str]:
    """The ``sh`` blocks of the README's install section, in order."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end >= 0 else len(text)]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


def run(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{argv!r} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


class Server:
    """A container booted with systemd as PID 1 and its own Docker engine."""

    def __init__(self, image: str, role: str):
        self.name = f"sandbar-pkgtest-{role}-{secrets.token_hex(3)}"
        # The engine's storage is a tmpfs (vfs: no overlay on a container's own root); the cgroup namespace is the
        # container's, so systemd and the engine inside manage a subtree of their own.
        run(["docker", "run", "-d", "--name", self.name, "--hostname", self.name, "--label", LABEL,
             "--label", f"{OWNER}={os.getpid()}",
             "--userns=host", "--cgroupns=private", "--cap-add=ALL", "--cap-drop=SYS_RESOURCE",
             "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
             "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
             "--stop-signal", "SIGRTMIN+3", "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
             "--tmpfs", "/var/lib/docker:rw,exec,dev,suid,size=4g", image])
        self.ip = run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", self.name]).stdout.strip()

    def sh(self, script: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        envs = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        return run(["docker", "exec", "-w", "/root", *envs, self.name, "bash", "-euo", "pipefail", "-c", script],
                   timeout=timeout).stdout

    def boot(self, test_image: str, deb: Path) -> None:
        """Waits for systemd and the engine, loads the test image and copies the package in."""
        # Until systemd's bus answers, `is-system-running` prints nothing; then `--wait` waits out the boot.
        deadline = time.monotonic() + 120
        state = ""
        while state not in ("running", "degraded") and time.monotonic() < deadline:
            state = subprocess.run(["docker", "exec", self.name, "systemctl", "is-system-running", "--wait"],
                                   capture_output=True, text=True, timeout=120, check=False).stdout.strip()
            time.sleep(0.2)
        assert state in ("running", "degraded"), f"systemd did not finish booting: {state!r}"
        self.sh("until docker info >/dev/null 2>&1; do sleep 0.2; done", timeout=60)
        save = subprocess.Popen(["docker", "save", test_image], stdout=subprocess.PIPE)
        run(["docker", "exec", "-i", self.name, "docker", "load"], stdin=save.stdout)
        assert save.wait(timeout=60) == 0
        run(["docker", "cp", str(deb), f"{self.name}:/root/"])

    def journal(self) -> str:
        p = subprocess.run(["docker", "exec", self.name, "journalctl", "--no-pager", "-n", "200",
                            *[a for u in UNITS for a in ("-u", u)]],
                           capture_output=True, text=True, timeout=30, check=False)
        return p.stdout

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", "-v", self.name], capture_output=True, timeout=120, check=False)


def remove_orphans() -> None:
    """Containers of earlier runs whose test process is gone (killed before its cleanup)."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format",
                          f'{{{{.ID}}}} {{{{.Label "{OWNER}"}}}}'],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    for line in out.splitlines():
        cid, _, pid = line.partition(" ")
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["docker", "rm", "-f", "-v", cid], capture_output=True, timeout=120, check=False)


def use_test_image(server: Server, image: str) -> None:
    """The test's one change of its own: the small test image as the default image of the API and the runner."""
    server.sh(f"sed -i 's|^SANDBAR_DEFAULT_SNAPSHOT=.*|SANDBAR_DEFAULT_SNAPSHOT={image}|' /etc/sandbar/api.env\n"
              f"sed -i 's|^SANDBAR_DEFAULT_IMAGE=.*|SANDBAR_DEFAULT_IMAGE={image}|' /etc/sandbar/runner.env")


def wait_ready(server: Server, timeout: float = 90) -> None:
    """Until the API's /readyz is 200: its database answers and a runner heartbeats."""
    server.sh(f"timeout {timeout} sh -c 'until curl -fsS http://127.0.0.1:3000/readyz >/dev/null; do sleep 0.3; done'",
              timeout=timeout + 10)


class Phases:
    """Prints how long each phase took (figures for the log, never asserted)."""

    def __init__(self):
        self.t = time.monotonic()

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        print(f"package test: {what}: {now - self.t:.1f}s", flush=True)
        self.t = now


def test_install_run_join_and_purge(tmp_path):
    phase = Phases()
    remove_orphans()
    blocks = readme_blocks()
    assert len(blocks) == 6, blocks
    build, install, configure, start, open_api, join_block = blocks
    join = join_block.splitlines()
    assert build == "scripts/package", build
    assert join[0] == install, "a joining host installs the package the same way"

    test_image = os.environ.get("SANDBAR_TEST_IMAGE") or run([str(REPO / "scripts/build-test-image")]).stdout.strip()
    host_image = run([str(REPO / "scripts/build-systemd-image")], timeout=900).stdout.strip().splitlines()[-1]
    deb = Path(run([*build.split(), "--profile", "debug", "--out", str(tmp_path)], cwd=REPO, timeout=300)
               .stdout.strip().splitlines()[-1])
    assert deb.is_file(), deb
    phase("images and package built")

    server = Server(host_image, "server")
    second = None
    try:
        server.boot(test_image, deb)
        phase("server booted (systemd, Docker, test image loaded)")
        # The README's blocks, as written.
        server.sh(install)
        server.sh(configure, env={"HOST": server.ip})
        use_test_image(server, test_image)
        out = server.sh(start)
        key = re.search(r"^api_key=(\S+)$", out, re.M)
        assert key, out
        check_units(server)
        wait_ready(server)
        phase("installed, configured, started and ready")
        smoke(server, key.group(1))
        phase("SDK smoke test")

        # A second runner joins the API on another host, as the README says.
        token_out = server.sh(open_api)
        token = token_out.strip().splitlines()[-1]
        assert re.fullmatch(r"[0-9a-f]{48}", token), token_out
        wait_ready(server)
        second = Server(host_image, "runner")
        second.boot(test_image, deb)
        second.sh(join[0])
        installed_sandbar_up(second, test_image)
        use_test_image(second, test_image)
        second.sh("\n".join(join[1:]), env={"RUNNER_TOKEN": token, "API_HOST": server.ip})
        placed_on_second(server, second, key.group(1))
        phase("second host: sandbar up checked, runner joined and took a create")

        purge_leaves_nothing(server)
        purge_leaves_nothing(second)
        phase("both purged")
    except BaseException:
        for s in (server, second):
            if s is not None:
                print(f"--- journal of {s.name}\n{s.journal()}")
        raise
    finally:
        server.remove()
        if second is not None:
            second.remove()


def check_units(server: Server) -> None:
    """The three services run, the API and the proxy as `sandbar` with systemd's hardening, the runner as root."""
    for unit in ("sandbar-api", "sandbar-proxy", "sandbar-runner"):
        assert server.sh(f"systemctl is-active {unit}").strip() == "active", server.journal()
    for unit in ("sandbar-api", "sandbar-proxy"):
        props = server.sh(f"systemctl show -p User,NoNewPrivileges,ProtectSystem {unit}")
        assert "User=sandbar" in props and "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props, props
        pid = server.sh(f"systemctl show -p MainPID --value {unit}").strip()
        assert server.sh(f"ps -o user= -p {pid}").strip() == "sandbar", unit
    tokens = server.sh("stat -c '%a %U %G' /etc/sandbar/runner-token.env /etc/sandbar/proxy-token.env").split("\n")
    assert tokens[:2] == ["640 root sandbar", "640 root sandbar"], tokens


def smoke(server: Server, key: str) -> None:
    """The SDK from this host, through the installed proxy: create, exec, delete."""
    from daytona import Daytona, DaytonaConfig

    d = Daytona(DaytonaConfig(api_url=f"http://{server.ip}:4000/api", api_key=key))
    sb = d.create(timeout=120)
    try:
        r = sb.process.exec("echo hi from the package")
        assert r.exit_code == 0 and r.result.strip() == "hi from the package", r
    finally:
        d.delete(sb)
    # The delete is a job: its container goes once the runner ran it.
    server.sh("timeout 60 sh -c 'while [ -n \"$(docker ps -aq)\" ]; do sleep 0.3; done'", timeout=70)
    # One left running for the purge to remove.
    d.create(timeout=120)
    assert server.sh("docker ps -q").strip() != ""


def placed_on_second(server: Server, second: Server, key: str) -> None:
    """Once the joined runner heartbeats, a create lands on it: it has the most free room (the server's runner holds
    the sandbox left for the purge), and its engine runs the container."""
    from daytona import Daytona, DaytonaConfig

    second.sh("timeout 60 sh -c 'until journalctl -u sandbar-runner | grep -q \"registered with the control plane\"; "
              "do sleep 0.3; done'", timeout=70)
    time.sleep(6)  # one heartbeat (5 s) past registration: the API has the runner's capacity
    d = Daytona(DaytonaConfig(api_url=f"http://{server.ip}:4000/api", api_key=key))
    sb = d.create(timeout=120)
    on_second = second.sh(f"docker ps -q --filter label=sandbar.sandbox.id={sb.id}").strip()
    assert on_second, f"sandbox {sb.id} is not on the joined runner\n{second.journal()}"


def installed_sandbar_up(server: Server, test_image: str) -> None:
    """`sandbar up` from the package, on a host without a source tree: it finds the static daemon in
    /usr/lib/sandbar and runs the recipe in /usr/share/sandbar (whose content tag is the test image here, so the
    recipe only points the default alias at it), starts the stack and serves; SIGTERM stops it."""
    out = server.sh(f"""
tag=$(/usr/share/sandbar/build-sandbox-image --print-tag)
docker tag {test_image} "$tag"
cd /
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \\
  sandbar up --api-port 0 --http-port 0 --https-port 0 --ssh-port 0 --runner-id up-check >/root/up.log 2>&1 &
pid=$!
timeout 90 sh -c 'until grep -q "^sandbar ready" /root/up.log; do sleep 0.2; done' || {{ cat /root/up.log; exit 1; }}
kill -TERM $pid
wait $pid || true
cat /root/up.log
docker image inspect -f '{{{{.Id}}}}' sandbar-sandbox:default {test_image}
""", timeout=150)
    assert "sandbar ready" in out, out
    assert "data directory /root/.local/share/sandbar" in out, out
    assert "building the default sandbox image" in out and "building the static daemon" not in out, out
    ids = out.strip().splitlines()[-2:]
    assert ids[0] == ids[1], f"the default alias points at the recipe's content tag: {ids}"
    assert server.sh("pgrep -a sandbar || true").strip() == "", "sandbar up stopped its services"
    server.sh("rm -rf /root/.local/share/sandbar /root/up.log")


def runner_chains(server: Server) -> int:
    """How many iptables chains the installed runner (its id is the host name, as the unit sets it) has, on either
    backend: ``SANDBAR-`` and the first 8 hex digits of the id's SHA-256, as runner/src/firewall/rules.rs names them
    (the README's ``sandbar up`` run earlier left its own runner's chains, under another id)."""
    prefix = "SANDBAR-" + hashlib.sha256(server.sh("hostname").strip().encode()).hexdigest()[:8].upper()
    saved = server.sh("for b in iptables-nft iptables-legacy; do command -v $b-save >/dev/null && $b-save 2>/dev/null;"
                      " done || true")
    chains = [line.split()[0][1:] for line in saved.splitlines() if line.startswith(":")]  # ":NAME POLICY [n:n]"
    return sum(1 for c in chains if c == prefix or c.startswith(f"{prefix}-"))


def purge_leaves_nothing(server: Server) -> None:
    assert runner_chains(server) > 0, "the runner installed no firewall chains to purge"
    server.sh("dpkg --purge sandbar", timeout=120)
    assert runner_chains(server) == 0, "purge leaves the runner's firewall chains"
    table = "sandbar_" + hashlib.sha256(server.sh("hostname").strip().encode()).hexdigest()[:8]
    assert table not in server.sh("nft list tables 2>/dev/null || true").split(), "purge leaves the runner's bridge table"
    assert server.sh("pgrep -a sandbar || true").strip() == ""
    assert server.sh("docker ps -aq").strip() == "", "purge removes the runner's sandboxes"
    assert server.sh("ss -Hltn '( sport = :3000 or sport = :4000 or sport = :4443 or sport = :2222 )'").strip() == ""
    units = server.sh("systemctl list-units --all --no-legend 'sandbar*' | grep -v not-found || true").strip()
    assert units == "", units
    assert server.sh("getent passwd sandbar || true").strip() == ""
    assert server.sh("ls -d /etc/sandbar /var/lib/sandbar /usr/lib/sandbar /usr/bin/sandbar* 2>/dev/null || true") \
        .strip() == ""
