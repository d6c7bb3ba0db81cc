"""Network isolation and egress through the Daytona SDK against ``sandbar up``: a sandbox created with
``network_block_all`` cannot reach a server the test starts, ``update_network_settings`` opens and narrows it while
it runs, sandboxes cannot reach each other unless linked, and the runner's chain goes with the sandbox.

The target is a busybox httpd container on Docker's default bridge (the test image, ``SANDBAR_TEST_IMAGE`` or
``scripts/build-test-image``), removed at the end.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError
from sandbar_stack import REPO, iptables_rules, sandbox_chain


def run(*args: str) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout.strip()


@pytest.fixture(scope="module")
def target():
    image = os.environ.get("SANDBAR_TEST_IMAGE") or run(str(REPO / "scripts" / "build-test-image")).splitlines()[-1]
    name = "sandbar-e2e-nettarget-" + secrets.token_hex(4)
    run("docker", "run", "-d", "--name", name, "--label", "sandbar-e2e=1", image, "httpd", "-f", "-p", "8080",
        "-h", "/tmp")
    try:
        yield run("docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def curl(sb, url: str):
    """curl from inside the sandbox: exit code 0 when an HTTP answer came back, whatever its status."""
    return sb.process.exec(f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {url}", timeout=20)


def test_block_all_then_open_and_narrow_while_running(daytona, stack, target):
    url = f"http://{target}:8080/"
    sb = daytona.create(CreateSandboxFromSnapshotParams(network_block_all=True), timeout=180)
    try:
        assert sb.network_block_all is True
        blocked = curl(sb, url)
        assert blocked.exit_code != 0, f"block-all let curl through: {blocked.result}"

        sb.update_network_settings(network_block_all=False)
        assert sb.network_block_all is False
        opened = curl(sb, url)
        assert opened.exit_code == 0, f"unblocked, yet curl failed: {opened.result}"

        sb.update_network_settings(network_allow_list=f"{target}/32")
        assert sb.network_allow_list == f"{target}/32"
        assert curl(sb, url).exit_code == 0
        sb.update_network_settings(network_allow_list="203.0.113.0/24")
        assert curl(sb, url).exit_code != 0, "an allow list without the target let curl through"

        with pytest.raises(DaytonaError, match="domainAllowList"):
            sb.update_network_settings(domain_allow_list="example.com")
        with pytest.raises(DaytonaError, match="not-a-cidr"):
            sb.update_network_settings(network_allow_list="10.0.0.0/8,not-a-cidr")

        # Kept over a stop and start.
        sb.stop(timeout=60)
        sb.start(timeout=60)
        assert curl(sb, url).exit_code != 0, "the allow list was lost over a restart"
        chain = sandbox_chain(stack.runner_id, sb.id)
        assert f"-N {chain}" in iptables_rules()
    finally:
        daytona.delete(sb)
    deadline = time.time() + 30
    while f"-N {chain}" in iptables_rules():
        assert time.time() < deadline, f"chain {chain} still there after the sandbox was deleted"
        time.sleep(0.2)


def test_sandboxes_reach_each_other_only_when_linked(daytona):
    parent = daytona.create(timeout=180)
    others = []
    try:
        serve = parent.process.exec(
            "nohup python3 -m http.server 8000 >/dev/null 2>&1 & "
            "for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.1; done; "
            "hostname -i", timeout=30)
        ip = serve.result.split()[-1]
        assert parent.process.exec("curl -sS -m 5 -o /dev/null http://127.0.0.1:8000/").exit_code == 0

        stranger = daytona.create(timeout=180)
        others.append(stranger)
        assert curl(stranger, f"http://{ip}:8000/").exit_code != 0, "an unlinked sandbox reached another"

        child = daytona.create(CreateSandboxFromSnapshotParams(linked_sandbox=parent.id, ephemeral=True), timeout=180)
        others.append(child)
        reached = curl(child, f"http://{ip}:8000/")
        assert reached.exit_code == 0, f"a linked sandbox cannot reach its parent: {reached.result}"
    finally:
        for sb in [*others, parent]:
            try:
                daytona.delete(sb)
            except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
                pass
