"""PTY sessions through the real SDK: create_pty_session (the create-connect WebSocket with the exit-control and
envs subprotocols), input and output, resize, reconnect with connect_pty_session, list/info, kill, exit codes."""

from __future__ import annotations

import secrets

import pytest
from daytona import PtySize

from sandbar_util import read_until, wait_until


def new_pty(sandbox, prompt_input: str, expect: bytes):
    """A fresh PTY session, connected, after ``prompt_input`` made the shell print ``expect``: (id, handle)."""
    pid = "pty-" + secrets.token_hex(4)
    handle = sandbox.process.create_pty_session(id=pid)
    handle.wait_for_connection()
    handle.send_input(prompt_input)
    read_until(handle, expect)
    return pid, handle


def test_create_pty_session_runs_a_shell_with_envs_and_size(sandbox, ws):
    pid = "pty-" + secrets.token_hex(4)
    handle = sandbox.process.create_pty_session(
        id=pid, cwd=str(ws), envs={"SANDBAR_PTY": "from-sdk"}, pty_size=PtySize(rows=30, cols=100)
    )
    try:
        handle.wait_for_connection()
        assert handle.is_connected()
        handle.send_input("stty size; pwd; echo v=$SANDBAR_PTY $((6*7))\n")
        out = read_until(handle, b"v=from-sdk 42")
        assert b"30 100" in out
        assert str(ws).encode() in out

        info = handle.resize(PtySize(rows=40, cols=120))
        assert (info.rows, info.cols, info.active) == (40, 120, True)
        handle.send_input("stty size\n")
        read_until(handle, b"40 120")

        infos = {i.id: i for i in sandbox.process.list_pty_sessions()}
        assert infos[pid].cwd == str(ws)
        assert sandbox.process.get_pty_session_info(pid).cols == 120

        handle.send_input("exit 7\n")
        result = handle.wait(timeout=20)
        assert result.exit_code == 7
        assert result.error  # Daytona's exit reason for a non-zero exit
    finally:
        handle.disconnect()


def test_reconnect_replays_and_clean_exit(sandbox):
    pid, first = new_pty(sandbox, "echo before-$((20+1))\n", b"before-21")
    first.disconnect()

    # The shell outlives the socket; a new connection gets the scrollback.
    again = sandbox.process.connect_pty_session(pid)
    try:
        again.wait_for_connection()
        read_until(again, b"before-21")
        again.send_input("exit\n")
        result = again.wait(timeout=20)
        assert result.exit_code == 0
        assert result.error is None
    finally:
        again.disconnect()
    assert wait_until(lambda: not sandbox.process.get_pty_session_info(pid).active, timeout=10)


def test_kill_pty_session(sandbox):
    pid, handle = new_pty(sandbox, "echo up\n", b"up")
    handle.kill()
    result = handle.wait(timeout=20)
    assert result.exit_code == 137
    assert pid not in [i.id for i in sandbox.process.list_pty_sessions()]


def test_duplicate_pty_id_is_refused(sandbox):
    pid = "pty-" + secrets.token_hex(4)
    handle = sandbox.process.create_pty_session(id=pid)
    try:
        handle.wait_for_connection()
        with pytest.raises(Exception) as e:
            sandbox.process.create_pty_session(id=pid)
        assert "409" in str(e.value) or "exists" in str(e.value)
    finally:
        handle.kill()
        handle.disconnect()
