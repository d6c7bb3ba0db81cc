"""A real LSP client (pygls, from PyPI) over the daemon's /lsp/ws WebSocket, through the proxy with only the API key:
initialize answered by the sandbox's pylsp, diagnostics for a broken file, completions."""

from __future__ import annotations

import asyncio

from sandbar_util import lsp_client, next_diagnostics


def test_pygls_through_the_proxy(stack, sandbox):
    from lsprotocol import types as t

    project = "/tmp/e2e-lsp-ws"
    sandbox.process.exec(f"mkdir -p {project}")
    broken_text = "def f(:\n    return 1\n"
    main_text = "import os\nos.pa\n"

    async def session():
        base = sandbox.toolbox_proxy_url.replace("http", "ws", 1)
        url = f"{base}/{sandbox.id}/lsp/ws?languageId=python&pathToProject={project}"
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        async with lsp_client(url, headers, f"file://{project}", 60) as (client, result, diagnostics):
            assert result.server_info is not None and result.server_info.name == "pylsp"

            uri = f"file://{project}/broken.py"
            client.text_document_did_open(t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=uri, language_id="python", version=1, text=broken_text)))
            params = await next_diagnostics(diagnostics, uri, 60)
            assert any(d.severity == t.DiagnosticSeverity.Error for d in params.diagnostics), params.diagnostics

            main_uri = f"file://{project}/main.py"
            client.text_document_did_open(t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=main_uri, language_id="python", version=1, text=main_text)))
            completion = await asyncio.wait_for(client.text_document_completion_async(t.CompletionParams(
                text_document=t.TextDocumentIdentifier(uri=main_uri), position=t.Position(line=1, character=5))), 60)
            items = completion.items if hasattr(completion, "items") else completion
            assert "path" in [i.label for i in items]

    asyncio.run(session())
