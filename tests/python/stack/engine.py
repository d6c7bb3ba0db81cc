"""A private Docker engine in a network namespace of its own, and ``sandbar up`` beside it: one host of a fleet,
made from a few processes on this machine, that a test may break without touching anything else (issue #22:
Docker restarting under running sandboxes; issue #21, many hosts, runs two of them side by side).

``engine(tmp_path)`` makes, and removes when the block ends, whether the test passed or not:

- a network namespace ``sbr-<6 hex>`` joined to this one by a veth pair (``10.213.N.1/30`` here, ``10.213.N.2/30``
  there), with ``lo`` up and forwarding on. From here, the namespace's services are at ``engine.addr``; from a
  sandbox, this side is ``engine.host_addr`` (a stand-in for the internet, which the namespace has no route to).
- a mount namespace held by a ``sleep`` we start (``holder``) with a ``/sys`` of the network namespace, so
  ``/sys/class/net`` shows its interfaces (the runner finds a sandbox's bridge port there), and this host's cgroup
  hierarchies mounted again under it (``ip netns exec`` alone leaves ``/sys/fs/cgroup`` empty, and dockerd refuses
  to start). Every process of the host (dockerd before and after a restart, ``sandbar up``) runs in both
  namespaces through ``engine.prefix``, as on a real host; the engine's mounts stay in that mount namespace and go
  with it.
- ``dockerd`` with its own config file (``/etc/docker/daemon.json`` is never read), data root, exec root, socket,
  bridge subnet (``10.214.N.0/24``), cgroup parent, ``--userns-remap default`` (the runner insists on a user
  namespace) and ``--live-restore`` when asked; it starts (and, through its exec root, stops) its own containerd.
  ``restart()`` stops it with SIGTERM and starts it again with the same arguments, as ``systemctl restart docker``
  or a package upgrade does.

Its runtime files are under ``/tmp/sbr-<hex>`` (a unix socket path must stay under 108 bytes; pytest's tmp paths do
not), its logs in the test's tmp directory. Nothing here signals a process it did not start itself: dockerd and the
holder are our Popens; containerd dies with dockerd (Docker starts it with a parent-death signal), and containers are
removed through the engine's API before it stops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandbar_stack import REPO, Stack, remove_containers, start_stack

# Subnets: 10.213.N.0/30 for the veth pair, 10.214.N.0/24 for the engine's bridge, N picked at random among those
# that clash with no route here and no other engine of this process.
VETH_NET = "10.213.{n}.0/30"
BRIDGE_NET = "10.214.{n}.0/24"
_taken: set[int] = set()
_taken_lock = threading.Lock()


def built_test_image() -> str:
    """The test image's tag: ``SANDBAR_TEST_IMAGE`` (scripts/test sets it), else what scripts/build-test-image
    builds or finds cached."""
    image = os.environ.get("SANDBAR_TEST_IMAGE")
    if image:
        return image
    out = subprocess.run([str(REPO / "scripts" / "build-test-image")], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


def run(argv: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _pick_index() -> int:
    routes = run(["ip", "-4", "-o", "route", "show", "table", "all"]).stdout
    kinds = {"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "nat"}
    used = []
    for line in routes.splitlines():
        words = [w for w in line.split() if w not in kinds]
        if words and words[0] != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(words[0], strict=False))
    with _taken_lock:
        for n in secrets.SystemRandom().sample(range(1, 255), 254):
            mine = [ipaddress.ip_network(VETH_NET.format(n=n)), ipaddress.ip_network(BRIDGE_NET.format(n=n))]
            if n not in _taken and not any(m.overlaps(u) for m in mine for u in used):
                _taken.add(n)
                return n
    raise RuntimeError("no free 10.213.N.0/30 and 10.214.N.0/24 pair")


def _cgroup_mounts() -> str:
    """Shell commands that mount this host's cgroup hierarchies again under a fresh ``/sys`` (same types, same
    options: a v1 hierarchy mounted with the same controllers is the same hierarchy)."""
    cmds = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        src, target, fstype, opts = line.split()[:4]
        if target == "/sys/fs/cgroup" or target.startswith("/sys/fs/cgroup/"):
            cmds.append(f"mkdir -p {shlex.quote(target)} && mount -t {shlex.quote(fstype)} -o {shlex.quote(opts)} "
                        f"{shlex.quote(src)} {shlex.quote(target)}")
    return "\n".join(cmds)


@dataclass
class Engine:
    """One private engine; see the module doc. Made by [`engine`]."""

    name: str
    index: int
    run_dir: Path
    log_dir: Path
    live_restore: bool
    storage_driver: str
    holder: subprocess.Popen | None = None
    dockerd: subprocess.Popen | None = None
    restarts: list[dict] = field(default_factory=list)

    @property
    def host_addr(self) -> str:
        return f"10.213.{self.index}.1"

    @property
    def addr(self) -> str:
        return f"10.213.{self.index}.2"

    @property
    def bridge_subnet(self) -> str:
        return BRIDGE_NET.format(n=self.index)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.run_dir / 'docker.sock'}"

    @property
    def prefix(self) -> list[str]:
        """The argv prefix that runs a command in the engine's network and mount namespaces."""
        assert self.holder is not None, "the namespaces are not up"
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--"]

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"dockerd-{self.name}.log"

    def docker(self, *args: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(["docker", "-H", self.docker_host, *args], timeout=timeout, check=check, **kw)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"<no dockerd log: {e}>"

    # --- namespaces -------------------------------------------------------------------------------------------

    def _make_namespaces(self) -> None:
        host_if, ns_if = f"{self.name}h", f"{self.name}n"
        run(["ip", "netns", "add", self.name])
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
        run(["ip", "link", "set", ns_if, "netns", self.name])
        run(["ip", "addr", "add", f"{self.host_addr}/30", "dev", host_if])
        run(["ip", "link", "set", host_if, "up"])
        ns = ["ip", "netns", "exec", self.name]
        run([*ns, "ip", "addr", "add", f"{self.addr}/30", "dev", ns_if])
        run([*ns, "ip", "link", "set", ns_if, "up"])
        run([*ns, "ip", "link", "set", "lo", "up"])
        run([*ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # `ip netns exec` gives its command a new mount namespace with a /sys of the network namespace; the holder
        # keeps it, with the cgroup hierarchies, for everything the engine runs.
        script = f"set -e\n{_cgroup_mounts()}\necho holder-ready\nexec sleep infinity\n"
        self.holder = subprocess.Popen([*ns, "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert self.holder.stdout is not None
        ready, _, _ = select.select([self.holder.stdout], [], [], 30)
        first = self.holder.stdout.readline() if ready else "<nothing within 30 s>"
        if first.strip() != "holder-ready":
            rest = self.holder.stdout.read() if self.holder.poll() is not None else ""
            raise RuntimeError(f"the namespace holder failed: {first}{rest}")

    # --- dockerd ----------------------------------------------------------------------------------------------

    def _dockerd_argv(self) -> list[str]:
        d = self.run_dir
        argv = [
            "dockerd", "--config-file", str(d / "daemon.json"), "--data-root", str(d / "data"),
            "--exec-root", str(d / "exec"), "--pidfile", str(d / "docker.pid"), "-H", self.docker_host,
            "--userns-remap", "default", "--storage-driver", self.storage_driver,
            # Absolute: a relative parent is made under dockerd's own cgroup, which for a controller where the
            # test runs in a cgroup of its own (memory, here) would nest the sandboxes inside the test's.
            "--bip", f"10.214.{self.index}.1/24", "--cgroup-parent", f"/{self.name}",
        ]
        return [*argv, "--live-restore"] if self.live_restore else argv

    def start(self, timeout: float = 60) -> float:
        """Starts dockerd and waits until it answers; returns how long that took."""
        assert self.dockerd is None or self.dockerd.poll() is not None, "dockerd is running"
        began = time.monotonic()
        log = open(self.log_path, "a")  # noqa: SIM115 - the child holds it; closed here once handed over
        try:
            log.write(f"--- start {time.strftime('%H:%M:%S')} {shlex.join(self._dockerd_argv())}\n")
            log.flush()
            self.dockerd = subprocess.Popen([*self.prefix, *self._dockerd_argv()], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        deadline = began + timeout
        while time.monotonic() < deadline:
            if self.dockerd.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.dockerd.returncode}):\n{self.log_tail()}")
            if self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10).returncode == 0:
                return time.monotonic() - began
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")

    def _containerd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.run_dir / "exec" / "containerd" / "containerd.pid").read_text().strip())
        return None

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM to dockerd, SIGKILL after ``timeout``; waits for its containerd to go too. Returns how long the
        stop took (without live-restore, dockerd stops every container first)."""
        began = time.monotonic()
        if self.dockerd is None or self.dockerd.poll() is not None:
            return 0.0
        containerd = self._containerd_pid()
        self.dockerd.send_signal(signal.SIGTERM)
        try:
            self.dockerd.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.dockerd.kill()
            self.dockerd.wait(timeout=10)
        # containerd gets SIGKILL when dockerd dies (its parent-death signal); only wait for it to be gone.
        if containerd:
            deadline = time.monotonic() + 15
            while _alive(containerd) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(containerd):
                raise RuntimeError(f"containerd {containerd} outlived dockerd")
        return time.monotonic() - began

    def restart(self, timeout: float = 60) -> dict:
        """Stops dockerd and starts it again with the same arguments; returns (and keeps in ``restarts``) the stop
        and start durations and when the engine answered again (monotonic)."""
        began = time.monotonic()
        stopped = self.stop(timeout)
        started = self.start(timeout)
        r = {"began": began, "stop_s": stopped, "start_s": started, "back": time.monotonic()}
        self.restarts.append(r)
        return r

    def load_image(self, tag: str) -> None:
        """Copies ``tag`` from the machine's engine into this one."""
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.docker("load", stdin=save.stdout, timeout=300)
        finally:
            if save.stdout:
                save.stdout.close()
            save.wait(timeout=60)
        if save.returncode != 0:
            raise RuntimeError(f"docker save {tag} failed: {save.stderr.read().decode() if save.stderr else ''}")

    def containers(self) -> list[str]:
        """Every container of the engine, running or not."""
        return self.docker("ps", "-aq", timeout=30).stdout.split()

    # --- teardown ---------------------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Removes everything; returns what could not be removed (empty when all went)."""
        problems: list[str] = []

        def step(what: str, fn) -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - every step is tried; the failures are reported together
                problems.append(f"{what}: {e}")

        # Containers go through the engine (a live-restore engine that is down still has them running).
        holder_alive = self.holder is not None and self.holder.poll() is None
        if holder_alive and (self.dockerd is None or self.dockerd.poll() is not None):
            step("starting dockerd to remove its containers", self.start)
        if self.dockerd is not None and self.dockerd.poll() is None:
            step("removing containers", self._remove_all_containers)
        step("stopping dockerd", self.stop)
        if self.dockerd is not None and self.dockerd.poll() is None:
            problems.append("dockerd is still running")
        if self.holder is not None and self.holder.poll() is None:
            step("listing processes left in the namespace", self._check_no_process_left)
            self.holder.kill()
            self.holder.wait(timeout=10)
        # The engine's mounts live in the holder's mount namespace, gone with it; a mount that leaked out (an
        # engine started some other way) is removed here.
        for target in sorted(_mounts_under(self.run_dir), key=len, reverse=True):
            step(f"umount {target}", lambda t=target: run(["umount", t], timeout=30))
        step("deleting the network namespace", lambda: run(["ip", "netns", "del", self.name]) if
             Path(f"/run/netns/{self.name}").exists() else None)
        step("removing the veth", self._remove_veth)
        step("removing the cgroups", self._remove_cgroups)
        if self.run_dir.exists() and not _mounts_under(self.run_dir):
            step("removing the run directory", lambda: shutil.rmtree(self.run_dir))
        with _taken_lock:
            _taken.discard(self.index)
        return problems

    def _check_no_process_left(self) -> None:
        assert self.holder is not None
        left = [int(p) for p in run(["ip", "netns", "pids", self.name], timeout=30).stdout.split()]
        left = [p for p in left if p != self.holder.pid]
        if left:
            raise RuntimeError(f"processes left in {self.name}: {[(p, _comm(p)) for p in left]}")

    def _remove_all_containers(self) -> None:
        ids = self.containers()
        if ids:
            self.docker("rm", "-f", *ids, timeout=120)
        if self.containers():
            raise RuntimeError(f"containers left: {self.containers()}")

    def _remove_veth(self) -> None:
        # The pair goes with the namespace, which the kernel tears down in the background.
        host_if = f"{self.name}h"
        deadline = time.monotonic() + 10
        while Path(f"/sys/class/net/{host_if}").exists():
            if time.monotonic() > deadline:
                run(["ip", "link", "del", host_if], timeout=10)
                break
            time.sleep(0.1)

    def _remove_cgroups(self) -> None:
        # The cgroup parent Docker made in each hierarchy (empty once every container is gone).
        for d in Path("/sys/fs/cgroup").glob(f"*/{self.name}"):
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                sub.rmdir()
            d.rmdir()
        v2 = Path("/sys/fs/cgroup") / self.name
        if v2.is_dir():
            v2.rmdir()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _mounts_under(d: Path) -> list[str]:
    prefix = str(d) + "/"
    return [m.split()[1] for m in Path("/proc/self/mounts").read_text().splitlines()
            if m.split()[1] == str(d) or m.split()[1].startswith(prefix)]


@contextlib.contextmanager
def engine(log_dir: Path, live_restore: bool = False, storage_driver: str | None = None, data_size: str | None = None,
           insecure_registries: list[str] | None = None):
    """A started private engine (see the module doc), removed when the block ends. ``data_size`` (``"1g"``) puts
    its data root on a tmpfs of that size, mounted in the engine's mount namespace (gone with it): a disk that a
    test may fill without touching the machine's. ``insecure_registries`` (addresses or CIDRs) are the registries
    it speaks plain HTTP to (its ``insecure-registries``)."""
    name = "sbr-" + secrets.token_hex(3)
    e = Engine(name=name, index=_pick_index(), run_dir=Path("/tmp") / name, log_dir=log_dir,
               live_restore=live_restore,
               storage_driver=storage_driver or os.environ.get("SANDBAR_ENGINE_STORAGE_DRIVER", "overlay2"))
    problems: list[str] = []
    try:
        (e.run_dir / "data").mkdir(parents=True)
        (e.run_dir / "exec").mkdir()
        # Its own config: every setting this engine has is on its command line or here.
        settings: dict[str, object] = {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "2"}}
        if insecure_registries:
            settings["insecure-registries"] = insecure_registries
        (e.run_dir / "daemon.json").write_text(json.dumps(settings))
        e._make_namespaces()
        if data_size:
            run([*e.prefix, "mount", "-t", "tmpfs", "-o", f"size={data_size},mode=0711", "sandbar-engine-data",
                 str(e.run_dir / "data")])
        e.start()
        yield e
    finally:
        problems = e.close()
    if problems:
        raise AssertionError(f"engine {name} teardown left: " + "; ".join(problems))


@contextlib.contextmanager
def stack_on(e: Engine, data_dir: Path, runner_id: str, image: str, extra: list[str] | None = None):
    """``sandbar up`` in the engine's namespaces, on the engine, its proxy bound to ``e.addr``. Its API listens on
    the namespace's loopback, so ``api_url`` is the proxy's ``/api`` (the edge forwards it). Stopped, and its
    containers and rules removed, when the block ends."""
    stack = start_stack(data_dir, runner_id, ["--bind", e.addr, *(extra or [])], prefix=e.prefix,
                        env={"DOCKER_HOST": e.docker_host}, image=image)
    stack.api_url = stack.proxy_http + "/api"
    try:
        yield stack
    finally:
        stack.stop()
        remove_containers(runner_id, docker_host=e.docker_host, prefix=e.prefix)


__all__ = ["Engine", "Stack", "engine", "stack_on"]
