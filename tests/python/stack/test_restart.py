"""Restart: stop the stack with one sandbox running and one stopped, start it again on the same data directory:
every sandbox is in its state and its files are there."""

from __future__ import annotations

import secrets

from sandbar_stack import remove_containers, start_stack
from daytona import Daytona, DaytonaConfig


def test_restart_keeps_states_and_files(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-restart")
    runner_id = "e2e-restart-" + secrets.token_hex(3)
    stack = start_stack(data_dir, runner_id)
    try:
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        running = d.create(timeout=180)
        stopped = d.create(timeout=180)
        running.fs.upload_file(b"running file\n", "/tmp/r.txt")
        stopped.fs.upload_file(b"stopped file\n", "/tmp/s.txt")
        stopped.stop(timeout=60)
        assert stack.stop() == 0, stack.log("api")

        stack = start_stack(data_dir, runner_id)
        # The same key works after the restart (it is in the database, not in memory).
        d = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=stack.api_key))
        assert d.get(running.id).state.value == "started"
        assert d.get(stopped.id).state.value == "stopped"
        assert d.get(running.id).fs.download_file("/tmp/r.txt") == b"running file\n"
        again = d.get(stopped.id)
        again.start(timeout=120)
        assert again.fs.download_file("/tmp/s.txt") == b"stopped file\n"
        d.delete(d.get(running.id))
        d.delete(again)
    finally:
        stack.stop()
        remove_containers(runner_id)
