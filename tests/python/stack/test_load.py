"""The quick form of ``scripts/load`` against a stack of its own (quotas and overcommit for its sandboxes): no
error, no lost request, every byte and every log line back, the stack's memory flat across rounds. Timings are
printed (``pytest -s``), never asserted; ``scripts/load`` without ``--quick`` is the long form."""

from __future__ import annotations

import os
import secrets

import loadgen
from sandbar_stack import remove_containers, start_stack


def test_load_quick(tmp_path):
    cfg = loadgen.QUICK
    runner_id = "load-" + secrets.token_hex(4)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stack = start_stack(data_dir, runner_id, env=loadgen.stack_env(cfg))
    try:
        report = loadgen.run(stack, cfg, "quick", os.environ.get("SANDBAR_STACK_IMAGE", "sandbar-sandbox:default"))
    finally:
        stack.stop()
        remove_containers(runner_id)
    print("\n" + report.markdown())
    problems = report.problems()
    assert not problems, "\n".join(problems) + "\n\n" + report.markdown()
    asked = {name: op.asked for name, op in report.ops.items()}
    assert asked["exec"] == cfg.clients * cfg.rounds, asked
    assert asked["terminal open (WebSocket)"] == cfg.terminals, asked
    assert asked["session log follower (WebSocket)"] == cfg.followers, asked
    assert asked["build log follower (HTTP stream)"] == cfg.followers, asked
