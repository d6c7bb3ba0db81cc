"""A stand-in for sandbar's edge (proxy + control plane), just enough for the Daytona SDK to reach a real daemon.

It does what the real stack does on the toolbox path and nothing more:

* ``GET /api/sandbox/{id}`` answers a fabricated Sandbox DTO whose ``toolboxProxyUrl`` is
  ``http://127.0.0.1:PORT/toolbox`` (so ``Daytona.get(id)`` builds a real ``Sandbox`` exactly as in production);
  every other ``/api`` path (including the Socket.IO probe) is a 404, which the SDK tolerates.
* ``/toolbox/{sandboxId}/<path>`` is forwarded to the daemon as ``/<path>``: the caller's ``Authorization: Bearer``
  is checked, any caller-supplied daemon token is dropped, and the per-sandbox daemon token is added (the real
  proxy does the same). Bodies and WebSocket upgrades are piped through byte for byte.

Each forwarded request gets ``Connection: close`` (WebSocket upgrades excepted), so one TCP connection carries one
request and the forwarder never has to find request boundaries inside a kept-alive stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TOKEN_HEADER = b"x-sandbar-daemon-token"
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection"}


@dataclass
class SandboxRoute:
    daemon_host: str
    daemon_port: int
    daemon_token: str | None  # None: forward without a token (to check the daemon rejects that)


@dataclass
class LoggedRequest:
    method: str
    target: str
    forwarded: str | None = None
    status: int | None = None

    def __str__(self) -> str:
        fwd = f" -> {self.forwarded}" if self.forwarded else ""
        return f"{self.method} {self.target}{fwd} => {self.status}"


@dataclass
class Edge:
    api_key: str
    routes: dict[str, SandboxRoute] = field(default_factory=dict)
    log: list[LoggedRequest] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbar-edge", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "Edge":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()

        try:
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def toolbox_proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/toolbox"

    def add_sandbox(self, sandbox_id: str, daemon_addr: str, daemon_token: str | None) -> None:
        host, port = daemon_addr.rsplit(":", 1)
        self.routes[sandbox_id] = SandboxRoute(host.strip("[]"), int(port), daemon_token)

    def sandbox_dto(self, sandbox_id: str) -> dict:
        return {
            "id": sandbox_id,
            "organizationId": "org-sandbar-tests",
            "name": sandbox_id,
            "user": "sandbar",
            "env": {},
            "labels": {"code-toolbox-language": "python"},
            "public": False,
            "networkBlockAll": False,
            "kvm": False,
            "target": "local",
            "cpu": 1,
            "gpu": 0,
            "memory": 1,
            "disk": 3,
            "state": "started",
            "desiredState": "started",
            "toolboxProxyUrl": self.toolbox_proxy_url,
            "createdAt": "2026-01-01T00:00:00.000Z",
            "updatedAt": "2026-01-01T00:00:00.000Z",
        }

    # -- connection handling ---------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head[:-4].split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                await self._respond(writer, 400, {"message": "bad request line"})
                return
            headers: list[tuple[bytes, bytes]] = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.append((name.strip(), value.strip()))
            entry = LoggedRequest(method.decode("latin-1"), target.decode("latin-1"))
            self.log.append(entry)
            path = urlsplit(entry.target).path
            if path.startswith("/api/") or path == "/api":
                await self._control_plane(entry, path, headers, reader, writer)
            elif path.startswith("/toolbox/"):
                await self._toolbox(entry, method, target, version, headers, reader, writer)
            else:
                entry.status = 404
                await self._respond(writer, 404, {"statusCode": 404, "message": f"no route for {path}"})
        except Exception as e:  # never let a forwarding bug kill the loop silently
            self.log.append(LoggedRequest("EDGE-ERROR", repr(e)))
        finally:
            try:
                writer.close()
            except Exception:
                pass

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        want = f"Bearer {self.api_key}".encode()
        return any(k.lower() == b"authorization" and v == want for k, v in headers)

    async def _respond(self, writer: asyncio.StreamWriter, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, len(data))
            + data
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass

    async def _control_plane(self, entry, path, headers, reader, writer) -> None:
        length = next((int(v) for k, v in headers if k.lower() == b"content-length"), 0)
        if length:
            await reader.readexactly(length)
        if path.startswith("/api/socket.io"):  # optional in the compat doc; the SDK falls back to polling on 404
            entry.status = 404
            await self._respond(writer, 404, {"statusCode": 404, "message": "no socket.io here"})
            return
        if not self._authorized(headers):
            entry.status = 401
            await self._respond(writer, 401, {"statusCode": 401, "message": "Unauthorized", "error": "Unauthorized"})
            return
        parts = path.strip("/").split("/")
        if entry.method == "GET" and len(parts) == 3 and parts[:2] == ["api", "sandbox"] and parts[2] in self.routes:
            entry.status = 200
            await self._respond(writer, 200, self.sandbox_dto(parts[2]))
            return
        entry.status = 404
        await self._respond(writer, 404, {"statusCode": 404, "message": f"not found: {path}", "error": "Not Found"})

    async def _toolbox(self, entry, method, target, version, headers, reader, writer) -> None:
        rest = target[len(b"/toolbox/") :]
        sandbox_id, sep, tail = rest.partition(b"/")
        if b"?" in sandbox_id:  # "/toolbox/sbx?x" has no path at all
            sandbox_id, _, query = sandbox_id.partition(b"?")
            tail, sep = b"?" + query, b""
        route = self.routes.get(sandbox_id.decode("latin-1"))
        if route is None:
            entry.status = 404
            await self._respond(writer, 404, {"statusCode": 404, "message": "sandbox not found"})
            return
        if not self._authorized(headers):
            entry.status = 401
            await self._respond(writer, 401, {"statusCode": 401, "message": "Unauthorized"})
            return
        forwarded = b"/" + tail if sep else (tail if tail.startswith(b"/") else b"/" + tail)
        entry.forwarded = forwarded.decode("latin-1")
        upgrade = any(k.lower() == b"upgrade" for k, _ in headers)
        out = [b"%s %s %s" % (method, forwarded, version)]
        for k, v in headers:
            lk = k.lower()
            if lk == TOKEN_HEADER:
                continue
            if lk in HOP_BY_HOP and not upgrade:
                continue
            out.append(k + b": " + v)
        if not upgrade:
            out.append(b"Connection: close")
        if route.daemon_token is not None:
            out.append(TOKEN_HEADER + b": " + route.daemon_token.encode())
        try:
            up_reader, up_writer = await asyncio.open_connection(route.daemon_host, route.daemon_port)
        except OSError as e:
            entry.status = 502
            await self._respond(writer, 502, {"statusCode": 502, "message": f"daemon unreachable: {e}"})
            return
        up_writer.write(b"\r\n".join(out) + b"\r\n\r\n")

        async def client_to_daemon() -> None:
            try:
                while data := await reader.read(1 << 16):
                    up_writer.write(data)
                    await up_writer.drain()
                if up_writer.can_write_eof():
                    up_writer.write_eof()
            except (ConnectionError, OSError):
                pass

        async def daemon_to_client() -> None:
            first = True
            try:
                while data := await up_reader.read(1 << 16):
                    if first:
                        first = False
                        try:
                            entry.status = int(data.split(b" ", 2)[1])
                        except (IndexError, ValueError):
                            entry.status = -1
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass

        upstream = asyncio.ensure_future(client_to_daemon())
        try:
            await daemon_to_client()
        finally:
            upstream.cancel()
            try:
                await upstream
            except (asyncio.CancelledError, Exception):
                pass
            up_writer.close()
        # Lingering close: if the daemon answered before reading the whole body (an early 4xx on an upload), closing
        # with unread input would make the kernel send RST and the client could lose the answer.
        try:
            if writer.can_write_eof():
                writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2
            while loop.time() < deadline:
                data = await asyncio.wait_for(reader.read(1 << 16), timeout=max(0.01, deadline - loop.time()))
                if not data:
                    break
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
