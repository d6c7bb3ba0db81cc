"""``sandbar up`` hands each service only its own secrets, and passes ``--advertise-addr`` to its runner (issue #21).

One stack, started with ``--advertise-addr`` (this host's address: that of its default route, else loopback) and with
secrets in its own environment that no service or only one needs (a database URL, an archive store's secret key,
the CLI's admin token). Each child's ``/proc/PID/environ`` and ``/proc/PID/cmdline`` are read (the children are this
test's):

- the API holds the runners' join token, the proxy token, the metrics and admin tokens and the database URL; the
  runner only the join token (and the store's secret); the proxy only its own token; no secret is on any command
  line (``ps`` shows those to every user), ``sandbar up``'s own included;
- the proxy's token is refused as a runner join token (401) and the join token by the proxy's endpoints (401), each
  with the answer a wrong string gets;
- a sandbox made through the SDK has its toolbox and SSH ports published on the advertise address, the API holds
  ``ADDR:port`` as its daemon and SSH addresses (read with the proxy's token, which works there), and exec works
  through the proxy.

Env: as sandbar_stack.py.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import urllib.error
import urllib.request

import pytest
from daytona import Daytona, DaytonaConfig

from sandbar_stack import Stack, remove_containers, start_stack

SERVICES = ("api", "runner", "proxy")


def host_addr() -> str:
    """This host's own address on its default route (what an operator would advertise), else loopback."""
    out = subprocess.run(["ip", "-4", "-o", "route", "get", "192.0.2.254"], capture_output=True, text=True,
                         check=False, timeout=10).stdout.split()
    if "src" in out and out.index("src") + 1 < len(out):
        return out[out.index("src") + 1]
    return "127.0.0.1"


def child_pid(stack: Stack, name: str) -> int:
    """The pid of ``sandbar-<name>`` among the children of this stack's ``sandbar up``."""
    out = subprocess.run(["pgrep", "-P", str(stack.proc.popen.pid), "-x", f"sandbar-{name}"],
                         capture_output=True, text=True, check=False).stdout.split()
    assert len(out) == 1, f"sandbar-{name} children of {stack.proc.popen.pid}: {out}"
    return int(out[0])


def environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw if entry)
    return {k: v for k, _, v in pairs}


def cmdline(pid: int) -> str:
    return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")


def call(url: str, token: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-uptokens")
    runner_id = "e2e-uptokens-" + secrets.token_hex(3)
    addr = host_addr()
    inherited = {
        # The API's own default database, named in the environment: only the API may hold it.
        "DATABASE_URL": f"sqlite://{data_dir}/sandbar.db?mode=rwc",
        # Read by the runner's archive store only (none is configured: nothing reaches a store).
        "AWS_SECRET_ACCESS_KEY": "aws-" + secrets.token_hex(16),
        # The CLI's name of the admin token: no service reads it.
        "SANDBAR_ADMIN_TOKEN": "cli-admin-" + secrets.token_hex(16),
    }
    stack = start_stack(data_dir, runner_id, extra=["--advertise-addr", addr], env=inherited)
    try:
        tokens = dict(line.split("=", 1) for line in (data_dir / "secrets.env").read_text().splitlines() if line)
        yield stack, addr, tokens, inherited
    finally:
        stack.stop()
        remove_containers(runner_id)


def test_each_service_holds_only_its_own_secrets(run):
    stack, _, tokens, inherited = run
    join, proxy = tokens["SANDBAR_RUNNER_TOKEN"], tokens["SANDBAR_PROXY_TOKEN"]
    metrics, admin = tokens["SANDBAR_API_METRICS_TOKEN"], tokens["SANDBAR_API_ADMIN_TOKEN"]
    values = {"join token": join, "proxy token": proxy, "metrics token": metrics, "admin token": admin,
              "database URL": inherited["DATABASE_URL"], "AWS secret": inherited["AWS_SECRET_ACCESS_KEY"],
              "CLI admin token": inherited["SANDBAR_ADMIN_TOKEN"]}
    allowed = {
        "api": {"join token", "proxy token", "metrics token", "admin token", "database URL"},
        "runner": {"join token", "AWS secret"},
        "proxy": {"proxy token"},
    }
    held = {}
    for name in SERVICES:
        pid = child_pid(stack, name)
        env = environ(pid)
        text = "\0".join(f"{k}={v}" for k, v in env.items())
        held[name] = {what for what, value in values.items() if value in text}
        line = cmdline(pid)
        on_line = [what for what, value in values.items() if value in line]
        assert not on_line, f"sandbar-{name}'s command line holds the {on_line}: {line}"
    print(f"\nsecrets each service holds: { {n: sorted(h) for n, h in held.items()} }")
    assert held == allowed
    # Each under the name it reads.
    api_env, runner_env, proxy_env = (environ(child_pid(stack, n)) for n in SERVICES)
    assert (api_env["SANDBAR_RUNNER_TOKEN"], api_env["SANDBAR_PROXY_TOKEN"]) == (join, proxy)
    assert (api_env["SANDBAR_API_METRICS_TOKEN"], api_env["SANDBAR_API_ADMIN_TOKEN"]) == (metrics, admin)
    assert runner_env["SANDBAR_RUNNER_TOKEN"] == join
    assert proxy_env["SANDBAR_PROXY_TOKEN"] == proxy
    up_line = cmdline(stack.proc.popen.pid)
    assert not [what for what, value in values.items() if value in up_line], up_line


def test_a_service_token_opens_only_its_own_endpoints(run):
    stack, _, tokens, _ = run
    join, proxy = tokens["SANDBAR_RUNNER_TOKEN"], tokens["SANDBAR_PROXY_TOKEN"]
    register = f"{stack.api_url}/runners/{stack.runner_id}-x/register"
    routes = f"{stack.api_url}/internal/routes/no-such-sandbox"
    for url, method, own, others in [
        (register, "POST", join, [proxy, tokens["SANDBAR_API_ADMIN_TOKEN"], tokens["SANDBAR_API_METRICS_TOKEN"]]),
        (routes, "GET", proxy, [join, tokens["SANDBAR_API_ADMIN_TOKEN"], tokens["SANDBAR_API_METRICS_TOKEN"]]),
    ]:
        status, wrong = call(url, "not-a-token-" + secrets.token_hex(8), method, b"" if method == "POST" else None)
        assert status == 401, wrong
        for token in others:
            status, body = call(url, token, method, b"" if method == "POST" else None)
            assert (status, body.get("message")) == (401, wrong.get("message")), (url, body)
        # The service's own token passes the check (a route of no sandbox is then a 404).
        if own == proxy:
            status, body = call(url, own)
            assert status == 404, body


def test_a_sandbox_is_reached_through_its_advertised_ports(run):
    stack, addr, tokens, _ = run
    d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
    sb = d.create(timeout=180)
    try:
        r = sb.process.exec("echo hi")
        assert (r.exit_code, r.result.strip()) == (0, "hi"), r
        # What the API holds, as the proxy reads it.
        status, route = call(f"{stack.api_url}/internal/routes/{sb.id}", tokens["SANDBAR_PROXY_TOKEN"])
        assert status == 200, route
        host, _, port = route["daemonAddr"].rpartition(":")
        ssh_host, _, ssh_port = route["sshAddr"].rpartition(":")
        assert (host, ssh_host) == (addr, addr), route
        # Docker published the daemon's toolbox and SSH ports on that address, on the ports the API holds.
        cid = subprocess.run(["docker", "ps", "-q", "--filter", f"label=sandbar.sandbox.id={sb.id}"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        ports = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .NetworkSettings.Ports}}", cid],
                                          capture_output=True, text=True, check=True, timeout=60).stdout)
        published = {k: [(b["HostIp"], b["HostPort"]) for b in (v or [])] for k, v in ports.items()}
        assert published.get("2280/tcp") == [(addr, port)], published
        assert published.get("22220/tcp") == [(addr, ssh_port)], published
        # The toolbox answers there (GET /version needs no credential) and exec works through the proxy again.
        with urllib.request.urlopen(f"http://{addr}:{port}/version", timeout=30) as v:
            assert v.status == 200
        r = sb.process.exec("echo $((6*7))")
        assert r.result.strip() == "42", r
    finally:
        sb.delete()
