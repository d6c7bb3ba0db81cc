"""OpenSSH's ssh and scp through the stack's SSH gateway, with an access token from the API (SDK)."""

from __future__ import annotations

import hashlib
import os
import subprocess

SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]


def gateway(stack):
    host, port = stack.ssh.rsplit(":", 1)
    return host, port


def test_ssh_exec_and_scp_through_gateway(stack, sandbox, tmp_path):
    access = sandbox.create_ssh_access(expires_in_minutes=10)
    host, port = gateway(stack)
    r = subprocess.run(["ssh", *SSH_OPTS, "-p", port, f"{access.token}@{host}", "echo hi; exit 3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "hi\n"

    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(5 << 20))
    r = subprocess.run(["scp", *SSH_OPTS, "-P", port, str(src), f"{access.token}@{host}:/tmp/scp-in.bin"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    back = tmp_path / "back.bin"
    r = subprocess.run(["scp", *SSH_OPTS, "-P", port, f"{access.token}@{host}:/tmp/scp-in.bin", str(back)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_revoked_and_unknown_tokens_are_refused(stack, sandbox):
    host, port = gateway(stack)
    r = subprocess.run(["ssh", *SSH_OPTS, "-p", port, f"not-a-token@{host}", "echo hi"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "hi" not in r.stdout
    access = sandbox.create_ssh_access(expires_in_minutes=10)
    sandbox.revoke_ssh_access(access.token)
    r = subprocess.run(["ssh", *SSH_OPTS, "-p", port, f"{access.token}@{host}", "echo hi"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "hi" not in r.stdout
