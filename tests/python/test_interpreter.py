"""`sandbox.code_interpreter` through the real SDK: contexts over HTTP, `run_code` over the execute WebSocket.

Each check is what a user of the interpreter relies on: state lasts across runs of one context and is not shared
between contexts, a context's cwd holds, output and errors stream to the callbacks, a timeout interrupts the code
(close 4008, `DaytonaTimeoutError`) and leaves the context usable, deleting a context ends its process, and no
route answers without the daemon credential.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import pytest
from daytona import DaytonaAuthenticationError, DaytonaError, DaytonaNotFoundError, DaytonaTimeoutError
from daytona_toolbox_api_client import InterpreterContext

from conftest import SANDBOX_NO_TOKEN_ID
from sandbar_util import wait_until


@pytest.fixture
def ctx(sandbox):
    """A fresh context, deleted afterwards."""
    c = sandbox.code_interpreter.create_context()
    yield c
    try:
        sandbox.code_interpreter.delete_context(c)
    except DaytonaNotFoundError:
        pass


def test_state_persists_across_runs_in_the_default_context(sandbox):
    ci = sandbox.code_interpreter
    assert ci.run_code("answer = 21\ndef double(v):\n    return 2 * v").error is None
    r = ci.run_code("print(double(answer))")
    assert r.error is None
    assert r.stdout == "42\n"
    # The value of a last expression is shown, as in a REPL.
    assert ci.run_code("answer + 1").stdout == "22\n"


def test_output_streams_to_the_callbacks_and_errors_carry_name_value_and_traceback(ctx, sandbox):
    out, err, errors = [], [], []
    code = (
        "import os, sys\n"
        "print('to stdout')\n"
        "sys.stderr.write('to stderr\\n')\n"
        "os.system('echo from a child process')\n"
        "def boom():\n"
        "    raise ValueError('bad value')\n"
        "boom()\n"
    )
    r = sandbox.code_interpreter.run_code(
        code,
        context=ctx,
        on_stdout=lambda m: out.append(m.output),
        on_stderr=lambda m: err.append(m.output),
        on_error=errors.append,
    )
    assert "".join(out) == r.stdout == "to stdout\nfrom a child process\n"
    assert "".join(err) == r.stderr == "to stderr\n"
    assert len(errors) == 1 and r.error is errors[0]
    assert (r.error.name, r.error.value) == ("ValueError", "bad value")
    assert "in boom" in r.error.traceback and r.error.traceback.rstrip().endswith("ValueError: bad value")
    # The daemon's own driver frames are not shown to the user.
    assert "<string>" not in r.error.traceback

    syntax = sandbox.code_interpreter.run_code("def f(:\n    pass", context=ctx)
    assert syntax.error is not None and syntax.error.name == "SyntaxError"


def test_contexts_are_isolated_listed_and_honour_their_cwd(sandbox, ws):
    ci = sandbox.code_interpreter
    a = ci.create_context(cwd=str(ws))
    b = ci.create_context()
    try:
        assert a.cwd == str(ws) and a.language == "python" and a.active
        listed = {c.id: c for c in ci.list_contexts()}
        assert {a.id, b.id} <= set(listed)
        assert "default" not in listed
        assert ci.run_code("import os\nprint(os.getcwd())", context=a).stdout == f"{ws}\n"
        ci.run_code("secret = 'only in a'\nopen('made-by-a.txt', 'w').write('x')", context=a)
        assert (ws / "made-by-a.txt").read_text() == "x"
        in_b = ci.run_code("print(secret)", context=b)
        assert in_b.error is not None and in_b.error.name == "NameError"
        in_default = ci.run_code("print(secret)")
        assert in_default.error is not None and in_default.error.name == "NameError"
        assert ci.run_code("print(secret)", context=a).stdout == "only in a\n"
    finally:
        ci.delete_context(a)
        ci.delete_context(b)


def test_envs_apply_to_one_run_only(ctx, sandbox):
    ci = sandbox.code_interpreter
    r = ci.run_code("import os\nprint(os.environ['RUN_ONLY'])", context=ctx, envs={"RUN_ONLY": "yes"})
    assert r.stdout == "yes\n"
    assert ci.run_code("print(os.environ.get('RUN_ONLY'))", context=ctx).stdout == "None\n"


def test_a_timeout_interrupts_the_code_and_the_context_lives_on(ctx, sandbox):
    ci = sandbox.code_interpreter
    ci.run_code("kept = 'still here'\nimport time", context=ctx)
    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError):
        ci.run_code("while True:\n    time.sleep(0.05)", context=ctx, timeout=1)
    assert time.monotonic() - started < 5, "the timeout did not interrupt the code promptly"
    r = ci.run_code("print(kept)", context=ctx)
    assert r.error is None and r.stdout == "still here\n"


def test_code_that_ignores_the_interrupt_is_killed_and_the_context_restarts(ctx, sandbox):
    ci = sandbox.code_interpreter
    pid = int(ci.run_code("import os\nprint(os.getpid())", context=ctx).stdout)
    stubborn = "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass"
    with pytest.raises(DaytonaTimeoutError):
        ci.run_code(stubborn, context=ctx, timeout=1)
    r = ci.run_code("import os\nprint(os.getpid())", context=ctx)
    assert r.error is None and int(r.stdout) != pid
    assert ci.run_code("print('stubborn' in dir())", context=ctx).stdout == "False\n"


def test_deleting_a_context_ends_its_process(sandbox):
    ci = sandbox.code_interpreter
    c = ci.create_context()
    pid = int(ci.run_code("import os, subprocess\nchild = subprocess.Popen(['sleep', '60'])\nprint(os.getpid())",
                          context=c).stdout)
    child = int(ci.run_code("print(child.pid)", context=c).stdout)
    assert os.path.exists(f"/proc/{pid}")
    ci.delete_context(c)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10, what="the context's process to end")
    wait_until(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child), timeout=10,
               what="the process the context started to end")
    assert c.id not in {x.id for x in ci.list_contexts()}
    with pytest.raises(DaytonaError, match="not found"):
        ci.run_code("print(1)", context=c)
    with pytest.raises(DaytonaNotFoundError):
        ci.delete_context(c)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_bad_requests_get_clear_errors(sandbox):
    ci = sandbox.code_interpreter
    with pytest.raises(DaytonaError, match="no such directory") as e:
        ci.create_context(cwd="/no/such/dir")
    assert e.value.status_code == 400
    default = InterpreterContext(id="default", cwd="/", language="python", created_at="", active=True)
    with pytest.raises(DaytonaError, match="cannot be deleted") as e:
        ci.delete_context(default)
    assert e.value.status_code == 400
    ghost = InterpreterContext(id="no-such-context", cwd="/", language="python", created_at="", active=True)
    with pytest.raises(DaytonaError, match="not found"):
        ci.run_code("print(1)", context=ghost)


def test_the_number_of_contexts_is_capped(sandbox):
    ci = sandbox.code_interpreter
    made = []
    try:
        with pytest.raises(DaytonaError, match="delete one first") as e:
            for _ in range(64):
                made.append(ci.create_context())
        assert e.value.status_code == 409
        assert len(made) == 16 - len([c for c in ci.list_contexts() if c.id not in {m.id for m in made}])
    finally:
        for c in made:
            ci.delete_context(c)


def test_interpreter_routes_refuse_requests_without_the_daemon_credential(daytona, daemon):
    sb = daytona.get(SANDBOX_NO_TOKEN_ID)
    with pytest.raises(DaytonaAuthenticationError) as e:
        sb.code_interpreter.list_contexts()
    assert e.value.status_code == 401
    with pytest.raises(DaytonaError):
        sb.code_interpreter.run_code("print('should not run')")
    # Straight to the daemon, no credential at all: the upgrade is refused before any WebSocket exists.
    for path in ("/process/interpreter/context", "/process/interpreter/execute"):
        req = urllib.request.Request(
            f"http://{daemon.addr}{path}",
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401
