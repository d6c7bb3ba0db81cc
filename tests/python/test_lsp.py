"""LSP: the Daytona SDK's `create_lsp_server` flow, and an IDE-like client (pygls, from PyPI)
over the daemon's `/lsp/ws` WebSocket, both backed by Debian's real pylsp running under the daemon."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from daytona import DaytonaError, DaytonaLspServerNotInitializedError
from daytona.common.lsp_server import LspCompletionPosition

from sandbar_util import daemon_auth, lsp_client, next_diagnostics

SOURCE = (
    "import os\n"
    "os.pa\n"
    "\n"
    "\n"
    "def greet(name):\n"
    '    return "hi " + name\n'
    "\n"
    "\n"
    "class Greeter:\n"
    "    def hello(self):\n"
    '        return greet("x")\n'
)


def test_sdk_lsp_flow(sandbox, ws):
    path = ws / "main.py"
    path.write_text(SOURCE)
    lsp = sandbox.create_lsp_server("python", str(ws))
    lsp.start()
    try:
        lsp.did_open(str(path))
        completions = lsp.completions(str(path), LspCompletionPosition(line=1, character=5))
        labels = [item.label for item in completions.items]
        assert "path" in labels, labels
        assert isinstance(completions.is_incomplete, bool)

        symbols = lsp.document_symbols(str(path))
        by_name = {s.name: s for s in symbols}
        assert {"greet", "Greeter", "hello"} <= set(by_name), list(by_name)
        assert by_name["greet"].kind == 12  # Function
        assert by_name["Greeter"].kind == 5  # Class
        assert by_name["greet"].location.range.start.line == 4
        assert by_name["greet"].location.uri.endswith("/main.py")

        found = [s.name for s in lsp.sandbox_symbols("gree")]
        assert "greet" in found and "Greeter" in found and "hello" not in found, found

        # A file edited on disk after did_open is seen as it is now.
        path.write_text(SOURCE.replace("os.pa\n", "os.getc\n"))
        labels = [i.label for i in lsp.completions(str(path), LspCompletionPosition(line=1, character=7)).items]
        assert any(label.startswith("getcwd") for label in labels), labels
        lsp.did_close(str(path))
    finally:
        lsp.stop()
    with pytest.raises(DaytonaLspServerNotInitializedError):
        lsp.completions(str(path), LspCompletionPosition(line=1, character=5))


def test_sdk_lsp_missing_server_names_the_program(sandbox, ws):
    if shutil.which("typescript-language-server"):
        pytest.skip("typescript-language-server is installed here")
    lsp = sandbox.create_lsp_server("typescript", str(ws))
    with pytest.raises(DaytonaError) as e:
        lsp.start()
    assert "typescript-language-server" in str(e.value) and "not installed" in str(e.value)


def test_websocket_with_pygls_client(daemon, ws):
    """pygls's LanguageClient over the WebSocket: initialize, publishDiagnostics for a broken file, hover."""
    from lsprotocol import types as t

    (ws / "main.py").write_text(SOURCE)
    broken = ws / "broken.py"
    broken_text = "def f(:\n    return 1\n"
    broken.write_text(broken_text)

    async def session():
        # Straight to the daemon: it wants a path, a query and a credential signed with the token for both.
        path = f"/lsp/ws?languageId=python&pathToProject={ws}"
        url = f"ws://{daemon.addr}{path}"
        headers = {"X-Sandbar-Daemon-Auth": daemon_auth(daemon.token, "GET", path)}
        async with lsp_client(url, headers, f"file://{ws}", 30) as (client, result, diagnostics):
            assert result.server_info is not None and result.server_info.name == "pylsp"
            assert result.capabilities.hover_provider

            uri = f"file://{broken}"
            client.text_document_did_open(
                t.DidOpenTextDocumentParams(
                    text_document=t.TextDocumentItem(uri=uri, language_id="python", version=1, text=broken_text)
                )
            )
            params = await next_diagnostics(diagnostics, uri, 30)
            assert any(d.severity == t.DiagnosticSeverity.Error for d in params.diagnostics), params.diagnostics
            assert params.diagnostics[0].range.start.line == 0

            main_uri = f"file://{ws / 'main.py'}"
            client.text_document_did_open(
                t.DidOpenTextDocumentParams(
                    text_document=t.TextDocumentItem(uri=main_uri, language_id="python", version=1, text=SOURCE)
                )
            )
            hover = await asyncio.wait_for(
                client.text_document_hover_async(
                    t.HoverParams(
                        text_document=t.TextDocumentIdentifier(uri=main_uri),
                        position=t.Position(line=10, character=16),
                    )
                ),
                30,
            )
            assert hover is not None and "greet" in str(hover.contents), hover

    asyncio.run(session())
