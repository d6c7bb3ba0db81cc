"""Sessions through the real SDK: create, exec (sync and async), command state, logs (HTTP and the
followed WebSocket with stdout/stderr markers), delete."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from daytona import DaytonaNotFoundError, SessionExecuteRequest

from sandbar_util import wait_until


@pytest.fixture
def session_id(sandbox):
    sid = "pytest-" + secrets.token_hex(4)
    sandbox.process.create_session(sid)
    yield sid
    try:
        sandbox.process.delete_session(sid)
    except DaytonaNotFoundError:
        pass


def test_create_get_list_delete_session(sandbox):
    sid = "pytest-lifecycle-" + secrets.token_hex(4)
    sandbox.process.create_session(sid)
    s = sandbox.process.get_session(sid)
    assert s.session_id == sid
    assert s.commands == []
    assert sid in [x.session_id for x in sandbox.process.list_sessions()]

    sandbox.process.delete_session(sid)
    assert sid not in [x.session_id for x in sandbox.process.list_sessions()]
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session(sid)


def test_execute_session_command_sync(sandbox, session_id):
    r = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(command="echo out; echo err >&2"))
    assert r.cmd_id
    assert r.exit_code == 0
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    # `output` is both streams together; their relative order is not something a pipe pair can promise.
    assert r.output is not None and sorted(r.output.splitlines()) == ["err", "out"]

    cmd = sandbox.process.get_session_command(session_id, r.cmd_id)
    assert cmd.id == r.cmd_id
    assert cmd.command == "echo out; echo err >&2"
    assert cmd.exit_code == 0


def test_execute_session_command_sync_exit_code(sandbox, session_id):
    r = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(command="echo nope; false"))
    assert r.exit_code == 1
    assert r.stdout == "nope\n"


def test_session_keeps_shell_state(sandbox, session_id, ws):
    req = SessionExecuteRequest
    assert sandbox.process.execute_session_command(session_id, req(command=f"cd {ws}")).exit_code == 0
    assert sandbox.process.execute_session_command(session_id, req(command="export SANDBAR_S=kept")).exit_code == 0
    r = sandbox.process.execute_session_command(session_id, req(command='echo "$(pwd) $SANDBAR_S"'))
    assert (r.exit_code, r.stdout) == (0, f"{ws} kept\n")

    s = sandbox.process.get_session(session_id)
    assert [c.command for c in s.commands] == [f"cd {ws}", "export SANDBAR_S=kept", 'echo "$(pwd) $SANDBAR_S"']
    assert [c.exit_code for c in s.commands] == [0, 0, 0]


def test_execute_session_command_async_then_command_and_logs(sandbox, session_id, ws):
    go = ws / "go"
    cmd = f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo finished; echo oops >&2; exit 3"
    started = time.monotonic()
    r = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(command=cmd, run_async=True))
    assert time.monotonic() - started < 2, "run_async=True must not wait for the command"
    assert r.cmd_id
    assert r.exit_code is None

    running = sandbox.process.get_session_command(session_id, r.cmd_id)
    assert running.id == r.cmd_id
    assert running.command == cmd
    assert running.exit_code is None, "exitCode must be null while the command runs"
    wait_until(
        lambda: sandbox.process.get_session_command_logs(session_id, r.cmd_id).stdout == "started\n",
        what="the first line in the logs of the running command",
    )

    go.touch()
    done = wait_until(
        lambda: (c := sandbox.process.get_session_command(session_id, r.cmd_id)).exit_code is not None and c,
        what="the async command to finish",
    )
    assert done.exit_code == 3

    logs = sandbox.process.get_session_command_logs(session_id, r.cmd_id)
    assert logs.stdout == "started\nfinished\n"
    assert logs.stderr == "oops\n"
    assert sorted(logs.output.splitlines()) == ["finished", "oops", "started"]


def test_get_session_command_logs_async_streams_live(sandbox, session_id, ws):
    go = ws / "go"
    cmd = (
        "echo out1; echo err1 >&2; "
        f"while [ ! -e {go} ]; do sleep 0.05; done; "
        "echo out2; echo err2 >&2; exit 0"
    )
    r = sandbox.process.execute_session_command(session_id, SessionExecuteRequest(command=cmd, run_async=True))
    stdout: list[str] = []
    stderr: list[str] = []

    async def follow():
        async def release_when_first_lines_arrive():
            # Only let the command finish once the first lines reached the callbacks: proves live streaming.
            while "out1" not in "".join(stdout) or "err1" not in "".join(stderr):
                await asyncio.sleep(0.02)
            go.touch()

        releaser = asyncio.ensure_future(release_when_first_lines_arrive())
        try:
            await asyncio.wait_for(
                sandbox.process.get_session_command_logs_async(session_id, r.cmd_id, stdout.append, stderr.append),
                timeout=20,
            )
        finally:
            releaser.cancel()

    asyncio.run(follow())
    assert go.exists(), "the stream ended before the first lines were delivered"
    assert "".join(stdout) == "out1\nout2\n"
    assert "".join(stderr) == "err1\nerr2\n"
    assert sandbox.process.get_session_command(session_id, r.cmd_id).exit_code == 0


def test_get_session_command_logs_async_after_command_finished(sandbox, session_id):
    r = sandbox.process.execute_session_command(
        session_id, SessionExecuteRequest(command="printf 'a\\nb\\n'; printf 'e\\n' >&2")
    )
    assert r.exit_code == 0
    stdout: list[str] = []
    stderr: list[str] = []

    async def follow():
        await asyncio.wait_for(
            sandbox.process.get_session_command_logs_async(session_id, r.cmd_id, stdout.append, stderr.append),
            timeout=10,
        )

    asyncio.run(follow())
    assert "".join(stdout) == "a\nb\n"
    assert "".join(stderr) == "e\n"


def test_get_session_command_logs_async_with_async_callbacks(sandbox, session_id):
    r = sandbox.process.execute_session_command(
        session_id, SessionExecuteRequest(command="for i in 1 2 3; do echo line$i; sleep 0.1; done", run_async=True)
    )
    got: list[str] = []

    async def on_stdout(chunk: str) -> None:
        got.append(chunk)

    async def on_stderr(chunk: str) -> None:
        got.append("STDERR:" + chunk)

    asyncio.run(
        asyncio.wait_for(sandbox.process.get_session_command_logs_async(session_id, r.cmd_id, on_stdout, on_stderr), 20)
    )
    assert "".join(got) == "line1\nline2\nline3\n"


def test_unknown_session_and_command_are_not_found(sandbox, session_id):
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session("pytest-no-such-session")
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session_command(session_id, "no-such-command")
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.execute_session_command("pytest-no-such-session", SessionExecuteRequest(command="true"))


def test_delete_session_kills_running_command(sandbox, ws):
    sid = "pytest-kill-" + secrets.token_hex(4)
    sandbox.process.create_session(sid)
    marker = ws / "survived"
    sandbox.process.execute_session_command(
        sid, SessionExecuteRequest(command=f"sleep 2 && touch {marker}", run_async=True)
    )
    sandbox.process.delete_session(sid)
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session(sid)
    time.sleep(2.5)
    assert not marker.exists(), "a command of a deleted session kept running"
