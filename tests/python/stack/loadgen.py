"""Load through the proxy of a real ``sandbar up``, with real clients, in bounded loops that stop by themselves.

1. **Clients**: ``sandboxes`` sandboxes, then ``clients`` concurrent Daytona SDK clients (one thread each, its own
   ``Daytona`` object), each running ``rounds`` rounds of an exec, a file upload and download (random bytes, checked
   byte for byte) and a PTY session (a computed echo and ``exit 0``). Rounds end together, and after each the
   resident memory of the stack's API, runner and proxy (``VmRSS`` of the processes ``sandbar up`` started, read
   from /proc) is recorded: round 1 is warm-up, and every later round must stay within a margin of round 2.
2. **Terminals**: ``terminals`` PTY WebSockets (``/toolbox/{id}/process/pty/create-connect``) open at once, spread
   over ``terminal_sandboxes`` sandboxes; when all are connected each types a command whose output (a computed
   number) differs from its echo, reads it, then types ``exit`` and reads the exit and the close.
3. **Followers**: ``followers`` WebSockets following one session command's log (``follow=true``) and ``followers``
   HTTP streams following one snapshot build's log (``/api/snapshots/{name}/build-logs?follow=true``), attached
   while the output is still coming: each must see the whole output, byte for byte, and its end (close 1000, or
   the end of the chunked body).

Host limits met on the way: every container of Docker's remapped user takes a kernel session keyring (runc), and
``kernel.keys.maxkeys`` (200 by default) caps them per user, so a host needs it raised (and ``maxbytes``) to run
more than about 200 sandboxes; creates past it fail with runc's "unable to join session keyring" (the report says so).

Everything goes through the proxy: the SDK's API URL is the proxy's ``/api``, its toolbox calls the proxy's
``/toolbox``. No figure is asserted: ``Report.problems()`` lists errors, lost requests, output that differs and
memory that grew; the timings are printed (``Report.markdown()``). ``scripts/load`` runs it and prints the table;
``test_load.py`` runs the quick form in CI.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("sandbar-api", "sandbar-runner", "sandbar-proxy")
STDOUT_MARKER = b"\x01\x01\x01"
STDERR_MARKER = b"\x02\x02\x02"


@dataclass
class Config:
    sandboxes: int
    clients: int
    rounds: int
    terminals: int
    terminal_sandboxes: int
    followers: int
    file_bytes: int
    log_lines: int
    # Memory may grow this much over round 2 (the first after warm-up): the larger of a fraction and MiB.
    rss_margin_frac: float = 0.25
    rss_margin_mib: float = 24.0
    create_concurrency: int = 8
    open_concurrency: int = 64


QUICK = Config(sandboxes=20, clients=10, rounds=5, terminals=100, terminal_sandboxes=2, followers=50,
               file_bytes=256 << 10, log_lines=200)
FULL = Config(sandboxes=200, clients=50, rounds=10, terminals=1000, terminal_sandboxes=10, followers=200,
              file_bytes=1 << 20, log_lines=2000)


def stack_env(cfg: Config) -> dict[str, str]:
    """What ``sandbar up`` needs for ``cfg``: quotas and overcommit that admit every sandbox on this one host (the
    sandboxes are idle: the load is the stack's, not theirs)."""
    n = max(cfg.sandboxes, 1) + 8
    cores = os.cpu_count() or 1
    mem_gib = max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30)
    return {
        "SANDBAR_QUOTA_SANDBOXES": str(n),
        "SANDBAR_QUOTA_CPU": str(n),
        "SANDBAR_QUOTA_MEMORY": str(n),
        "SANDBAR_QUOTA_DISK": str(n * 3),
        "SANDBAR_CPU_OVERCOMMIT": str(max(8, -(-n // cores))),
        "SANDBAR_MEMORY_OVERCOMMIT": str(max(2, -(-n // mem_gib))),
        # The runner's disk to hand out, in GiB (3 a sandbox by default; nothing is written).
        "SANDBAR_DISK_CAPACITY": str(n * 3),
    }


def patch_sdk_pty_handshake() -> None:
    """Daytona SDK 0.226.1: ``PtyHandle.wait_for_connection`` polls httpx_ws with ``receive(timeout=0.1)`` and
    catches ``TimeoutError``, but httpx_ws raises ``queue.Empty`` on a timeout: a server whose first frame (the
    ``connected`` control message) comes more than 100 ms after its 101 fails ``create_pty_session`` with an empty
    message. Under load that is a client bug, not sandbar's answer: keep waiting (to the SDK's own 10 s deadline)
    and count how often it happened (``sdk_pty_slow_handshakes``)."""
    import queue

    from daytona.handle import pty_handle

    cls = pty_handle.PtyHandle
    if getattr(cls, "_sandbar_patched", False):
        return
    original = cls.wait_for_connection

    def wait_for_connection(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return original(self, max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                with _patch_lock:
                    cls._sandbar_empties += 1
                if time.monotonic() >= deadline:
                    raise

    cls.wait_for_connection = wait_for_connection
    cls._sandbar_patched = True
    cls._sandbar_empties = 0


_patch_lock = threading.Lock()


def sdk_pty_slow_handshakes() -> int:
    from daytona.handle import pty_handle

    return getattr(pty_handle.PtyHandle, "_sandbar_empties", 0)


def why(e: BaseException) -> str:
    """An exception with its causes (the SDK wraps a client's timeout, whose own message is empty)."""
    parts = []
    while e is not None and len(parts) < 4:
        parts.append(f"{type(e).__name__}({str(e)[:300]!r})")
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Figures


@dataclass
class Op:
    """Latencies (seconds) of one kind of operation, and its failures."""

    name: str
    asked: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)

    def fail(self, why: str) -> None:
        with self.lock:
            self.errors.append(why)

    def ask(self, n: int = 1) -> None:
        with self.lock:
            self.asked += n

    @property
    def lost(self) -> int:
        """Asked but neither answered nor failed: a request that vanished."""
        return self.asked - len(self.latencies) - len(self.errors)

    def q(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(len(s) * p))]


@dataclass
class Report:
    cfg: Config
    mode: str
    ops: dict[str, Op] = field(default_factory=dict)
    # (label, {service: RSS MiB})
    rss: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems_seen: list[str] = field(default_factory=list)
    took: dict[str, float] = field(default_factory=dict)

    def op(self, name: str) -> Op:
        return self.ops.setdefault(name, Op(name))

    def rounds_rss(self) -> list[dict[str, float]]:
        return [v for label, v in self.rss if label.startswith("round ")]

    def memory_problems(self) -> list[str]:
        rounds = self.rounds_rss()
        out = []
        if len(rounds) < 3:
            return ["fewer than 3 rounds: memory cannot be compared after warm-up"]
        base = rounds[1]
        for i, r in enumerate(rounds[2:], start=3):
            for svc in SERVICES:
                if svc not in base or svc not in r:
                    out.append(f"round {i}: no RSS for {svc}")
                    continue
                allowed = base[svc] + max(base[svc] * self.cfg.rss_margin_frac, self.cfg.rss_margin_mib)
                if r[svc] > allowed:
                    out.append(f"{svc} grew from {base[svc]:.1f} MiB (round 2) to {r[svc]:.1f} MiB in round {i} "
                               f"(allowed {allowed:.1f})")
        return out

    def problems(self) -> list[str]:
        out = list(self.problems_seen)
        for op in self.ops.values():
            if op.errors:
                out.append(f"{op.name}: {len(op.errors)} errors, first: {op.errors[0]}")
            if op.lost:
                out.append(f"{op.name}: {op.lost} requests lost (asked {op.asked})")
        out += self.memory_problems()
        return out

    def markdown(self) -> str:
        c = self.cfg
        lines = [
            f"### scripts/load ({self.mode}): {c.sandboxes} sandboxes, {c.clients} clients x {c.rounds} rounds, "
            f"{c.terminals} terminals over {c.terminal_sandboxes} sandboxes, {c.followers} followers",
            "",
            "| operation | asked | ok | errors | lost | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for op in self.ops.values():
            mx = max(op.latencies) if op.latencies else float("nan")
            lines.append(f"| {op.name} | {op.asked} | {len(op.latencies)} | {len(op.errors)} | {op.lost} | "
                         f"{op.q(0.5) * 1e3:.1f} | {op.q(0.99) * 1e3:.1f} | {mx * 1e3:.1f} |")
        lines += ["", "| memory (RSS, MiB) | " + " | ".join(SERVICES) + " |",
                  "|---|" + "---|" * len(SERVICES)]
        for label, v in self.rss:
            lines.append(f"| {label} | " + " | ".join(f"{v.get(s, float('nan')):.1f}" for s in SERVICES) + " |")
        lines += ["", "| phase | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in self.took.items()]
        problems = self.problems()
        lines += ["", "**problems**: " + ("none" if not problems else "")]
        lines += [f"- {p}" for p in problems]
        lines += [f"\n_{n}_" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The stack's processes


def service_pids(root: int) -> dict[str, int]:
    """The pids of the API, runner and proxy under ``root`` (``sandbar up``), by name (from /proc: children whose
    ``comm`` is a service's name)."""
    found: dict[str, int] = {}
    todo = [root]
    seen = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            try:
                comm = Path(f"/proc/{k}/comm").read_text().strip()
            except OSError:
                continue
            for svc in SERVICES:
                # comm is cut at 15 characters: `sandbar-runner` fits, so do the others.
                if comm == svc[:15]:
                    found[svc] = k
            todo.append(k)
    return found


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Memory:
    def __init__(self, report: Report, root: int):
        self.report = report
        self.pids = service_pids(root)
        missing = [s for s in SERVICES if s not in self.pids]
        if missing:
            report.problems_seen.append(f"cannot find the stack's {', '.join(missing)} under pid {root}")

    def sample(self, label: str) -> None:
        v = {}
        for svc, pid in self.pids.items():
            r = rss_mib(pid)
            if r is None:
                self.report.problems_seen.append(f"{svc} (pid {pid}) is gone at {label}: it crashed or restarted")
            else:
                v[svc] = r
        self.report.rss.append((label, v))


# ----------------------------------------------------------------------------------------------------------------
# Phase 1: sandboxes and SDK clients


def create_sandboxes(daytona, report: Report, cfg: Config) -> list:
    from daytona import CreateSandboxFromSnapshotParams

    op = report.op("create sandbox (SDK)")
    out = []
    lock = threading.Lock()

    def one(i: int):
        op.ask()
        t = time.monotonic()
        try:
            sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"load": "1"}, auto_stop_interval=0),
                                timeout=600)
        except Exception as e:  # noqa: BLE001 - every failure is a figure
            op.fail(f"create {i}: {why(e)}")
            return
        op.ok(time.monotonic() - t)
        with lock:
            out.append(sb)

    with concurrent.futures.ThreadPoolExecutor(cfg.create_concurrency) as ex:
        list(ex.map(one, range(cfg.sandboxes)))
    return out


def client_round(daytona_factory, sandbox_id: str, client: int, rnd: int, report: Report, cfg: Config,
                 cache: dict) -> None:
    from daytona.common.pty import PtySize

    sb = cache.get(client)
    if sb is None:
        op = report.op("get sandbox (SDK)")
        op.ask()
        t = time.monotonic()
        try:
            sb = daytona_factory().get(sandbox_id)
            op.ok(time.monotonic() - t)
            cache[client] = sb
        except Exception as e:  # noqa: BLE001
            op.fail(f"client {client}: get {sandbox_id}: {why(e)}")
            return
    tag = f"c{client}r{rnd}-{secrets.token_hex(3)}"

    op = report.op("exec")
    op.ask()
    t = time.monotonic()
    try:
        r = sb.process.exec(f"echo {tag}-$((6*7))")
        if r.exit_code != 0 or r.result.strip() != f"{tag}-42":
            op.fail(f"exec {tag}: exit {r.exit_code}, output {r.result!r}")
        else:
            op.ok(time.monotonic() - t)
    except Exception as e:  # noqa: BLE001
        op.fail(f"exec {tag}: {why(e)}")

    data = os.urandom(cfg.file_bytes)
    path = f"/tmp/load-{tag}.bin"
    up, down = report.op("file upload"), report.op("file download (byte-for-byte)")
    up.ask()
    t = time.monotonic()
    try:
        sb.fs.upload_file(data, path)
        up.ok(time.monotonic() - t)
        down.ask()
        t = time.monotonic()
        try:
            got = sb.fs.download_file(path)
            if got != data:
                down.fail(f"{path}: {len(got)} bytes back of {len(data)}, contents differ")
            else:
                down.ok(time.monotonic() - t)
        except Exception as e:  # noqa: BLE001
            down.fail(f"download {path}: {why(e)}")
        sb.fs.delete_file(path)
    except Exception as e:  # noqa: BLE001
        up.fail(f"upload {path}: {why(e)}")

    op = report.op("PTY session (SDK)")
    op.ask()
    t = time.monotonic()
    try:
        h = sb.process.create_pty_session(id=f"load-{tag}", pty_size=PtySize(rows=24, cols=80))
        h.wait_for_connection()
        got: list[bytes] = []
        h.send_input(f"echo {tag}-$((7*9))\nexit 0\n")
        res = h.wait(on_data=got.append, timeout=60)
        text = b"".join(got)
        if res.exit_code != 0 or f"{tag}-63".encode() not in text:
            op.fail(f"pty {tag}: exit {res.exit_code}, output {text[-200:]!r}")
        else:
            op.ok(time.monotonic() - t)
    except Exception as e:  # noqa: BLE001
        op.fail(f"pty {tag}: {why(e)}")


def run_clients(daytona_factory, sandboxes: list, report: Report, cfg: Config, memory: Memory) -> None:
    ids = [sb.id for sb in sandboxes]
    if not ids:
        report.problems_seen.append("no sandbox to run clients on")
        return
    caches: dict = {}
    with concurrent.futures.ThreadPoolExecutor(cfg.clients) as ex:
        for rnd in range(1, cfg.rounds + 1):
            t = time.monotonic()
            futs = [ex.submit(client_round, daytona_factory, ids[(c * len(ids)) // cfg.clients], c, rnd, report,
                              cfg, caches) for c in range(cfg.clients)]
            for f in futs:
                try:
                    f.result(timeout=600)
                except Exception as e:  # noqa: BLE001
                    report.problems_seen.append(f"round {rnd}: a client did not finish: {why(e)}")
            report.took[f"clients round {rnd}"] = time.monotonic() - t
            memory.sample(f"round {rnd}" + (" (warm-up)" if rnd == 1 else ""))


# ----------------------------------------------------------------------------------------------------------------
# Phase 2 and 3: WebSockets (asyncio)


def ws_url(proxy_http: str, path: str) -> str:
    return re.sub(r"^http", "ws", proxy_http) + path


async def terminals(proxy_http: str, key: str, sandbox_ids: list[str], report: Report, cfg: Config) -> None:
    import websockets

    opened, typed = report.op("terminal open (WebSocket)"), report.op("terminal echo (typed -> output)")
    closed = report.op("terminal exit + close")
    all_open = asyncio.Event()
    n_open = 0
    gate = asyncio.Semaphore(cfg.open_concurrency)
    headers = {"Authorization": f"Bearer {key}"}

    async def one(i: int) -> None:
        nonlocal n_open
        sid = sandbox_ids[i % len(sandbox_ids)]
        tag = f"t{i}x{secrets.token_hex(2)}"
        url = ws_url(proxy_http, f"/toolbox/{sid}/process/pty/create-connect?id=load-{tag}&cols=120&rows=30")
        opened.ask()
        t = time.monotonic()
        try:
            async with gate:
                ws = await asyncio.wait_for(
                    websockets.connect(url, additional_headers=headers, max_size=None, open_timeout=60,
                                       ping_interval=None), 90)
                first = await asyncio.wait_for(ws.recv(), 60)
            if '"connected"' not in str(first):
                raise RuntimeError(f"first message {first!r}")
        except Exception as e:  # noqa: BLE001
            opened.fail(f"{tag} on {sid}: {why(e)}")
            n_open += 1
            if n_open == cfg.terminals:
                all_open.set()
            return
        opened.ok(time.monotonic() - t)
        n_open += 1
        if n_open == cfg.terminals:
            all_open.set()
        try:
            await asyncio.wait_for(all_open.wait(), 600)
            want = f"{tag}-{i * 3 + 1}".encode()
            typed.ask()
            t = time.monotonic()
            await ws.send(f"echo {tag}-$(({i}*3+1))\n".encode())
            buf = b""
            try:
                while want not in buf:
                    m = await asyncio.wait_for(ws.recv(), 60)
                    buf += m if isinstance(m, bytes) else m.encode()
                typed.ok(time.monotonic() - t)
            except Exception as e:  # noqa: BLE001
                typed.fail(f"{tag}: {why(e)}; got {buf[-120:]!r}")
            closed.ask()
            t = time.monotonic()
            await ws.send(b"exit 0\n")
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 60)
            except websockets.ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
                if code == 1000:
                    closed.ok(time.monotonic() - t)
                else:
                    closed.fail(f"{tag}: closed with {code} {e.rcvd.reason if e.rcvd else ''}")
            except Exception as e:  # noqa: BLE001
                closed.fail(f"{tag}: no close after exit: {why(e)}")
        finally:
            await ws.close()

    await asyncio.gather(*(one(i) for i in range(cfg.terminals)))


async def follow_session_log(proxy_http: str, key: str, sb, report: Report, cfg: Config) -> None:
    """``followers`` WebSockets on one command's log, attached while it runs; each must read the exact output."""
    import websockets
    from daytona import SessionExecuteRequest

    op = report.op("session log follower (WebSocket)")
    sid = "load-follow-" + uuid.uuid4().hex[:6]
    await asyncio.to_thread(sb.process.create_session, sid)
    n = cfg.log_lines
    # A pause first, so every follower is attached before the output starts; then lines, a few at a time.
    cmd = f"sleep 3; for i in $(seq 1 {n}); do echo log-line-$i; if [ $((i % 20)) = 0 ]; then sleep 0.05; fi; done"
    r = await asyncio.to_thread(sb.process.execute_session_command, sid,
                                SessionExecuteRequest(command=cmd, run_async=True))
    want = "".join(f"log-line-{i}\n" for i in range(1, n + 1)).encode()
    path = f"/toolbox/{sb.id}/process/session/{sid}/command/{r.cmd_id}/logs?follow=true"
    headers = {"Authorization": f"Bearer {key}"}

    async def one(i: int) -> None:
        op.ask()
        t = time.monotonic()
        out = b""
        try:
            async with websockets.connect(ws_url(proxy_http, path), additional_headers=headers, max_size=None,
                                          open_timeout=60, ping_interval=None) as ws:
                try:
                    while True:
                        m = await asyncio.wait_for(ws.recv(), 90)
                        m = m if isinstance(m, bytes) else m.encode()
                        out += m
                except websockets.ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd else None
                    if code != 1000:
                        raise RuntimeError(f"closed with {code}") from e
            text = out.replace(STDOUT_MARKER, b"").replace(STDERR_MARKER, b"")
            if text != want:
                raise RuntimeError(f"{len(text)} bytes of {len(want)}; ends {text[-60:]!r}")
            op.ok(time.monotonic() - t)
        except Exception as e:  # noqa: BLE001
            op.fail(f"follower {i}: {why(e)}")

    try:
        await asyncio.gather(*(one(i) for i in range(cfg.followers)))
    finally:
        try:
            await asyncio.to_thread(sb.process.delete_session, sid)
        except Exception:  # noqa: BLE001 - the sandbox is deleted at the end anyway
            pass


async def follow_build_log(proxy_http: str, key: str, daytona, base_image: str, report: Report,
                           cfg: Config) -> None:
    """``followers`` chunked streams of one snapshot build's log, through the proxy's ``/api``; each must read
    the whole log (what a plain read gives once the build ended) and reach its end."""
    import aiohttp
    from daytona import CreateSnapshotParams, Image

    op = report.op("build log follower (HTTP stream)")
    name = "load-build-" + uuid.uuid4().hex[:8]
    n = cfg.log_lines // 4
    image = Image.base(base_image).run_commands(
        f"sleep 3; for i in $(seq 1 {n}); do echo build-line-$i-$((i*2)); done; sleep 1")
    build = asyncio.create_task(asyncio.to_thread(
        daytona.snapshot.create, CreateSnapshotParams(name=name, image=image), timeout=600))
    base = f"{proxy_http}/api/snapshots/{name}"
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=600, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
        deadline = time.monotonic() + 120
        while True:
            async with http.get(base) as r:
                if r.status == 200:
                    break
            if build.done() or time.monotonic() > deadline:
                report.problems_seen.append(f"snapshot {name} never appeared (last status {r.status})")
                await asyncio.gather(build, return_exceptions=True)
                return
            await asyncio.sleep(0.1)

        async def one(i: int) -> tuple[bytes, float] | None:
            op.ask()
            t = time.monotonic()
            try:
                async with http.get(f"{base}/build-logs?follow=true") as r:
                    if r.status != 200:
                        raise RuntimeError(f"status {r.status}: {await r.text()}")
                    return await r.read(), time.monotonic() - t
            except Exception as e:  # noqa: BLE001
                op.fail(f"build follower {i}: {why(e)}")
                return None

        got = await asyncio.gather(*(one(i) for i in range(cfg.followers)))
        try:
            await build
        except Exception as e:  # noqa: BLE001
            report.problems_seen.append(f"the build of {name} failed: {why(e)}")
        # The whole log, read once the build ended: what every follower must have read.
        async with http.get(f"{base}/build-logs") as r:
            full = await r.read()
        text = full.decode(errors="replace")
        pos = 0
        for line in (f"build-line-{i}-{i * 2}" for i in range(1, n + 1)):
            pos = text.find(line, pos)
            if pos < 0:
                report.problems_seen.append(f"the build log lacks {line}")
                break
        for i, g in enumerate(got):
            if g is None:
                continue
            body, seconds = g
            if body == full:
                op.ok(seconds)
            else:
                op.fail(f"build follower {i}: {len(body)} bytes, the whole log has {len(full)}")
        try:
            snap = await asyncio.to_thread(daytona.snapshot.get, name)
            await asyncio.to_thread(daytona.snapshot.delete, snap)
        except Exception as e:  # noqa: BLE001
            report.notes.append(f"could not delete snapshot {name}: {why(e)}")


# ----------------------------------------------------------------------------------------------------------------


def delete_sandboxes(daytona, sandboxes: list, report: Report, cfg: Config) -> None:
    op = report.op("delete sandbox (SDK)")

    def one(sb) -> None:
        op.ask()
        t = time.monotonic()
        try:
            daytona.delete(sb, timeout=300)
            op.ok(time.monotonic() - t)
        except Exception as e:  # noqa: BLE001
            op.fail(f"delete {sb.id}: {why(e)}")

    with concurrent.futures.ThreadPoolExecutor(cfg.create_concurrency) as ex:
        list(ex.map(one, sandboxes))


def run(stack, cfg: Config, mode: str, base_image: str) -> Report:
    """Runs every phase against ``stack`` (a ``sandbar_stack.Stack`` started with ``stack_env(cfg)``)."""
    from daytona import Daytona, DaytonaConfig

    report = Report(cfg=cfg, mode=mode)
    api_url = stack.proxy_http + "/api"

    def factory():
        return Daytona(DaytonaConfig(api_url=api_url, api_key=stack.api_key))

    daytona = factory()
    patch_sdk_pty_handshake()
    empties_before = sdk_pty_slow_handshakes()
    try:
        maxkeys = int(Path("/proc/sys/kernel/keys/maxkeys").read_text())
        if maxkeys < cfg.sandboxes + 20:
            report.notes.append(
                f"kernel.keys.maxkeys is {maxkeys}: every container of the remapped user takes a session keyring "
                f"(runc), so about {maxkeys} sandboxes (fewer with other containers of that user) is this host's "
                f"limit; creates past it fail with runc's 'unable to join session keyring: disk quota exceeded'")
    except (OSError, ValueError):
        pass
    memory = Memory(report, stack.proc.popen.pid)
    memory.sample("idle")
    sandboxes: list = []
    try:
        t = time.monotonic()
        sandboxes = create_sandboxes(daytona, report, cfg)
        report.took["create sandboxes"] = time.monotonic() - t
        memory.sample(f"{len(sandboxes)} sandboxes")
        run_clients(factory, sandboxes, report, cfg, memory)
        if sandboxes:
            t = time.monotonic()
            ids = [sb.id for sb in sandboxes[: cfg.terminal_sandboxes]]
            asyncio.run(asyncio.wait_for(terminals(stack.proxy_http, stack.api_key, ids, report, cfg), 900))
            report.took["terminals"] = time.monotonic() - t
            memory.sample(f"after {cfg.terminals} terminals")
            t = time.monotonic()
            asyncio.run(asyncio.wait_for(
                follow_session_log(stack.proxy_http, stack.api_key, sandboxes[-1], report, cfg), 600))
            report.took["session log followers"] = time.monotonic() - t
            t = time.monotonic()
            asyncio.run(asyncio.wait_for(
                follow_build_log(stack.proxy_http, stack.api_key, daytona, base_image, report, cfg), 900))
            report.took["build log followers"] = time.monotonic() - t
            memory.sample("after followers")
    finally:
        t = time.monotonic()
        delete_sandboxes(daytona, sandboxes, report, cfg)
        report.took["delete sandboxes"] = time.monotonic() - t
        memory.sample("after deletes")
        if n := sdk_pty_slow_handshakes() - empties_before:
            report.notes.append(f"{n} SDK PTY handshakes saw no first frame within the SDK's 100 ms poll and waited "
                                f"on (SDK 0.226.1 would have failed them: see patch_sdk_pty_handshake)")
    return report
