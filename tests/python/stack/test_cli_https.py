"""`sandbar exec` and `sandbar term` against a stack whose proxy URL is https (`sandbar up --https`): REST calls over
TLS and WebSockets over `wss://`, trusting the certificate `sandbar up` generated in the data directory (or one
named with `--ca-cert`), and refusing the proxy when that certificate is not trusted. `term` runs under a real
pseudo-terminal (python's pty): typed input, a resize through SIGWINCH, detach with Ctrl-], reattach to the same
shell, and the shell's exit code as the command's."""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from sandbar_stack import BIN_DIR, remove_containers, start_stack

SANDBAR = str(BIN_DIR / "sandbar")


@pytest.fixture(scope="module")
def https_stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-https")
    runner_id = "e2e-https-" + secrets.token_hex(3)
    s = start_stack(data_dir, runner_id, extra=["--https"])
    try:
        yield s
    finally:
        s.stop()
        remove_containers(runner_id)


def cli_env(stack, data_dir=None) -> dict[str, str]:
    env = stack.env()
    env["SANDBAR_DATA_DIR"] = str(data_dir or stack.data_dir)
    env.pop("SANDBAR_CA_CERT", None)
    env.pop("SSL_CERT_FILE", None)
    return env


def cli(stack, *args, data_dir=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([SANDBAR, *args], capture_output=True, text=True, env=cli_env(stack, data_dir),
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def sandbox_id(https_stack):
    r = cli(https_stack, "create", timeout=240)
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip().splitlines()[-1]
    yield sid
    cli(https_stack, "rm", sid)


def test_the_stack_hands_out_https(https_stack, sandbox_id):
    r = cli(https_stack, "info", sandbox_id)
    assert r.returncode == 0, r.stderr
    url = json.loads(r.stdout)["toolboxProxyUrl"]
    port = https_stack.proxy_https.rsplit(":", 1)[1]
    assert url == f"https://localhost:{port}/toolbox", url


def test_exec_over_https(https_stack, sandbox_id):
    r = cli(https_stack, "exec", sandbox_id, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stdout == "out\n"
    assert "err" in r.stderr


def test_an_untrusted_certificate_is_refused_and_ca_cert_trusts_it(https_stack, sandbox_id, tmp_path):
    # A data directory without the generated certificate: the proxy's certificate is unknown to the client.
    r = cli(https_stack, "exec", sandbox_id, "--", "true", data_dir=tmp_path)
    assert r.returncode != 0
    assert "certificate" in r.stderr.lower(), r.stderr
    cert = https_stack.data_dir / "tls" / "localhost.crt"
    r = cli(https_stack, "--ca-cert", str(cert), "exec", sandbox_id, "--", "echo", "trusted", data_dir=tmp_path)
    assert (r.returncode, r.stdout) == (0, "trusted\n"), r.stderr


class Term:
    """`sandbar term` on a pseudo-terminal of its own (it is the session leader, the pty its controlling tty)."""

    def __init__(self, env: dict[str, str], args: list[str], rows: int = 30, cols: int = 100):
        # The size is set before the child starts, so its first look at the terminal sees it.
        self.fd, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.pid = os.fork()
        if self.pid == 0:  # the child: a session of its own with the pty as controlling terminal, then exec
            try:
                os.close(self.fd)
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for n in (0, 1, 2):
                    os.dup2(slave, n)
                os.execve(SANDBAR, [SANDBAR, *args], env)
            finally:
                os._exit(127)
        os.close(slave)
        self.out = b""
        self.status: int | None = None

    def resize(self, rows: int, cols: int) -> None:
        # Sends SIGWINCH to the terminal's foreground process group: `sandbar term`.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, text: str | bytes) -> None:
        os.write(self.fd, text.encode() if isinstance(text, str) else text)

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not chunk:
            return False
        self.out += chunk
        return True

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        start = len(self.out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.compile(pattern.encode()).search(self.out, start)
            if m:
                return m
            if not self._read(0.2):
                break
        pytest.fail(f"no {pattern!r} from sandbar term; it printed:\n{self.out[start:].decode(errors='replace')}")

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                while select.select([self.fd], [], [], 0)[0] and self._read(0):  # what it printed last
                    pass
                return self.status
            self._read(0.1)
        pytest.fail(f"sandbar term did not exit; it printed:\n{self.out.decode(errors='replace')[-2000:]}")

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -9
        os.close(self.fd)


def test_term_over_wss(https_stack, sandbox_id):
    env = cli_env(https_stack)
    t = Term(env, ["term", sandbox_id], rows=30, cols=100)
    try:
        # The shell's first output (its prompt) means the terminal is attached and in raw mode.
        t.expect(r"\S")
        t.send("echo $((6*7))\r")
        t.expect(r"\b42\b")
        t.send("stty size\r")
        t.expect(r"\b30 100\b")
        # A resize of the local terminal reaches the remote PTY.
        t.resize(40, 120)
        deadline = time.monotonic() + 30
        while True:
            t.send("stty size\r")
            try:
                t.expect(r"\b40 120\b", timeout=2)
                break
            except pytest.fail.Exception:
                if time.monotonic() > deadline:
                    raise
        t.send("MARK=kept$((1+1)); echo mark-$MARK\r")
        t.expect(r"mark-kept2")
        # Ctrl-] detaches; the shell keeps running.
        t.send(b"\x1d")
        assert t.wait() == 0
        session = re.search(rb"--session (\S+)", t.out)
        assert session, t.out.decode(errors="replace")
    finally:
        t.close()

    t = Term(env, ["term", sandbox_id, "--session", session.group(1).decode()])
    try:
        t.expect(r"\S")
        t.send("echo $MARK\r")
        t.expect(r"\bkept2\b")
        t.send("exit 3\r")
        assert t.wait() == 3
    finally:
        t.close()
