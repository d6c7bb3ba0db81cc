"""`sandbox.process.exec` / `code_run` through the real SDK."""

from __future__ import annotations

import json
import time

import pytest
from daytona_toolbox_api_client.exceptions import ApiException
from daytona import (
    CodeRunParams,
    DaytonaAuthenticationError,
    DaytonaProcessExecutionTimeoutError,
    DaytonaTimeoutError,
)

from conftest import SANDBOX_NO_TOKEN_ID
from sandbar_util import wait_until


def test_exec_echo(sandbox):
    r = sandbox.process.exec("echo hi")
    assert r.exit_code == 0
    assert r.result == "hi\n"
    assert r.artifacts.stdout == "hi\n"


def test_exec_runs_through_a_shell(sandbox):
    r = sandbox.process.exec("for i in 1 2 3; do printf \"$i\"; done && echo ' done' | tr a-z A-Z")
    assert (r.exit_code, r.result) == (0, "123 DONE\n")


def test_exec_nonzero_exit_code(sandbox):
    r = sandbox.process.exec("echo partial; exit 7")
    assert r.exit_code == 7
    assert r.result == "partial\n"


def test_exec_missing_command_is_127(sandbox):
    r = sandbox.process.exec("sandbar-definitely-not-a-command-xyz")
    assert r.exit_code == 127


def test_exec_default_cwd_is_work_dir(sandbox, daemon):
    r = sandbox.process.exec("pwd")
    assert (r.exit_code, r.result) == (0, f"{daemon.work_dir}\n")
    assert sandbox.get_work_dir() == str(daemon.work_dir)
    assert sandbox.get_user_home_dir() == str(daemon.home_dir)


def test_exec_with_cwd(sandbox, ws):
    (ws / "marker.txt").write_text("x")
    r = sandbox.process.exec("pwd && ls", cwd=str(ws))
    assert r.exit_code == 0
    assert r.result == f"{ws}\nmarker.txt\n"


def test_exec_with_env(sandbox):
    r = sandbox.process.exec('printf "%s|%s" "$SANDBAR_T1" "$SANDBAR_T2"', env={"SANDBAR_T1": "a b", "SANDBAR_T2": "é=1"})
    assert r.exit_code == 0
    assert r.result == "a b|é=1"


def test_exec_with_cwd_and_env(sandbox, ws):
    r = sandbox.process.exec('echo "$(pwd):$GREETING"', cwd=str(ws), env={"GREETING": "hello"})
    assert (r.exit_code, r.result) == (0, f"{ws}:hello\n")


def test_exec_large_output(sandbox):
    r = sandbox.process.exec("python3 -c \"import sys; sys.stdout.write('x' * 2000000)\"")
    assert r.exit_code == 0
    assert len(r.result) == 2_000_000 and set(r.result) == {"x"}


def test_exec_timeout_raises_sdk_timeout_error_and_kills_command(sandbox, ws):
    marker = ws / "survived"
    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError) as excinfo:
        sandbox.process.exec(f"sleep 3 && touch {marker}", timeout=1)
    elapsed = time.monotonic() - started
    # The daemon must answer 408 + code PROCESS_EXECUTION_TIMEOUT + source DAYTONA_DAEMON: the SDK then
    # raises the dedicated subclass. A client-side read timeout (timeout+5 s) would also be a DaytonaTimeoutError,
    # so the subclass and the elapsed time are what prove the daemon enforced the timeout.
    assert isinstance(excinfo.value, DaytonaProcessExecutionTimeoutError), repr(excinfo.value)
    assert excinfo.value.status_code == 408
    assert elapsed < 4.5, f"exec(timeout=1) took {elapsed:.1f}s"
    time.sleep(3.5)
    assert not marker.exists(), "the timed-out command kept running after the timeout"


def test_exec_without_daemon_token_is_rejected(daytona):
    # Same daemon, but this sandbox's route has no daemon token: the proxy signs with an empty key, refused.
    sb = daytona.get(SANDBOX_NO_TOKEN_ID)
    with pytest.raises(DaytonaAuthenticationError) as excinfo:
        sb.process.exec("echo should-not-run")
    assert excinfo.value.status_code == 401


def test_code_run_python(sandbox):
    r = sandbox.process.code_run("import sys\nx = 20\nprint(f'sum={x + 22}')\nprint(sys.version_info[0])")
    assert r.exit_code == 0
    assert r.result == "sum=42\n3\n"
    assert r.artifacts.charts == []


def test_code_run_python_argv_env_and_exit_code(sandbox):
    code = "import os, sys\nprint(sys.argv[1:], os.environ['CODE_RUN_VAR'])\nsys.exit(3)"
    r = sandbox.process.code_run(code, params=CodeRunParams(argv=["a", "b c"], env={"CODE_RUN_VAR": "v1"}))
    assert r.exit_code == 3
    assert r.result == "['a', 'b c'] v1\n"


def test_code_run_python_error_exit_code(sandbox):
    r = sandbox.process.code_run("raise ValueError('boom')")
    assert r.exit_code == 1
    assert "ValueError: boom" in r.result


def test_code_run_timeout(sandbox):
    # In daytona 0.226.1 `code_run` (unlike `exec`) has no @intercept_errors, so the generated client's own
    # ApiException escapes instead of a DaytonaError. What the daemon must send is the same as for exec: 408 with
    # code PROCESS_EXECUTION_TIMEOUT, and it must come at the timeout, not at the client's timeout+5 s.
    started = time.monotonic()
    with pytest.raises(ApiException) as excinfo:
        sandbox.process.code_run("import time\ntime.sleep(10)", timeout=1)
    assert time.monotonic() - started < 4.5
    assert excinfo.value.status == 408
    body = json.loads(excinfo.value.body)
    assert (body["code"], body["source"]) == ("PROCESS_EXECUTION_TIMEOUT", "DAYTONA_DAEMON")


def test_concurrent_execs(sandbox):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: sandbox.process.exec(f"sleep 0.3; echo {i}"), range(8)))
    assert [(r.exit_code, r.result) for r in results] == [(0, f"{i}\n") for i in range(8)]


def test_exec_background_process_does_not_hold_the_answer(sandbox, ws):
    # SDK docstring: `cmd > log 2>&1 &` returns at once; the background job keeps running.
    started = time.monotonic()
    r = sandbox.process.exec(f"(sleep 1; echo late > {ws}/bg.txt) > /dev/null 2>&1 &")
    assert r.exit_code == 0
    assert time.monotonic() - started < 1.0
    wait_until(lambda: (ws / "bg.txt").exists(), timeout=5, what="background job output")
