"""The `sandbar` client commands against the session's stack, as a user types them: `-o json` that parses,
`exec`'s exit status (the remote command's, or 125 for sandbar's own failure), and `ssh-config` used by real
OpenSSH (`ssh -F <file> <host>`) through the SSH gateway. The stand-in API cases (completions, man, hostile
sshCommand, every failure's status) are in cli/tests/cli_commands.rs."""

from __future__ import annotations

import json
import subprocess

from sandbar_stack import BIN_DIR

SANDBAR = str(BIN_DIR / "sandbar")


def cli(stack, tmp_path, *args, timeout=240) -> subprocess.CompletedProcess:
    env = stack.env()
    env["SANDBAR_DATA_DIR"] = str(stack.data_dir)
    return subprocess.run([SANDBAR, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)


def test_exec_exits_with_the_remote_status_or_125(stack, sandbox, tmp_path):
    r = cli(stack, tmp_path, "exec", sandbox.id, "--", "sh", "-c", "echo out; exit 7")
    assert (r.returncode, r.stdout) == (7, "out\n"), r.stderr
    r = cli(stack, tmp_path, "exec", sandbox.id, "--", "true")
    assert r.returncode == 0, r.stderr
    r = cli(stack, tmp_path, "exec", "no-such-sandbox", "--", "true")
    assert r.returncode == 125, r.stderr
    assert "not found" in r.stderr and r.stdout == ""


def test_json_output(stack, sandbox, tmp_path):
    created = cli(stack, tmp_path, "create", "-o", "json", "--label", "cli-json=1")
    assert created.returncode == 0, created.stderr
    sb = json.loads(created.stdout)
    try:
        assert sb["state"] == "started" and sb["labels"]["cli-json"] == "1"
        r = cli(stack, tmp_path, "list", "-o", "json", "--label", "cli-json=1")
        assert r.returncode == 0, r.stderr
        assert [s["id"] for s in json.loads(r.stdout)] == [sb["id"]]
        r = cli(stack, tmp_path, "info", sb["id"], "-o", "json")
        assert json.loads(r.stdout)["id"] == sb["id"]
        r = cli(stack, tmp_path, "preview", sb["id"], "8080", "-o", "json")
        assert r.returncode == 0, r.stderr
        preview = json.loads(r.stdout)
        assert preview["url"] and preview["sandboxId"] == sb["id"]
        r = cli(stack, tmp_path, "stop", sb["id"], "-o", "json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["state"] == "stopped"
    finally:
        r = cli(stack, tmp_path, "rm", sb["id"])
        assert r.returncode == 0, r.stderr


def test_ssh_config_works_with_openssh(stack, sandbox, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    r = cli(stack, tmp_path, "ssh-config", sandbox.id, "--known-hosts", str(known_hosts), "--expires", "10")
    assert r.returncode == 0, r.stderr
    config = tmp_path / "ssh_config"
    config.write_text(r.stdout + "    BatchMode yes\n    ConnectTimeout 20\n")
    host = f"sandbar-{sandbox.id}"
    r = subprocess.run(["ssh", "-F", str(config), host, "echo hi; exit 4"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (4, "hi\n"), r.stderr
    # The gateway's key was recorded on first use, and is accepted the next time.
    assert known_hosts.read_text().strip()
    r = subprocess.run(["ssh", "-F", str(config), host, "echo again"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (0, "again\n"), r.stderr
