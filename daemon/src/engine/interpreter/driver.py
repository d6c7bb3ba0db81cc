# The code interpreter's worker: one Python process per context, started by sandbar-daemon with `python3 -u -c`.
#
# Protocol (see interpreter/protocol.rs): the daemon writes one JSON request a line on our stdin,
# {"code": str, "envs": {str: str}}; we answer on our stdout with JSON lines only:
# {"type": "ready"} once, then per request any number of {"type": "stdout"|"stderr", "text"} and at most one
# {"type": "error", "name", "value", "traceback"}, then {"type": "done"}. The user's code never sees these pipes:
# its fd 0 is /dev/null and its fds 1 and 2 are pipes of ours, relayed as stdout/stderr frames (so the output of
# subprocesses it starts is captured too). SIGINT interrupts the running code (KeyboardInterrupt) and is ignored
# between requests.
import ast
import builtins
import codecs
import json
import os
import select
import signal
import sys
import threading
import traceback

READ_CHUNK = 64 * 1024
MAX_FIELD = 256 * 1024
CELL = "<cell>"
DRIVER = "<string>"


class Channel:
    """The control pipe to the daemon: whole JSON lines, one writer at a time."""

    def __init__(self, fd):
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, frame):
        data = (json.dumps(frame) + "\n").encode()
        with self.lock:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]


class Relay(threading.Thread):
    """Forwards what is written to fds 1 and 2 as stdout/stderr frames. `sync()` returns once everything written
    before it was called has been sent."""

    def __init__(self, channel, out_r, err_r):
        super().__init__(daemon=True)
        self.channel = channel
        self.streams = {
            out_r: ("stdout", codecs.getincrementaldecoder("utf-8")("replace")),
            err_r: ("stderr", codecs.getincrementaldecoder("utf-8")("replace")),
        }
        for fd in self.streams:
            os.set_blocking(fd, False)
        self.wake_r, self.wake_w = os.pipe()
        self.synced = threading.Event()
        self.sync_lock = threading.Lock()

    def sync(self):
        with self.sync_lock:
            self.synced.clear()
            os.write(self.wake_w, b"s")
            self.synced.wait()

    def drain(self, fd, final=False):
        kind, decoder = self.streams[fd]
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                data = None
            text = decoder.decode(data or b"", final=final or not data)
            if text:
                self.channel.send({"type": kind, "text": text})
            if not data:
                return

    def run(self):
        while True:
            ready, _, _ = select.select([*self.streams, self.wake_r], [], [])
            for fd in ready:
                if fd == self.wake_r:
                    os.read(self.wake_r, 64)
                    for stream in self.streams:
                        self.drain(stream, final=True)
                    self.synced.set()
                else:
                    self.drain(fd)


class Worker:
    def __init__(self):
        self.running = False
        # Our own copies of the request and control pipes, then the user's fds 0, 1, 2 replaced.
        self.requests = os.fdopen(os.dup(0), "rb")
        self.channel = Channel(os.dup(1))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        self.relay = Relay(self.channel, out_r, err_r)
        self.relay.start()
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        signal.signal(signal.SIGINT, self.on_sigint)

    def on_sigint(self, _signum, _frame):
        if self.running:
            raise KeyboardInterrupt

    def serve(self):
        self.channel.send({"type": "ready"})
        while True:
            try:
                line = self.requests.readline()
                if not line:
                    return
                self.handle(json.loads(line))
            except KeyboardInterrupt:
                # A late interrupt (the code had already finished): the request is over either way.
                self.running = False
                self.finish()

    def handle(self, request):
        code = request.get("code", "")
        envs = request.get("envs") or {}
        saved = {k: os.environ.get(k) for k in envs}
        os.environ.update(envs)
        error = None
        try:
            self.running = True
            self.execute(code)
        except BaseException as e:  # noqa: BLE001 - every failure of the user's code is reported, even SystemExit
            error = e
        finally:
            self.running = False
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.flush()
        if error is not None:
            self.report(error)
        self.finish()

    def execute(self, code):
        tree = ast.parse(code, CELL, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, CELL, "exec"), self.namespace)
        if last is not None:
            value = eval(compile(last, CELL, "eval"), self.namespace)
            if value is not None:
                print(repr(value))

    def report(self, error):
        # Our own frames (the `-c` source) are dropped: the traceback is the user's cell and what it called.
        exc = traceback.TracebackException(type(error), error, error.__traceback__)
        stack = [f for f in exc.stack if f.filename != DRIVER]
        first = next((i for i, f in enumerate(stack) if f.filename == CELL), len(stack))
        exc.stack = traceback.StackSummary.from_list(stack[first:])
        text = "".join(exc.format())
        self.channel.send(
            {
                "type": "error",
                "name": type(error).__name__,
                "value": str(error)[:MAX_FIELD],
                "traceback": text[-MAX_FIELD:],
            }
        )

    def finish(self):
        self.flush()
        self.channel.send({"type": "done"})

    def flush(self):
        """Sends everything the code wrote so far, so frames keep the order in which things happened."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream must not wedge the worker
                pass
        self.relay.sync()


if __name__ == "__main__":
    Worker().serve()
