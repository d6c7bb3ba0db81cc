"""Scale-out, driven by the official Daytona SDK: PostgreSQL, two API instances on it, two runners with their own
ids (each in a network namespace of its own), one proxy (see scale_stack.py).

- Creates through both APIs land on both runners; every sandbox answers through the proxy.
- ``kill -9`` of runner A: after the heartbeat deadline (``--runner-unreachable-secs``) both APIs report A's
  sandboxes ``unknown`` while B's stay ``started``; new creates go to B.
- Jobs A could not take are kept: a create placed on A in the moment before the deadline passed, and a delete of
  one of A's sandboxes made while A is down, are carried out once A is back, and A's other sandbox is ``started``
  again with its files.
- No job is lost or run twice: every job row is ``done``, each job was carried out by its own runner exactly once
  (runner logs), and Docker saw exactly one container created per sandbox, labelled with the runner the API placed
  it on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
import threading

import pytest
from daytona import Daytona, DaytonaConfig

from scale_stack import ScaleStack, wait_until

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def scale(tmp_path):
    s = ScaleStack(work=tmp_path, unreachable_secs=10)
    try:
        s.start()
        yield s
    finally:
        s.close()


class Background:
    """A call on a daemon thread (a failing test does not wait for it at exit)."""

    def __init__(self, fn, *args, **kwargs):
        self.result = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True).start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test in get()
            self.error = e
        finally:
            self.done.set()

    def get(self, timeout: float):
        if not self.done.wait(timeout):
            pytest.fail(f"the background call did not finish within {timeout}s")
        if self.error:
            raise self.error
        return self.result


def container_runner(sandbox_id: str) -> list[str]:
    """The `sandbar.runner` label of every container (running or not) of this sandbox."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=sandbar.sandbox.id={sandbox_id}",
         "--format", '{{.Label "sandbar.runner"}}'],
        capture_output=True, text=True, check=True).stdout
    return out.split()


def container_creates(since: float, runner_ids: list[str]) -> Counter:
    """Containers Docker created since `since` for these runners, counted by sandbox id (Docker's own record)."""
    counts: Counter = Counter()
    for rid in runner_ids:
        out = subprocess.run(
            ["docker", "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
             "--filter", "type=container", "--filter", "event=create", "--filter", f"label=sandbar.runner={rid}",
             "--format", "{{json .}}"],
            capture_output=True, text=True, check=True, timeout=60).stdout
        for line in out.splitlines():
            attrs = json.loads(line).get("Actor", {}).get("Attributes", {})
            counts[attrs.get("sandbar.sandbox.id", "?")] += 1
    return counts


def carried_out(s: ScaleStack) -> dict[str, Counter]:
    """How often each runner's log says it carried out each job id."""
    out = {}
    for rid, p in s.runners.items():
        text = ANSI.sub("", p.log_path.read_text(errors="replace"))
        out[rid] = Counter(re.findall(r"\bjob job_id=([0-9a-f-]{36})", text))
    return out


def exec_echo(sb, word: str) -> str:
    r = sb.process.exec(f"echo {word}", timeout=60)
    assert r.exit_code == 0, r.result
    return r.result.strip()


def test_two_apis_two_runners_and_a_killed_runner(scale):
    s = scale
    a, b = s.runner_ids
    figures: dict[str, object] = {}

    # Each runner works from a network namespace of its own (and reaches Docker, its API and its daemons).
    own_ns = os.readlink("/proc/self/ns/net")
    for rid, p in s.runners.items():
        assert os.readlink(f"/proc/{p.popen.pid}/exe").endswith("sandbar-runner"), rid
        assert os.readlink(f"/proc/{p.popen.pid}/ns/net") != own_ns, f"{rid} runs in the host's network namespace"

    d = [Daytona(DaytonaConfig(api_url=u, api_key=s.api_key)) for u in s.api_urls]

    # 1. Creates alternate between the APIs; placement (most free room; equal room: either) alternates runners.
    t = time.monotonic()
    first = [d[i % 2].create(timeout=180) for i in range(4)]
    figures["create_s_each"] = round((time.monotonic() - t) / 4, 2)
    placed = {sb.id: s.runner_of(sb.id) for sb in first}
    assert sorted(placed.values()) == [a, a, b, b], (placed, s.describe())
    for sb in first:
        assert container_runner(sb.id) == [placed[sb.id]]
        assert exec_echo(sb, f"hi-{sb.id}") == f"hi-{sb.id}"
        sb.fs.upload_file(f"made on {placed[sb.id]}\n".encode(), "/tmp/origin.txt")
    on_a = [sb for sb in first if placed[sb.id] == a]
    on_b = [sb for sb in first if placed[sb.id] == b]

    # 2. kill -9 of runner A right after one of its heartbeats: the deadline is then the whole configured time.
    # B is cordoned first, so the late create below has A as its only choice (equal room is broken at random).
    s.admin(b, "cordon")
    hb = s.heartbeat(a)
    wait_until("a heartbeat of runner A", lambda: s.heartbeat(a) > hb, 15, step=0.05, detail=s.describe)
    s.runners[a].kill9()
    t_kill = time.monotonic()
    killed_at_ms = int(time.time() * 1000)
    last_heartbeat_ms = s.heartbeat(a)

    # A create in the moment before the deadline passes is placed on A (fresh heartbeat, B cordoned): its job must
    # wait for A, not vanish. The SDK keeps polling through `creating` and `unknown`.
    late_create = Background(d[0].create, timeout=300)
    late_id = wait_until("the late create's row", lambda: next(iter(
        r[0] for r in s.db.query(f"SELECT id FROM sandboxes WHERE created_at >= {killed_at_ms}")), None), 30,
        detail=s.describe)
    assert s.runner_of(late_id) == a, s.describe()
    s.admin(b, "uncordon")

    # 3. Both APIs report A's sandboxes unreachable after the deadline; B's stay started and keep answering.
    def a_unknown_everywhere() -> bool:
        return all(api.get(sb.id).state.value == "unknown" for api in d for sb in [*on_a])

    wait_until("runner A's sandboxes to read `unknown`", a_unknown_everywhere, s.unreachable_secs + 20,
               step=0.1, detail=s.describe)
    figures["detect_dead_runner_s"] = round(time.monotonic() - t_kill, 2)
    silent_ms = int(time.time() * 1000) - last_heartbeat_ms
    figures["silence_when_seen_unknown_s"] = round(silent_ms / 1000, 2)
    assert silent_ms >= s.unreachable_secs * 1000, "reported unreachable before the deadline"
    got = d[1].get(on_a[0].id)
    assert a in (got.error_reason or ""), got.error_reason
    assert d[0].get(late_id).state.value == "unknown"
    for sb in on_b:
        for api in d:
            assert api.get(sb.id).state.value == "started"
        assert exec_echo(sb, "still-here") == "still-here"

    # 4. New sandboxes go to B, through either API.
    t = time.monotonic()
    after = [d[i % 2].create(timeout=180) for i in range(3)]
    figures["create_s_each_one_runner"] = round((time.monotonic() - t) / 3, 2)
    for sb in after:
        assert s.runner_of(sb.id) == b, s.describe()
        assert container_runner(sb.id) == [b]
        assert exec_echo(sb, "on-b") == "on-b"

    # 5. A delete of one of A's sandboxes while A is down: accepted, its job waits for A.
    victim, survivor = on_a
    d[1].delete(victim)
    waiting = s.db.query(f"SELECT kind, state FROM jobs WHERE runner_id = '{a}' AND state <> 'done' ORDER BY seq")
    assert sorted(waiting) == [["CREATE_SANDBOX", "pending"], ["DESTROY_SANDBOX", "pending"]], s.describe()

    # 6. A comes back with the same id in the same namespace and carries out what waited for it.
    t = time.monotonic()
    s.start_runner(0)
    late = late_create.get(timeout=180)
    figures["late_create_after_restart_s"] = round(time.monotonic() - t, 2)
    assert late.id == late_id and s.runner_of(late.id) == a
    assert exec_echo(late, "late") == "late"
    wait_until("the deleted sandbox to be destroyed and its container gone",
               lambda: container_runner(victim.id) == [] and d[0].get(victim.id).state.value == "destroyed", 60,
               detail=s.describe)
    back = wait_until("runner A's sandbox to read `started` again",
                      lambda: (x := d[1].get(survivor.id)).state.value == "started" and x, 30, detail=s.describe)
    assert back.fs.download_file("/tmp/origin.txt") == f"made on {a}\n".encode()

    # 7. No job lost or run twice.
    jobs = s.db.query("SELECT id, runner_id, sandbox_id, kind, state FROM jobs ORDER BY seq")
    assert jobs and all(j[4] == "done" for j in jobs), s.describe()
    runs = carried_out(s)
    for job_id, runner_id, _, _, _ in jobs:
        assert runs[runner_id][job_id] == 1, f"job {job_id} carried out {runs[runner_id][job_id]} times by {runner_id}"
        other = b if runner_id == a else a
        assert runs[other][job_id] == 0, f"job {job_id} of {runner_id} carried out by {other}"
    all_ids = [sb.id for sb in first + after] + [late.id]
    creates = container_creates(s.started_at, s.runner_ids)
    assert {i: creates[i] for i in all_ids} == {i: 1 for i in all_ids}, creates
    assert sum(creates.values()) == len(all_ids), creates
    per_runner = Counter(s.runner_of(i) for i in all_ids)
    assert per_runner == Counter({a: 3, b: 5}), per_runner
    figures["creates_per_runner"] = dict(per_runner)
    figures["jobs"] = dict(Counter(j[3] for j in jobs))
    print(f"\nscale-out figures: {json.dumps(figures)}")
