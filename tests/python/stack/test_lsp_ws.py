"""A real LSP client (pygls, from PyPI) over the daemon's /lsp/ws WebSocket, through the proxy with only the API key:
initialize answered by the sandbox's pylsp, diagnostics for a broken file, completions (``check_pylsp``, which
test_hosts.py drives to both hosts too)."""

from __future__ import annotations

from sandbar_util import check_pylsp


def test_pygls_through_the_proxy(stack, sandbox):
    check_pylsp(sandbox, stack.api_key, "/tmp/e2e-lsp-ws")
