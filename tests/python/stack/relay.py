"""A TCP relay on loopback that a test can cut: the runner's only way to the API in the network fault tests.

``Relay(upstream)`` listens on ``127.0.0.1:<port>`` and forwards each connection to ``upstream``. ``cut("hold")``
black-holes it, as a network that drops packets does: bytes already sent stay where they are (nothing is read from
either side), new connections are accepted by the kernel and then hang; ``restore()`` lets everything flow again,
the held bytes first, as a healed network's retransmissions do (a request its client gave up on meanwhile reaches
the server all the same, and its answer is lost). ``cut("reset")`` refuses instead, as a host that is down but
reachable does: every open connection is reset, and every new one is reset on arrival. ``close()`` ends it all.

Threads, not asyncio: each connection is two pumps, and a cut is a flag the pumps look at before every read.
"""

from __future__ import annotations

import select
import socket
import struct
import threading


def _reset(sock: socket.socket) -> None:
    """Closes ``sock`` with a RST (SO_LINGER 0) rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class Relay:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"
        self.passing = threading.Event()
        self.passing.set()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.accepted = 0
        self.refused = 0
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, mode: str = "hold") -> None:
        assert mode in ("hold", "reset"), mode
        with self.lock:
            self.mode = mode
            self.passing.clear()
            if mode == "reset":
                for s in list(self.open):
                    _reset(s)
                self.open.clear()

    def restore(self) -> None:
        with self.lock:
            self.mode = "pass"
            self.passing.set()

    def close(self) -> None:
        self.closed.set()
        self.passing.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            for s in list(self.open):
                _reset(s)
            self.open.clear()

    # --- the pumps -------------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.mode == "reset":
                    self.refused += 1
                    _reset(conn)
                    continue
                self.accepted += 1
                self.open.add(conn)
            threading.Thread(target=self._connect, args=(conn,), name="relay-conn", daemon=True).start()

    def _connect(self, down: socket.socket) -> None:
        # A connection that arrives during a hold waits here, as a SYN lost and retransmitted would.
        while not self.passing.wait(0.2):
            if down not in self.open:
                return
        if self.closed.is_set() or down not in self.open:
            _reset(down)
            return
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._drop(down)
            return
        with self.lock:
            if down not in self.open:
                _reset(up)
                return
            self.open.add(up)
        ends = [2]  # pumps still running; the last one to end closes both sockets
        for a, b in ((down, up), (up, down)):
            threading.Thread(target=self._pump, args=(a, b, ends), name="relay-pump", daemon=True).start()

    def _drop(self, *socks: socket.socket) -> None:
        with self.lock:
            for s in socks:
                self.open.discard(s)
                _reset(s)

    def _pump(self, src: socket.socket, dst: socket.socket, ends: list[int]) -> None:
        try:
            self._pump_until_eof(src, dst)
        finally:
            with self.lock:
                ends[0] -= 1
                last = ends[0] == 0
            if last:
                with self.lock:
                    for s in (src, dst):
                        if s in self.open:
                            self.open.discard(s)
                            try:
                                s.close()
                            except OSError:
                                pass

    def _pump_until_eof(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            if src not in self.open or dst not in self.open:
                return
            if not self.passing.is_set():
                # Held: read nothing, so the bytes stay in the kernel's buffers until the restore.
                self.passing.wait(0.2)
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.2)
            except (OSError, ValueError):
                self._drop(src, dst)
                return
            if not ready or not self.passing.is_set():
                continue
            try:
                data = src.recv(65536)
            except OSError:
                self._drop(src, dst)
                return
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                self._drop(src, dst)
                return
