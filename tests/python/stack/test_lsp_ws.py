"""A real LSP client (pygls, from PyPI) over the daemon's /lsp/ws WebSocket, through the proxy with only the API key:
initialize answered by the sandbox's pylsp, diagnostics for a broken file, completions."""

from __future__ import annotations

import asyncio


def test_pygls_through_the_proxy(stack, sandbox):
    from lsprotocol import types as t
    from pygls.io_ import run_websocket
    from pygls.lsp.client import LanguageClient
    from websockets.asyncio.client import connect

    project = "/tmp/e2e-lsp-ws"
    sandbox.process.exec(f"mkdir -p {project}")
    broken_text = "def f(:\n    return 1\n"
    main_text = "import os\nos.pa\n"

    async def session():
        client = LanguageClient("sandbar-e2e", "1.0")
        diagnostics: asyncio.Queue = asyncio.Queue()

        @client.feature(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def on_diagnostics(params: t.PublishDiagnosticsParams):
            diagnostics.put_nowait(params)

        base = sandbox.toolbox_proxy_url.replace("http", "ws", 1)
        url = f"{base}/{sandbox.id}/lsp/ws?languageId=python&pathToProject={project}"
        socket = await connect(url, additional_headers={"Authorization": f"Bearer {stack.api_key}"})
        loop_task = asyncio.create_task(
            run_websocket(websocket=socket, stop_event=client._stop_event, protocol=client.protocol)
        )
        try:
            result = await asyncio.wait_for(
                client.initialize_async(
                    t.InitializeParams(capabilities=t.ClientCapabilities(), root_uri=f"file://{project}",
                                       process_id=None)),
                60,
            )
            assert result.server_info is not None and result.server_info.name == "pylsp"
            client.initialized(t.InitializedParams())

            uri = f"file://{project}/broken.py"
            client.text_document_did_open(t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=uri, language_id="python", version=1, text=broken_text)))
            while True:
                params = await asyncio.wait_for(diagnostics.get(), 60)
                if params.uri == uri and params.diagnostics:
                    break
            assert any(d.severity == t.DiagnosticSeverity.Error for d in params.diagnostics), params.diagnostics

            main_uri = f"file://{project}/main.py"
            client.text_document_did_open(t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=main_uri, language_id="python", version=1, text=main_text)))
            completion = await asyncio.wait_for(client.text_document_completion_async(t.CompletionParams(
                text_document=t.TextDocumentIdentifier(uri=main_uri), position=t.Position(line=1, character=5))), 60)
            items = completion.items if hasattr(completion, "items") else completion
            assert "path" in [i.label for i in items]

            await asyncio.wait_for(client.shutdown_async(None), 10)
            client.exit(None)
        finally:
            client._stop_event.set()
            await socket.close()
            loop_task.cancel()

    asyncio.run(session())
