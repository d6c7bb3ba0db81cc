"""`process.exec` results say why a command ended, as extra fields the SDK keeps in `additional_properties`:
`exitReason` (`exited`, `signal`, `oom`) and `signal`. (A timeout is a 408 `PROCESS_EXECUTION_TIMEOUT`, tested in
test_process.py; the OOM case needs a memory-capped container, its counter parsing is a unit test in
`daemon/src/engine/exec.rs`.)"""

from __future__ import annotations


def test_a_command_that_exits_says_so(sandbox):
    r = sandbox.process.exec("exit 3")
    assert r.exit_code == 3
    assert r.additional_properties.get("exitReason") == "exited"
    assert "signal" not in r.additional_properties


def test_a_command_killed_by_a_signal_names_it(sandbox):
    r = sandbox.process.exec("kill -KILL $$")
    assert r.exit_code == 128 + 9
    assert r.additional_properties.get("exitReason") == "signal"
    assert r.additional_properties.get("signal") == "SIGKILL"
    r = sandbox.process.exec("kill -SEGV $$")
    assert (r.additional_properties.get("exitReason"), r.additional_properties.get("signal")) == ("signal", "SIGSEGV")
